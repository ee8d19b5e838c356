"""Cron schedules as sequences of *wall-clock* matches.

cronsim parses the expression (field sets, names, ranges, steps, ``L``, ``#``, ``LW``) and
decides whether a given calendar day matches; this module turns the parsed fields into an
indexable sequence of naive wall times, so that "how many matches before w" and "the j-th
match" are arithmetic instead of iteration:

* `PeriodicWall` — the day rule is "every day" or "these weekdays" and every month is allowed:
  matches repeat with a period of one day or one week.
* `CalendarWall` — anything else (month lists, days of month, ``L``, ``#``): matching days are
  tabulated per year, lazily, with cumulative counts (checkpoints), and the times of day are
  the same on every matching day.

Wall times are integer "wall seconds": the naive local date-time read as if it were UTC, in
seconds since 1970-01-01T00:00. Time zones are applied later (`ticks.py`).

Day-of-month / day-of-week combination follows croniter (which Dagster uses), not cronsim's
Debian rule: both fields restrict (OR) unless one of them expands to "every day", where a
full range only counts as "every day" when the other field's text contains ``*``.
"""

from __future__ import annotations

import bisect
import calendar
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from cronsim import CronSim, CronSimError

DAY = 86400
WEEK = 7 * DAY
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# 1970-01-04 was a Sunday (cron weekday 0).
_SUNDAY_PHASE = 3 * DAY
_BASE_YEAR = 1899
_LAST_YEAR = 9999

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


class BeyondRange(Exception):
    """A match past the supported calendar (year 9999) was asked for."""


class CronError(ValueError):
    """The expression is not a cron schedule we accept; the message says why."""


class WallModel(Protocol):
    def index(self, wall: int) -> int:
        """Number of matches strictly before `wall` (relative to a fixed origin; may be negative)."""
        ...

    def at(self, j: int) -> int:
        """The match whose index is `j` (so ``index(at(j)) == j``)."""
        ...

    def iter_from(self, j: int) -> Iterator[int]:
        """Matches `j`, `j+1`, ... in order."""
        ...


class PeriodicWall:
    """Matches at ``phase + q*period + offsets[k]`` for every integer q."""

    def __init__(self, period: int, phase: int, offsets: tuple[int, ...]) -> None:
        self.period = period
        self.phase = phase
        self.offsets = offsets
        self.per_period = len(offsets)

    def index(self, wall: int) -> int:
        q, r = divmod(wall - self.phase, self.period)
        return q * self.per_period + bisect.bisect_left(self.offsets, r)

    def at(self, j: int) -> int:
        q, k = divmod(j, self.per_period)
        return self.phase + q * self.period + self.offsets[k]

    def iter_from(self, j: int) -> Iterator[int]:
        q, k = divmod(j, self.per_period)
        offsets = self.offsets
        per = self.per_period
        base = self.phase + q * self.period
        period = self.period
        while True:
            yield base + offsets[k]
            k += 1
            if k == per:
                k = 0
                base += period


class CalendarWall:
    """Matches at every time of day in `times` on every day the day predicate accepts.

    Matching days are tabulated per year from 1899 on demand (a list of ordinals per year and the
    cumulative count at each year start), so an index is one bisect over years plus one within
    a year. Tables are shared by every spec using the same expression.
    """

    def __init__(self, times: tuple[int, ...], year_days: Callable[[int], list[int]]) -> None:
        self.times = times
        self.per_day = len(times)
        self._year_days = year_days
        self._years: list[list[int]] = []
        self._cum: list[int] = [0]  # _cum[k] = matching days before Jan 1 of _BASE_YEAR + k
        self._lock = threading.Lock()

    def _extend_to(self, year: int) -> None:
        if year - _BASE_YEAR < len(self._years):
            return
        with self._lock:
            while len(self._years) <= year - _BASE_YEAR:
                days = self._year_days(_BASE_YEAR + len(self._years))
                self._years.append(days)
                self._cum.append(self._cum[-1] + len(days))

    def _day_index(self, ordinal: int) -> tuple[int, bool]:
        """(matching days before `ordinal`, whether `ordinal` itself matches)."""
        if ordinal < date(_BASE_YEAR, 1, 1).toordinal():
            return 0, False
        if ordinal > date(_LAST_YEAR, 12, 31).toordinal():
            self._extend_to(_LAST_YEAR)
            return self._cum[-1], False
        year = date.fromordinal(ordinal).year
        self._extend_to(year)
        days = self._years[year - _BASE_YEAR]
        pos = bisect.bisect_left(days, ordinal)
        return self._cum[year - _BASE_YEAR] + pos, pos < len(days) and days[pos] == ordinal

    def _day_at(self, q: int) -> int:
        if q < 0:
            raise BeyondRange("before the supported calendar")
        while self._cum[-1] <= q:
            if _BASE_YEAR + len(self._years) > _LAST_YEAR:
                raise BeyondRange("past year 9999")
            self._extend_to(_BASE_YEAR + len(self._years))
        k = bisect.bisect_right(self._cum, q) - 1
        return self._years[k][q - self._cum[k]]

    def index(self, wall: int) -> int:
        day, second = divmod(wall, DAY)
        before, matches = self._day_index(day + EPOCH_ORDINAL)
        j = before * self.per_day
        if matches:
            j += bisect.bisect_left(self.times, second)
        return j

    def at(self, j: int) -> int:
        q, k = divmod(j, self.per_day)
        return (self._day_at(q) - EPOCH_ORDINAL) * DAY + self.times[k]

    def iter_from(self, j: int) -> Iterator[int]:
        q, k = divmod(j, self.per_day)
        times = self.times
        while True:
            base = (self._day_at(q) - EPOCH_ORDINAL) * DAY
            while k < self.per_day:
                yield base + times[k]
                k += 1
            k = 0
            q += 1


@dataclass(frozen=True, eq=False)
class CronRule:
    """A parsed 5-field cron expression."""

    expression: str  # normalized: single spaces, macros expanded
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    times_of_day: tuple[int, ...]  # seconds after midnight, sorted
    repeats_every_hour: bool  # Dagster: hour field expands to "*" -> DST rule "every occurrence"
    wall: WallModel

    def count(self, wall_lo: int, wall_hi: int) -> int:
        return self.wall.index(wall_hi) - self.wall.index(wall_lo) if wall_hi > wall_lo else 0

    def matches(self, wall: int) -> bool:
        return self.wall.index(wall + 1) - self.wall.index(wall) == 1


def normalize_cron(expression: str) -> str:
    text = " ".join(expression.split())
    return _MACROS.get(text.lower(), text)


@functools.lru_cache(maxsize=512)
def parse_cron(expression: str) -> CronRule:
    """Parse and classify a cron expression; raises CronError with a readable reason."""
    text = normalize_cron(expression)
    parts = text.split(" ")
    if not text or len(parts) != 5:
        raise CronError(
            "expected 5 fields (minute hour day-of-month month day-of-week), e.g. '0 0 * * *'"
            f"; got {len(parts) if text else 0}"
        )
    try:
        sim = CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise CronError(f"{exc} in {text!r}") from None
    except (ValueError, IndexError) as exc:  # defensive: malformed input cronsim did not foresee
        raise CronError(f"cannot parse {text!r}: {exc}") from None

    dom_text, dow_text = parts[2], parts[4]
    minutes = tuple(sorted(sim.minutes))
    hours = tuple(sorted(sim.hours))
    months = set(sim.months)
    dom_items = set(sim.days)
    dow_items = set(sim.weekdays)
    plain_dom = all(isinstance(d, int) and d > 0 for d in dom_items)
    plain_dow = all(isinstance(d, int) for d in dow_items)
    dom_full = plain_dom and dom_items >= set(range(1, 32))
    dow_full = plain_dow and {int(d) % 7 for d in dow_items if isinstance(d, int)} >= set(range(7))
    # croniter: a field is "*" when written so, or when it covers everything and the other
    # field's text contains a '*'; OR-combination only when neither field is "*".
    dom_star = dom_text == "*" or (dom_full and "*" in dow_text)
    dow_star = dow_text == "*" or (dow_full and "*" in dom_text)
    day_and = dom_star or dow_star

    def match_day(d: date) -> bool:
        if day_and:
            return bool(sim.match_dom(d)) and bool(sim.match_dow(d))
        return bool(sim.match_dom(d)) or bool(sim.match_dow(d))

    times = tuple(sorted(h * 3600 + m * 60 for h in hours for m in minutes))
    all_months = months >= set(range(1, 13))
    every_day = (dom_full and dow_full) if day_and else (dom_full or dow_full)
    wall: WallModel
    if all_months and every_day:
        wall = PeriodicWall(DAY, 0, times)
    elif all_months and day_and and dom_full and plain_dow:
        weekdays = sorted({int(d) % 7 for d in dow_items if isinstance(d, int)})
        offsets = tuple(sorted(wd * DAY + t for wd in weekdays for t in times))
        wall = PeriodicWall(WEEK, _SUNDAY_PHASE, offsets)
    else:
        # Whether a day matches depends only on its month, day and weekday, so a year's pattern
        # (days after Jan 1) is fixed by (leap year, weekday of Jan 1): 14 patterns in all.
        patterns: dict[tuple[bool, int], tuple[int, ...]] = {}

        def year_days(year: int) -> list[int]:
            jan1 = date(year, 1, 1)
            first = jan1.toordinal()
            key = (calendar.isleap(year), jan1.weekday())
            pattern = patterns.get(key)
            if pattern is None:
                pattern = tuple(
                    n
                    for n in range(366 if key[0] else 365)
                    if (day := date.fromordinal(first + n)).month in months and match_day(day)
                )
                patterns[key] = pattern
            return [first + n for n in pattern]

        wall = CalendarWall(times, year_days)
        # Every (leap, weekday) combination occurs in 2000-2027.
        if not any(year_days(year) for year in range(2000, 2028)):
            raise CronError(f"{text!r} never fires")

    return CronRule(
        expression=text,
        minutes=minutes,
        hours=hours,
        times_of_day=times,
        repeats_every_hour=set(hours) >= set(range(24)),
        wall=wall,
    )
