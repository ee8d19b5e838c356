"""Lineage between assets: partition mappings (their defaults and validation), the alignment of
keys across two definitions, dependency cycles between workflows, and freshness rules.

Pure domain code: no I/O, no clock ("now" is always passed in).

* **Mappings** say which upstream keys a downstream key reads: identity (the same key),
  time_window (every upstream window overlapping the downstream window shifted by
  `start_offset` / `end_offset` downstream windows), all, last (the newest upstream key), static
  (an explicit table upstream key → downstream keys). `default_mapping` follows Dagster's
  inference: time → time is a time window, the same kind is identity, anything else all.
* **Alignment** (`upstream_of`, `downstream_of`) answers with an `Aligned` value: explicit keys,
  an inclusive index range of a time-window or static definition (never enumerated unless
  asked), every key, or "the newest key" — resolved against storage by the service layer.
* **Cycles** (`find_cycle`): workflows are nodes, "C consumes an asset P produces" an edge.
* **Freshness** (`FreshnessRule`): when a time window is due, and the oldest materialization
  time that is still on time for the other kinds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.partitions import DynamicSpec, PartitionSpec, StaticSpec, TimeWindowSpec, kind_of
from server.domain.partitions.cron import CronError, parse_cron
from server.domain.partitions.keys import key_syntax_problem, quote_key
from server.domain.partitions.ticks import get_schedule

# Offsets of a time-window mapping are bounded so slices stay computable.
MAX_WINDOW_OFFSET = 10_000
# Static mapping tables are bounded like other per-request key lists.
MAX_STATIC_ENTRIES = 10_000


# ----------------------------------------------------------------------------- mappings
@dataclass(frozen=True)
class IdentityMapping:
    """A downstream key reads the upstream key with the same name."""


@dataclass(frozen=True)
class TimeWindowMapping:
    """A downstream window reads every upstream window overlapping it after shifting its start
    by `start_offset` and its end by `end_offset` downstream windows (-1, -1 = the previous one)."""

    start_offset: int = 0
    end_offset: int = 0


@dataclass(frozen=True)
class AllMapping:
    """Every downstream key reads every upstream key."""


@dataclass(frozen=True)
class LastMapping:
    """Every downstream key reads the newest upstream key."""


@dataclass(frozen=True)
class StaticMapping:
    """An explicit table: each upstream key is read by the listed downstream keys."""

    entries: tuple[tuple[str, tuple[str, ...]], ...]
    _down: Mapping[str, tuple[str, ...]] = field(compare=False, repr=False, default_factory=dict)
    _up: Mapping[str, tuple[str, ...]] = field(compare=False, repr=False, default_factory=dict)

    @classmethod
    def create(cls, entries: Iterable[tuple[str, Sequence[str]]]) -> StaticMapping:
        frozen = tuple((up, tuple(downs)) for up, downs in entries)
        down: dict[str, tuple[str, ...]] = {}
        up_of: dict[str, list[str]] = {}
        for up, downs in frozen:
            down[up] = tuple(dict.fromkeys((*down.get(up, ()), *downs)))
            for key in downs:
                readers = up_of.setdefault(key, [])
                if up not in readers:
                    readers.append(up)
        return cls(frozen, down, {key: tuple(ups) for key, ups in up_of.items()})

    def downstream_keys(self, upstream_key: str) -> tuple[str, ...]:
        return self._down.get(upstream_key, ())

    def upstream_keys(self, downstream_key: str) -> tuple[str, ...]:
        return self._up.get(downstream_key, ())


PartitionMapping = IdentityMapping | TimeWindowMapping | AllMapping | LastMapping | StaticMapping


def mapping_kind(mapping: PartitionMapping) -> str:
    """The proto oneof field name of the mapping."""
    if isinstance(mapping, IdentityMapping):
        return "identity"
    if isinstance(mapping, TimeWindowMapping):
        return "time_window"
    if isinstance(mapping, AllMapping):
        return "all"
    if isinstance(mapping, LastMapping):
        return "last"
    return "static"


def is_fan_out(mapping: PartitionMapping) -> bool:
    """all and last: every downstream key reads the same upstream slice, so staleness is read
    against a watermark instead of marking every downstream key."""
    return isinstance(mapping, AllMapping | LastMapping)


def describe_mapping(mapping: PartitionMapping) -> str:
    if isinstance(mapping, TimeWindowMapping):
        if mapping.start_offset or mapping.end_offset:
            return f"time_window(start_offset={mapping.start_offset}, end_offset={mapping.end_offset})"
        return "time_window"
    if isinstance(mapping, StaticMapping):
        return f"static({len(mapping.entries)} entries)"
    return mapping_kind(mapping)


def default_mapping(upstream: PartitionSpec | None, downstream: PartitionSpec | None) -> PartitionMapping:
    """The mapping used when a dependency names none (Dagster's inference): time window between
    two time-window definitions, identity between two of the same other kind, else all."""
    if upstream is None or downstream is None:
        return AllMapping()
    if isinstance(upstream, TimeWindowSpec) and isinstance(downstream, TimeWindowSpec):
        return TimeWindowMapping()
    if kind_of(upstream) == kind_of(downstream):
        return IdentityMapping()
    return AllMapping()


def mapping_violations(
    field_path: str,
    mapping: PartitionMapping,
    explicit: bool,
    upstream: PartitionSpec | None,
    downstream: PartitionSpec | None,
    *,
    upstream_known: bool = True,
    upstream_name: str = "the upstream asset",
) -> list[FieldViolation]:
    """What makes `mapping` impossible between the two definitions (empty: it is fine).

    `upstream_known` is false while the upstream asset is not registered: only the downstream
    side is checked then (the rest is checked when the upstream registers). `field_path` names
    the mapping (`workflow.consumes[0].partition_mapping`); a default mapping is reported there too.
    """
    problems: list[FieldViolation] = []

    def add(suffix: str, text: str) -> None:
        where = f"{field_path}.{suffix}" if suffix and explicit else field_path
        if not explicit:
            text = f"the default {mapping_kind(mapping)} mapping does not apply: {text}; give an explicit mapping"
        problems.append(FieldViolation(where, text))

    kind = mapping_kind(mapping)
    if isinstance(mapping, AllMapping):
        return problems
    if downstream is None and not isinstance(mapping, LastMapping):
        add(
            kind, f"the downstream assets are unpartitioned; only all (or last) can map onto them, not {kind}"
        )
        return problems
    if upstream_known and upstream is None:
        add(kind, f"{upstream_name} is unpartitioned; only all can map from it, not {kind}")
        return problems
    if isinstance(mapping, LastMapping):
        return problems
    if isinstance(mapping, TimeWindowMapping):
        if not isinstance(downstream, TimeWindowSpec):
            add(kind, f"needs time-window partitions downstream, not {_kind_text(downstream)}")
        elif upstream_known and not isinstance(upstream, TimeWindowSpec):
            add(
                kind, f"needs time-window partitions upstream, but {upstream_name} has {_kind_text(upstream)}"
            )
        elif (
            upstream_known
            and isinstance(upstream, TimeWindowSpec)
            and upstream.timezone != downstream.timezone
        ):
            add(
                kind,
                f"the timezones differ: {upstream_name} windows are in {upstream.timezone}, the downstream "
                f"windows in {downstream.timezone}; a time-window mapping needs one timezone",
            )
        for name, value in (("start_offset", mapping.start_offset), ("end_offset", mapping.end_offset)):
            if abs(value) > MAX_WINDOW_OFFSET:
                add(f"{kind}.{name}", f"must be within ±{MAX_WINDOW_OFFSET:,} windows (got {value})")
        if mapping.start_offset > mapping.end_offset:
            add(
                f"{kind}.start_offset",
                f"is after end_offset ({mapping.start_offset} > {mapping.end_offset}): the shifted window "
                "would be empty",
            )
        return problems
    if isinstance(mapping, IdentityMapping):
        if not upstream_known:
            return problems
        assert upstream is not None and downstream is not None
        if kind_of(upstream) != kind_of(downstream):
            add(
                kind,
                f"{upstream_name} has {_kind_text(upstream)} and the downstream assets {_kind_text(downstream)}; "
                "identity needs the same kind (use static, time_window or all)",
            )
        elif isinstance(upstream, TimeWindowSpec) and isinstance(downstream, TimeWindowSpec):
            if (upstream.cron_schedule, upstream.fmt, upstream.timezone) != (
                downstream.cron_schedule,
                downstream.fmt,
                downstream.timezone,
            ):
                add(
                    kind,
                    f"{upstream_name} windows ({upstream.cron_schedule!r} in {upstream.timezone}, fmt "
                    f"{upstream.fmt!r}) differ from the downstream windows ({downstream.cron_schedule!r} in "
                    f"{downstream.timezone}, fmt {downstream.fmt!r}); use a time_window mapping",
                )
        elif (
            isinstance(upstream, StaticSpec)
            and isinstance(downstream, StaticSpec)
            and not set(upstream.key_list) & set(downstream.key_list)
        ):
            add(kind, f"{upstream_name} and the downstream assets share no static key")
        return problems
    # Static mapping.
    assert isinstance(mapping, StaticMapping)
    if len(mapping.entries) > MAX_STATIC_ENTRIES:
        add("static.entries", f"has {len(mapping.entries):,} entries; at most {MAX_STATIC_ENTRIES:,}")
        return problems
    if not mapping.entries:
        add("static.entries", "must list at least one entry")
    seen: dict[str, int] = {}
    for index, (up, downs) in enumerate(mapping.entries):
        entry = f"static.entries[{index}]"
        if up in seen:
            add(f"{entry}.upstream_key", f"{quote_key(up)} is listed twice (also entries[{seen[up]}])")
        seen.setdefault(up, index)
        if upstream_known and (problem := _key_problem(upstream, up)):
            add(f"{entry}.upstream_key", f"{problem} of {upstream_name}")
        if not downs:
            add(f"{entry}.downstream_keys", "must list at least one key")
        for down_index, down in enumerate(downs):
            if problem := _key_problem(downstream, down):
                add(f"{entry}.downstream_keys[{down_index}]", f"{problem} of the downstream assets")
    return problems


def _kind_text(spec: PartitionSpec | None) -> str:
    if spec is None:
        return "no partitions"
    return {
        "time_window": "time-window partitions",
        "static": "static partitions",
        "dynamic": "dynamic partitions",
    }[kind_of(spec)]


def _key_problem(spec: PartitionSpec | None, key: str) -> str | None:
    """Why `key` cannot be a key of `spec` (None: it can). Dynamic keys only need valid syntax."""
    problem = key_syntax_problem(key)
    if problem is not None:
        return f"{quote_key(key)} {problem}"
    if isinstance(spec, StaticSpec) and key not in spec.key_list:
        return f"{quote_key(key)} is not a key"
    if isinstance(spec, TimeWindowSpec):
        try:
            spec.index_of(key)
        except InvalidArgument:
            return f"{quote_key(key)} is not a window key"
    return None


# ---------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class Aligned:
    """The keys of one definition that a key of the other aligns with.

    kind: "keys" (explicit `keys`, in definition order when known), "range" (indices
    `first`..`last` inclusive of a time-window or static definition), "all" (every key), or
    "last" (the newest key; upstream side only) — "all" and "last" are resolved by the caller.
    """

    kind: str
    keys: tuple[str, ...] = ()
    first: int = 0
    last: int = -1
    # Downstream side of a last mapping: only when the upstream key is the newest one.
    if_newest: bool = False

    @property
    def empty(self) -> bool:
        return (self.kind == "keys" and not self.keys) or (self.kind == "range" and self.last < self.first)

    def count(self) -> int | None:
        """Number of keys when known without storage (None for all/last)."""
        if self.kind == "keys":
            return len(self.keys)
        if self.kind == "range":
            return max(0, self.last - self.first + 1)
        return None


NOTHING = Aligned("keys")
UNPARTITIONED = Aligned("keys", ("",))


def _tw_index_bounds(spec: TimeWindowSpec) -> tuple[int, int | None]:
    """Valid key indices of `spec` ignoring now: 0 .. last (None: open-ended)."""
    f = spec._end_last_tick
    return 0, (f - 1 if f is not None else None)


def _clip(first: int, last: int, bounds: tuple[int, int | None]) -> Aligned:
    low, high = bounds
    first = max(first, low)
    if high is not None:
        last = min(last, high)
    return Aligned("range", first=first, last=last) if first <= last else NOTHING


def _schedule_index(spec: TimeWindowSpec, key: str) -> int:
    """Schedule index (not key index) of the window `key` names."""
    return spec._schedule.tick_index(spec.position(key))


def upstream_of(
    mapping: PartitionMapping, upstream: PartitionSpec | None, downstream: PartitionSpec | None, key: str
) -> Aligned:
    """The upstream keys the downstream `key` reads (its upstream slice), before storage: dynamic
    keys are not checked for registration, "all"/"last" are left symbolic. Unpartitioned
    upstream: the one slice ''."""
    if upstream is None:
        return UNPARTITIONED
    if isinstance(mapping, AllMapping):
        return Aligned("all")
    if isinstance(mapping, LastMapping):
        return Aligned("last")
    if isinstance(mapping, IdentityMapping):
        return _same_key(upstream, key)
    if isinstance(mapping, StaticMapping):
        return Aligned("keys", _in_order(upstream, mapping.upstream_keys(key)))
    assert isinstance(upstream, TimeWindowSpec) and isinstance(downstream, TimeWindowSpec)
    n = _schedule_index(downstream, key)
    schedule = downstream._schedule
    start = schedule.tick_at(n + mapping.start_offset)
    end = schedule.tick_at(n + 1 + mapping.end_offset)
    return _windows_overlapping(upstream, start, end)


def downstream_of(
    mapping: PartitionMapping,
    upstream: PartitionSpec | None,
    downstream: PartitionSpec | None,
    key: str,
    index: int | None = None,
) -> Aligned:
    """The downstream keys that read the upstream `key`: "all" for all and last (last sets
    `if_newest`: the caller keeps them only when `key` is the newest upstream key).
    Unpartitioned downstream: ''. `index`, when known, is the key's index in a time-window
    upstream (saves parsing the key)."""
    if isinstance(mapping, LastMapping):
        return (
            Aligned("keys", ("",), if_newest=True) if downstream is None else Aligned("all", if_newest=True)
        )
    if downstream is None:
        return UNPARTITIONED
    if isinstance(mapping, AllMapping):
        return Aligned("all")
    if isinstance(mapping, IdentityMapping):
        return _same_key(downstream, key)
    if isinstance(mapping, StaticMapping):
        return Aligned("keys", _in_order(downstream, mapping.downstream_keys(key)))
    assert isinstance(upstream, TimeWindowSpec) and isinstance(downstream, TimeWindowSpec)
    if index is not None and upstream._schedule is downstream._schedule:
        # One cron in one zone: window n reads windows n + s .. n + e of the same schedule.
        n = upstream._first + index
        first = n - mapping.end_offset - downstream._first
        last = n - mapping.start_offset - downstream._first
        return _clip(first, last, _tw_index_bounds(downstream))
    if index is not None:
        u_start = upstream._schedule.tick_at(upstream._first + index)
        u_end = upstream._schedule.tick_at(upstream._first + index + 1)
    else:
        window = upstream.window(key)
        u_start, u_end = int(window.start.timestamp()), int(window.end.timestamp())
    schedule = downstream._schedule
    # Downstream window n reads [tick(n + s), tick(n + 1 + e)); it overlaps [u_start, u_end) when
    # tick(n + s) < u_end and tick(n + 1 + e) > u_start.
    last = schedule.tick_index(u_end) - 1 - mapping.start_offset
    first = schedule.tick_index(u_start + 1) - 1 - mapping.end_offset
    return _clip(first - downstream._first, last - downstream._first, _tw_index_bounds(downstream))


def _windows_overlapping(spec: TimeWindowSpec, start: int, end: int) -> Aligned:
    """Indices of `spec`'s windows overlapping [start, end) (epoch seconds)."""
    if end <= start:
        return NOTHING
    schedule = spec._schedule
    first = schedule.tick_index(start + 1) - 1  # the window containing `start`
    last = schedule.tick_index(end) - 1  # the last window starting before `end`
    return _clip(first - spec._first, last - spec._first, _tw_index_bounds(spec))


def _same_key(spec: PartitionSpec, key: str) -> Aligned:
    if isinstance(spec, StaticSpec):
        return Aligned("keys", (key,)) if key in spec.key_list else NOTHING
    if isinstance(spec, TimeWindowSpec):
        try:
            index = spec.index_of(key)
        except InvalidArgument:
            return NOTHING
        return Aligned("range", first=index, last=index)
    return Aligned("keys", (key,))


def _in_order(spec: PartitionSpec, keys: Iterable[str]) -> tuple[str, ...]:
    """Keys valid for `spec`, in its definition order (dynamic: as given)."""
    if isinstance(spec, DynamicSpec):
        return tuple(keys)
    indexed = []
    for key in keys:
        try:
            indexed.append((spec.index_of(key), key))
        except InvalidArgument:
            continue
    return tuple(key for _, key in sorted(set(indexed)))


def range_keys(spec: TimeWindowSpec | StaticSpec, first: int, count: int) -> list[tuple[str, int, int]]:
    """(key, position, index) of the keys first .. first+count-1 (ignoring now)."""
    if count <= 0:
        return []
    if isinstance(spec, StaticSpec):
        return [(spec.key_list[i], i, i) for i in range(first, min(first + count, len(spec.key_list)))]
    result = []
    fmt = spec._format.format
    for offset, (tick, second) in enumerate(spec._schedule.iter_ticks(spec._first + first)):
        if offset >= count:
            break
        result.append((fmt(tick, second), tick, first + offset))
    return result


def index_at_or_after(spec: TimeWindowSpec, position: int) -> int:
    """Key index of the first window starting at or after `position` (epoch seconds)."""
    return spec._schedule.tick_index(position) - spec._first


def position_of_index(spec: TimeWindowSpec | StaticSpec, index: int) -> int:
    if isinstance(spec, StaticSpec):
        return index
    return spec._schedule.tick_at(spec._first + index)


# ------------------------------------------------------------------------------ cycles
@dataclass(frozen=True)
class Edge:
    """`consumer` reads `asset_id`, which `producer` produces."""

    producer: str
    asset_id: str
    consumer: str


def find_cycle(edges: Iterable[Edge], start: str) -> list[Edge] | None:
    """A dependency cycle through workflow `start`, as the edges walked from it back to it."""
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge.producer, []).append(edge)
    for adjacent in out.values():
        adjacent.sort(key=lambda e: (e.consumer, e.asset_id))
    path: list[Edge] = []
    visited: set[str] = set()

    def walk(node: str) -> bool:
        for edge in out.get(node, []):
            path.append(edge)
            if edge.consumer == start:
                return True
            if edge.consumer not in visited:
                visited.add(edge.consumer)
                if walk(edge.consumer):
                    return True
            path.pop()
        return False

    return list(path) if walk(start) else None


def describe_cycle(cycle: Sequence[Edge]) -> str:
    """`a → (a/out) → b → (b/out) → a`."""
    parts = [cycle[0].producer]
    for edge in cycle:
        parts.append(f"({edge.asset_id})")
        parts.append(edge.consumer)
    return " → ".join(parts)


# --------------------------------------------------------------------------- freshness
@dataclass(frozen=True)
class FreshnessRule:
    """A FreshnessPolicy in domain terms.

    Time-window keys: a window is *due* at its deadline — its end plus `maximum_lag`, moved to
    the next `deadline_cron` tick when one is given — and a due window with no materialization
    is overdue. Other keys (static, dynamic, unpartitioned): a key is overdue when its latest
    materialization is older than `maximum_lag` (with a cron: older than the last deadline tick
    less `maximum_lag`, or than the tick before it when there is no lag), or when it has none.
    """

    maximum_lag: timedelta
    deadline_cron: str = ""
    timezone: str = "UTC"

    def window_deadline(self, window_end: datetime) -> datetime:
        moment = window_end + self.maximum_lag
        if not self.deadline_cron:
            return moment
        schedule = get_schedule(self.deadline_cron, self.timezone)
        tick = schedule.tick_at(schedule.tick_index(math.ceil(moment.timestamp())))
        return datetime.fromtimestamp(tick, UTC)

    def due_window_end(self, as_of: datetime) -> datetime:
        """Windows ending at or before this instant are due as of `as_of`."""
        if not self.deadline_cron:
            return as_of - self.maximum_lag
        schedule = get_schedule(self.deadline_cron, self.timezone)
        last_tick = schedule.tick_at(schedule.tick_index(math.floor(as_of.timestamp()) + 1) - 1)
        return datetime.fromtimestamp(last_tick, UTC) - self.maximum_lag

    def age_cutoff(self, as_of: datetime) -> datetime:
        """Non-window keys: a materialization at or after this instant is on time."""
        if not self.deadline_cron:
            return as_of - self.maximum_lag
        schedule = get_schedule(self.deadline_cron, self.timezone)
        n = schedule.tick_index(math.floor(as_of.timestamp()) + 1) - 1
        if self.maximum_lag:
            return datetime.fromtimestamp(schedule.tick_at(n), UTC) - self.maximum_lag
        return datetime.fromtimestamp(schedule.tick_at(n - 1), UTC)

    def window_overdue(self, window_end: datetime, materialized: bool, as_of: datetime) -> bool:
        return not materialized and self.window_deadline(window_end) <= as_of

    def age_overdue(self, latest_materialization: datetime | None, as_of: datetime) -> bool:
        return latest_materialization is None or latest_materialization < self.age_cutoff(as_of)


def freshness_violations(
    field_path: str, maximum_lag: timedelta | None, deadline_cron: str, timezone: str
) -> list[FieldViolation]:
    problems = []
    if maximum_lag is not None and maximum_lag < timedelta(0):
        problems.append(FieldViolation(f"{field_path}.maximum_lag", "must not be negative"))
    if deadline_cron:
        try:
            parse_cron(deadline_cron)
            get_schedule(deadline_cron, timezone or "UTC")
        except (CronError, ValueError) as error:
            problems.append(
                FieldViolation(f"{field_path}.deadline_cron", f"is not a valid cron expression: {error}")
            )
    return problems


def freshness_rule(
    maximum_lag: timedelta | None, deadline_cron: str, timezone: str | None
) -> FreshnessRule | None:
    """The rule of a policy; None when the policy sets neither a lag nor a deadline cron."""
    if not deadline_cron and not maximum_lag:
        return None
    return FreshnessRule(maximum_lag or timedelta(0), deadline_cron, timezone or "UTC")
