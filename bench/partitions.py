"""Partition domain benchmarks: `python -m bench.partitions` prints the results as JSON.

* enumerate 100,000 hourly keys in America/New_York (goal <= 0.5 s);
* count + one page of 1,000 keys from the end of a 1,000,000-key hourly America/New_York spec
  (goal <= 50 ms), measured cold (process caches for the zone and the cron cleared; spec creation
  and its validation included) and warm (a new spec, caches kept — what a server sees after the
  first request for that zone and cron);
* validate one hourly key (goal <= 20 us): median over 20,000 distinct keys.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta

from server.domain.partitions import TimeWindowSpec
from server.domain.partitions.cron import parse_cron
from server.domain.partitions.ticks import get_schedule
from server.domain.partitions.time_window import _create_cached
from server.domain.partitions.zones import get_zone

NY = "America/New_York"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _entry(name: str, value: float, unit: str, goal: float) -> dict[str, object]:
    return {"name": name, "value": round(value, 3), "unit": unit, "goal": goal, "goal_met": value <= goal}


def _clear_caches() -> None:
    _create_cached.cache_clear()
    get_schedule.cache_clear()
    get_zone.cache_clear()
    parse_cron.cache_clear()


def bench_enumerate() -> float:
    spec = TimeWindowSpec.create(schedule_type="HOURLY", start="2012-01-01-00:00", timezone=NY)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        keys = spec.keys_page(0, 100_000, NOW)
        best = min(best, time.perf_counter() - started)
        assert len(keys) == 100_000
    return best


def bench_last_page(cold: bool, jitter: int = 0) -> float:
    """`jitter` seconds added to now (same keys) so no per-now memo answers the count."""
    start = (NOW - timedelta(hours=1_000_000)).isoformat()
    now = NOW + timedelta(seconds=jitter)
    if cold:
        _clear_caches()
    started = time.perf_counter()
    spec = TimeWindowSpec.create(schedule_type="HOURLY", start=start, timezone=NY)
    if not cold:
        started = time.perf_counter()
    total = spec.count(now)
    page = spec.keys_page(total - 1_000, 1_000, now)
    elapsed = time.perf_counter() - started
    assert total == 1_000_000 and len(page) == 1_000 and page[-1] == "2024-12-31-18:00"
    return elapsed


def bench_validate() -> float:
    spec = TimeWindowSpec.create(schedule_type="HOURLY", start="2015-01-01-00:00", timezone=NY)
    keys = spec.keys_page(0, 20_000, NOW)
    timings = []
    for key in keys:
        started = time.perf_counter()
        spec.validate_key(key, NOW)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def run() -> list[dict[str, object]]:
    cold = bench_last_page(cold=True)  # first, while nothing is cached
    warm = min(bench_last_page(cold=False, jitter=k + 1) for k in range(5))
    return [
        _entry("partitions.enumerate_100k_hourly_new_york", bench_enumerate(), "s", 0.5),
        _entry("partitions.count_and_last_page_of_1m_hourly_cold", cold * 1e3, "ms", 50.0),
        _entry("partitions.count_and_last_page_of_1m_hourly_warm", warm * 1e3, "ms", 50.0),
        _entry("partitions.validate_hourly_key_median", bench_validate() * 1e6, "us", 20.0),
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
