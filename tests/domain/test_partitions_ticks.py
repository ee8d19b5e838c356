"""The tick arithmetic against a slow, obviously-correct reference of the DST rules.

The reference walks every naive wall-time match of the cron (cronsim on naive datetimes) and
resolves it with zoneinfo: a unique wall time is one tick; a repeated one is two ticks under
the every-occurrence rule (hour field "*") and its second occurrence otherwise; a skipped one
is no tick under the every-occurrence rule and the gap's end (the transition instant) otherwise.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from server.domain.partitions.cron import parse_cron
from server.domain.partitions.ticks import get_schedule
from server.domain.partitions.zones import get_zone

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
    "Africa/Casablanca",
    "Europe/Moscow",
    "Pacific/Apia",
]
CRONS = [
    "0 * * * *",
    "30 * * * *",
    "*/15 * * * *",
    "0 */6 * * *",
    "30 2 * * *",
    "30 1 * * *",
    "0 0 * * *",
    "45 23 * * *",
    "15 2 * * 0",
    "0 3 1 * *",
    "*/20 1-3 * * *",
    "0 9 * * 1-5",
    "0 0 L * *",
    "0 12 * * 5#2",
]


def _offset(zone: ZoneInfo, instant: float) -> timedelta:
    offset = datetime.fromtimestamp(instant, zone).utcoffset()
    assert offset is not None
    return offset


def _transition_between(zone: ZoneInfo, lo: int, hi: int) -> int:
    """First instant in (lo, hi] whose offset differs from lo's."""
    base = _offset(zone, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(zone, mid) == base:
            lo = mid
        else:
            hi = mid
    return hi


def reference_ticks(cron: str, zone_name: str, lo: int, hi: int) -> list[int]:
    zone = ZoneInfo(zone_name)
    repeat = parse_cron(cron).repeats_every_hour
    wall_lo = datetime.fromtimestamp(lo, zone).replace(tzinfo=None) - timedelta(days=2)
    wall_hi = datetime.fromtimestamp(hi, zone).replace(tzinfo=None) + timedelta(days=2)
    ticks: set[int] = set()
    for wall in CronSim(cron, wall_lo - timedelta(seconds=1)):
        if wall > wall_hi:
            break
        first = int(wall.replace(tzinfo=zone, fold=0).timestamp())
        second = int(wall.replace(tzinfo=zone, fold=1).timestamp())
        exists_first = datetime.fromtimestamp(first, zone).replace(tzinfo=None) == wall
        exists_second = datetime.fromtimestamp(second, zone).replace(tzinfo=None) == wall
        if first == second:
            ticks.add(first)
        elif exists_first and exists_second:  # repeated wall time
            ticks.update({first, second} if repeat else {max(first, second)})
        elif not repeat:  # skipped wall time: fold=0 reads it with the offset before the gap
            ticks.add(_transition_between(zone, min(first, second), max(first, second)))
    return sorted(t for t in ticks if lo <= t < hi)


def _ours(cron: str, zone_name: str, lo: int, hi: int) -> list[int]:
    schedule = get_schedule(cron, zone_name)
    out = []
    for tick, _ in schedule.iter_ticks(schedule.tick_index(lo)):
        if tick >= hi:
            break
        out.append(tick)
    return out


def _windows(zone_name: str) -> list[tuple[int, int]]:
    """Spans of a few days around the zone's offset changes in 2010-2025 (or one plain span)."""
    zone = get_zone(zone_name)
    lo = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp())
    hi = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    transitions = zone.transitions_between(lo, hi)
    picks = (
        transitions[:2] + transitions[len(transitions) // 2 : len(transitions) // 2 + 2] + transitions[-2:]
    )
    if not picks:
        picks = [int(datetime(2024, 3, 10, tzinfo=UTC).timestamp())]
    return [(t - 3 * 86400, t + 3 * 86400) for t in sorted(set(picks))]


@pytest.mark.parametrize("zone_name", ZONES)
@pytest.mark.parametrize("cron", CRONS)
def test_ticks_match_reference_around_transitions(cron: str, zone_name: str) -> None:
    if cron in {"0 3 1 * *", "0 0 L * *", "0 12 * * 5#2"}:  # sparse: look at a longer span
        spans = [
            (
                int(datetime(2023, 1, 1, tzinfo=UTC).timestamp()),
                int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()),
            )
        ]
    else:
        spans = _windows(zone_name)
    for lo, hi in spans:
        assert _ours(cron, zone_name, lo, hi) == reference_ticks(cron, zone_name, lo, hi), (lo, hi)


@pytest.mark.parametrize("zone_name", ["America/New_York", "Australia/Adelaide", "UTC"])
def test_index_and_inverse_agree_with_iteration(zone_name: str) -> None:
    schedule = get_schedule("0 * * * *", zone_name)
    lo = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp())
    n0 = schedule.tick_index(lo)
    ticks = []
    for tick, _ in schedule.iter_ticks(n0):
        ticks.append(tick)
        if len(ticks) == 24 * 300:
            break
    for offset, tick in enumerate(ticks):
        assert schedule.tick_at(n0 + offset) == tick
        assert schedule.tick_index(tick) == n0 + offset
        assert schedule.tick_index(tick + 1) == n0 + offset + 1
        assert schedule.ceil(tick - 1) == tick


def test_far_range_is_arithmetic() -> None:
    """A tick a century away is found without walking to it."""
    schedule = get_schedule("0 * * * *", "America/New_York")
    start = int(datetime(1925, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    count = schedule.tick_index(end) - schedule.tick_index(start)
    assert count == math.ceil((end - start) / 3600)
    assert schedule.tick_at(schedule.tick_index(end)) == end


def test_concurrent_first_use_builds_consistent_checkpoints() -> None:
    """Threads racing to extend a fresh zone and schedule see the same ticks as one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from server.domain.partitions.ticks import TickSchedule
    from server.domain.partitions.zones import Zone

    reference = get_schedule("30 1 * * *", "America/New_York")
    fresh = TickSchedule(parse_cron("30 1 * * *"), Zone("America/New_York"))
    instants = [int(datetime(1950 + 3 * k, 11, 5, tzinfo=UTC).timestamp()) for k in range(25)]

    def probe(instant: int) -> tuple[int, int]:
        n = fresh.tick_index(instant)
        return n - fresh.tick_index(instants[0]), fresh.tick_at(n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(probe, instants * 4))
    expected = [
        (reference.tick_index(t) - reference.tick_index(instants[0]), reference.ceil(t)) for t in instants
    ] * 4
    assert got == expected
