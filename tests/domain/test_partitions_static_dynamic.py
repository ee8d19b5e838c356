"""Static and dynamic definitions, and what counts as a partitioning change."""

from __future__ import annotations

import pytest

from server.domain.errors import InvalidArgument, ResourceExhausted
from server.domain.partitions import (
    DynamicSpec,
    StaticSpec,
    TimeWindowSpec,
    is_partitioning_change,
    kind_of,
    positions_stable,
)


def _fields(call: object) -> dict[str, str]:
    assert callable(call)
    with pytest.raises(InvalidArgument) as exc:
        call()
    return {v.field: v.description for v in exc.value.violations}


# ---------------------------------------------------------------------------- static
def test_static_keeps_definition_order() -> None:
    spec = StaticSpec.create(["zeta", "alpha", "mid"])
    assert list(spec.keys()) == ["zeta", "alpha", "mid"]
    assert spec.count() == 3
    assert spec.keys_page(1, 5) == ["alpha", "mid"]
    assert spec.validate_key("alpha") == 1
    assert spec.position("mid") == spec.index_of("mid") == 2
    assert spec.key_for_position(0) == "zeta"
    assert spec.keys_in_range("zeta", "alpha") == ["zeta", "alpha"]


def test_static_rejections_name_each_key() -> None:
    fields = _fields(lambda: StaticSpec.create(["a", "b", "a", " c", "", "d...e", "b"]))
    assert set(fields) == {
        "static.keys[2]",
        "static.keys[3]",
        "static.keys[4]",
        "static.keys[5]",
        "static.keys[6]",
    }
    assert "duplicate of static.keys[0]" in fields["static.keys[2]"]
    assert "duplicate of static.keys[1]" in fields["static.keys[6]"]
    assert "whitespace" in fields["static.keys[3]"]
    assert "empty" in fields["static.keys[4]"]
    assert _fields(lambda: StaticSpec.create([])) == {"static.keys": "at least one key is required"}


def test_static_unknown_key_suggests_keys() -> None:
    spec = StaticSpec.create(["us-east", "us-west", "eu-west"])
    fields = _fields(lambda: spec.validate_key("us-eats", field="partition_key"))
    assert "'us-east'" in fields["partition_key"]
    many = StaticSpec.create([f"customer-{i:04d}" for i in range(500)])
    fields = _fields(lambda: many.validate_key("customer-04x2"))
    assert "did you mean" in fields["partition_key"] or "such as" in fields["partition_key"]
    with pytest.raises(InvalidArgument) as exc:
        spec.validate_keys(["us-east", "nope", "eu-west", ""])
    assert [v.field for v in exc.value.violations] == ["partition_keys[1]", "partition_keys[3]"]


def test_static_range_in_wrong_order() -> None:
    spec = StaticSpec.create(["a", "b", "c"])
    assert spec.index_range("a", "c") == range(0, 3)
    assert "end_key" in _fields(lambda: spec.keys_in_range("c", "a"))


# ---------------------------------------------------------------------------- dynamic
def test_dynamic_first_use_needs_a_matching_pattern() -> None:
    plain = DynamicSpec.create()
    assert not plain.accepts_on_first_use("anything")
    patterned = DynamicSpec.create(key_pattern=r"cust-[0-9]+", max_keys=3, initial_keys=["cust-1"])
    assert patterned.accepts_on_first_use("cust-42")
    assert not patterned.accepts_on_first_use("cust-42x")  # fullmatch, not search
    assert not patterned.accepts_on_first_use("xcust-42")
    patterned.validate_new_key("cust-7")
    fields = _fields(lambda: patterned.validate_new_key("other", field="partition_keys[0]"))
    assert "key_pattern" in fields["partition_keys[0]"]


def test_dynamic_validation() -> None:
    fields = _fields(
        lambda: DynamicSpec.create(
            key_pattern="[a-z]+", max_keys=2, initial_keys=["ok", "Bad", "ok", " x", "three", "four"]
        )
    )
    assert set(fields) >= {
        "dynamic.initial_keys",
        "dynamic.initial_keys[1]",
        "dynamic.initial_keys[2]",
        "dynamic.initial_keys[3]",
    }
    assert "max_keys" in fields["dynamic.initial_keys"]
    assert "does not match" in fields["dynamic.initial_keys[1]"]
    assert "duplicate" in fields["dynamic.initial_keys[2]"]
    assert (
        "regular expression"
        in _fields(lambda: DynamicSpec.create(key_pattern="(unclosed"))["dynamic.key_pattern"]
    )
    assert "max_keys" in next(iter(_fields(lambda: DynamicSpec.create(max_keys=-1))))


def test_dynamic_batches_and_capacity() -> None:
    spec = DynamicSpec.create(max_keys=3)
    spec.validate_new_keys(["a", "b"])
    with pytest.raises(InvalidArgument) as exc:
        spec.validate_new_keys(["a", "", "a"])
    assert [v.field for v in exc.value.violations] == ["partition_keys[1]", "partition_keys[2]"]
    spec.check_capacity(live_keys=1, adding=2)
    with pytest.raises(ResourceExhausted) as exhausted:
        spec.check_capacity(live_keys=2, adding=2)
    assert exhausted.value.metadata["max_keys"] == "3"
    DynamicSpec.create().check_capacity(live_keys=10**9, adding=10**9)  # 0 = no cap


# ---------------------------------------------------------------------------- definition changes
def _daily(**overrides: object) -> TimeWindowSpec:
    args: dict[str, object] = {"schedule_type": "DAILY", "start": "2024-01-01"}
    args.update(overrides)
    return TimeWindowSpec.create(**args)  # type: ignore[arg-type]


def test_free_time_window_changes() -> None:
    old = _daily()
    assert not is_partitioning_change(old, _daily(start="2023-01-01"))
    assert not is_partitioning_change(old, _daily(end="2030-01-01"))
    assert not is_partitioning_change(old, _daily(end_offset=2))
    assert not is_partitioning_change(
        old, TimeWindowSpec.create(cron_schedule="0 0 * * *", start="2024-06-01")
    )
    assert positions_stable(old, _daily(start="2020-01-01"))


def test_partitioning_changes() -> None:
    old = _daily()
    assert is_partitioning_change(old, _daily(timezone="America/New_York"))
    assert is_partitioning_change(old, _daily(fmt="%Y%m%d"))
    assert is_partitioning_change(old, _daily(hour_offset=1))
    assert is_partitioning_change(old, TimeWindowSpec.create(schedule_type="HOURLY", start="2024-01-01"))
    assert is_partitioning_change(old, StaticSpec.create(["a"]))
    assert is_partitioning_change(StaticSpec.create(["a"]), DynamicSpec.create())
    assert not positions_stable(old, _daily(timezone="Europe/Paris"))
    assert positions_stable(old, _daily(fmt="%Y%m%d"))  # keys change, window starts do not


def test_static_and_dynamic_changes() -> None:
    old = StaticSpec.create(["a", "b"])
    assert not is_partitioning_change(old, StaticSpec.create(["a", "b", "c"]))
    assert not is_partitioning_change(old, StaticSpec.create(["c", "b", "a"]))
    assert is_partitioning_change(old, StaticSpec.create(["a", "c"]))
    assert positions_stable(old, StaticSpec.create(["a", "b", "c"]))
    assert not positions_stable(old, StaticSpec.create(["c", "a", "b"]))
    dyn = DynamicSpec.create()
    assert not is_partitioning_change(
        dyn, DynamicSpec.create(key_pattern="x+", max_keys=5, initial_keys=["xx"])
    )
    assert kind_of(dyn) == "dynamic" and kind_of(old) == "static" and kind_of(_daily()) == "time_window"
