"""Partition definitions: key syntax, time windows (Dagster semantics), static and dynamic keys.

Pure domain code: no I/O, no clock ("now" is always passed in as an aware datetime).

* `keys.py` — key syntax shared by every kind.
* `time_window.py` — `TimeWindowSpec` (listing, membership, ranges); `ticks.py` — which
  instants are cron ticks, DST rules included; `cron.py` — cron expressions (via cronsim) as
  indexable wall-time sequences; `zones.py` — offset-stable stretches of IANA zones;
  `keyfmt.py` — key formatting and parsing.
* `static.py`, `dynamic.py` — the other two kinds.
"""

from __future__ import annotations

from server.domain.partitions.dynamic import DynamicSpec
from server.domain.partitions.keys import MAX_KEY_LENGTH, check_key_syntax, key_syntax_problem
from server.domain.partitions.static import StaticSpec
from server.domain.partitions.time_window import (
    PRESET_FMTS,
    SCHEDULE_TYPES,
    PartitionWindow,
    TimeWindow,
    TimeWindowSpec,
)

PartitionSpec = TimeWindowSpec | StaticSpec | DynamicSpec


def kind_of(spec: PartitionSpec) -> str:
    """The proto oneof field name of `spec`: time_window, static or dynamic."""
    if isinstance(spec, TimeWindowSpec):
        return "time_window"
    if isinstance(spec, StaticSpec):
        return "static"
    return "dynamic"


def is_partitioning_change(old: PartitionSpec, new: PartitionSpec) -> bool:
    """Whether replacing `old` by `new` is a partitioning change (contract, "Definitions change").

    Free: moving start, changing end or end_offset; adding static keys (anywhere) or reordering
    them; any change to a dynamic definition (pattern, max_keys, initial keys).
    A partitioning change: another kind; another cron (after preset expansion), fmt or timezone;
    dropping a static key.
    """
    if kind_of(old) != kind_of(new):
        return True
    if isinstance(old, TimeWindowSpec) and isinstance(new, TimeWindowSpec):
        return (old.cron_schedule, old.fmt, old.timezone) != (new.cron_schedule, new.fmt, new.timezone)
    if isinstance(old, StaticSpec) and isinstance(new, StaticSpec):
        return not set(old.key_list) <= set(new.key_list)
    return False


def positions_stable(old: PartitionSpec, new: PartitionSpec) -> bool:
    """Whether positions stored for `old` keys stay valid under `new` (same kind required).

    Time windows: positions are window starts, stable while cron and timezone are unchanged.
    Static: positions are list indices, stable when the old list is a prefix of the new one.
    Dynamic: positions are registry sequence numbers, always stable.
    """
    if kind_of(old) != kind_of(new):
        return False
    if isinstance(old, TimeWindowSpec) and isinstance(new, TimeWindowSpec):
        return (old.cron_schedule, old.timezone) == (new.cron_schedule, new.timezone)
    if isinstance(old, StaticSpec) and isinstance(new, StaticSpec):
        return new.key_list[: len(old.key_list)] == old.key_list
    return True


__all__ = [
    "MAX_KEY_LENGTH",
    "PRESET_FMTS",
    "SCHEDULE_TYPES",
    "DynamicSpec",
    "PartitionSpec",
    "PartitionWindow",
    "StaticSpec",
    "TimeWindow",
    "TimeWindowSpec",
    "check_key_syntax",
    "is_partitioning_change",
    "key_syntax_problem",
    "kind_of",
    "positions_stable",
]
