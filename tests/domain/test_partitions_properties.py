"""Properties of time-window specs over many zones, crons, starts, ends, offsets and nows."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from server.domain.errors import InvalidArgument
from server.domain.partitions import TimeWindowSpec

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/Santiago",
]
# PARTITA_HYPOTHESIS_EXAMPLES=5000 for a longer hunt.
EXAMPLES = int(os.environ.get("PARTITA_HYPOTHESIS_EXAMPLES", "200"))
HOUR = 3600
DAY = 24 * HOUR
# (create arguments, typical spacing of ticks in seconds)
SCHEDULES: list[tuple[dict[str, Any], int]] = [
    ({"schedule_type": "HOURLY"}, HOUR),
    ({"schedule_type": "HOURLY", "minute_offset": 30}, HOUR),
    ({"schedule_type": "DAILY"}, DAY),
    ({"schedule_type": "DAILY", "hour_offset": 2, "minute_offset": 30}, DAY),
    ({"schedule_type": "DAILY", "hour_offset": 1, "minute_offset": 30}, DAY),
    ({"schedule_type": "WEEKLY", "day_offset": 0, "hour_offset": 2}, 7 * DAY),
    ({"schedule_type": "MONTHLY", "day_offset": 3, "hour_offset": 1}, 30 * DAY),
    ({"cron_schedule": "*/15 * * * *"}, 900),
    ({"cron_schedule": "0 */6 * * *"}, 6 * HOUR),
    ({"cron_schedule": "0 9 * * 1-5"}, DAY),
    ({"cron_schedule": "30 2 * * *", "fmt": "%Y-%m-%d-%H:%M"}, DAY),
    ({"cron_schedule": "0 0 L * *"}, 30 * DAY),
    ({"cron_schedule": "*/30 1-3 * * *"}, 2 * HOUR),
    ({"cron_schedule": "0 * * * 0"}, HOUR),
    ({"schedule_type": "HOURLY", "fmt": "%Y%m%d%H"}, HOUR),
    ({"schedule_type": "DAILY", "fmt": "%Y/%m/%d"}, DAY),
]


@st.composite
def cases(draw: st.DrawFn) -> tuple[TimeWindowSpec, datetime, int]:
    args, spacing = draw(st.sampled_from(SCHEDULES))
    zone = draw(st.sampled_from(ZONES))
    start = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2030, 1, 1)))
    start = start.replace(second=0, microsecond=0)
    kwargs = dict(args, timezone=zone, start=start.isoformat(), end_offset=draw(st.integers(-3, 3)))
    if draw(st.booleans()):
        kwargs["end"] = (start + timedelta(seconds=spacing * draw(st.integers(2, 120)))).isoformat()
    try:
        spec = TimeWindowSpec.create(**kwargs)
    except InvalidArgument as exc:  # an end too close for a whole window (weekends, month lengths)
        assert [v.field for v in exc.violations] == ["time_window.end"]
        assert "no complete window" in exc.violations[0].description
        reject()
    start_at = start.replace(tzinfo=ZoneInfo(zone))
    now = start_at + timedelta(seconds=spacing * draw(st.integers(-2, 120)) + draw(st.integers(0, spacing)))
    return spec, now.astimezone(UTC), spacing


PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(cases(), st.data())
def test_enumeration_windows_and_membership(
    case: tuple[TimeWindowSpec, datetime, int], data: st.DataObject
) -> None:
    spec, now, spacing = case
    keys = list(spec.keys(now))
    assert spec.count(now) == len(keys)
    assert len(set(keys)) == len(keys)

    windows = spec.windows_page(0, len(keys) + 10, now)
    assert [w.key for w in windows] == keys
    for earlier, later in pairwise(windows):
        assert earlier.window.start.timestamp() < later.window.start.timestamp()
        assert earlier.window.end.timestamp() == later.window.start.timestamp()  # gap-free
    for index, (key, window) in enumerate(windows):
        assert spec.window(key) == window  # key -> window -> key round trip
        position = spec.position(key)
        assert position == window.start.timestamp()
        assert spec.key_for_position(position) == key
        assert spec.index_of(key) == index
        assert spec.validate_key(key, now) == position
        assert spec.window_containing(window.start).key == key
    if windows:
        assert windows[0].window.start.timestamp() >= spec.start.timestamp()
        assert windows[0].window.start == spec.first_window_start
        if spec.end is not None:
            assert windows[-1].window.end.timestamp() <= spec.end.timestamp()

    # pages are slices of the full list
    offset = data.draw(st.integers(0, len(keys) + 3))
    limit = data.draw(st.integers(0, 40))
    assert spec.keys_page(offset, limit, now) == keys[offset : offset + limit]

    # validation accepts exactly the listed keys
    key_set = set(keys)
    zone = ZoneInfo(spec.timezone)
    probes: list[str] = []
    if windows:
        for pick in data.draw(st.lists(st.integers(0, len(windows) - 1), max_size=4)):
            start = windows[pick].window.start.timestamp()
            for delta in (-60, 60, spacing // 2, -(spacing // 2)):
                probes.append(datetime.fromtimestamp(start + delta, zone).strftime(spec.fmt))
    first = spec.first_window_start
    probes.append(spec.window_containing(first - timedelta(seconds=1)).key)  # the window before start
    probes.append(spec.key_for_index(len(keys)))  # the next window: not listed yet, or past end
    probes.append(datetime.fromtimestamp(now.timestamp() + 400 * DAY, zone).strftime(spec.fmt))
    for probe in probes:
        try:
            spec.validate_key(probe, now)
            accepted = True
        except InvalidArgument as exc:
            accepted = False
            assert [v.field for v in exc.violations] == ["partition_key"]
        assert accepted == (probe in key_set), probe


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from(SCHEDULES),
    st.sampled_from(ZONES),
    st.datetimes(min_value=datetime(1905, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
)
def test_any_instant_lies_in_exactly_one_window(
    args: tuple[dict[str, Any], int], zone: str, moment: datetime
) -> None:
    spec = TimeWindowSpec.create(**args[0], timezone=zone, start="1900-01-01")
    key, window = spec.window_containing(moment)
    assert window.contains(moment)
    assert spec.window(key) == window
    assert spec.position(key) == window.start.timestamp()
    following = spec.window_containing(window.end)
    assert following.window.start == window.end and following.key != key
