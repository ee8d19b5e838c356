"""TimeWindowSpec: validation (every rejection names its field), membership, ranges, DST keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.domain.errors import InvalidArgument
from server.domain.partitions import TimeWindowSpec

NY = "America/New_York"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


def _reject(**kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as exc:
        TimeWindowSpec.create(**kwargs)
    return _fields(exc)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"start": "2024-01-01"}, "time_window.cron_schedule", "one of cron_schedule or schedule_type"),
        (
            {"cron_schedule": "0 0 * * *", "schedule_type": "DAILY", "start": "2024-01-01"},
            "time_window.cron_schedule",
            "not both",
        ),
        ({"schedule_type": "YEARLY", "start": "2024-01-01"}, "time_window.schedule_type", "HOURLY, DAILY"),
        ({"cron_schedule": "0 0 * *", "start": "2024-01-01"}, "time_window.cron_schedule", "5 fields"),
        ({"cron_schedule": "61 * * * *", "start": "2024-01-01"}, "time_window.cron_schedule", "minute"),
        ({"cron_schedule": "0 0 30 2 *", "start": "2024-01-01"}, "time_window.cron_schedule", "day-of-month"),
        ({"cron_schedule": "0 0 * * * *", "start": "2024-01-01"}, "time_window.cron_schedule", "5 fields"),
        (
            {"cron_schedule": "0 0 * * *", "minute_offset": 5, "start": "2024-01-01"},
            "time_window.minute_offset",
            "only with schedule_type",
        ),
        (
            {"schedule_type": "DAILY", "minute_offset": 60, "start": "2024-01-01"},
            "time_window.minute_offset",
            "0-59",
        ),
        (
            {"schedule_type": "DAILY", "hour_offset": 24, "start": "2024-01-01"},
            "time_window.hour_offset",
            "0-23",
        ),
        (
            {"schedule_type": "HOURLY", "hour_offset": 2, "start": "2024-01-01"},
            "time_window.hour_offset",
            "HOURLY",
        ),
        (
            {"schedule_type": "DAILY", "day_offset": 2, "start": "2024-01-01"},
            "time_window.day_offset",
            "DAILY",
        ),
        (
            {"schedule_type": "WEEKLY", "day_offset": 7, "start": "2024-01-01"},
            "time_window.day_offset",
            "0-6",
        ),
        (
            {"schedule_type": "MONTHLY", "day_offset": 29, "start": "2024-01-01"},
            "time_window.day_offset",
            "1-28",
        ),
        (
            {"schedule_type": "MONTHLY", "day_offset": 31, "start": "2024-01-01"},
            "time_window.day_offset",
            "no day 31",
        ),
        (
            {"schedule_type": "MONTHLY", "day_offset": -1, "start": "2024-01-01"},
            "time_window.day_offset",
            "1-28",
        ),
        (
            {"schedule_type": "DAILY", "timezone": "Mars/Olympus", "start": "2024-01-01"},
            "time_window.timezone",
            "IANA",
        ),
        (
            {"schedule_type": "DAILY", "timezone": "localtime", "start": "2024-01-01"},
            "time_window.timezone",
            "IANA",
        ),
        (
            {"schedule_type": "DAILY", "fmt": "%m/%d", "start": "2024-01-01"},
            "time_window.fmt",
            "four-digit year",
        ),
        (
            {"schedule_type": "DAILY", "fmt": "%Y-%m", "start": "2024-01-01"},
            "time_window.fmt",
            "not precise enough",
        ),
        (
            {"schedule_type": "HOURLY", "fmt": "%Y-%m-%d", "start": "2024-01-01"},
            "time_window.fmt",
            "share keys",
        ),
        (
            {"cron_schedule": "0,30 * * * *", "fmt": "%Y-%m-%d-%H", "start": "2024-01-01"},
            "time_window.fmt",
            "not precise enough",
        ),
        (
            {"schedule_type": "DAILY", "fmt": " %Y-%m-%d", "start": "2024-01-01"},
            "time_window.fmt",
            "whitespace",
        ),
        (
            {"schedule_type": "DAILY", "fmt": "%Y...%m...%d", "start": "2024-01-01"},
            "time_window.fmt",
            "'...'",
        ),
        (
            {"schedule_type": "DAILY", "fmt": "%Y-%m-%d" + "x" * 250, "start": "2024-01-01"},
            "time_window.fmt",
            "255",
        ),
        (
            {"schedule_type": "DAILY", "fmt": "%Y-%m-%d\t", "start": "2024-01-01"},
            "time_window.fmt",
            "control",
        ),
        ({"schedule_type": "DAILY", "start": ""}, "time_window.start", "required"),
        ({"schedule_type": "DAILY", "start": "yesterday"}, "time_window.start", "cannot parse"),
        ({"schedule_type": "DAILY", "start": "1850-01-01"}, "time_window.start", "1900"),
        ({"schedule_type": "DAILY", "start": "2024-01-01", "end": "soon"}, "time_window.end", "cannot parse"),
        (
            {"schedule_type": "DAILY", "start": "2024-01-01", "end": "2023-12-31"},
            "time_window.end",
            "after start",
        ),
        (
            {"schedule_type": "DAILY", "start": "2024-01-01", "end": "2024-01-01"},
            "time_window.end",
            "after start",
        ),
        (
            {"schedule_type": "DAILY", "start": "2024-01-01T06:00", "end": "2024-01-02T03:00"},
            "time_window.end",
            "no complete window",
        ),
        ({"schedule_type": "DAILY", "start": "2024-01-01", "end": "9500-01-01"}, "time_window.end", "9000"),
        (
            {"schedule_type": "DAILY", "start": "2024-01-01", "end_offset": 10**7},
            "time_window.end_offset",
            "between",
        ),
    ],
)
def test_rejections_name_their_field(kwargs: dict[str, Any], field: str, fragment: str | None) -> None:
    fields = _reject(**kwargs)
    assert field in fields, fields
    if fragment is not None:
        assert fragment in fields[field], fields[field]


def test_all_violations_are_collected() -> None:
    fields = _reject(
        schedule_type="MONTHLY",
        day_offset=31,
        minute_offset=99,
        timezone="Nowhere/Land",
        fmt="%d",
        start="",
        end_offset=-(10**8),
    )
    assert set(fields) >= {
        "time_window.day_offset",
        "time_window.minute_offset",
        "time_window.timezone",
        "time_window.fmt",
        "time_window.start",
        "time_window.end_offset",
    }


def test_field_prefix_is_configurable() -> None:
    with pytest.raises(InvalidArgument) as exc:
        TimeWindowSpec.create(
            schedule_type="DAILY", start="x", field_prefix="workflow.produces[0].partitioning.time_window"
        )
    assert [v.field for v in exc.value.violations] == ["workflow.produces[0].partitioning.time_window.start"]


def test_monthly_day_offset_zero_means_first() -> None:
    spec = TimeWindowSpec.create(schedule_type="MONTHLY", day_offset=0, start="2024-01-01")
    assert spec.cron_schedule == "0 0 1 * *"
    assert (
        TimeWindowSpec.create(schedule_type="MONTHLY", day_offset=28, start="2024-01-01").cron_schedule
        == "0 0 28 * *"
    )


def test_schedule_type_accepts_proto_enum_names() -> None:
    spec = TimeWindowSpec.create(schedule_type="SCHEDULE_TYPE_WEEKLY", day_offset=1, start="2024-01-01")
    assert spec.cron_schedule == "0 0 * * 1"
    assert spec.fmt == "%Y-%m-%d"


def test_fmt_with_ignored_directives_is_fine_when_it_round_trips() -> None:
    spec = TimeWindowSpec.create(schedule_type="DAILY", fmt="%Y-%m-%d %a", start="2024-01-01")
    assert spec.keys_page(0, 2, NOW) == ["2024-01-01 Mon", "2024-01-02 Tue"]
    assert spec.validate_key("2024-01-02 Tue", NOW) > 0
    with pytest.raises(InvalidArgument):
        spec.validate_key("2024-01-02 Wed", NOW)


def test_default_fmts() -> None:
    assert TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01").fmt == "%Y-%m-%d-%H:%M"
    assert TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01").fmt == "%Y-%m-%d"
    assert TimeWindowSpec.create(cron_schedule="0 9 * * 1-5", start="2024-01-01").fmt == "%Y-%m-%d"
    assert TimeWindowSpec.create(cron_schedule="0 */6 * * *", start="2024-01-01").fmt == "%Y-%m-%d-%H:%M"
    assert TimeWindowSpec.create(cron_schedule="@daily", start="2024-01-01").cron_schedule == "0 0 * * *"


# ---------------------------------------------------------------------------- start / end parsing
def test_start_parses_with_fmt_then_iso() -> None:
    hourly = TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01", timezone=NY)
    assert hourly.start == datetime(2024, 1, 1, tzinfo=hourly.start.tzinfo)
    assert hourly.start.utcoffset() == timedelta(hours=-5)
    in_fmt = TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01-05:00", timezone=NY)
    assert in_fmt.start.hour == 5


def test_start_with_offset_is_converted_not_relabelled() -> None:
    spec = TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01T00:00:00+05:30")
    assert spec.start.timestamp() == datetime(2023, 12, 31, 18, 30, tzinfo=UTC).timestamp()
    assert spec.keys_page(0, 1, NOW) == ["2023-12-31-19:00"]
    ny = TimeWindowSpec.create(schedule_type="DAILY", start="2024-03-01T00:00:00Z", timezone=NY)
    assert ny.start.isoformat() == "2024-02-29T19:00:00-05:00"
    assert ny.keys_page(0, 1, NOW) == ["2024-03-01"]


def test_unaligned_start_begins_at_next_tick() -> None:
    spec = TimeWindowSpec.create(schedule_type="WEEKLY", day_offset=1, start="2023-01-01")
    assert spec.first_window_start.isoformat() == "2023-01-02T00:00:00+00:00"
    assert spec.keys_page(0, 2, NOW) == ["2023-01-02", "2023-01-09"]


# ---------------------------------------------------------------------------- membership
@pytest.fixture(scope="module")
def hourly_ny() -> TimeWindowSpec:
    return TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01-00:00", timezone=NY)


def _error(call: Any) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as exc:
        call()
    (violation,) = exc.value.violations
    return violation.field, violation.description


def test_misaligned_key_is_rejected_with_nearest_keys(hourly_ny: TimeWindowSpec) -> None:
    field, description = _error(lambda: hourly_ny.validate_key("2024-01-01-00:30", NOW))
    assert field == "partition_key"
    assert "'2024-01-01-00:00'" in description and "'2024-01-01-01:00'" in description


def test_unparseable_key_names_fmt_and_example(hourly_ny: TimeWindowSpec) -> None:
    field, description = _error(
        lambda: hourly_ny.validate_key("2024-01-01", NOW, field="selection.range.start_key")
    )
    assert field == "selection.range.start_key"
    assert "%Y-%m-%d-%H:%M" in description and "'2024-01-01-00:00'" in description


def test_non_canonical_spelling_is_rejected(hourly_ny: TimeWindowSpec) -> None:
    for key in ("2024-1-01-00:00", "2024-01-01-00:00-0500", "2024-01-01-00:00 ", "2024-01-01-00:00:00"):
        with pytest.raises(InvalidArgument):
            hourly_ny.validate_key(key, NOW)


def test_key_syntax_is_checked_first(hourly_ny: TimeWindowSpec) -> None:
    field, description = _error(lambda: hourly_ny.validate_key("", NOW))
    assert field == "partition_key" and "empty" in description


def test_out_of_range_keys(hourly_ny: TimeWindowSpec) -> None:
    now = datetime(2024, 2, 1, 12, 30, tzinfo=UTC)
    _, before = _error(lambda: hourly_ny.validate_key("2023-12-31-23:00", now))
    assert "before the first partition key '2024-01-01-00:00'" in before
    _, after = _error(lambda: hourly_ny.validate_key("2024-02-01-07:00", now))
    assert "after the last partition key '2024-02-01-06:00'" in after
    assert hourly_ny.validate_key("2024-02-01-06:00", now) == int(
        datetime(2024, 2, 1, 11, tzinfo=UTC).timestamp()
    )


def test_a_window_ending_exactly_now_is_listed(hourly_ny: TimeWindowSpec) -> None:
    now = datetime(2024, 1, 1, 6, tzinfo=UTC)  # 01:00 New York
    assert list(hourly_ny.keys(now)) == ["2024-01-01-00:00"]
    assert hourly_ny.count(now - timedelta(microseconds=1)) == 0


def test_no_window_yet() -> None:
    spec = TimeWindowSpec.create(schedule_type="DAILY", start="2024-06-10")
    now = datetime(2024, 6, 10, 12, tzinfo=UTC)
    assert spec.count(now) == 0
    assert spec.keys_page(0, 10, now) == []
    _, description = _error(lambda: spec.validate_key("2024-06-10", now))
    assert "no window has closed" in description


def test_spring_gap_keys(hourly_ny: TimeWindowSpec) -> None:
    assert hourly_ny.keys_page(hourly_ny.index_of("2024-03-10-00:00"), 4, NOW) == [
        "2024-03-10-00:00",
        "2024-03-10-01:00",
        "2024-03-10-03:00",
        "2024-03-10-04:00",
    ]
    _, description = _error(lambda: hourly_ny.validate_key("2024-03-10-02:00", NOW))
    assert "'2024-03-10-01:00' and '2024-03-10-03:00'" in description
    assert hourly_ny.window("2024-03-10-01:00").duration == timedelta(hours=1)


def test_fall_overlap_keys(hourly_ny: TimeWindowSpec) -> None:
    keys = hourly_ny.keys_page(hourly_ny.index_of("2024-11-03-00:00"), 4, NOW)
    assert keys == ["2024-11-03-00:00", "2024-11-03-01:00", "2024-11-03-01:00-0500", "2024-11-03-02:00"]
    first, second = hourly_ny.window(keys[1]), hourly_ny.window(keys[2])
    assert first.start.isoformat() == "2024-11-03T01:00:00-04:00"
    assert second.start.isoformat() == "2024-11-03T01:00:00-05:00"
    assert first != second and first.end == second.start
    assert hourly_ny.position(keys[2]) - hourly_ny.position(keys[1]) == 3600
    for bogus in ("2024-11-03-01:00-0400", "2024-11-03-02:00-0500", "2024-11-03-00:00-0400"):
        with pytest.raises(InvalidArgument):
            hourly_ny.validate_key(bogus, NOW)


def test_daily_windows_are_23_and_25_hours() -> None:
    daily = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", timezone=NY)
    assert daily.window("2024-03-10").duration == timedelta(hours=23)
    assert daily.window("2024-11-03").duration == timedelta(hours=25)
    assert daily.window("2024-11-04").duration == timedelta(hours=24)


def test_tick_in_gap_moves_to_gap_end_and_ambiguous_daily_fires_second() -> None:
    at_0230 = TimeWindowSpec.create(
        cron_schedule="30 2 * * *", fmt="%Y-%m-%d-%H:%M", start="2024-03-09", timezone=NY
    )
    assert at_0230.keys_page(0, 3, NOW) == ["2024-03-09-02:30", "2024-03-10-03:00", "2024-03-11-02:30"]
    at_0130 = TimeWindowSpec.create(
        cron_schedule="30 1 * * *", fmt="%Y-%m-%d-%H:%M", start="2024-11-02", timezone=NY
    )
    window = at_0130.window("2024-11-03-01:30")
    assert window.start.isoformat() == "2024-11-03T01:30:00-05:00"


def test_several_ticks_in_a_repeated_hour_keep_their_keys() -> None:
    """Single-occurrence crons fire at the second 01:00 and 01:30; both keys must validate."""
    spec = TimeWindowSpec.create(
        cron_schedule="*/30 1-3 * * *", start="2024-11-03", end="2024-11-04", timezone=NY
    )
    keys = list(spec.keys(NOW))
    assert (
        keys == [f"2024-11-03-0{h}:{m}" for h in (1, 2, 3) for m in ("00", "30")][:-1]
    )  # 03:30 ends next day
    for key in keys:
        assert spec.window(key).start.utcoffset() == timedelta(hours=-5)
        spec.validate_key(key, NOW)


def test_half_hour_zone_keys() -> None:
    spec = TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01-00:00", timezone="Asia/Kathmandu")
    assert spec.keys_page(0, 2, NOW) == ["2024-01-01-00:00", "2024-01-01-01:00"]
    assert spec.window("2024-01-01-00:00").start.isoformat() == "2024-01-01T00:00:00+05:45"


def test_lord_howe_hourly_keys_stay_on_the_hour() -> None:
    """Dagster drifts to ':30' keys after the 30-minute shift; we key every tick by local wall time."""
    spec = TimeWindowSpec.create(
        schedule_type="HOURLY",
        start="2024-10-06-00:00",
        end="2024-10-06-06:00",
        timezone="Australia/Lord_Howe",
    )
    keys = list(spec.keys(NOW))
    assert all(key.endswith(":00") for key in keys)
    assert "2024-10-06-02:00" not in keys  # inside the 02:00-02:30 gap


def test_end_is_exclusive_and_caps_end_offset() -> None:
    spec = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", end="2024-01-05", end_offset=3)
    assert list(spec.keys(NOW)) == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    _, description = _error(lambda: spec.validate_key("2024-01-05", NOW))
    assert "end" in description and "'2024-01-04'" in description


def test_end_offset_positive_and_negative() -> None:
    now = datetime(2024, 1, 10, 13, tzinfo=UTC)
    plus = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", end_offset=2)
    assert plus.keys_page(plus.count(now) - 2, 2, now) == ["2024-01-10", "2024-01-11"]
    minus = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", end_offset=-2)
    assert minus.keys_page(minus.count(now) - 1, 1, now) == ["2024-01-07"]


# ---------------------------------------------------------------------------- ranges and positions
def test_keys_in_range_and_index_range(hourly_ny: TimeWindowSpec) -> None:
    keys = hourly_ny.keys_in_range("2024-11-03-00:00", "2024-11-03-02:00", NOW)
    assert keys == ["2024-11-03-00:00", "2024-11-03-01:00", "2024-11-03-01:00-0500", "2024-11-03-02:00"]
    span = hourly_ny.index_range("2024-01-01-00:00", "2024-01-01-05:00", NOW)
    assert span == range(0, 6)


def test_range_errors_report_both_ends(hourly_ny: TimeWindowSpec) -> None:
    with pytest.raises(InvalidArgument) as exc:
        hourly_ny.keys_in_range(
            "2024-01-01-00:30",
            "2099-01-01-00:00",
            NOW,
            start_field="range.start_key",
            end_field="range.end_key",
        )
    assert [v.field for v in exc.value.violations] == ["range.start_key", "range.end_key"]
    field, description = _error(lambda: hourly_ny.keys_in_range("2024-01-02-00:00", "2024-01-01-00:00", NOW))
    assert field == "end_key" and "before" in description


def test_validate_keys_reports_each_bad_key(hourly_ny: TimeWindowSpec) -> None:
    with pytest.raises(InvalidArgument) as exc:
        hourly_ny.validate_keys(["2024-01-01-00:00", "nope", "2024-01-01-01:00", "2024-01-01-01:30"], NOW)
    assert [v.field for v in exc.value.violations] == ["partition_keys[1]", "partition_keys[3]"]


def test_positions(hourly_ny: TimeWindowSpec) -> None:
    position = hourly_ny.position("2024-07-04-12:00")
    assert position == int(datetime(2024, 7, 4, 16, tzinfo=UTC).timestamp())
    assert hourly_ny.key_for_position(position) == "2024-07-04-12:00"
    with pytest.raises(ValueError):
        hourly_ny.key_for_position(position + 60)
    assert hourly_ny.index_of("2024-01-01-05:00") == 5
    with pytest.raises(InvalidArgument):
        hourly_ny.index_of("2023-12-31-23:00")


def test_window_containing_and_last_closed_window(hourly_ny: TimeWindowSpec) -> None:
    moment = datetime(2024, 11, 3, 6, 30, tzinfo=UTC)  # 01:30 EST, the second 01:xx
    key, window = hourly_ny.window_containing(moment)
    assert key == "2024-11-03-01:00-0500"
    assert window.contains(moment)
    closed = hourly_ny.last_closed_window(moment)
    assert closed is not None and closed.key == "2024-11-03-01:00"
    assert hourly_ny.last_closed_window(datetime(2024, 1, 1, 5, 59, tzinfo=UTC)) is None


def test_naive_now_is_a_programming_error(hourly_ny: TimeWindowSpec) -> None:
    with pytest.raises(ValueError):
        hourly_ny.count(datetime(2024, 1, 1))


def test_specs_are_hashable_values() -> None:
    a = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01")
    b = TimeWindowSpec.create(cron_schedule="0 0 * * *", fmt="%Y-%m-%d", start="2024-01-01T00:00:00Z")
    assert a == b and hash(a) == hash(b)
    assert a != TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-02")
    with pytest.raises(AttributeError):
        a.fmt = "%Y"  # type: ignore[misc]


def test_far_future_now_and_large_end_offset_stay_bounded() -> None:
    spec = TimeWindowSpec.create(cron_schedule="0 0 1 1 *", start="2000-01-01", end_offset=1_000_000)
    count = spec.count(datetime(9999, 1, 1, tzinfo=UTC))
    assert 7900 < count < 8000
    assert spec.keys_page(count - 1, 5, datetime(9999, 1, 1, tzinfo=UTC)) == ["9997-01-01"]


def test_every_iana_zone_is_accepted_and_paths_are_not() -> None:
    import zoneinfo

    from server.domain.partitions.zones import zone_problem

    rejected = {name for name in zoneinfo.available_timezones() if zone_problem(name) is not None}
    assert rejected <= {"localtime", "Factory"}
    for name in ("../etc/passwd", "/etc/localtime", "America/../UTC", "right/UTC", "posix/UTC", "utc", ""):
        assert zone_problem(name) is not None, name
