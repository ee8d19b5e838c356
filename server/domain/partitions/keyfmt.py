"""Time-window keys: strftime formatting and Dagster's "DST-safe" parsing.

Formatting is `strftime(fmt)` of the window start in the spec's zone, plus the UTC offset
(``%z``) for the second occurrence of a repeated wall time when the fmt has no ``%z`` of its own
(Dagster's `dst_safe_strftime`; the caller says when a tick is such an occurrence).

Parsing follows Dagster's `dst_safe_strptime`: the text is parsed with fmt, then with
``fmt + "%z"``; an offset makes it an instant, otherwise it is wall time in the zone, first
occurrence (fold=0; a wall time inside a gap is read with the offset before the gap).
Parsing alone is lenient; membership is decided by re-formatting (see `time_window.py`).

For fmts made only of ``%Y %m %d %H %M %S`` and literals a compiled regular expression replaces
`strptime` (about 5x faster). It accepts exactly the zero-padded text strftime produces, which
is all a canonical key can be; anything it rejects cannot be a valid key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from operator import attrgetter

# Directive -> (what parsing accepts, how formatting writes it, the datetime attribute).
_FAST_DIRECTIVES = {
    "Y": (r"(\d{4})", "%04d", "year"),
    "m": (r"(\d{2})", "%02d", "month"),
    "d": (r"(\d{2})", "%02d", "day"),
    "H": (r"(\d{2})", "%02d", "hour"),
    "M": (r"(\d{2})", "%02d", "minute"),
    "S": (r"(\d{2})", "%02d", "second"),
}
_SUFFIX = r"(?:([+-])(\d{2})(\d{2})(\d{2})?)?"


@dataclass(frozen=True)
class _FastFormat:
    """A fmt made only of the `_FAST_DIRECTIVES` and literals, compiled both ways."""

    pattern: re.Pattern[str]
    fields: tuple[str, ...]
    template: str  # printf-style: strftime's output for 4-digit years, without its cost
    values: Callable[[datetime], object]  # the template's values (one alone is not a tuple)


def _compile_fast(fmt: str) -> _FastFormat | None:
    parts: list[str] = []
    template: list[str] = []
    fields: list[str] = []
    i = 0
    while i < len(fmt):
        char = fmt[i]
        if char != "%":
            parts.append(re.escape(char))
            template.append(char)
            i += 1
            continue
        if i + 1 >= len(fmt):
            return None
        directive = fmt[i + 1]
        if directive == "%":
            parts.append("%")
            template.append("%%")
        elif directive in _FAST_DIRECTIVES:
            accepted, written, _ = _FAST_DIRECTIVES[directive]
            parts.append(accepted)
            template.append(written)
            fields.append(directive)
        else:
            return None
        i += 2
    names = [_FAST_DIRECTIVES[name][2] for name in fields]
    return _FastFormat(
        re.compile("".join(parts) + _SUFFIX + r"\Z"),
        tuple(fields),
        "".join(template),
        attrgetter(*names) if names else _no_values,
    )


def _no_values(moment: datetime) -> tuple[()]:
    return ()


class KeyFormat:
    """Formats ticks as keys and parses keys (or start/end strings) back to instants."""

    def __init__(self, fmt: str, zone: tzinfo) -> None:
        self.fmt = fmt
        self.zone = zone
        self.has_offset = "%z" in fmt
        self._fallback_fmt = fmt if self.has_offset else fmt + "%z"
        self._fast = _compile_fast(fmt)

    def format(self, instant: int, second_occurrence: bool = False) -> str:
        moment = datetime.fromtimestamp(instant, self.zone)
        if second_occurrence and not self.has_offset:
            return moment.strftime(self._fallback_fmt)
        # strftime writes years below 1000 unpadded; the template pads, so it serves the rest.
        if self._fast is not None and moment.year >= 1000:
            return self._fast.template % self._fast.values(moment)
        return moment.strftime(self.fmt)

    def parse(self, text: str, *, lenient: bool = False) -> float | None:
        """The instant `text` denotes under fmt (Dagster's dst_safe_strptime), or None.

        `lenient` always uses strptime (which also accepts e.g. unpadded numbers); without it the
        fast path may reject text strptime would take, which is fine for key membership.
        """
        candidates = self.parse_candidates(text, lenient=lenient)
        return candidates[0] if candidates else None

    def parse_candidates(self, text: str, *, lenient: bool = False) -> tuple[float, ...]:
        """Every instant `text` can denote: (first occurrence, second occurrence) for a repeated
        wall time, (read with the offset before, with the offset after) for a skipped one, a
        single instant otherwise; empty when it does not parse. The first is Dagster's reading."""
        moment = self._parse_moment(text, lenient)
        if moment is None:
            return ()
        try:
            if moment.tzinfo is not None:
                return (moment.timestamp(),)
            first = moment.replace(tzinfo=self.zone, fold=0).timestamp()
            second = moment.replace(tzinfo=self.zone, fold=1).timestamp()
        except (OverflowError, ValueError):
            return ()
        return (first,) if first == second else (first, second)

    def _parse_moment(self, text: str, lenient: bool) -> datetime | None:
        """A naive wall time, or an aware datetime when the text carries an offset."""
        if self._fast is not None and not lenient:
            return self._parse_fast(text)
        try:
            return datetime.strptime(text, self.fmt)
        except ValueError:
            try:
                return datetime.strptime(text, self._fallback_fmt)
            except ValueError:
                return None

    def _parse_fast(self, text: str) -> datetime | None:
        assert self._fast is not None
        fields = self._fast.fields
        match = self._fast.pattern.match(text)
        if match is None:
            return None
        groups = match.groups()
        values = {"Y": 1900, "m": 1, "d": 1, "H": 0, "M": 0, "S": 0}
        for name, value in zip(fields, groups, strict=False):
            values[name] = int(value)
        sign = groups[len(fields)]
        try:
            zone: tzinfo | None = None
            if sign is not None:
                seconds = int(groups[-3]) * 3600 + int(groups[-2]) * 60 + int(groups[-1] or 0)
                zone = timezone(timedelta(seconds=-seconds if sign == "-" else seconds))
            return datetime(
                values["Y"], values["m"], values["d"], values["H"], values["M"], values["S"], tzinfo=zone
            )
        except (OverflowError, ValueError):
            return None
