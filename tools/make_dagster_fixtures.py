"""Regenerate tests/fixtures/dagster_time_windows.json from Dagster itself.

Not part of the project (nothing imports it, and the project never depends on dagster). Run it
in a throwaway virtualenv outside the repository:

    python3 -m venv /tmp/dagster-venv
    /tmp/dagster-venv/bin/pip install 'dagster==1.13.*'
    /tmp/dagster-venv/bin/python tools/make_dagster_fixtures.py > tests/fixtures/dagster_time_windows.json

Each entry has the same shape as ../shared/fixtures/dagster-time-windows-sample.json (name,
preset, constructor_args, definition, current_time, keys, windows) plus `partita_args`: the
keyword arguments of `TimeWindowSpec.create` that describe the same definition the way a
Partita client would (schedule_type + offsets for presets, the constructor's own start/end
strings), so the tests exercise preset expansion and start/end parsing too.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import dagster  # type: ignore[import-not-found]  # only in the throwaway venv
from dagster import (
    DailyPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

PRESETS: dict[str, tuple[type[Any], str]] = {
    "HourlyPartitionsDefinition": (HourlyPartitionsDefinition, "HOURLY"),
    "DailyPartitionsDefinition": (DailyPartitionsDefinition, "DAILY"),
    "WeeklyPartitionsDefinition": (WeeklyPartitionsDefinition, "WEEKLY"),
    "MonthlyPartitionsDefinition": (MonthlyPartitionsDefinition, "MONTHLY"),
}

NY = "America/New_York"

# (name, preset class name or "TimeWindowPartitionsDefinition", constructor args, current time)
SPECS: list[tuple[str, str, dict[str, Any], str]] = [
    # --- UTC presets with offsets
    (
        "daily_utc_hour3_min15",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "minute_offset": 15, "hour_offset": 3},
        "2024-04-15T03:15:00+00:00",
    ),
    (
        "hourly_utc_min30",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01-00:00", "minute_offset": 30},
        "2024-02-10T12:10:00+00:00",
    ),
    (
        "weekly_utc_wed_0630",
        "WeeklyPartitionsDefinition",
        {"start_date": "2022-06-01", "day_offset": 3, "hour_offset": 6, "minute_offset": 30},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "monthly_utc_day15_noon",
        "MonthlyPartitionsDefinition",
        {"start_date": "2015-01-01", "day_offset": 15, "hour_offset": 12},
        "2025-01-15T11:00:00+00:00",
    ),
    (
        "monthly_utc_day28",
        "MonthlyPartitionsDefinition",
        {"start_date": "2020-01-01", "day_offset": 28},
        "2024-12-31T00:00:00+00:00",
    ),
    # --- America/New_York across the spring gap and the fall overlap
    (
        "hourly_ny_spring_2025_min15",
        "HourlyPartitionsDefinition",
        {
            "start_date": "2025-03-08-00:00",
            "end_date": "2025-03-11-00:00",
            "minute_offset": 15,
            "timezone": NY,
        },
        "2025-06-01T00:00:00+00:00",
    ),
    (
        "hourly_ny_fall_2023_min30",
        "HourlyPartitionsDefinition",
        {
            "start_date": "2023-11-04-00:00",
            "end_date": "2023-11-07-00:00",
            "minute_offset": 30,
            "timezone": NY,
        },
        "2024-01-01T00:00:00+00:00",
    ),
    (
        "daily_ny_2023_2024",
        "DailyPartitionsDefinition",
        {"start_date": "2023-01-01", "timezone": NY},
        "2024-06-30T12:00:00+00:00",
    ),
    (
        "cron_ny_0230_daily_hm",
        "TimeWindowPartitionsDefinition",
        {"cron_schedule": "30 2 * * *", "fmt": "%Y-%m-%d-%H:%M", "start": "2024-01-01-00:00", "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_ny_0130_daily_hm",
        "TimeWindowPartitionsDefinition",
        {"cron_schedule": "30 1 * * *", "fmt": "%Y-%m-%d-%H:%M", "start": "2024-01-01-00:00", "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_ny_preset_0230",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "hour_offset": 2, "minute_offset": 30, "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "weekly_ny_sunday_0230",
        "WeeklyPartitionsDefinition",
        {"start_date": "2023-01-01", "day_offset": 0, "hour_offset": 2, "minute_offset": 30, "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "monthly_ny_day3_0130",
        "MonthlyPartitionsDefinition",
        {"start_date": "2020-01-01", "day_offset": 3, "hour_offset": 1, "minute_offset": 30, "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "monthly_ny_day10_0230",
        "MonthlyPartitionsDefinition",
        {"start_date": "2020-01-01", "day_offset": 10, "hour_offset": 2, "minute_offset": 30, "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    # --- Europe/London, Europe/Berlin
    (
        "hourly_london_spring_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-03-30-00:00", "end_date": "2024-04-01-00:00", "timezone": "Europe/London"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "hourly_london_fall_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-10-26-00:00", "end_date": "2024-10-28-00:00", "timezone": "Europe/London"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_london_0100",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "hour_offset": 1, "timezone": "Europe/London"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_berlin_0230",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "hour_offset": 2, "minute_offset": 30, "timezone": "Europe/Berlin"},
        "2025-01-01T00:00:00+00:00",
    ),
    # --- Australia/Sydney (southern DST)
    (
        "hourly_sydney_apr_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-04-06-00:00", "end_date": "2024-04-08-00:00", "timezone": "Australia/Sydney"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "hourly_sydney_oct_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-10-05-00:00", "end_date": "2024-10-07-00:00", "timezone": "Australia/Sydney"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_sydney_0230",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "hour_offset": 2, "minute_offset": 30, "timezone": "Australia/Sydney"},
        "2025-01-01T00:00:00+00:00",
    ),
    # --- half-hour and 45-minute zones
    (
        "hourly_kolkata",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01-00:00", "timezone": "Asia/Kolkata"},
        "2024-01-15T00:00:00+00:00",
    ),
    (
        "daily_kolkata",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "timezone": "Asia/Kolkata"},
        "2024-12-31T20:00:00+00:00",
    ),
    (
        "hourly_kathmandu_min15",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01-00:00", "minute_offset": 15, "timezone": "Asia/Kathmandu"},
        "2024-01-10T00:00:00+00:00",
    ),
    (
        "cron_15min_kathmandu",
        "TimeWindowPartitionsDefinition",
        {
            "cron_schedule": "*/15 * * * *",
            "fmt": "%Y-%m-%d-%H:%M",
            "start": "2024-01-01-00:00",
            "timezone": "Asia/Kathmandu",
        },
        "2024-01-03T00:00:00+00:00",
    ),
    (
        "hourly_adelaide_apr_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-04-06-00:00", "end_date": "2024-04-08-00:00", "timezone": "Australia/Adelaide"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "hourly_adelaide_oct_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-10-05-00:00", "end_date": "2024-10-07-00:00", "timezone": "Australia/Adelaide"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_adelaide_0230",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "hour_offset": 2, "minute_offset": 30, "timezone": "Australia/Adelaide"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_lord_howe_0215",
        "DailyPartitionsDefinition",
        {
            "start_date": "2024-01-01",
            "hour_offset": 2,
            "minute_offset": 15,
            "timezone": "Australia/Lord_Howe",
        },
        "2025-01-01T00:00:00+00:00",
    ),
    # --- custom crons
    (
        "cron_15min_utc",
        "TimeWindowPartitionsDefinition",
        {"cron_schedule": "*/15 * * * *", "fmt": "%Y-%m-%d-%H:%M", "start": "2024-05-01-00:00"},
        "2024-05-08T06:07:00+00:00",
    ),
    (
        "cron_15min_ny_fall",
        "TimeWindowPartitionsDefinition",
        {
            "cron_schedule": "*/15 * * * *",
            "fmt": "%Y-%m-%d-%H:%M",
            "start": "2024-11-02-00:00",
            "end": "2024-11-05-00:00",
            "timezone": NY,
        },
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_6h_ny",
        "TimeWindowPartitionsDefinition",
        {
            "cron_schedule": "0 */6 * * *",
            "fmt": "%Y-%m-%d-%H:%M",
            "start": "2024-01-01-00:00",
            "timezone": NY,
        },
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_weekdays_9am_ny",
        "TimeWindowPartitionsDefinition",
        {"cron_schedule": "0 9 * * 1-5", "fmt": "%Y-%m-%d", "start": "2023-01-01", "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_twice_daily_ny",
        "TimeWindowPartitionsDefinition",
        {
            "cron_schedule": "0 0,12 * * *",
            "fmt": "%Y-%m-%d-%H:%M",
            "start": "2024-01-01-00:00",
            "timezone": NY,
        },
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_every_30min_1_to_3_ny_fall",
        "TimeWindowPartitionsDefinition",
        {
            "cron_schedule": "*/30 1-3 * * *",
            "fmt": "%Y-%m-%d-%H:%M",
            "start": "2024-11-01-00:00",
            "end": "2024-11-05-00:00",
            "timezone": NY,
        },
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "cron_quarterly_utc",
        "TimeWindowPartitionsDefinition",
        {"cron_schedule": "0 0 1 */3 *", "fmt": "%Y-%m-%d", "start": "2015-01-01"},
        "2025-02-01T00:00:00+00:00",
    ),
    # --- custom fmts
    (
        "daily_ny_fmt_compact",
        "DailyPartitionsDefinition",
        {"start_date": "20240101", "fmt": "%Y%m%d", "timezone": NY},
        "2024-12-01T00:00:00+00:00",
    ),
    (
        "hourly_utc_fmt_T",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01T00", "fmt": "%Y-%m-%dT%H"},
        "2024-02-01T00:00:00+00:00",
    ),
    (
        "hourly_ny_fmt_T_fall",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-11-02T00", "end_date": "2024-11-05T00", "fmt": "%Y-%m-%dT%H", "timezone": NY},
        "2025-01-01T00:00:00+00:00",
    ),
    # --- end and end_offset
    (
        "hourly_utc_end_in_past",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01-00:00", "end_date": "2024-01-05-06:00"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_plus3_capped_by_end",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "end_date": "2024-02-01", "end_offset": 3},
        "2024-01-30T10:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_plus3",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "end_offset": 3},
        "2024-06-15T13:37:00+00:00",
    ),
    (
        "hourly_ny_end_offset_minus2_in_overlap",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-11-01-00:00", "end_offset": -2, "timezone": NY},
        "2024-11-03T06:30:00+00:00",
    ),
    (
        "weekly_utc_end_offset_plus1",
        "WeeklyPartitionsDefinition",
        {"start_date": "2024-01-01", "end_offset": 1},
        "2024-06-05T00:00:00+00:00",
    ),
    (
        "hourly_utc_end_offset_plus1_now_on_tick",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-06-15-00:00", "end_offset": 1},
        "2024-06-15T10:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_plus1_now_before_start",
        "DailyPartitionsDefinition",
        {"start_date": "2024-06-10", "end_offset": 1},
        "2024-06-09T12:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_plus2_now_before_start",
        "DailyPartitionsDefinition",
        {"start_date": "2024-06-10", "end_offset": 2},
        "2024-06-08T12:00:00+00:00",
    ),
    (
        "daily_utc_empty_first_window_open",
        "DailyPartitionsDefinition",
        {"start_date": "2024-06-10"},
        "2024-06-10T12:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_minus3_end_in_future",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "end_date": "2024-03-01", "end_offset": -3},
        "2024-02-15T00:00:00+00:00",
    ),
    (
        "daily_utc_end_offset_minus3_end_in_past",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "end_date": "2024-03-01", "end_offset": -3},
        "2025-01-01T00:00:00+00:00",
    ),
    # --- start given with a UTC offset (Dagster parses fmt + %z and converts)
    (
        "hourly_utc_start_with_offset",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-03-01-00:00+0100"},
        "2024-03-03T00:00:00+00:00",
    ),
    (
        "daily_ny_start_with_offset",
        "DailyPartitionsDefinition",
        {"start_date": "2024-03-01+0000", "timezone": NY},
        "2024-06-01T00:00:00+00:00",
    ),
    (
        "hourly_kolkata_start_with_offset",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-01-01-00:00+0000", "timezone": "Asia/Kolkata"},
        "2024-01-05T00:00:00+00:00",
    ),
    # --- zones whose transitions happen at midnight
    (
        "daily_santiago",
        "DailyPartitionsDefinition",
        {"start_date": "2024-01-01", "timezone": "America/Santiago"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "hourly_santiago_sep_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-09-07-00:00", "end_date": "2024-09-09-00:00", "timezone": "America/Santiago"},
        "2025-01-01T00:00:00+00:00",
    ),
    (
        "hourly_santiago_apr_2024",
        "HourlyPartitionsDefinition",
        {"start_date": "2024-04-06-00:00", "end_date": "2024-04-08-00:00", "timezone": "America/Santiago"},
        "2025-01-01T00:00:00+00:00",
    ),
]


def _partita_args(preset: str, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if preset in PRESETS:
        out["schedule_type"] = PRESETS[preset][1]
        for name in ("minute_offset", "hour_offset", "day_offset"):
            if name in args:
                out[name] = args[name]
        out["start"] = args["start_date"]
        if "end_date" in args:
            out["end"] = args["end_date"]
    else:
        out["cron_schedule"] = args["cron_schedule"]
        out["start"] = args["start"]
        if "end" in args:
            out["end"] = args["end"]
    for name in ("fmt", "timezone", "end_offset"):
        if name in args:
            out[name] = args[name]
    return out


def _build(preset: str, args: dict[str, Any]) -> TimeWindowPartitionsDefinition:
    if preset in PRESETS:
        return PRESETS[preset][0](**args)
    return TimeWindowPartitionsDefinition(**args)


def main() -> None:
    specs = []
    for name, preset, args, now_text in SPECS:
        pd = _build(preset, args)
        now = datetime.fromisoformat(now_text)
        keys = list(pd.get_partition_keys(current_time=now))
        # Windows from the same iteration get_partition_keys walks: time_window_for_partition_key
        # re-parses each key and picks the wrong window when several ticks share a repeated hour.
        iterator = iter(pd._iterate_time_windows(pd.start_timestamp))
        windows = []
        for key in keys:
            window = next(iterator)
            windows.append({"key": key, "start": window.start.isoformat(), "end": window.end.isoformat()})
        specs.append(
            {
                "name": name,
                "preset": preset,
                "constructor_args": args,
                "partita_args": _partita_args(preset, args),
                "definition": {
                    "cron_schedule": pd.cron_schedule,
                    "fmt": pd.fmt,
                    "timezone": pd.timezone,
                    "start": pd.start.isoformat(),
                    "end": pd.end.isoformat() if pd.end else None,
                    "end_offset": pd.end_offset,
                },
                "current_time": now_text,
                "keys": keys,
                "windows": windows,
            }
        )
    json.dump(
        {
            "about": (
                "Partition keys and windows computed by Dagster's TimeWindowPartitionsDefinition "
                "(tools/make_dagster_fixtures.py) at a fixed current_time; each window is [start, end). "
                "'definition' is what the spec resolves to; 'partita_args' are the equivalent "
                "TimeWindowSpec.create arguments."
            ),
            "dagster_version": dagster.__version__,
            "specs": specs,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
