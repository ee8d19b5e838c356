"""Schedules in the domain: ticks between two instants for a cron in a zone (DST gap and overlap),
defaults, registration checks and catch-up selection."""

from __future__ import annotations

from datetime import datetime

import pytest

from server.domain import schedules as domain
from server.domain.partitions import StaticSpec, TimeWindowSpec
from storage.models import from_micros, micros


def us(text: str) -> int:
    return micros(datetime.fromisoformat(text))


def utc(ticks: list[int]) -> list[str]:
    return [from_micros(tick).strftime("%Y-%m-%dT%H:%MZ") for tick in ticks]


NEW_YORK = "America/New_York"


def test_a_daily_tick_in_the_spring_gap_moves_to_the_gap_end() -> None:
    ticks = domain.ticks_between("30 2 * * *", NEW_YORK, us("2024-03-08T00:00Z"), us("2024-03-12T00:00Z"))
    assert utc(ticks) == [
        "2024-03-08T07:30Z",  # 02:30 EST
        "2024-03-09T07:30Z",
        "2024-03-10T07:00Z",  # 02:30 does not exist: 03:00 EDT
        "2024-03-11T06:30Z",  # 02:30 EDT
    ]


def test_hourly_ticks_repeat_the_autumn_hour_and_a_daily_tick_fires_at_its_second_occurrence() -> None:
    hourly = domain.ticks_between("0 * * * *", NEW_YORK, us("2024-11-03T03:30Z"), us("2024-11-03T08:00Z"))
    assert utc(hourly) == [
        "2024-11-03T04:00Z",  # 00:00 EDT
        "2024-11-03T05:00Z",  # 01:00 EDT
        "2024-11-03T06:00Z",  # 01:00 EST
        "2024-11-03T07:00Z",  # 02:00 EST
        "2024-11-03T08:00Z",
    ]
    daily = domain.ticks_between("30 1 * * *", NEW_YORK, us("2024-11-02T00:00Z"), us("2024-11-04T00:00Z"))
    assert utc(daily) == ["2024-11-02T05:30Z", "2024-11-03T06:30Z"]  # 01:30 EDT, then 01:30 EST


def test_the_bounds_are_exclusive_then_inclusive() -> None:
    tick = us("2024-01-01T01:00Z")
    assert domain.ticks_between("0 * * * *", "UTC", tick - 1, tick) == [tick]
    assert domain.ticks_between("0 * * * *", "UTC", tick, tick + 3_599_000_000) == []
    assert domain.next_tick("0 * * * *", "UTC", tick - 1) == tick
    assert domain.next_tick("0 * * * *", "UTC", tick) == us("2024-01-01T02:00Z")


def test_a_long_outage_is_counted_without_listing_every_tick() -> None:
    total, newest = domain.due_ticks("* * * * *", "UTC", us("2020-01-01T00:00Z"), us("2024-01-01T00:00Z"), 3)
    assert total == 1461 * 24 * 60
    assert utc(newest) == ["2023-12-31T23:58Z", "2023-12-31T23:59Z", "2024-01-01T00:00Z"]


def hourly_ticks(count: int) -> list[int]:
    return [us("2024-01-01T00:00Z") + hour * 3_600_000_000 for hour in range(1, count + 1)]


def schedule(catch_up: str, max_catch_up_ticks: int = 100) -> domain.EffectiveSchedule:
    return domain.EffectiveSchedule("0 * * * *", "UTC", domain.LATEST_WINDOW, catch_up, max_catch_up_ticks)


def test_one_due_tick_fires_under_either_policy() -> None:
    (tick,) = hourly_ticks(1)
    for policy in domain.CATCH_UP_POLICIES:
        assert domain.plan(schedule(policy), 1, [tick]) == [domain.PlannedTick(tick, True)]
    assert domain.plan(schedule(domain.LATEST_ONLY), 0, []) == []


def test_latest_only_fires_the_newest_and_skips_the_rest_oldest_first() -> None:
    ticks = hourly_ticks(5)
    planned = domain.plan(schedule(domain.LATEST_ONLY), 5, ticks)
    assert [p.tick_us for p in planned] == ticks
    assert [p.fire for p in planned] == [False, False, False, False, True]
    assert all("LATEST_ONLY" in p.reason for p in planned[:-1])


def test_all_missed_fires_the_newest_max_catch_up_ticks_oldest_first() -> None:
    ticks = hourly_ticks(5)
    planned = domain.plan(schedule(domain.ALL_MISSED, 3), 5, ticks)
    assert [p.fire for p in planned] == [False, False, True, True, True]
    assert [p.tick_us for p in planned] == ticks
    assert "max_catch_up_ticks = 3" in planned[0].reason
    every = domain.plan(schedule(domain.ALL_MISSED, 10), 5, ticks)
    assert all(p.fire for p in every)


def test_skipped_ticks_beyond_the_record_limit_are_counted_in_the_oldest_record() -> None:
    effective = schedule(domain.LATEST_ONLY)
    total = domain.MAX_RECORDED_SKIPS + 50
    ticks = hourly_ticks(domain.keep_for(effective))
    planned = domain.plan(effective, total, ticks)
    assert len(planned) == domain.MAX_RECORDED_SKIPS + 1
    assert "49 earlier missed ticks" in planned[0].reason
    assert planned[-1].fire and planned[-1].tick_us == ticks[-1]


DAILY_NY = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", timezone=NEW_YORK)
REGIONS = StaticSpec.create(["eu", "us"])


def test_defaults_come_from_a_time_window_definition() -> None:
    effective = domain.resolve(domain.ScheduleSettings(enabled=True), DAILY_NY)
    assert effective == domain.EffectiveSchedule(
        "0 0 * * *", NEW_YORK, domain.LATEST_WINDOW, domain.LATEST_ONLY, domain.DEFAULT_MAX_CATCH_UP_TICKS
    )
    own = domain.resolve(
        domain.ScheduleSettings(
            enabled=True, cron_schedule="@hourly", timezone="UTC", target=domain.MISSING_KEYS
        ),
        DAILY_NY,
    )
    assert own is not None and (own.cron, own.timezone, own.target) == (
        "0 * * * *",
        "UTC",
        domain.MISSING_KEYS,
    )
    plain = domain.resolve(domain.ScheduleSettings(enabled=True, cron_schedule="0 6 * * *"), None)
    assert plain is not None and (plain.timezone, plain.target) == ("UTC", domain.ALL_KEYS)
    assert domain.resolve(domain.ScheduleSettings(enabled=False, cron_schedule="0 6 * * *"), None) is None
    assert domain.resolve(None, DAILY_NY) is None


@pytest.mark.parametrize(
    ("settings", "fields"),
    [
        (domain.ScheduleSettings(enabled=True), ["s.cron_schedule"]),
        (domain.ScheduleSettings(enabled=False), []),
        (domain.ScheduleSettings(enabled=True, cron_schedule="0 25 * * *"), ["s.cron_schedule"]),
        (
            domain.ScheduleSettings(enabled=True, cron_schedule="0 0 30 2 *"),
            ["s.cron_schedule"],
        ),  # never fires
        (domain.ScheduleSettings(cron_schedule="0 * * * *", timezone="Europe/Atlantis"), ["s.timezone"]),
        (domain.ScheduleSettings(cron_schedule="0 * * * *", target=domain.LATEST_WINDOW), ["s.target"]),
        (domain.ScheduleSettings(cron_schedule="0 * * * *", max_catch_up_ticks=-1), ["s.max_catch_up_ticks"]),
        (
            domain.ScheduleSettings(
                cron_schedule="0 * * * *", max_catch_up_ticks=domain.MAX_CATCH_UP_TICKS_LIMIT + 1
            ),
            ["s.max_catch_up_ticks"],
        ),
        (domain.ScheduleSettings(enabled=True, cron_schedule="0 * * * *", target=domain.MISSING_KEYS), []),
    ],
)
def test_registration_checks_without_a_time_window(
    settings: domain.ScheduleSettings, fields: list[str]
) -> None:
    for spec in (None, REGIONS):
        assert [v.field for v in domain.settings_violations(settings, spec, "s")] == fields


def test_a_time_window_definition_allows_latest_window_and_no_cron() -> None:
    settings = domain.ScheduleSettings(enabled=True, target=domain.LATEST_WINDOW, timezone="UTC")
    assert domain.settings_violations(settings, DAILY_NY, "s") == []
