"""Pure lineage rules: default mappings, impossible mappings, key alignment across definitions
(granularities, offsets, DST), dependency cycles and freshness deadlines."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from server.domain.errors import FieldViolation
from server.domain.lineage import (
    AllMapping,
    Edge,
    FreshnessRule,
    IdentityMapping,
    LastMapping,
    PartitionMapping,
    StaticMapping,
    TimeWindowMapping,
    default_mapping,
    describe_cycle,
    downstream_of,
    find_cycle,
    freshness_rule,
    freshness_violations,
    mapping_violations,
    range_keys,
    upstream_of,
)
from server.domain.partitions import DynamicSpec, PartitionSpec, StaticSpec, TimeWindowSpec

HOURLY = TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01-00:00")
DAILY = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01")
MONTHLY = TimeWindowSpec.create(schedule_type="MONTHLY", start="2024-01-01")
NY_HOURLY = TimeWindowSpec.create(
    schedule_type="HOURLY", start="2024-01-01-00:00", timezone="America/New_York"
)
NY_DAILY = TimeWindowSpec.create(schedule_type="DAILY", start="2024-01-01", timezone="America/New_York")
REGIONS = StaticSpec.create(["us", "eu", "apac"])
DYNAMIC = DynamicSpec.create()


def keys_of(
    spec: PartitionSpec | None, mapping: PartitionMapping, other: PartitionSpec | None, key: str
) -> list[str]:
    """Upstream keys of downstream `key` (`spec` upstream, `other` downstream)."""
    aligned = upstream_of(mapping, spec, other, key)
    if aligned.kind == "range":
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        return [k for k, _, _ in range_keys(spec, aligned.first, aligned.last - aligned.first + 1)]
    assert aligned.kind == "keys", aligned
    return list(aligned.keys)


def down_keys(
    spec: PartitionSpec | None, mapping: PartitionMapping, upstream: PartitionSpec | None, key: str
) -> list[str]:
    aligned = downstream_of(mapping, upstream, spec, key)
    if aligned.kind == "range":
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        return [k for k, _, _ in range_keys(spec, aligned.first, aligned.last - aligned.first + 1)]
    assert aligned.kind == "keys", aligned
    return list(aligned.keys)


def test_defaults_follow_dagster() -> None:
    assert default_mapping(HOURLY, DAILY) == TimeWindowMapping()
    assert default_mapping(REGIONS, StaticSpec.create(["eu"])) == IdentityMapping()
    assert default_mapping(DYNAMIC, DYNAMIC) == IdentityMapping()
    assert default_mapping(None, DAILY) == AllMapping()
    assert default_mapping(DAILY, None) == AllMapping()
    assert default_mapping(REGIONS, DAILY) == AllMapping()


def test_daily_over_hourly_reads_24_keys_and_back() -> None:
    window = TimeWindowMapping()
    assert keys_of(HOURLY, window, DAILY, "2024-01-05") == [f"2024-01-05-{h:02d}:00" for h in range(24)]
    assert down_keys(DAILY, window, HOURLY, "2024-01-05-13:00") == ["2024-01-05"]
    # The other way round: an hour reads the day that contains it.
    assert keys_of(DAILY, window, HOURLY, "2024-01-05-13:00") == ["2024-01-05"]
    assert len(down_keys(HOURLY, window, DAILY, "2024-01-05")) == 24
    # Months over days; offsets count downstream windows.
    assert len(keys_of(DAILY, window, MONTHLY, "2024-02-01")) == 29
    assert keys_of(DAILY, TimeWindowMapping(-1, -1), DAILY, "2024-01-05") == ["2024-01-04"]
    assert keys_of(DAILY, TimeWindowMapping(-2, 0), DAILY, "2024-01-05") == [
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ]
    assert down_keys(DAILY, TimeWindowMapping(-1, -1), DAILY, "2024-01-04") == ["2024-01-05"]
    assert down_keys(DAILY, TimeWindowMapping(-2, 0), DAILY, "2024-01-04") == [
        "2024-01-04",
        "2024-01-05",
        "2024-01-06",
    ]
    # Before the first window there is nothing to read.
    assert keys_of(DAILY, TimeWindowMapping(-1, -1), DAILY, "2024-01-01") == []
    # A daily window on the spring-forward day in New York has 23 hours.
    spring = keys_of(NY_HOURLY, window, NY_DAILY, "2024-03-10")
    assert len(spring) == 23 and "2024-03-10-02:00" not in spring
    assert len(keys_of(NY_HOURLY, window, NY_DAILY, "2024-11-03")) == 25


def test_identity_static_last_and_all() -> None:
    other = StaticSpec.create(["eu", "apac", "latam"])
    assert keys_of(REGIONS, IdentityMapping(), other, "eu") == ["eu"]
    assert keys_of(REGIONS, IdentityMapping(), other, "latam") == []
    assert down_keys(other, IdentityMapping(), REGIONS, "us") == []
    table = StaticMapping.create([("us", ["americas"]), ("eu", ["emea", "world"]), ("apac", ["world"])])
    zones = StaticSpec.create(["americas", "emea", "world"])
    assert keys_of(REGIONS, table, zones, "world") == ["eu", "apac"]
    assert down_keys(zones, table, REGIONS, "eu") == ["emea", "world"]
    assert upstream_of(LastMapping(), DAILY, None, "").kind == "last"
    assert upstream_of(AllMapping(), DAILY, REGIONS, "us").kind == "all"
    assert downstream_of(LastMapping(), DAILY, None, "2024-01-01").if_newest
    assert upstream_of(AllMapping(), None, DAILY, "2024-01-01").keys == ("",)


def fields(found: Sequence[FieldViolation]) -> list[str]:
    return [v.field for v in found]


def test_impossible_mappings() -> None:
    path = "workflow.consumes[0].partition_mapping"
    utc_daily = DAILY
    found = mapping_violations(path, TimeWindowMapping(), True, utc_daily, NY_DAILY)
    assert fields(found) == [f"{path}.time_window"] and "timezones differ" in found[0].description
    found = mapping_violations(path, TimeWindowMapping(), False, utc_daily, NY_DAILY)
    assert fields(found) == [path] and "default" in found[0].description
    assert mapping_violations(path, AllMapping(), True, utc_daily, NY_DAILY) == []
    assert fields(mapping_violations(path, IdentityMapping(), True, None, DAILY)) == [f"{path}.identity"]
    assert fields(mapping_violations(path, IdentityMapping(), True, DAILY, None)) == [f"{path}.identity"]
    assert mapping_violations(path, LastMapping(), True, DAILY, None) == []
    assert fields(mapping_violations(path, LastMapping(), True, None, DAILY)) == [f"{path}.last"]
    no_overlap = StaticSpec.create(["mars"])
    assert (
        "share no static key"
        in mapping_violations(path, IdentityMapping(), True, REGIONS, no_overlap)[0].description
    )
    assert mapping_violations(path, IdentityMapping(), True, HOURLY, DAILY) != []
    assert mapping_violations(path, IdentityMapping(), True, REGIONS, DAILY) != []
    table = StaticMapping.create([("us", ["x"]), ("pluto", ["y"]), ("us", [])])
    assert fields(mapping_violations(path, table, True, REGIONS, StaticSpec.create(["x"]))) == [
        f"{path}.static.entries[1].upstream_key",
        f"{path}.static.entries[1].downstream_keys[0]",
        f"{path}.static.entries[2].upstream_key",
        f"{path}.static.entries[2].downstream_keys",
    ]
    # An upstream that is not registered yet: only the downstream side is checked.
    assert mapping_violations(path, IdentityMapping(), True, None, DAILY, upstream_known=False) == []
    assert mapping_violations(path, TimeWindowMapping(), True, None, REGIONS, upstream_known=False) != []
    assert fields(mapping_violations(path, TimeWindowMapping(1, 0), True, DAILY, DAILY)) == [
        f"{path}.time_window.start_offset"
    ]
    assert mapping_violations(path, TimeWindowMapping(-1, 0), True, HOURLY, DAILY) == []


def test_cycles() -> None:
    edges = [
        Edge("a", "a/out", "b"),
        Edge("b", "b/out", "c"),
        Edge("c", "c/out", "a"),
        Edge("c", "c/out", "d"),
    ]
    cycle = find_cycle(edges, "a")
    assert cycle is not None and describe_cycle(cycle) == "a → (a/out) → b → (b/out) → c → (c/out) → a"
    assert find_cycle(edges, "d") is None
    assert find_cycle(edges[:2], "a") is None


def test_freshness_deadlines() -> None:
    rule = FreshnessRule(timedelta(hours=6))
    end = datetime(2024, 1, 2, tzinfo=UTC)
    assert rule.window_deadline(end) == datetime(2024, 1, 2, 6, tzinfo=UTC)
    assert not rule.window_overdue(end, False, datetime(2024, 1, 2, 5, 59, tzinfo=UTC))
    assert rule.window_overdue(end, False, datetime(2024, 1, 2, 6, tzinfo=UTC))
    assert not rule.window_overdue(end, True, datetime(2024, 1, 9, tzinfo=UTC))
    assert rule.due_window_end(datetime(2024, 1, 2, 7, tzinfo=UTC)) == datetime(2024, 1, 2, 1, tzinfo=UTC)
    # A deadline cron moves the deadline to its next tick.
    cron = FreshnessRule(timedelta(hours=1), "0 9 * * *")
    assert cron.window_deadline(end) == datetime(2024, 1, 2, 9, tzinfo=UTC)
    assert cron.due_window_end(datetime(2024, 1, 2, 8, tzinfo=UTC)) == datetime(2024, 1, 1, 8, tzinfo=UTC)
    assert cron.due_window_end(datetime(2024, 1, 2, 9, tzinfo=UTC)) == datetime(2024, 1, 2, 8, tzinfo=UTC)
    # Non-window keys: the latest materialization must be younger than the lag.
    now = datetime(2024, 1, 2, 12, tzinfo=UTC)
    assert not rule.age_overdue(now - timedelta(hours=5), now)
    assert rule.age_overdue(now - timedelta(hours=7), now)
    assert rule.age_overdue(None, now)
    assert FreshnessRule(timedelta(0), "0 9 * * *").age_cutoff(now) == datetime(2024, 1, 1, 9, tzinfo=UTC)
    assert freshness_rule(None, "", "UTC") is None
    assert freshness_rule(timedelta(0), "", "UTC") is None
    assert [v.field for v in freshness_violations("p", timedelta(seconds=-1), "nope", "UTC")] == [
        "p.maximum_lag",
        "p.deadline_cron",
    ]


@pytest.mark.parametrize("key", ["2024-01-01", "2024-03-10", "2024-11-03", "2024-12-31"])
def test_alignment_round_trips(key: str) -> None:
    """Every upstream hour of a day maps back to exactly that day."""
    for hour in keys_of(NY_HOURLY, TimeWindowMapping(), NY_DAILY, key):
        assert down_keys(NY_DAILY, TimeWindowMapping(), NY_HOURLY, hour) == [key]


@pytest.mark.parametrize(
    ("upstream", "downstream", "mapping"),
    [
        (HOURLY, DAILY, TimeWindowMapping()),
        (DAILY, DAILY, TimeWindowMapping(-2, 1)),
        (NY_HOURLY, NY_HOURLY, TimeWindowMapping(-1, -1)),
        (DAILY, MONTHLY, TimeWindowMapping(0, 1)),
    ],
)
def test_known_index_gives_the_same_alignment(
    upstream: TimeWindowSpec, downstream: TimeWindowSpec, mapping: TimeWindowMapping
) -> None:
    """Callers that know the upstream key's index skip parsing it; the answer is the same."""
    for index in (0, 1, 30, 1600, 7500):
        key = upstream.key_for_index(index)
        assert downstream_of(mapping, upstream, downstream, key, index) == downstream_of(
            mapping, upstream, downstream, key
        )
