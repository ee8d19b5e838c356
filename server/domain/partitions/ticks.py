"""Cron ticks as instants in an IANA zone: the DST rules live here.

A tick is an instant (integer seconds since the epoch). Which instants are ticks follows
Dagster's `cron_string_iterator` (dagster/_utils/schedules.py), stated as two rules keyed on
`CronRule.repeats_every_hour` (Dagster's `cron_string_repeats_every_hour`: the hour field
expands to "*"):

* **every-occurrence rule** (hour field "*", e.g. ``0 * * * *``, ``*/15 * * * *``): a tick is
  every instant whose local wall time matches the cron. A wall time skipped by a gap yields no
  tick; a wall time repeated by an overlap yields two (the second one's key gets the UTC offset
  appended — see `time_window.py`).
* **single-occurrence rule** (any other cron, e.g. daily ``30 2 * * *``): each matching wall time
  yields exactly one tick. A repeated wall time fires at its *second* occurrence; a wall time
  inside a gap fires at the end of the gap (the transition instant), and several matches inside
  one gap fire once.

Dagster faults we do not copy (its results differ only in these cases):

* it applies the gap/overlap adjustments only when the wall time falls in local hours 1-3, so
  crons firing inside a midnight transition (America/Santiago, America/Havana, Atlantic/Azores,
  Africa/Cairo, Asia/Beirut) get the first occurrence / an unadjusted skipped time;
* it moves a skipped tick by `dst()` from the top of the hour, which is wrong for transitions
  not on the hour (Pacific/Chatham 02:45) and for zones with negative DST (Europe/Dublin,
  Africa/Casablanca) — we always use the transition instant;
* hourly ticks use UTC minutes unless the zone's offset is fractional *today*, which makes
  Australia/Lord_Howe's hourly keys drift to ``:30`` (and would shift historical fractional
  offsets); we use local minutes everywhere.

Arithmetic: the zone is split into offset-stable stretches (`zones.Zone`). Inside stretch i
(instants [A, B), offset o) the ticks are the cron's wall matches in a wall interval
[lo, hi) shifted by -o, plus possibly one gap tick at A. Per stretch we keep the wall index of
lo and, once the stretch's end is known, its tick count and the cumulative count before it —
the checkpoints that make `tick_index` and `tick_at` O(log stretches) instead of O(ticks).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Iterator

from server.domain.partitions.cron import BeyondRange, CronRule, parse_cron
from server.domain.partitions.zones import MAX_INSTANT, MIN_INSTANT, Zone, get_zone

__all__ = ["BeyondRange", "TickSchedule", "get_schedule"]


class TickSchedule:
    """The ticks of one cron expression in one zone. Shared by all specs using both (thread-safe).

    `tick_index(t)` counts ticks in [MIN_INSTANT, t); `tick_at(n)` is the inverse. Only
    differences of indices mean anything to callers.
    """

    def __init__(self, rule: CronRule, zone: Zone) -> None:
        self.rule = rule
        self.zone = zone
        self.repeat = rule.repeats_every_hour
        self._wall = rule.wall
        self._lock = threading.RLock()
        # Per-stretch data, filled in order ("static" part as soon as the stretch is known).
        self._start: list[int] = []
        self._offset: list[int] = []
        self._lo_idx: list[int] = []  # wall index of the first wall time the stretch may use
        self._bonus: list[int] = []  # 1 when a gap tick sits at the stretch start
        self._amb_end: list[int] = []  # wall times below this are second occurrences
        # Closing part, known once the next stretch is known.
        self._hi_idx: list[int] = []
        self._cum: list[int] = [0]  # _cum[i] = ticks before stretch i, for closed stretches + 1
        self._add_static(0)

    # -- building checkpoints ------------------------------------------------------------
    def _add_static(self, i: int) -> None:
        zone = self.zone
        start = zone.start(i)
        offset = zone.offset(i)
        lo = start + offset
        bonus = 0
        amb_end = lo
        if i > 0:
            previous = zone.offset(i - 1)
            if self.repeat:
                if previous > offset:
                    amb_end = start + previous
            elif previous < offset:
                wall = self._wall
                gap_has_match = wall.index(start + offset) - wall.index(start + previous) > 0
                if gap_has_match and not self.rule.matches(start + offset):
                    bonus = 1
        self._offset.append(offset)
        self._lo_idx.append(self._wall.index(lo))
        self._bonus.append(bonus)
        self._amb_end.append(amb_end)
        self._start.append(start)  # last: len(_start) is the number of stretches with data

    def _close(self, i: int) -> None:
        """Record stretch i's end; the zone must already know stretch i+1."""
        with self._lock:
            if i < len(self._hi_idx):
                return
            assert i == len(self._hi_idx)
            end = self.zone.start(i + 1)
            offset = self._offset[i]
            next_offset = self.zone.offset(i + 1)
            hi = end + (offset if self.repeat else min(offset, next_offset))
            hi_idx = max(self._wall.index(hi), self._lo_idx[i])
            # Readers use len(_hi_idx) as the number of closed stretches: publish it last.
            if len(self._start) == i + 1:
                self._add_static(i + 1)
            self._cum.append(self._cum[i] + self._bonus[i] + hi_idx - self._lo_idx[i])
            self._hi_idx.append(hi_idx)

    def _close_through(self, i: int) -> None:
        while len(self._hi_idx) < i:
            self._close(len(self._hi_idx))

    # -- queries ---------------------------------------------------------------------------
    def tick_index(self, instant: int) -> int:
        """Number of ticks in [MIN_INSTANT, instant)."""
        instant = min(max(instant, MIN_INSTANT), MAX_INSTANT)
        i = self.zone.stretch_index(instant)
        # Close stretch i too when its end is known: the single-occurrence rule cuts its tail.
        self._close_through(min(i + 1, self.zone.stretch_count() - 1))
        count = self._cum[i]
        if instant > self._start[i]:
            count += self._bonus[i]
        wall = instant + self._offset[i]
        j = self._wall.index(wall)
        if i < len(self._hi_idx):
            j = min(j, self._hi_idx[i])
        return count + max(0, j - self._lo_idx[i])

    def _nth_in(self, i: int, m: int) -> int:
        if self._bonus[i]:
            if m == 0:
                return self._start[i]
            m -= 1
        return self._wall.at(self._lo_idx[i] + m) - self._offset[i]

    def _locate(self, n: int) -> tuple[int, int]:
        """(stretch, index within the stretch) of tick n."""
        if n < 0:
            raise BeyondRange("before the supported range")
        zone = self.zone
        while True:
            closed = len(self._hi_idx)
            if n < self._cum[closed]:
                i = bisect.bisect_right(self._cum, n) - 1
                return i, n - self._cum[i]
            if zone.stretch_count() > closed + 1:
                self._close(closed)
                continue
            m = n - self._cum[closed]
            t = self._nth_in(closed, m)
            if t >= MAX_INSTANT:
                raise BeyondRange("past the supported range")
            zone.stretch_index(t)  # discovers transitions up to (past) t
            if zone.stretch_count() == closed + 1:
                return closed, m

    def tick_at(self, n: int) -> int:
        """The tick with index n."""
        i, m = self._locate(n)
        return self._nth_in(i, m)

    def ceil(self, instant: int) -> int:
        """First tick >= instant."""
        return self.tick_at(self.tick_index(instant))

    def is_tick(self, instant: int) -> bool:
        return self.tick_index(instant + 1) - self.tick_index(instant) == 1

    def is_second_occurrence(self, tick: int) -> bool:
        """Whether `tick` is the second occurrence of a repeated wall time (every-occurrence rule)."""
        if not self.repeat:
            return False
        i = self.zone.stretch_index(tick)
        self._close_through(i)
        return tick + self._offset[i] < self._amb_end[i]

    def iter_ticks(self, n: int) -> Iterator[tuple[int, bool]]:
        """(tick, is_second_occurrence) for ticks n, n+1, ... up to the supported range's end."""
        try:
            i, m = self._locate(n)
        except BeyondRange:
            return
        zone = self.zone
        while True:
            self._close_through(min(i + 1, zone.stretch_count() - 1))
            start = self._start[i]
            offset = self._offset[i]
            amb_end = self._amb_end[i]
            if self._bonus[i]:
                if m == 0:
                    yield start, False
                m = max(m - 1, 0)
            j = self._lo_idx[i] + m
            hi_idx = self._hi_idx[i] if i < len(self._hi_idx) else None
            if hi_idx is None or j < hi_idx:
                try:
                    probed_to = zone.probed_to
                    for wall in self._wall.iter_from(j):
                        if hi_idx is None and wall - offset >= probed_to:
                            t = wall - offset
                            if t >= MAX_INSTANT:
                                return
                            zone.stretch_index(t)
                            probed_to = zone.probed_to
                            if zone.stretch_count() > i + 1:
                                self._close(i)
                                hi_idx = self._hi_idx[i]
                        if hi_idx is not None and j >= hi_idx:
                            break
                        yield wall - offset, wall < amb_end
                        j += 1
                except BeyondRange:
                    return
            i += 1
            m = 0


@functools.lru_cache(maxsize=256)
def get_schedule(cron_expression: str, zone_name: str) -> TickSchedule:
    """The shared schedule for a (valid) cron expression and zone name."""
    return TickSchedule(parse_cron(cron_expression), get_zone(zone_name))
