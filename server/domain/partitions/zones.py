"""IANA time zones as a list of offset-stable stretches.

zoneinfo (with the tzdata package as fallback) is the only source of zone data; this module
only *discovers* where a zone's UTC offset changes, by probing `utcoffset()` every two days and
bisecting to the second where two probes disagree. Between two such transitions the mapping
between an instant and its wall time is a fixed offset, which is what lets tick arithmetic
skip over long stretches instead of walking them tick by tick.

A two-day probe would miss an offset change undone within two days; tzdata has no such
episode (checked against the TZif transition list of every zone, 1900-2037; Brazil's one-week
DST of October 2000 and Freetown's four-day changes of 1939 are why the step is not a week).

Instants are integer seconds since the Unix epoch. The supported universe is
[MIN_INSTANT, MAX_INSTANT): transitions before 1900 are ignored (the zone's offset at
MIN_INSTANT is taken to hold before it), transitions are discovered lazily going forward.
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
import zoneinfo
from datetime import UTC, datetime, tzinfo

MIN_INSTANT = int(datetime(1899, 12, 25, tzinfo=UTC).timestamp())
MAX_INSTANT = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())

_PROBE_STEP = 2 * 86400
_CHUNK = 20 * 366 * 86400


# Files some systems keep beside the zones: they alias the host's zone or hold POSIX defaults.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*\Z")


@functools.lru_cache(maxsize=1024)
def zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone name we accept, or None."""
    unknown = f"unknown IANA time zone {name!r} (expected a name such as 'UTC' or 'America/New_York')"
    if name == "UTC":
        return None
    if name in _NOT_ZONES or name.startswith(("posix/", "right/")) or not _ZONE_NAME.match(name):
        return unknown
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return unknown
    return None


class Zone:
    """Offset-stable stretches of one zone. Stretch i covers [start(i), end(i)) with offset(i).

    Stretch 0 starts at MIN_INSTANT; stretch i+1 starts at the i-th transition. Transitions are
    discovered on demand, so the last known stretch is open-ended until the next one is found.
    Instances are shared between threads (see `get_zone`); discovery appends under a lock and
    never changes what was already published, so readers need no lock.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.tzinfo: tzinfo = zoneinfo.ZoneInfo(name)
        self.fixed = name == "UTC"
        self._lock = threading.Lock()
        # _transitions[i] is where stretch i+1 starts; _offsets[i] is stretch i's offset.
        self._transitions: list[int] = []
        self._offsets: list[int] = [self._offset_at(MIN_INSTANT)]
        self._probed_to = MIN_INSTANT
        if self.fixed:
            self._probed_to = MAX_INSTANT

    def _offset_at(self, instant: int) -> int:
        offset = datetime.fromtimestamp(instant, self.tzinfo).utcoffset()
        assert offset is not None
        return int(offset.total_seconds())

    def _probe(self, until: int) -> None:
        until = min(until, MAX_INSTANT)
        fromtimestamp = datetime.fromtimestamp
        tz = self.tzinfo
        with self._lock:
            t = self._probed_to
            current = fromtimestamp(t, tz).utcoffset()
            while t < until:
                t2 = min(t + _PROBE_STEP, MAX_INSTANT)
                if fromtimestamp(t2, tz).utcoffset() == current:
                    t = t2
                    continue
                lo, hi = t, t2  # offset(lo) == current != offset(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if fromtimestamp(mid, tz).utcoffset() == current:
                        lo = mid
                    else:
                        hi = mid
                current = fromtimestamp(hi, tz).utcoffset()
                self._offsets.append(self._offset_at(hi))
                self._transitions.append(hi)
                t = hi  # another change may follow before t2
            self._probed_to = max(self._probed_to, t)

    def _ensure(self, instant: int) -> None:
        if instant >= self._probed_to and self._probed_to < MAX_INSTANT:
            self._probe(max(instant + _PROBE_STEP, self._probed_to + _CHUNK))

    def stretch_index(self, instant: int) -> int:
        """Index of the stretch containing `instant` (clamped to the supported universe)."""
        self._ensure(instant)
        return bisect.bisect_right(self._transitions, instant)

    @property
    def probed_to(self) -> int:
        """Every transition before this instant is known."""
        return self._probed_to

    def stretch_count(self) -> int:
        """Stretches known so far (the last one is open-ended until the next transition is found)."""
        return len(self._transitions) + 1  # _transitions is appended after _offsets

    def start(self, index: int) -> int:
        return MIN_INSTANT if index == 0 else self._transitions[index - 1]

    def offset(self, index: int) -> int:
        return self._offsets[index]

    def transitions_between(self, lo: int, hi: int) -> list[int]:
        """Transition instants in [lo, hi)."""
        self._ensure(hi)
        return self._transitions[
            bisect.bisect_left(self._transitions, lo) : bisect.bisect_left(self._transitions, hi)
        ]


@functools.lru_cache(maxsize=256)
def get_zone(name: str) -> Zone:
    """The shared Zone for a valid IANA name (validate with `zone_problem` first)."""
    return Zone(name)
