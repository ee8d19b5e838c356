"""Time-window partitions: Dagster's TimeWindowPartitionsDefinition, strict on membership.

Which windows exist (matching Dagster 1.13's `get_partition_keys`, derived from
`_get_first_partition_window` / `_get_last_partition_window`): number the cron ticks so that
tick 0 is the first tick at or after `start`, window n = [tick n, tick n+1). With
c = index of the first tick >= now, d = index of the last tick <= now, f = index of the last
tick <= end (no end: unbounded) and k = end_offset, the listed windows are 0..L where

* k = 0: none if d < 1, else L = min(d, f) - 1   (a window is listed once it has ended);
* k > 0: none if c + k < 1, else L = max(d + k - 1, 0), then L = min(L, f - 1);
* k < 0: none if d + k < 1, else L = d + k - 1, then L = min(L, f - 1).

(The ``max(.., 0)`` reproduces Dagster listing window 0 when now is just before it with k > 0.)

Keys are the window start formatted with fmt in the zone (`keyfmt.py`); a key is valid exactly
when it is one of those keys: it must parse, re-format to itself (so ``2024-01-01-00:30`` is not
an hourly key), and its index must be in 0..L. Which instants are ticks, DST included, is
`ticks.py`'s business.

Creation validates everything and reports every bad field at once (field paths such as
``time_window.fmt``). Choices beyond Dagster:

* ``start``/``end`` parse with fmt (and fmt + ``%z``), else as ISO 8601; without an offset they
  are wall time in the zone, with one they are instants, converted (not relabelled).
* fmt defaults: HOURLY ``%Y-%m-%d-%H:%M``; DAILY, WEEKLY, MONTHLY ``%Y-%m-%d``; a custom cron
  with a single time of day ``%Y-%m-%d``, any other custom cron ``%Y-%m-%d-%H:%M``.
* fmt must contain a four-digit year (``%Y`` or ``%G``) and round-trip: every sampled window's
  key must be a valid partition key that parses back to that same window (so no two windows
  share a key). Samples: the first ticks, ticks 1 day .. 4 years on, around every offset
  change in the first 3 years and around the next 29 February.
* MONTHLY day_offset must be 1-28 (0 or unset means 1); WEEKLY 0-6 (Sunday = 0).
* start must be on or after 1900-01-01 and end before 9000-01-01; end must leave room for
  at least one complete window after start. "now" is clamped to before 9000-01-01.
* A key naming a repeated wall time matches the tick at either occurrence (Dagster's
  `time_window_for_partition_key` reads only the first, so for e.g. ``*/30 1-3 * * *`` it maps
  the listed key ``2024-11-03-01:30`` — which starts at the second 01:30 — to the wrong window).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import NamedTuple

from server.domain.errors import InvalidArgument, ViolationCollector
from server.domain.partitions.cron import CronError, CronRule, parse_cron
from server.domain.partitions.keyfmt import KeyFormat
from server.domain.partitions.keys import check_key_syntax, key_syntax_problem, quote_key
from server.domain.partitions.ticks import BeyondRange, TickSchedule, get_schedule
from server.domain.partitions.zones import get_zone, zone_problem

SCHEDULE_TYPES = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY")
PRESET_FMTS = {
    "HOURLY": "%Y-%m-%d-%H:%M",
    "DAILY": "%Y-%m-%d",
    "WEEKLY": "%Y-%m-%d",
    "MONTHLY": "%Y-%m-%d",
}
DAILY_FMT = "%Y-%m-%d"
SUBDAILY_FMT = "%Y-%m-%d-%H:%M"
MAX_END_OFFSET = 1_000_000
_MAX_BOUND = int(datetime(9000, 1, 1, tzinfo=UTC).timestamp())
_DAY = 86400


@dataclass(frozen=True, eq=False)
class TimeWindow:
    """[start, end) — aware datetimes in the spec's zone.

    Equality, hashing and `contains` use instants: Python compares two datetimes sharing a
    tzinfo by wall time and ignores `fold`, which would equate 01:00 EDT with 01:00 EST.
    """

    start: datetime
    end: datetime

    def _span(self) -> tuple[float, float]:
        return self.start.timestamp(), self.end.timestamp()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeWindow):
            return NotImplemented
        return self._span() == other._span()

    def __hash__(self) -> int:
        return hash(self._span())

    def contains(self, moment: datetime) -> bool:
        start, end = self._span()
        return start <= moment.timestamp() < end

    @property
    def duration(self) -> timedelta:
        """Elapsed time (``end - start`` on datetimes sharing a zone is wall-clock time instead)."""
        start, end = self._span()
        return timedelta(seconds=end - start)


class PartitionWindow(NamedTuple):
    key: str
    window: TimeWindow


def _iso(instant: float, zone_name: str) -> str:
    return datetime.fromtimestamp(instant, get_zone(zone_name).tzinfo).isoformat()


def _instant(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.timestamp()


def normalize_schedule_type(value: str) -> str:
    text = value.strip().upper()
    if text.startswith("SCHEDULE_TYPE_"):
        text = text[len("SCHEDULE_TYPE_") :]
    return "" if text == "UNSPECIFIED" else text


def default_fmt(rule: CronRule) -> str:
    """The fmt a custom cron gets when none is given (see module doc)."""
    return DAILY_FMT if len(rule.times_of_day) == 1 else SUBDAILY_FMT


@dataclass(frozen=True)
class TimeWindowSpec:
    """An immutable, hashable time-window partitions definition. Build it with `create`."""

    cron_schedule: str
    fmt: str
    timezone: str
    start: datetime
    end: datetime | None
    end_offset: int
    _schedule: TickSchedule = field(compare=False, repr=False)
    _format: KeyFormat = field(compare=False, repr=False)
    _first: int = field(compare=False, repr=False)  # schedule index of tick 0
    _end_last_tick: int | None = field(compare=False, repr=False)  # f: index of last tick <= end
    _last_cache: list[tuple[float, int]] = field(compare=False, repr=False, default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        *,
        cron_schedule: str = "",
        schedule_type: str = "",
        minute_offset: int = 0,
        hour_offset: int = 0,
        day_offset: int | None = None,
        start: str,
        end: str = "",
        fmt: str = "",
        timezone: str = "",
        end_offset: int = 0,
        field_prefix: str = "time_window",
    ) -> TimeWindowSpec:
        """Validate a definition; raises InvalidArgument with one violation per bad field.

        Valid definitions are memoized (they are immutable), so re-creating a stored definition
        on every request costs a dictionary lookup, not a validation.
        """
        return _create_cached(
            cron_schedule,
            schedule_type,
            minute_offset,
            hour_offset,
            day_offset,
            start,
            end,
            fmt,
            timezone,
            end_offset,
            field_prefix,
        )

    @classmethod
    def _create(
        cls,
        cron_schedule: str,
        schedule_type: str,
        minute_offset: int,
        hour_offset: int,
        day_offset: int | None,
        start: str,
        end: str,
        fmt: str,
        timezone: str,
        end_offset: int,
        field_prefix: str,
    ) -> TimeWindowSpec:
        violations = ViolationCollector()

        def path(name: str) -> str:
            return f"{field_prefix}.{name}" if field_prefix else name

        rule, preset = _resolve_cron(
            violations, path, cron_schedule, schedule_type, minute_offset, hour_offset, day_offset
        )

        zone_name = timezone or "UTC"
        problem = zone_problem(zone_name)
        if problem is not None:
            violations.add(path("timezone"), problem)

        if fmt:
            fmt_value = fmt
        elif preset:
            fmt_value = PRESET_FMTS[preset]
        else:
            fmt_value = default_fmt(rule) if rule is not None else SUBDAILY_FMT
        fmt_ok = _check_fmt_shape(violations, path("fmt"), fmt_value)

        if not -MAX_END_OFFSET <= end_offset <= MAX_END_OFFSET:
            violations.add(
                path("end_offset"),
                f"must be between -{MAX_END_OFFSET} and {MAX_END_OFFSET} (got {end_offset})",
            )

        if not start:
            violations.add(path("start"), f"is required: a date-time in fmt {fmt_value!r} or ISO 8601")

        if rule is None or problem is not None:
            violations.raise_if_any("invalid time_window partitions definition")
            raise AssertionError("unreachable")  # pragma: no cover

        schedule = get_schedule(rule.expression, zone_name)
        zone = get_zone(zone_name)
        key_format = KeyFormat(fmt_value, zone.tzinfo)

        start_at = _parse_bound(start, key_format) if start else None
        if start and start_at is None:
            violations.add(
                path("start"),
                f"cannot parse {start!r}: expected fmt {fmt_value!r} (e.g. "
                f"{key_format.format(int(datetime(2024, 1, 1, tzinfo=zone.tzinfo).timestamp()))!r}) "
                "or ISO 8601 (e.g. '2024-01-01' or '2024-01-01T00:00:00+00:00')",
            )
        min_start = datetime(1900, 1, 1, tzinfo=zone.tzinfo).timestamp()
        if start_at is not None and not min_start <= start_at < _MAX_BOUND:
            violations.add(path("start"), f"must be between 1900-01-01 and 9000-01-01 (got {start!r})")
            start_at = None

        end_at = _parse_bound(end, key_format) if end else None
        if end and end_at is None:
            violations.add(path("end"), f"cannot parse {end!r}: expected fmt {fmt_value!r} or ISO 8601")
        if end_at is not None and not min_start < end_at <= _MAX_BOUND:
            violations.add(path("end"), f"must be between 1900-01-01 and 9000-01-01 (got {end!r})")
            end_at = None

        first = schedule.tick_index(math.ceil(start_at)) if start_at is not None else None
        end_last: int | None = None
        if start_at is not None and first is not None and end_at is not None:
            end_last = schedule.tick_index(math.floor(end_at) + 1) - 1 - first
            if end_at <= start_at:
                violations.add(path("end"), f"must be after start ({_iso(start_at, zone_name)}); got {end!r}")
            elif end_last < 1:
                first_end = _safe_tick(schedule, first + 1)
                violations.add(
                    path("end"),
                    f"leaves no complete window between start and end: the first window after start "
                    f"ends at {_iso(first_end, zone_name) if first_end is not None else 'never'}, "
                    f"after end {_iso(end_at, zone_name)}",
                )

        if fmt_ok:
            base = (
                math.ceil(start_at)
                if start_at is not None
                else int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
            )
            fmt_problem = _round_trip_problem(schedule, key_format, base)
            if fmt_problem is not None:
                violations.add(path("fmt"), fmt_problem)

        violations.raise_if_any("invalid time_window partitions definition")
        assert start_at is not None and first is not None
        return cls(
            cron_schedule=rule.expression,
            fmt=fmt_value,
            timezone=zone_name,
            start=datetime.fromtimestamp(start_at, zone.tzinfo),
            end=datetime.fromtimestamp(end_at, zone.tzinfo) if end_at is not None else None,
            end_offset=end_offset,
            _schedule=schedule,
            _format=key_format,
            _first=first,
            _end_last_tick=end_last,
        )

    # ------------------------------------------------------------------ basics
    @property
    def first_window_start(self) -> datetime:
        """Start of window 0: the first cron tick at or after `start`."""
        return self._dt(self._schedule.tick_at(self._first))

    @property
    def repeats_every_hour(self) -> bool:
        """Dagster's DST rule switch: every occurrence of a repeated wall time is a tick."""
        return self._schedule.repeat

    def _dt(self, instant: int) -> datetime:
        return datetime.fromtimestamp(instant, self._format.zone)

    def _key_of_tick(self, tick: int) -> str:
        return self._format.format(tick, self._schedule.is_second_occurrence(tick))

    def _tick(self, index: int) -> int:
        return self._schedule.tick_at(self._first + index)

    def _key_at(self, index: int) -> str:
        return self._key_of_tick(self._tick(index))

    def _last_index(self, now: datetime) -> int:
        """L: index of the last listed window as of `now` (-1 when none)."""
        moment = min(_instant(now), float(_MAX_BOUND))
        cache = self._last_cache
        entry = cache[0] if cache else None
        if entry is not None and entry[0] == moment:
            return entry[1]
        schedule = self._schedule
        first_at_or_after = schedule.tick_index(math.ceil(moment)) - self._first
        last_at_or_before = schedule.tick_index(math.floor(moment) + 1) - 1 - self._first
        k = self.end_offset
        f = self._end_last_tick
        last: int
        if k == 0:
            if last_at_or_before < 1:
                last = -1
            else:
                last = (last_at_or_before if f is None else min(last_at_or_before, f)) - 1
        else:
            if k > 0:
                exists = first_at_or_after + k >= 1
                last = max(last_at_or_before + k - 1, 0)
            else:
                exists = last_at_or_before + k >= 1
                last = last_at_or_before + k - 1
            if not exists:
                last = -1
            elif f is not None:
                last = min(last, f - 1)
        if last >= 0 and _safe_tick(schedule, self._first + last + 1) is None:
            last = self._last_representable()
        cache[:] = [(moment, last)]
        return last

    def _last_representable(self) -> int:
        """Largest window index whose end tick exists before the supported range ends."""
        lo, hi = 0, 1
        while _safe_tick(self._schedule, self._first + hi + 1) is not None:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _safe_tick(self._schedule, self._first + mid + 1) is not None:
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ listing
    def count(self, now: datetime) -> int:
        """Number of keys as of `now` (O(log) — never enumerates)."""
        return self._last_index(now) + 1

    def _iter_ticks(self, index: int) -> Iterator[tuple[int, bool]]:
        return self._schedule.iter_ticks(self._first + index)

    def _page_ticks(self, offset: int, limit: int, now: datetime, extra: int = 0) -> list[tuple[int, bool]]:
        """Ticks (with their second-occurrence flag) of windows offset .. offset+limit-1 as of
        `now`, and `extra` ticks after them."""
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        stop = min(offset + limit, self._last_index(now) + 1)
        if offset >= stop:
            return []
        return list(islice(self._iter_ticks(offset), stop - offset + extra))

    def keys_page(self, offset: int, limit: int, now: datetime) -> list[str]:
        """Keys offset .. offset+limit-1 in definition (chronological) order."""
        fmt = self._format.format
        return [fmt(t, second) for t, second in self._page_ticks(offset, limit, now)]

    def keys(self, now: datetime) -> Iterator[str]:
        fmt = self._format.format
        total = self._last_index(now) + 1
        for t, second in islice(self._iter_ticks(0), total):
            yield fmt(t, second)

    def starts(self, offset: int, limit: int, now: datetime) -> list[int]:
        """Window starts (epoch seconds) of keys offset .. offset+limit-1, like `keys_page`."""
        return [t for t, _ in self._page_ticks(offset, limit, now)]

    def starts_page(self, offset: int, limit: int, now: datetime) -> list[tuple[str, int]]:
        """(key, window start in epoch seconds) like `keys_page`: what a key's position needs,
        without building its window."""
        fmt = self._format.format
        return [(fmt(t, second), t) for t, second in self._page_ticks(offset, limit, now)]

    def windows_page(self, offset: int, limit: int, now: datetime) -> list[PartitionWindow]:
        """Keys with their windows, like `keys_page`."""
        fmt = self._format.format
        return [
            PartitionWindow(fmt(t, second), TimeWindow(self._dt(t), self._dt(t_next)))
            for (t, second), (t_next, _) in pairwise(self._page_ticks(offset, limit, now, extra=1))
        ]

    # ------------------------------------------------------------------ keys
    def _tick_for_key(self, key: str, field: str) -> int:
        """The window start `key` names, if `key` is exactly an aligned key (any index)."""
        check_key_syntax(key, field)
        candidates = self._format.parse_candidates(key)
        if not candidates:
            raise InvalidArgument.for_field(
                field,
                f"{quote_key(key)} does not match the partition key format {self.fmt!r} "
                f"(e.g. {self._key_at(0)!r})",
            )
        tick = _tick_named(self._schedule, self._format, key, candidates)
        if tick is None:
            raise InvalidArgument.for_field(field, self._misaligned(key, candidates[0]))
        return tick

    def _misaligned(self, key: str, parsed: float) -> str:
        schedule = self._schedule
        after = schedule.tick_index(math.ceil(parsed))  # first tick >= parsed
        before = after - 1
        nearest = []
        for n in sorted({before, after}):
            tick = _safe_tick(schedule, n)
            if tick is not None and n >= self._first:
                nearest.append(repr(self._key_of_tick(tick)))
        hint = (
            f"; nearest keys: {' and '.join(nearest)}"
            if nearest
            else f"; the first key is {self._key_at(0)!r}"
        )
        return (
            f"{quote_key(key)} is not the start of a window of cron {self.cron_schedule!r} "
            f"in {self.timezone} with fmt {self.fmt!r}{hint}"
        )

    def window(self, key: str, field: str = "partition_key") -> TimeWindow:
        """The window `key` names; raises InvalidArgument unless it is an aligned key (ignores now)."""
        tick = self._tick_for_key(key, field)
        index = self._schedule.tick_index(tick)
        return TimeWindow(self._dt(tick), self._dt(self._schedule.tick_at(index + 1)))

    def validate_key(self, key: str, now: datetime, field: str = "partition_key") -> int:
        """Check `key` is one of the keys as of `now`; returns its position (window start, epoch s)."""
        return self.locate_key(key, now, field)[0]

    def locate_key(self, key: str, now: datetime, field: str = "partition_key") -> tuple[int, int]:
        """Like `validate_key`, returning (position, index in the key list) from one parse."""
        tick = self._tick_for_key(key, field)
        index = self._schedule.tick_index(tick) - self._first
        last = self._last_index(now)
        if 0 <= index <= last:
            return tick, index
        raise InvalidArgument.for_field(field, self._out_of_range(key, index, last, now))

    def _out_of_range(self, key: str, index: int, last: int, now: datetime | None) -> str:
        if index < 0:
            return (
                f"{quote_key(key)} is before the first partition key {self._key_at(0)!r} "
                f"(start {self.start.isoformat()})"
            )
        f = self._end_last_tick
        if f is not None and index > f - 1:
            return (
                f"{quote_key(key)} is at or after the definition's end ({self.end.isoformat() if self.end else ''}); "
                f"the last key is {self._key_at(f - 1)!r}"
            )
        as_of = now.astimezone(self._format.zone).isoformat() if now is not None else "now"
        if last < 0:
            return (
                f"{quote_key(key)} is not a partition key yet: as of {as_of} no window has closed "
                f"(the first key will be {self._key_at(0)!r})"
            )
        return f"{quote_key(key)} is after the last partition key {self._key_at(last)!r} as of {as_of}"

    def validate_keys(self, keys: Sequence[str], now: datetime, field: str = "partition_keys") -> list[int]:
        """Validate many keys, reporting every bad one as ``field[i]``; returns their positions."""
        violations = ViolationCollector()
        positions: list[int] = []
        for i, key in enumerate(keys):
            try:
                positions.append(self.validate_key(key, now, f"{field}[{i}]"))
            except InvalidArgument as exc:
                violations.extend(exc)
        violations.raise_if_any("invalid partition keys")
        return positions

    def position(self, key: str, field: str = "partition_key") -> int:
        """Window start as integer epoch seconds: the ordering key storage keeps (alignment only)."""
        return self._tick_for_key(key, field)

    def key_for_position(self, position: int) -> str:
        if not self._schedule.is_tick(position):
            raise ValueError(f"{position} is not a window start of this definition")
        return self._key_of_tick(position)

    def index_of(self, key: str, field: str = "partition_key") -> int:
        """0-based index in the full key list, independent of now (window 0 starts at/after start)."""
        tick = self._tick_for_key(key, field)
        index = self._schedule.tick_index(tick) - self._first
        f = self._end_last_tick
        if index < 0 or (f is not None and index > f - 1):
            raise InvalidArgument.for_field(field, self._out_of_range(key, index, index, None))
        return index

    def index_range(
        self,
        start_key: str,
        end_key: str,
        now: datetime,
        *,
        start_field: str = "start_key",
        end_field: str = "end_key",
    ) -> range:
        """Indices of the inclusive key range start_key..end_key (both must be keys as of now)."""
        violations = ViolationCollector()
        indices: list[int] = []
        for key, name in ((start_key, start_field), (end_key, end_field)):
            try:
                tick = self.validate_key(key, now, name)
                indices.append(self._schedule.tick_index(tick) - self._first)
            except InvalidArgument as exc:
                violations.extend(exc)
        violations.raise_if_any("invalid key range")
        lo, hi = indices
        if hi < lo:
            raise InvalidArgument.for_field(
                end_field, f"{quote_key(end_key)} comes before the start key {quote_key(start_key)}"
            )
        return range(lo, hi + 1)

    def keys_in_range(
        self,
        start_key: str,
        end_key: str,
        now: datetime,
        *,
        start_field: str = "start_key",
        end_field: str = "end_key",
    ) -> list[str]:
        """The keys start_key..end_key inclusive, in order (for backfills)."""
        span = self.index_range(start_key, end_key, now, start_field=start_field, end_field=end_field)
        fmt = self._format.format
        return [fmt(t, second) for t, second in islice(self._iter_ticks(span.start), len(span))]

    def key_for_index(self, index: int) -> str:
        return self._key_at(index)

    # ------------------------------------------------------------------ schedules
    def window_containing(self, moment: datetime) -> PartitionWindow:
        """The cron window [tick, next tick) containing `moment` (ignores start, end and now)."""
        instant = _instant(moment)
        n = self._schedule.tick_index(math.floor(instant) + 1) - 1
        start, end = self._schedule.tick_at(n), self._schedule.tick_at(n + 1)
        return PartitionWindow(self._key_of_tick(start), TimeWindow(self._dt(start), self._dt(end)))

    def last_closed_window(self, now: datetime) -> PartitionWindow | None:
        """The latest window of the definition (start/end respected, end_offset ignored) that has
        ended at or before `now` — for a schedule, the window that closed at its last tick."""
        instant = min(_instant(now), float(_MAX_BOUND))
        d = self._schedule.tick_index(math.floor(instant) + 1) - 1 - self._first
        if self._end_last_tick is not None:
            d = min(d, self._end_last_tick)
        if d < 1:
            return None
        start, end = self._tick(d - 1), self._tick(d)
        return PartitionWindow(self._key_of_tick(start), TimeWindow(self._dt(start), self._dt(end)))


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=1024)
def _create_cached(
    cron_schedule: str,
    schedule_type: str,
    minute_offset: int,
    hour_offset: int,
    day_offset: int | None,
    start: str,
    end: str,
    fmt: str,
    timezone: str,
    end_offset: int,
    field_prefix: str,
) -> TimeWindowSpec:
    return TimeWindowSpec._create(
        cron_schedule,
        schedule_type,
        minute_offset,
        hour_offset,
        day_offset,
        start,
        end,
        fmt,
        timezone,
        end_offset,
        field_prefix,
    )


def _tick_named(
    schedule: TickSchedule, key_format: KeyFormat, key: str, candidates: tuple[float, ...]
) -> int | None:
    """The tick whose key is `key`: the first tick at or after one of the instants the key can
    denote (a key may name a wall time that repeats, e.g. a daily 01:30 tick fires at the
    second 01:30), provided it formats back to exactly `key`."""
    for candidate in candidates:
        try:
            tick = schedule.ceil(math.ceil(candidate))
        except BeyondRange:
            continue
        if key_format.format(tick, schedule.is_second_occurrence(tick)) == key:
            return tick
    return None


def _safe_tick(schedule: TickSchedule, n: int) -> int | None:
    try:
        return schedule.tick_at(n)
    except BeyondRange:
        return None


def _parse_bound(text: str, key_format: KeyFormat) -> float | None:
    """start/end: fmt (and fmt + %z) first, else ISO 8601; naive means wall time in the zone."""
    parsed = key_format.parse(text, lenient=True)
    if parsed is not None:
        return parsed
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=key_format.zone, fold=0)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):  # pragma: no cover - extreme dates
        return None


def _resolve_cron(
    violations: ViolationCollector,
    path: Callable[[str], str],
    cron_schedule: str,
    schedule_type: str,
    minute_offset: int,
    hour_offset: int,
    day_offset: int | None,
) -> tuple[CronRule | None, str]:
    """(parsed rule or None, preset name or "")."""
    preset = normalize_schedule_type(schedule_type)
    if cron_schedule.strip() and preset:
        violations.add(path("cron_schedule"), "set either cron_schedule or schedule_type, not both")
        return None, ""
    if cron_schedule.strip():
        for name, value in (
            ("minute_offset", minute_offset),
            ("hour_offset", hour_offset),
            ("day_offset", day_offset),
        ):
            if value:
                violations.add(
                    path(name), "applies only with schedule_type; write it into cron_schedule instead"
                )
        try:
            return parse_cron(cron_schedule), ""
        except CronError as exc:
            violations.add(path("cron_schedule"), f"invalid cron schedule: {exc}")
            return None, ""
    if not preset:
        violations.add(
            path("cron_schedule"),
            "one of cron_schedule or schedule_type (HOURLY, DAILY, WEEKLY, MONTHLY) is required",
        )
        return None, ""
    if preset not in SCHEDULE_TYPES:
        violations.add(
            path("schedule_type"), f"must be one of HOURLY, DAILY, WEEKLY, MONTHLY (got {schedule_type!r})"
        )
        return None, ""
    ok = True
    if not 0 <= minute_offset <= 59:
        violations.add(path("minute_offset"), f"must be 0-59 (got {minute_offset})")
        ok = False
    if preset == "HOURLY":
        if hour_offset:
            violations.add(path("hour_offset"), "does not apply to HOURLY (use minute_offset)")
            ok = False
    elif not 0 <= hour_offset <= 23:
        violations.add(path("hour_offset"), f"must be 0-23 (got {hour_offset})")
        ok = False
    day = day_offset or 0
    if preset in ("HOURLY", "DAILY"):
        if day:
            violations.add(path("day_offset"), f"does not apply to {preset}")
            ok = False
    elif preset == "WEEKLY":
        if not 0 <= day <= 6:
            violations.add(path("day_offset"), f"must be 0-6 for WEEKLY (0 = Sunday; got {day})")
            ok = False
    else:
        day = day or 1
        if 29 <= day <= 31:
            violations.add(
                path("day_offset"),
                f"must be 1-28 for MONTHLY: some months have no day {day} (February has 28 or 29 days); "
                "for month ends use cron_schedule '0 0 L * *'",
            )
            ok = False
        elif not 1 <= day <= 28:
            violations.add(path("day_offset"), f"must be 1-28 for MONTHLY (got {day})")
            ok = False
    if not ok:
        return None, preset
    cron = {
        "HOURLY": f"{minute_offset} * * * *",
        "DAILY": f"{minute_offset} {hour_offset} * * *",
        "WEEKLY": f"{minute_offset} {hour_offset} * * {day}",
        "MONTHLY": f"{minute_offset} {hour_offset} {day} * *",
    }[preset]
    return parse_cron(cron), preset


def _check_fmt_shape(violations: ViolationCollector, field_path: str, fmt: str) -> bool:
    if "%Y" not in fmt and "%G" not in fmt:
        violations.add(field_path, f"must contain a four-digit year (%Y), e.g. {DAILY_FMT!r}; got {fmt!r}")
        return False
    try:
        datetime(2024, 1, 1).strftime(fmt)
    except ValueError as exc:
        violations.add(field_path, f"is not a valid strftime format {fmt!r}: {exc}")
        return False
    return True


def _round_trip_problem(schedule: TickSchedule, key_format: KeyFormat, base: int) -> str | None:
    """Why fmt fails to give every window its own parseable, valid key (sampled), or None."""
    zone = schedule.zone
    samples: set[int] = set()
    try:
        for days in (0, 1, 35, 95, 190, 370, 800, 1500):
            n = schedule.tick_index(base + days * _DAY)
            samples.update(range(n, n + 24))
        for transition in zone.transitions_between(base, base + 3 * 366 * _DAY):
            n = schedule.tick_index(transition)
            samples.update(range(max(n - 4, 0), n + 6))
        year = datetime.fromtimestamp(base, zone.tzinfo).year
        leap = next(y for y in range(year, year + 8) if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0))
        n = schedule.tick_index(int(datetime(leap, 2, 29, tzinfo=zone.tzinfo).timestamp()))
        samples.update(range(max(n - 3, 0), n + 3))
    except (BeyondRange, OverflowError, ValueError):  # pragma: no cover - near the end of the calendar
        pass
    for n in sorted(samples):
        try:
            tick = schedule.tick_at(n)
        except BeyondRange:
            continue
        try:
            key = key_format.format(tick, schedule.is_second_occurrence(tick))
        except ValueError as exc:
            return f"cannot format window starts with {key_format.fmt!r}: {exc}"
        problem = key_syntax_problem(key)
        if problem is not None:
            return f"produces keys that are not valid partition keys: {quote_key(key)} {problem}"
        candidates = key_format.parse_candidates(key)
        if not candidates:
            return f"produces keys that do not parse back with {key_format.fmt!r}, e.g. {quote_key(key)}"
        back = _tick_named(schedule, key_format, key, candidates)
        if back != tick:
            if back is None:
                back = schedule.ceil(math.ceil(candidates[0]))
            zone_name = zone.name
            return (
                f"{key_format.fmt!r} is not precise enough for cron {schedule.rule.expression!r}: "
                f"key {quote_key(key)} of the window starting {_iso(tick, zone_name)} reads back as the window "
                f"starting {_iso(back, zone_name)} (windows must not share keys)"
            )
    return None
