"""Lineage and freshness, the service layer: dependencies resolved against the catalog, upstream
slices of a key, the inputs a run reads, staleness and overdue reads, registration checks,
held runs (upstream policy WAIT) and the automation loop.

Everything except `run_lineage_loop` runs inside a store transaction.

* **Dependencies.** A workflow's `consumes[i]` applies to every asset it produces; the mapping
  is the explicit one or the default for the pair of definitions (`server/domain/lineage.py`).
  An upstream asset that is not registered yet is resolved at read time: until then its
  slices are empty and the explanation says why.
* **Staleness** is kept incrementally. When an upstream key is materialized, the downstream
  keys aligned with it through identity, time-window and static mappings are marked stale
  (`storage/lineage.py`); a downstream materialization clears the mark unless an upstream
  materialization newer than what its run read (recorded at claim) marked it meanwhile. all and
  last mappings are not marked per key: a downstream key is stale when the upstream watermark
  (newest materialization of the asset, or of its newest key for last) is newer than the one
  it read. A key never materialized is stale once any upstream slice it reads has data.
* **Overdue** is computed at read time from the freshness policy, the window ends and the
  latest materialization times (see `FreshnessRule`); counts use the status counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from partita.v1 import asset_pb2, partitions_pb2, workflow_pb2
from server.catalog import Catalog, WorkflowDefinition
from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.domain.lineage import (
    Aligned,
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
    describe_mapping,
    downstream_of,
    find_cycle,
    freshness_rule,
    freshness_violations,
    index_at_or_after,
    is_fan_out,
    mapping_violations,
    position_of_index,
    range_keys,
    upstream_of,
)
from server.domain.partitions import (
    DynamicSpec,
    PartitionSpec,
    StaticSpec,
    TimeWindowSpec,
    is_partitioning_change,
    positions_stable,
)
from server.domain.partitions.keys import quote_key
from server.partition_views import PartitionPage, status_counts
from storage import dynamic_partitions, events, partition_state, runs, sql
from storage import lineage as store
from storage.events import Outbox
from storage.lineage import LineageRow, Target
from storage.materializations import RecordedMaterialization
from storage.models import Materialization, PartitionState, Run, from_micros, micros
from storage.partition_state import SlicePosition

if TYPE_CHECKING:  # the servicers' context imports the stores this module is used from
    from server.api.context import ServiceContext

log = logging.getLogger("partita.lineage")

# Keys listed per UpstreamSlice / DownstreamSlice field (partition_keys, missing, newer).
MAX_SLICE_KEYS = 1000
# Inputs recorded per run and returned inline (ClaimRunResponse.inputs, Materialization.inputs).
MAX_INPUTS = 1000
# Keys of one slice walked to list its missing keys.
MAX_WALKED_KEYS = 100_000
# Automatic runs per workflow per minute when Automation.max_runs_per_minute is 0.
DEFAULT_RUNS_PER_MINUTE = 600
# Runs a claim may hold (upstream policy WAIT) before it gives up for this call.
MAX_HOLDS_PER_CLAIM = 20
# The loop's batch sizes and pacing.
EVENT_BATCH = 1000
HOLD_BATCH = 200
LOOP_INTERVAL = 0.5
HOLD_SWEEP_INTERVAL = 5.0
# A loop's cursor is stored at least this often, or once it is this many events ahead.
PERSIST_INTERVAL = 60.0
PERSIST_BEHIND = 5000
CHUNK = 500


# ------------------------------------------------------------------------- dependencies
def mapping_from_proto(message: partitions_pb2.PartitionMapping) -> PartitionMapping | None:
    kind = message.WhichOneof("kind")
    if kind == "identity":
        return IdentityMapping()
    if kind == "time_window":
        return TimeWindowMapping(message.time_window.start_offset, message.time_window.end_offset)
    if kind == "all":
        return AllMapping()
    if kind == "last":
        return LastMapping()
    if kind == "static":
        return StaticMapping.create(
            (entry.upstream_key, list(entry.downstream_keys)) for entry in message.static.entries
        )
    return None


def mapping_to_proto(mapping: PartitionMapping) -> partitions_pb2.PartitionMapping:
    message = partitions_pb2.PartitionMapping()
    if isinstance(mapping, IdentityMapping):
        message.identity.SetInParent()
    elif isinstance(mapping, TimeWindowMapping):
        message.time_window.start_offset = mapping.start_offset
        message.time_window.end_offset = mapping.end_offset
        message.time_window.SetInParent()
    elif isinstance(mapping, AllMapping):
        message.all.SetInParent()
    elif isinstance(mapping, LastMapping):
        message.last.SetInParent()
    else:
        for up, downs in mapping.entries:
            message.static.entries.add(upstream_key=up, downstream_keys=list(downs))
        message.static.SetInParent()
    return message


def asset_spec(definition: WorkflowDefinition, asset_id: str) -> PartitionSpec | None:
    return definition.spec if asset_id in definition.partitioned_asset_ids else None


def tracked_assets(definition: WorkflowDefinition) -> list[str]:
    """Assets whose keys are the workflow's run keys, so its dependencies apply to them key by key."""
    if definition.spec is None:
        return list(definition.produced_asset_ids)
    return sorted(definition.partitioned_asset_ids)


@dataclass(frozen=True)
class Dependency:
    """One `consumes` entry of a workflow, resolved against the catalog."""

    index: int
    asset_id: str
    mapping: PartitionMapping
    explicit: bool
    downstream: WorkflowDefinition
    upstream: WorkflowDefinition | None
    upstream_spec: PartitionSpec | None
    problem: str = ""

    @property
    def fan_out(self) -> bool:
        return is_fan_out(self.mapping)

    @property
    def usable(self) -> bool:
        return self.upstream is not None and not self.problem


def _dependency(catalog: Catalog, definition: WorkflowDefinition, index: int) -> Dependency:
    declared = definition.message.consumes[index]
    producer = catalog.producer_of(declared.asset_id)
    upstream_spec = asset_spec(producer, declared.asset_id) if producer is not None else None
    explicit_mapping = (
        mapping_from_proto(declared.partition_mapping) if declared.HasField("partition_mapping") else None
    )
    mapping = explicit_mapping or default_mapping(upstream_spec, definition.spec)
    problem = ""
    if producer is None:
        problem = f"upstream asset {declared.asset_id!r} is not registered yet"
    else:
        found = mapping_violations(
            "partition_mapping",
            mapping,
            explicit_mapping is not None,
            upstream_spec,
            definition.spec,
            upstream_name=f"upstream asset {declared.asset_id!r}",
        )
        problem = "; ".join(v.description for v in found)
    return Dependency(
        index,
        declared.asset_id,
        mapping,
        explicit_mapping is not None,
        definition,
        producer,
        upstream_spec,
        problem,
    )


def dependencies(catalog: Catalog, definition: WorkflowDefinition) -> list[Dependency]:
    return [_dependency(catalog, definition, index) for index in range(len(definition.message.consumes))]


def consumers(catalog: Catalog, asset_id: str) -> list[Dependency]:
    """Every dependency on `asset_id`, of every workflow that consumes it."""
    found = []
    for definition in catalog.consumers_of(asset_id):
        for index, declared in enumerate(definition.message.consumes):
            if declared.asset_id == asset_id:
                found.append(_dependency(catalog, definition, index))
    return found


# ----------------------------------------------------------------------- key positions
def _targets(spec: PartitionSpec | None, asset_id: str, aligned: Aligned) -> list[Target]:
    """Where the aligned keys of `spec` sit (dynamic keys: only live ones of `asset_id`)."""
    if spec is None:
        return [Target("", 0, None)]
    if aligned.kind == "range":
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        return [
            Target(k, p, i) for k, p, i in range_keys(spec, aligned.first, aligned.last - aligned.first + 1)
        ]
    if aligned.kind != "keys":
        return []
    if isinstance(spec, DynamicSpec):
        found = store.dynamic_positions(asset_id, aligned.keys)
        return [Target(key, found[key], None) for key in aligned.keys if key in found]
    targets = []
    for key in aligned.keys:
        try:
            index = spec.index_of(key)
        except InvalidArgument:
            continue
        targets.append(Target(key, position_of_index(spec, index), index))
    return targets


def _key_bounds(spec: PartitionSpec | None, as_of: datetime) -> tuple[int | None, int | None, int]:
    """(lowest position, highest position, number of keys) as of `as_of`; dynamic: (None, None, n)."""
    if spec is None:
        return 0, 0, 1
    if isinstance(spec, DynamicSpec):
        return None, None, -1
    total = spec.count(as_of)
    if total == 0:
        return 0, -1, 0
    return position_of_index(spec, 0), position_of_index(spec, total - 1), total


def newest_key(spec: PartitionSpec | None, asset_id: str, as_of: datetime) -> str | None:
    if spec is None:
        return ""
    if isinstance(spec, DynamicSpec):
        return store.newest_dynamic_key(asset_id)
    total = spec.count(as_of)
    if total == 0:
        return None
    return spec.key_list[-1] if isinstance(spec, StaticSpec) else spec.key_for_index(total - 1)


def _key_count(spec: PartitionSpec | None, asset_id: str, as_of: datetime) -> int:
    if spec is None:
        return 1
    if isinstance(spec, DynamicSpec):
        return dynamic_partitions.live_count(asset_id)
    return spec.count(as_of)


# ---------------------------------------------------------------------- upstream slices
@dataclass
class ResolvedSlice:
    """One dependency's upstream slice for one downstream key, read from storage."""

    dependency: Dependency
    kind: str = "keys"  # keys | range | all | last | unresolved
    count: int = 0
    keys: list[str] = field(default_factory=list)  # the first MAX_SLICE_KEYS keys
    latest: dict[str, int] = field(default_factory=dict)  # materialization ids of listed keys that have one
    materialized_count: int = 0
    missing: list[str] = field(default_factory=list)  # up to MAX_SLICE_KEYS
    max_id: int = 0  # newest latest materialization id over the whole slice
    note: str = ""

    @property
    def missing_count(self) -> int:
        return max(0, self.count - self.materialized_count)

    def describe_missing(self) -> str:
        if self.kind == "unresolved":
            return self.note
        sample = ", ".join(quote_key(k) if k else "(unpartitioned)" for k in self.missing[:5])
        more = f" and {self.missing_count - 5} more" if self.missing_count > 5 else ""
        return f"{self.dependency.asset_id} is missing {sample}{more}"


def resolve_upstream(
    dependency: Dependency, key: str, as_of: datetime, list_limit: int = MAX_SLICE_KEYS
) -> ResolvedSlice:
    """The upstream slice `key` of the dependency's workflow reads."""
    result = ResolvedSlice(dependency)
    if not dependency.usable:
        result.kind = "unresolved"
        result.note = dependency.problem
        return result
    asset = dependency.asset_id
    up_spec = dependency.upstream_spec
    try:
        aligned = upstream_of(dependency.mapping, up_spec, dependency.downstream.spec, key)
    except InvalidArgument as error:
        result.kind = "unresolved"
        result.note = f"the key does not align with {asset}: {error.message}"
        return result
    if aligned.kind == "last":
        newest = newest_key(up_spec, asset, as_of)
        aligned = Aligned("keys", (newest,) if newest is not None else ())
        result.kind = "last"
    elif aligned.kind == "all":
        return _resolve_all(result, up_spec, as_of, list_limit)
    if aligned.kind == "keys":
        result.kind = result.kind if result.kind == "last" else "keys"
        keys = list(aligned.keys)
        if isinstance(up_spec, DynamicSpec):
            live = store.dynamic_positions(asset, keys)
            keys_known = [k for k in keys if k in live]
        else:
            keys_known = keys
        latest = store.latest_of_keys(asset, keys_known)
        result.count = len(keys)
        result.keys = keys[:list_limit]
        result.latest = {k: latest[k].materialization_id for k in result.keys if k in latest}
        result.materialized_count = len(latest)
        result.missing = [k for k in keys if k not in latest][:MAX_SLICE_KEYS]
        result.max_id = max((v.materialization_id for v in latest.values()), default=0)
        return result
    # An index range of a time-window or static definition.
    assert isinstance(up_spec, TimeWindowSpec | StaticSpec)
    result.kind = "range"
    first, last = aligned.first, aligned.last
    result.count = last - first + 1
    result.materialized_count, result.max_id = store.ordinal_range_summary(asset, first, last)
    listed = range_keys(up_spec, first, min(result.count, list_limit))
    result.keys = [k for k, _, _ in listed]
    if listed:
        result.latest = {
            k: m for k, _, m in store.materialized_in_ordinals(asset, first, first + len(listed) - 1)
        }
    if result.missing_count:
        result.missing = _missing_in_range(asset, up_spec, first, last)
    return result


def _missing_in_range(asset_id: str, spec: TimeWindowSpec | StaticSpec, first: int, last: int) -> list[str]:
    missing: list[str] = []
    index = first
    while index <= min(last, first + MAX_WALKED_KEYS - 1) and len(missing) < MAX_SLICE_KEYS:
        size = min(1000, last - index + 1)
        chunk = range_keys(spec, index, size)
        have = {o for _, o, _ in store.materialized_in_ordinals(asset_id, index, index + size - 1)}
        missing.extend(k for k, _, o in chunk if o not in have)
        index += size
    return missing[:MAX_SLICE_KEYS]


def _resolve_all(
    result: ResolvedSlice, spec: PartitionSpec | None, as_of: datetime, list_limit: int
) -> ResolvedSlice:
    asset = result.dependency.asset_id
    result.kind = "all"
    result.max_id = store.watermarks([asset]).get(asset, 0)
    if spec is None:
        latest = store.latest_of_keys(asset, [""])
        result.count, result.keys = 1, [""]
        result.latest = {"": latest[""].materialization_id} if "" in latest else {}
        result.materialized_count = len(latest)
        result.missing = [] if latest else [""]
        return result
    if isinstance(spec, DynamicSpec):
        rows = dynamic_partitions.live_keys(asset, 0, list_limit)
        keys = [row.partition_key for row in rows]
        latest = store.latest_of_keys(asset, keys)
        result.count = dynamic_partitions.live_count(asset)
        result.keys = keys
        result.latest = {k: v.materialization_id for k, v in latest.items()}
        counts, _ = partition_state.dynamic_status_counts(asset)
        result.materialized_count = result.count - counts.get("MISSING", 0)
        result.missing = [k for k in keys if k not in latest]
        return result
    low, high, total = _key_bounds(spec, as_of)
    result.count = total
    if total == 0:
        return result
    assert low is not None and high is not None
    listed = range_keys(spec, 0, min(total, list_limit))
    result.keys = [k for k, _, _ in listed]
    result.latest = {k: m for k, _, m in store.materialized_in_ordinals(asset, 0, len(listed) - 1)}
    result.materialized_count = _materialized_between(asset, low, high)
    if result.missing_count:
        ordinals = unmaterialized_ordinals(asset, 0, total, MAX_SLICE_KEYS)
        result.missing = [_key_at(spec, o) for o in ordinals]
    return result


def _key_at(spec: TimeWindowSpec | StaticSpec, index: int) -> str:
    return spec.key_list[index] if isinstance(spec, StaticSpec) else spec.key_for_index(index)


def _materialized_between(asset_id: str, low: int, high: int) -> int:
    """Keys with a materialization whose position is in low..high, from the status counters."""
    kept = partition_state.status_counts(asset_id).get("MATERIALIZED", 0)
    outside = partition_state.status_counts_outside(asset_id, low, high).get("MATERIALIZED", 0)
    return kept - outside + store.touched_with_materialization(asset_id, low, high)


def unmaterialized_ordinals(asset_id: str, first: int, stop: int, limit: int) -> list[int]:
    """Ordinals in first..stop-1 of keys without a materialization, in order: MISSING keys (found
    through the ordinal buckets, like MISSING pages) and FAILED / IN_PROGRESS keys that never had one."""
    if stop <= first:
        return []
    candidates = partition_state.missing_ordinals(asset_id, first, stop, limit)
    if candidates:
        stop = min(stop, candidates[-1] + 1) if len(candidates) > limit else stop
    touched_without = store.unmaterialized_touched(asset_id, first, stop, limit + 1)
    return sorted(set(candidates) | set(touched_without))[:limit]


# -------------------------------------------------------------------- claims and holds
@dataclass(frozen=True)
class UpstreamCheck:
    inputs: list[tuple[str, str, int]]
    input_count: int
    key_horizon: int
    fanout_horizon: int
    missing: list[str]
    # What is missing from slices other than all-mapping ones (automation waits only for these).
    missing_keyed: list[str] = field(default_factory=list)


def check_upstream(
    catalog: Catalog, definition: WorkflowDefinition, key: str, now: datetime
) -> UpstreamCheck:
    """The upstream materializations current for a run of `definition` at `key`, and what is missing."""
    inputs: list[tuple[str, str, int]] = []
    count = key_horizon = fanout_horizon = 0
    missing: list[str] = []
    keyed: list[str] = []
    if definition.spec is not None and not key:
        return UpstreamCheck([], 0, 0, 0, [])  # ranged runs read no per-key slices
    for dependency in dependencies(catalog, definition):
        resolved = resolve_upstream(dependency, key, now, list_limit=MAX_SLICE_KEYS)
        if dependency.fan_out:
            fanout_horizon = max(fanout_horizon, resolved.max_id)
        else:
            key_horizon = max(key_horizon, resolved.max_id)
        count += resolved.materialized_count
        for upstream_key in resolved.keys:
            if upstream_key in resolved.latest and len(inputs) < MAX_INPUTS:
                inputs.append((dependency.asset_id, upstream_key, resolved.latest[upstream_key]))
        if resolved.kind == "unresolved" or resolved.missing_count:
            missing.append(resolved.describe_missing())
            if resolved.kind == "unresolved" or not isinstance(dependency.mapping, AllMapping):
                keyed.append(missing[-1])
    return UpstreamCheck(inputs, count, key_horizon, fanout_horizon, missing, keyed)


def _waits(definition: WorkflowDefinition) -> bool:
    return definition.message.upstream_policy == workflow_pb2.UPSTREAM_POLICY_WAIT


def hold_reason(check: UpstreamCheck) -> str:
    return ("waiting for upstream data: " + "; ".join(check.missing))[:1000] if check.missing else ""


def claim_checked(
    outbox: Outbox, catalog: Catalog, claim: Callable[[], Run | None], now: datetime
) -> tuple[Run | None, list[tuple[str, str, int]]]:
    """Claims with `claim()` and records the claimed run's upstream inputs; a run of a WAIT
    workflow whose upstream slices are incomplete is put back, held, and the next one claimed."""
    now_us = micros(now)
    for _ in range(MAX_HOLDS_PER_CLAIM):
        run = claim()
        if run is None:
            return None, []
        definition = catalog.workflow(run.workflow_slug)
        if definition is None or not definition.message.consumes:
            return run, []
        check = check_upstream(catalog, definition, run.partition_key, now)
        if check.missing and _waits(definition):
            reason = hold_reason(check)
            if store.hold_claimed(run.id, reason, now_us):
                run.hold_reason = reason
                _hold_event(outbox, run, f"held: {reason}")
            continue
        store.save_run_inputs(
            run.id,
            check.inputs,
            check.key_horizon,
            check.fanout_horizon,
            check.input_count,
            "; ".join(check.missing)[:1000],
            now_us,
        )
        return run, check.inputs
    return None, []


def _hold_event(outbox: Outbox, run: Run, message: str) -> None:
    from server.lifecycle import log_transition, run_event

    outbox.add(run_event(run, "PROGRESS", runs.QUEUED, message))
    log_transition(run, runs.QUEUED, f"run {run.id} {message}")


def inputs_json(run: Run | None) -> str:
    """Materialization.inputs of a run's materializations: what its attempt read (first 1,000)."""
    if run is None:
        return "[]"
    return json.dumps(
        [
            {"asset_id": asset_id, "partition_key": key, "materialization_id": str(materialization_id)}
            for asset_id, key, materialization_id in store.run_inputs(run.id, MAX_INPUTS)
        ],
        separators=(",", ":"),
    )


# ------------------------------------------------------------------- materializations
def on_materialized(
    catalog: Catalog,
    definition: WorkflowDefinition,
    rows: Sequence[RecordedMaterialization],
    run: Run | None,
    positions: dict[tuple[str, str], SlicePosition],
    now_us: int,
) -> None:
    """In the transaction that recorded `rows`: watermarks, stale marks downstream, and the
    lineage row of each recorded key whose workflow consumes something."""
    if not rows:
        return
    # One recording's rows, ids rising in order: each asset's last row is its newest.
    newest = {row.asset_id: row for row in rows}
    store.bump_watermarks({asset_id: (row.id, row.create_time) for asset_id, row in newest.items()})
    marking = {
        asset_id: [
            dependency
            for dependency in consumers(catalog, asset_id)
            if dependency.usable and not dependency.fan_out
        ]
        for asset_id in newest
    }
    if not any(marking.values()) and not definition.message.consumes:
        return  # nothing downstream to mark, no lineage to keep: no per-row work
    by_asset: dict[str, list[RecordedMaterialization]] = {}
    for row in rows:
        by_asset.setdefault(row.asset_id, []).append(row)
    for asset_id, dependencies in marking.items():
        for dependency in dependencies:
            _mark_downstream(dependency, by_asset[asset_id], positions, now_us)
    if not definition.message.consumes:
        return
    recorded = store.run_lineage(run.id) if run is not None else None
    if recorded is not None:
        key_horizon: int | None = recorded.key_horizon
        fanout = recorded.fanout_horizon
    else:  # a reported slice (or a run claimed before its workflow read anything): read it all
        key_horizon, fanout = None, fanout_watermark(catalog, definition, from_micros(now_us))
    for asset_id in tracked_assets(definition):
        items = [
            (Target(row.partition_key, where.position, where.ordinal), int(row.id))
            for row in by_asset.get(asset_id, [])
            for where in (positions.get((row.asset_id, row.partition_key), SlicePosition(0, None)),)
        ]
        if items:
            store.record_downstream(asset_id, items, key_horizon, fanout, now_us)


def _mark_downstream(
    dependency: Dependency,
    rows: Sequence[RecordedMaterialization],
    positions: dict[tuple[str, str], SlicePosition],
    now_us: int,
) -> None:
    downstream = dependency.downstream
    aligned_sets: list[Aligned] = []
    ranges: list[tuple[int, int]] = []
    time_windows = isinstance(dependency.upstream_spec, TimeWindowSpec)
    for row in rows:
        where = positions.get((row.asset_id, row.partition_key)) if time_windows else None
        try:
            aligned = downstream_of(
                dependency.mapping,
                dependency.upstream_spec,
                downstream.spec,
                row.partition_key,
                where.ordinal if where is not None else None,
            )
        except InvalidArgument:
            continue
        if aligned.kind == "range":
            ranges.append((aligned.first, aligned.last))
        else:
            aligned_sets.append(aligned)
    # Consecutive upstream keys align with overlapping ranges: walk each merged range once.
    for first, last in _merged(ranges):
        aligned_sets.append(Aligned("range", first=first, last=last))
    marker = max(int(row.id) for row in rows)
    for asset_id in tracked_assets(downstream):
        targets: dict[str, Target] = {}
        for aligned in aligned_sets:
            for target in _targets(downstream.spec, asset_id, aligned):
                targets[target.partition_key] = target
        if targets:
            store.mark_stale(asset_id, list(targets.values()), marker, now_us)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


# --------------------------------------------------------------------------- reading
@dataclass
class AssetView:
    """What reads of one asset's staleness and freshness need, resolved once per request."""

    asset_id: str
    definition: WorkflowDefinition
    spec: PartitionSpec | None
    dependencies: list[Dependency]
    rule: FreshnessRule | None
    _watermarks: dict[int, int] = field(default_factory=dict)

    def watermark(self, as_of: datetime) -> int:
        moment = micros(as_of)
        if moment not in self._watermarks:
            self._watermarks[moment] = _fanout_watermark(self.dependencies, as_of)
        return self._watermarks[moment]


def asset_view(catalog: Catalog, definition: WorkflowDefinition, asset_id: str) -> AssetView:
    spec = asset_spec(definition, asset_id)
    tracked = asset_id in tracked_assets(definition)
    declaration = next((d for d in definition.message.produces if d.asset_id == asset_id), None)
    rule = None
    if declaration is not None and declaration.HasField("freshness_policy"):
        policy = declaration.freshness_policy
        lag = policy.maximum_lag.ToTimedelta() if policy.HasField("maximum_lag") else None
        zone = spec.timezone if isinstance(spec, TimeWindowSpec) else "UTC"
        rule = freshness_rule(lag, policy.deadline_cron, zone)
    return AssetView(asset_id, definition, spec, dependencies(catalog, definition) if tracked else [], rule)


def _fanout_watermark(deps: Sequence[Dependency], as_of: datetime) -> int:
    value = 0
    for dependency in deps:
        if not dependency.fan_out or not dependency.usable:
            continue
        if isinstance(dependency.mapping, AllMapping):
            value = max(value, store.watermarks([dependency.asset_id]).get(dependency.asset_id, 0))
        else:
            newest = newest_key(dependency.upstream_spec, dependency.asset_id, as_of)
            if newest is not None:
                found = store.latest_of_keys(dependency.asset_id, [newest]).get(newest)
                value = max(value, found.materialization_id if found else 0)
    return value


def fanout_watermark(catalog: Catalog, definition: WorkflowDefinition, as_of: datetime) -> int:
    return _fanout_watermark(dependencies(catalog, definition), as_of)


def _is_stale(view: AssetView, row: LineageRow | None, watermark: int) -> bool:
    if not view.dependencies:
        return False
    if row is not None and row.stale:
        return True
    if watermark <= 0:
        return False
    return row is None or row.materialization_id is None or (row.fanout_horizon or 0) < watermark


def _window_end(view: AssetView, key: str, windows: dict[str, tuple[datetime, datetime]]) -> datetime | None:
    if not isinstance(view.spec, TimeWindowSpec) or not key:
        return None
    bounds = windows.get(key)
    if bounds is not None:
        return bounds[1]
    return view.spec.window(key).end


def _is_overdue(
    view: AssetView,
    key: str,
    state: PartitionState | None,
    windows: dict[str, tuple[datetime, datetime]],
    as_of: datetime,
) -> bool:
    rule = view.rule
    if rule is None:
        return False
    materialized = state is not None and state.latest_materialization_id is not None
    end = _window_end(view, key, windows)
    if end is not None:
        return rule.window_overdue(end, materialized, as_of)
    latest = (
        from_micros(int(state.latest_materialization_time))
        if state is not None and state.latest_materialization_time is not None
        else None
    )
    return rule.age_overdue(latest, as_of)


def partition_flags(
    view: AssetView,
    entries: Sequence[tuple[str, PartitionState | None]],
    windows: dict[str, tuple[datetime, datetime]],
    as_of: datetime,
) -> list[tuple[bool, bool]]:
    """(stale, overdue) of each entry of a page."""
    if not view.dependencies and view.rule is None:
        return [(False, False)] * len(entries)
    rows = store.lineage_rows(view.asset_id, [key for key, _ in entries]) if view.dependencies else {}
    watermark = view.watermark(as_of) if view.dependencies else 0
    return [
        (_is_stale(view, rows.get(key), watermark), _is_overdue(view, key, state, windows, as_of))
        for key, state in entries
    ]


def stale_count(view: AssetView, as_of: datetime) -> int:
    if not view.dependencies:
        return 0
    low, high, total = _key_bounds(view.spec, as_of)
    if total == 0:
        return 0
    watermark = view.watermark(as_of)
    if watermark > 0:
        if total < 0:
            total = dynamic_partitions.live_count(view.asset_id)
        return max(0, total - store.fresh_count(view.asset_id, watermark, low, high))
    return store.stale_count(view.asset_id, low, high)


def _due_count(view: AssetView, as_of: datetime) -> int:
    """Time windows: how many keys (a prefix of the key list) are due as of `as_of`."""
    spec, rule = view.spec, view.rule
    assert isinstance(spec, TimeWindowSpec) and rule is not None
    bound = math.floor(rule.due_window_end(as_of).timestamp())
    due = index_at_or_after(spec, bound + 1) - 1
    return max(0, min(due, spec.count(as_of)))


def overdue_count(view: AssetView, as_of: datetime) -> int:
    rule = view.rule
    if rule is None:
        return 0
    spec = view.spec
    if isinstance(spec, TimeWindowSpec):
        due = _due_count(view, as_of)
        if due == 0:
            return 0
        low, high = position_of_index(spec, 0), position_of_index(spec, due - 1)
        return max(0, due - _materialized_between(view.asset_id, low, high))
    cutoff = micros(rule.age_cutoff(as_of))
    if spec is None:
        state = partition_state.rows_for_keys(view.asset_id, [""]).get("")
        return int(_is_overdue(view, "", state, {}, as_of))
    if isinstance(spec, StaticSpec):
        total = spec.count()
        return max(0, total - store.materialized_since(view.asset_id, cutoff, 0, total - 1))
    total = dynamic_partitions.live_count(view.asset_id)
    return max(0, total - store.materialized_since(view.asset_id, cutoff, None, None))


Candidate = tuple[
    int, str
]  # (slot, key): slot = index for time windows and static keys, registry id for dynamic


def _walk_source(
    view: AssetView, as_of: datetime
) -> Callable[[int, int], tuple[list[Candidate], int | None]]:
    """Every key of the definition as of `as_of`, from a slot on."""
    spec = view.spec

    def walk(start: int, limit: int) -> tuple[list[Candidate], int | None]:
        if spec is None:
            return ([(0, "")] if start <= 0 else []), None
        if isinstance(spec, DynamicSpec):
            rows = dynamic_partitions.live_keys(view.asset_id, start - 1, limit)
            following = int(rows[-1].id) + 1 if len(rows) == limit else None
            return [(int(row.id), row.partition_key) for row in rows], following
        total = spec.count(as_of)
        if start >= total:
            return [], None
        keys = spec.keys_page(start, limit, as_of)
        following = start + len(keys) if start + len(keys) < total else None
        return list(enumerate(keys, start)), following

    return walk


def _stale_source(
    view: AssetView, as_of: datetime
) -> Callable[[int, int], tuple[list[Candidate], int | None]]:
    """Keys marked stale (no all/last watermark in play), from a slot on."""
    spec = view.spec
    _, high, total = _key_bounds(spec, as_of)

    def stale(start: int, limit: int) -> tuple[list[Candidate], int | None]:
        if total == 0:
            return [], None
        if isinstance(spec, TimeWindowSpec | StaticSpec):
            low_position = position_of_index(spec, start)
        else:
            low_position = start if spec is not None else 0
        rows = store.stale_rows(view.asset_id, low_position, high, limit)
        found: list[Candidate] = []
        for row in rows:
            slot = row.ordinal if isinstance(spec, TimeWindowSpec | StaticSpec) else row.position
            found.append((int(slot if slot is not None else row.position), row.partition_key))
        following = found[-1][0] + 1 if len(rows) == limit and found else None
        return found, following

    return stale


def _overdue_window_source(
    view: AssetView, as_of: datetime
) -> Callable[[int, int], tuple[list[Candidate], int | None]]:
    """Due time windows without a materialization, from an index on."""
    spec = view.spec
    assert isinstance(spec, TimeWindowSpec)
    due = _due_count(view, as_of)

    def overdue(start: int, limit: int) -> tuple[list[Candidate], int | None]:
        ordinals = unmaterialized_ordinals(view.asset_id, start, due, limit)
        following = ordinals[-1] + 1 if len(ordinals) == limit else None
        return [(o, spec.key_for_index(o)) for o in ordinals], following

    return overdue


def filtered_page(
    view: AssetView,
    statuses: Collection[str],
    stale_only: bool,
    overdue_only: bool,
    as_of: datetime,
    cursor: dict[str, Any],
    limit: int,
) -> PartitionPage:
    """A page of partitions keeping only stale and/or overdue ones (and `statuses`, if any), in
    definition order. It reads from the sparsest source that can hold matches: stale marks, or
    due windows without data; with an all/last watermark in play (most keys stale) or an
    age-based policy it walks the keys."""
    wanted = set(statuses)
    counts = status_counts(view.definition, view.asset_id, as_of)
    if (stale_only and not view.dependencies) or (overdue_only and view.rule is None):
        return PartitionPage([], counts, None, 0)
    watermark = view.watermark(as_of) if view.dependencies else 0
    if stale_only and watermark <= 0:
        source = _stale_source(view, as_of)
    elif overdue_only and isinstance(view.spec, TimeWindowSpec):
        source = _overdue_window_source(view, as_of)
    else:
        source = _walk_source(view, as_of)

    def matches(
        candidates: list[Candidate],
    ) -> list[tuple[int, str, PartitionState | None, tuple[datetime, datetime] | None]]:
        keys = [key for _, key in candidates]
        states = partition_state.rows_for_keys(view.asset_id, keys) if keys else {}
        rows = store.lineage_rows(view.asset_id, keys) if stale_only and keys else {}
        kept = []
        for slot, key in candidates:
            state = states.get(key)
            if wanted and (state.status if state is not None else "MISSING") not in wanted:
                continue
            if stale_only and not _is_stale(view, rows.get(key), watermark):
                continue
            bounds: tuple[datetime, datetime] | None = None
            if isinstance(view.spec, TimeWindowSpec):
                window = view.spec.window(key)
                bounds = (window.start, window.end)
            if overdue_only and not _is_overdue(view, key, state, {key: bounds} if bounds else {}, as_of):
                continue
            kept.append((slot, key, state, bounds))
        return kept

    start = int(cursor.get("from", 0))
    found: list[tuple[int, str, PartitionState | None, tuple[datetime, datetime] | None]] = []
    position: int | None = start
    while position is not None and len(found) <= limit:
        candidates, position = source(position, max(limit + 1, 256))
        found.extend(matches(candidates))
    page = found[:limit]
    following = {"from": found[limit][0]} if len(found) > limit else None
    only_one = not wanted and stale_only != overdue_only
    if only_one:
        total = stale_count(view, as_of) if stale_only else overdue_count(view, as_of)
    elif following is None and start == 0:
        total = len(found)
    else:
        total = 0
        position = 0
        while position is not None:
            candidates, position = source(position, 5000)
            total += len(matches(candidates))
    windows = {key: bounds for _, key, _, bounds in page if bounds is not None}
    return PartitionPage([(key, state) for _, key, state, _ in page], counts, following, total, windows)


# ------------------------------------------------------------------ GetPartition & co
def check_partition_key(
    view: AssetView, key: str, as_of: datetime, field_name: str = "partition_key"
) -> None:
    spec = view.spec
    if spec is None:
        if key:
            raise InvalidArgument.for_field(
                field_name, f"must be empty: asset {view.asset_id!r} is not partitioned"
            )
        return
    if not key:
        raise InvalidArgument.for_field(field_name, f"is required: asset {view.asset_id!r} is partitioned")
    if isinstance(spec, DynamicSpec):
        if not store.dynamic_positions(view.asset_id, [key]):
            raise InvalidArgument.for_field(
                field_name, f"{quote_key(key)} is not a registered key of dynamic asset {view.asset_id!r}"
            )
        return
    spec.validate_key(key, as_of, field_name)


def _consumed(
    view: AssetView, state: PartitionState | None
) -> tuple[dict[tuple[str, str], int], int | None, int | None]:
    """What the key's latest materialization read: (inputs by (asset, key), key horizon, fan-out
    horizon); horizons are None when it was never materialized, the materialization id itself
    for a reported one."""
    if state is None or state.latest_materialization_id is None:
        return {}, None, None
    materialization = sql.select_models(Materialization, "id = %s", (state.latest_materialization_id,))
    run_id = materialization[0].run_id if materialization else None
    recorded = store.run_lineage(int(run_id)) if run_id is not None else None
    if recorded is None:
        own = int(state.latest_materialization_id)
        return {}, own, own
    inputs = {(a, k): m for a, k, m in store.run_inputs(recorded.run_id, MAX_INPUTS)}
    return inputs, recorded.key_horizon, recorded.fanout_horizon


def upstream_message(
    resolved: ResolvedSlice, consumed: tuple[dict[tuple[str, str], int], int | None, int | None]
) -> tuple[asset_pb2.UpstreamSlice, list[str]]:
    """The slice as a message, and its newer keys."""
    dependency = resolved.dependency
    inputs, key_horizon, fanout_horizon = consumed
    horizon = fanout_horizon if dependency.fan_out else key_horizon
    newer = []
    for key in resolved.keys:
        latest = resolved.latest.get(key)
        if latest is None:
            continue
        read = inputs.get((dependency.asset_id, key))
        if horizon is None or latest > (read if read is not None else horizon):
            newer.append(key)
    unpartitioned = dependency.upstream is not None and dependency.upstream_spec is None
    message = asset_pb2.UpstreamSlice(
        asset_id=dependency.asset_id,
        partition_keys=[] if unpartitioned else resolved.keys,
        materialized=resolved.kind != "unresolved" and resolved.missing_count == 0,
        missing_partition_keys=[] if unpartitioned else resolved.missing,
        newer_partition_keys=[] if unpartitioned else newer,
        partition_key_count=0 if unpartitioned else resolved.count,
        partition_mapping=mapping_to_proto(dependency.mapping),
        registered=dependency.upstream is not None,
    )
    return message, newer


def upstream_slices(
    view: AssetView, key: str, state: PartitionState | None, as_of: datetime, deps: Sequence[Dependency]
) -> list[tuple[ResolvedSlice, asset_pb2.UpstreamSlice, list[str]]]:
    consumed = _consumed(view, state)
    result = []
    for dependency in deps:
        resolved = resolve_upstream(dependency, key, as_of)
        message, newer = upstream_message(resolved, consumed)
        result.append((resolved, message, newer))
    return result


@dataclass(frozen=True)
class DownstreamRef:
    dependency: Dependency
    asset_id: str


def downstream_refs(catalog: Catalog, asset_id: str) -> list[DownstreamRef]:
    return [
        DownstreamRef(dependency, downstream_asset)
        for dependency in consumers(catalog, asset_id)
        for downstream_asset in sorted(dependency.downstream.produced_asset_ids)
    ]


def downstream_message(ref: DownstreamRef, upstream_key: str, as_of: datetime) -> asset_pb2.DownstreamSlice:
    dependency = ref.dependency
    downstream = dependency.downstream
    spec = asset_spec(downstream, ref.asset_id)
    message = asset_pb2.DownstreamSlice(
        asset_id=ref.asset_id,
        workflow_slug=downstream.slug,
        partition_mapping=mapping_to_proto(dependency.mapping),
    )
    if not dependency.usable:
        return message
    if ref.asset_id not in tracked_assets(downstream):
        # An unpartitioned asset of a partitioned workflow: every run writes its one slice.
        message.partition_key_count = 0
        return message
    try:
        aligned = downstream_of(dependency.mapping, dependency.upstream_spec, downstream.spec, upstream_key)
    except InvalidArgument:
        return message
    if aligned.if_newest and newest_key(dependency.upstream_spec, dependency.asset_id, as_of) != upstream_key:
        return message
    if spec is None:
        message.partition_key_count = 1  # unpartitioned: its one slice reads it
        return message
    if aligned.kind == "all":
        message.partition_key_count = _key_count(spec, ref.asset_id, as_of)
        if isinstance(spec, DynamicSpec):
            message.partition_keys.extend(
                row.partition_key for row in dynamic_partitions.live_keys(ref.asset_id, 0, MAX_SLICE_KEYS)
            )
        else:
            message.partition_keys.extend(spec.keys_page(0, MAX_SLICE_KEYS, as_of))
        return message
    if aligned.kind == "range":
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        count = aligned.last - aligned.first + 1
        message.partition_key_count = count
        message.partition_keys.extend(
            k for k, _, _ in range_keys(spec, aligned.first, min(count, MAX_SLICE_KEYS))
        )
        return message
    keys = [t.partition_key for t in _targets(spec, ref.asset_id, aligned)]
    message.partition_key_count = len(keys)
    message.partition_keys.extend(keys[:MAX_SLICE_KEYS])
    return message


def explanations(
    view: AssetView,
    key: str,
    state: PartitionState | None,
    slices: Sequence[tuple[ResolvedSlice, asset_pb2.UpstreamSlice, list[str]]],
    stale: bool,
    overdue: bool,
    as_of: datetime,
) -> list[str]:
    """Why the partition has its status, staleness and freshness, in words."""
    notes: list[str] = []
    if state is not None and state.in_flight_run_id is not None:
        run = runs.get_run(int(state.in_flight_run_id))
        if run is not None:
            held = getattr(run, "hold_reason", "")
            if held:
                notes.append(f"run {run.id} is queued but held: {held}")
            else:
                notes.append(
                    f"run {run.id} is {run.state.lower()} (attempt {run.attempt} of {run.max_attempts})"
                )
    if state is None or state.latest_materialization_id is None:
        notes.append("never materialized")
    else:
        at = from_micros(int(state.latest_materialization_time or 0)).isoformat()
        notes.append(f"latest materialization {state.latest_materialization_id} at {at}")
    if not view.dependencies:
        notes.append("reads no upstream assets")
    for resolved, message, newer in slices:
        dependency = resolved.dependency
        how = describe_mapping(dependency.mapping) + ("" if dependency.explicit else " (default)")
        if resolved.kind == "unresolved":
            notes.append(f"upstream {dependency.asset_id}: {resolved.note}")
            continue
        if message.partition_keys or resolved.count > 1:
            shown = ", ".join(quote_key(k) for k in resolved.keys[:3])
            more = f" … ({resolved.count} keys)" if resolved.count > 3 else ""
            reads = f"keys {shown}{more}" if resolved.count else "no keys"
        else:
            reads = "its one slice"
        notes.append(
            f"upstream {dependency.asset_id} via {how}: reads {reads}; "
            f"{resolved.materialized_count} of {resolved.count} materialized"
        )
        if newer:
            shown = ", ".join(quote_key(k) if k else "(unpartitioned)" for k in newer[:5])
            more = f" and {len(newer) - 5} more" if len(newer) > 5 else ""
            never = state is None or state.latest_materialization_id is None
            verb = (
                "has data while this partition was never materialized"
                if never
                else ("was materialized after this partition read it")
            )
            notes.append(f"stale: upstream {dependency.asset_id} {shown}{more} {verb}")
    if stale and not any(n.startswith("stale:") for n in notes):
        notes.append("stale: an upstream slice it reads changed after it was materialized")
    if not stale and view.dependencies:
        notes.append("not stale: it read the newest data of every upstream slice")
    notes.extend(_freshness_notes(view, key, state, overdue, as_of))
    return notes


def _freshness_notes(
    view: AssetView, key: str, state: PartitionState | None, overdue: bool, as_of: datetime
) -> list[str]:
    rule = view.rule
    if rule is None:
        return ["no freshness policy"]
    policy = f"maximum_lag {rule.maximum_lag}" + (
        f", deadline_cron {rule.deadline_cron!r}" if rule.deadline_cron else ""
    )
    materialized = state is not None and state.latest_materialization_id is not None
    if isinstance(view.spec, TimeWindowSpec) and key:
        window = view.spec.window(key)
        deadline = rule.window_deadline(window.end)
        span = f"window {window.start.isoformat()} to {window.end.isoformat()}"
        if overdue:
            return [
                f"overdue: {span} closed and was due by {deadline.isoformat()} ({policy}), with no materialization"
            ]
        if materialized:
            return [f"on time: {span} is materialized ({policy})"]
        return [f"on time: {span} is due by {deadline.isoformat()} ({policy}), as of {as_of.isoformat()}"]
    cutoff = rule.age_cutoff(as_of)
    if overdue:
        if not materialized:
            return [f"overdue: never materialized ({policy})"]
        at = from_micros(int(state.latest_materialization_time or 0)).isoformat() if state else ""
        return [f"overdue: latest materialization at {at} is older than {cutoff.isoformat()} ({policy})"]
    return [f"on time: materialized since {cutoff.isoformat()} ({policy})"]


Summarize = Callable[..., list[asset_pb2.PartitionSummary]]


def partition_response(
    catalog: Catalog,
    definition: WorkflowDefinition,
    asset_id: str,
    key: str,
    as_of: datetime,
    summarize: Summarize,
) -> asset_pb2.GetPartitionResponse:
    """GetPartition: the summary, every upstream slice, every downstream dependent (the first
    1,000), and explanations."""
    view = asset_view(catalog, definition, asset_id)
    check_partition_key(view, key, as_of)
    state = partition_state.rows_for_keys(asset_id, [key]).get(key)
    (summary,) = summarize(definition, asset_id, [(key, state)], view=view, as_of=as_of)
    slices = upstream_slices(view, key, state, as_of, view.dependencies)
    response = asset_pb2.GetPartitionResponse(
        partition=summary,
        upstream=[message for _, message, _ in slices],
        downstream=[
            downstream_message(ref, key, as_of) for ref in downstream_refs(catalog, asset_id)[:MAX_SLICE_KEYS]
        ],
    )
    response.explanations.extend(
        explanations(view, key, state, slices, summary.stale, summary.overdue, as_of)
    )
    return response


def upstream_page(
    catalog: Catalog,
    definition: WorkflowDefinition,
    asset_id: str,
    key: str,
    as_of: datetime,
    offset: int,
    limit: int,
) -> tuple[list[asset_pb2.UpstreamSlice], bool]:
    """GetUpstreamPartitions: one slice per dependency, `limit` dependencies from `offset`."""
    view = asset_view(catalog, definition, asset_id)
    check_partition_key(view, key, as_of)
    state = partition_state.rows_for_keys(asset_id, [key]).get(key)
    chosen = view.dependencies[offset : offset + limit]
    slices = upstream_slices(view, key, state, as_of, chosen)
    return [message for _, message, _ in slices], offset + limit < len(view.dependencies)


def downstream_page(
    catalog: Catalog,
    definition: WorkflowDefinition,
    asset_id: str,
    key: str,
    as_of: datetime,
    offset: int,
    limit: int,
) -> tuple[list[asset_pb2.DownstreamSlice], bool]:
    """GetDownstreamPartitions: one slice per (downstream asset, dependency), `limit` from `offset`."""
    view = asset_view(catalog, definition, asset_id)
    check_partition_key(view, key, as_of)
    refs = downstream_refs(catalog, asset_id)
    return [
        downstream_message(ref, key, as_of) for ref in refs[offset : offset + limit]
    ], offset + limit < len(refs)


# ------------------------------------------------------------------------ registration
@dataclass
class RegistrationPlan:
    """Downstream assets whose lineage rows must be rebuilt after the registration is saved."""

    rebuild_own: bool = False
    rebuild_consumers: list[str] = field(default_factory=list)


def check_registration(
    catalog: Catalog,
    workflow: workflow_pb2.Workflow,
    spec: PartitionSpec | None,
    produced_specs: dict[str, PartitionSpec | None],
) -> RegistrationPlan:
    """Inside the registration transaction, before saving: mappings against the registered
    upstream assets (INVALID_ARGUMENT), consumers' mappings against this workflow's new
    definitions and dependency cycles (FAILED_PRECONDITION). Returns what to rebuild."""
    violations: list[FieldViolation] = []
    for index, declaration in enumerate(workflow.produces):
        if declaration.HasField("freshness_policy"):
            policy = declaration.freshness_policy
            own = produced_specs.get(declaration.asset_id)
            violations.extend(
                freshness_violations(
                    f"workflow.produces[{index}].freshness_policy",
                    policy.maximum_lag.ToTimedelta() if policy.HasField("maximum_lag") else None,
                    policy.deadline_cron,
                    own.timezone if isinstance(own, TimeWindowSpec) else "UTC",
                )
            )
    if workflow.HasField("upstream_max_wait") and workflow.upstream_max_wait.ToTimedelta() < timedelta(0):
        violations.append(FieldViolation("workflow.upstream_max_wait", "must not be negative"))
    for index, declared in enumerate(workflow.consumes):
        field_path = f"workflow.consumes[{index}].partition_mapping"
        explicit = (
            mapping_from_proto(declared.partition_mapping) if declared.HasField("partition_mapping") else None
        )
        producer = catalog.producer_of(declared.asset_id)
        if producer is not None and producer.slug == workflow.slug:
            producer = None  # it gave the asset up in this registration: nobody produces it now
        upstream_spec = asset_spec(producer, declared.asset_id) if producer is not None else None
        mapping = explicit or default_mapping(upstream_spec, spec)
        violations.extend(
            mapping_violations(
                field_path,
                mapping,
                explicit is not None,
                upstream_spec,
                spec,
                upstream_known=producer is not None,
                upstream_name=f"upstream asset {declared.asset_id!r}",
            )
        )
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(
            f"invalid workflow: {first.field}: {first.description}{more}", violations=violations
        )
    _check_consumers(catalog, workflow, produced_specs)
    _check_cycles(workflow)
    return _plan(catalog, workflow, spec)


def _check_consumers(
    catalog: Catalog, workflow: workflow_pb2.Workflow, produced_specs: dict[str, PartitionSpec | None]
) -> None:
    for asset_id, upstream_spec in sorted(produced_specs.items()):
        for consumer in catalog.consumers_of(asset_id):
            if consumer.slug == workflow.slug:
                continue
            for index, declared in enumerate(consumer.message.consumes):
                if declared.asset_id != asset_id:
                    continue
                explicit = (
                    mapping_from_proto(declared.partition_mapping)
                    if declared.HasField("partition_mapping")
                    else None
                )
                mapping = explicit or default_mapping(upstream_spec, consumer.spec)
                found = mapping_violations(
                    f"consumes[{index}].partition_mapping",
                    mapping,
                    explicit is not None,
                    upstream_spec,
                    consumer.spec,
                    upstream_name=f"asset {asset_id!r}",
                )
                if found:
                    raise FailedPrecondition(
                        f"workflow {consumer.slug!r} reads asset {asset_id!r} with a mapping this definition makes "
                        f"impossible ({found[0].field}: {found[0].description}); change that workflow's "
                        "mapping first",
                        reason="PARTITION_MAPPING_MISMATCH",
                        metadata={"asset_id": asset_id, "workflow_slug": consumer.slug},
                    )


def _check_cycles(workflow: workflow_pb2.Workflow) -> None:
    producers: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    for slug, definition in sql.rows("SELECT slug, definition FROM workflow"):
        if slug == workflow.slug:
            continue
        parsed = json.loads(definition)
        for declared in parsed.get("produces", []):
            producers[declared.get("asset_id", "")] = slug
        reads[slug] = [declared.get("asset_id", "") for declared in parsed.get("consumes", [])]
    for declared in workflow.produces:
        producers[declared.asset_id] = workflow.slug
    reads[workflow.slug] = [declared.asset_id for declared in workflow.consumes]
    edges = [
        Edge(producers[asset_id], asset_id, consumer)
        for consumer, assets in reads.items()
        for asset_id in assets
        if asset_id in producers
    ]
    cycle = find_cycle(edges, workflow.slug)
    if cycle is not None:
        text = describe_cycle(cycle)
        raise FailedPrecondition(
            f"workflow {workflow.slug!r} would close a dependency cycle: {text}",
            reason="DEPENDENCY_CYCLE",
            metadata={"cycle": text[:1000], "workflow_slug": workflow.slug},
        )


def _plan(catalog: Catalog, workflow: workflow_pb2.Workflow, spec: PartitionSpec | None) -> RegistrationPlan:
    stored = catalog.workflow(workflow.slug)
    plan = RegistrationPlan()
    new_reads = [
        (d.asset_id, d.partition_mapping.SerializeToString(deterministic=True)) for d in workflow.consumes
    ]
    if stored is None:
        plan.rebuild_own = bool(workflow.consumes)
        return plan
    old_reads = [
        (d.asset_id, d.partition_mapping.SerializeToString(deterministic=True))
        for d in stored.message.consumes
    ]
    spec_changed = _layout_changed(stored.spec, spec)
    plan.rebuild_own = bool(workflow.consumes) and (new_reads != old_reads or spec_changed)
    if spec_changed:
        plan.rebuild_consumers = sorted(
            {
                consumer.slug
                for declaration in workflow.produces
                for consumer in catalog.consumers_of(declaration.asset_id)
                if consumer.slug != workflow.slug
            }
        )
    return plan


def _layout_changed(old: PartitionSpec | None, new: PartitionSpec | None) -> bool:
    """Whether keys, positions or ordinals of the definition move (lineage rows are rebuilt)."""
    if old is None or new is None:
        return (old is None) != (new is None)
    if is_partitioning_change(old, new) or not positions_stable(old, new):
        return True
    if isinstance(old, TimeWindowSpec) and isinstance(new, TimeWindowSpec):
        return old.first_window_start != new.first_window_start
    return False


def apply_registration(catalog: Catalog, slug: str, plan: RegistrationPlan, now_us: int) -> None:
    """After the registration is saved: rebuild lineage rows of the workflows whose dependencies
    (or their upstream definitions) changed."""
    slugs = ([slug] if plan.rebuild_own else []) + plan.rebuild_consumers
    for each in slugs:
        definition = catalog.workflow(each)
        if definition is not None:
            rebuild(catalog, definition, now_us)


def rebuild(catalog: Catalog, definition: WorkflowDefinition, now_us: int) -> None:
    """Re-derives the lineage rows of the workflow's assets from the current state: every
    materialized key counts as having read what existed when it was materialized, and is stale
    when an aligned upstream key (identity, time-window, static) has a newer materialization or
    it was never materialized while one exists. Costs a pass over the upstream's materialized keys."""
    deps = dependencies(catalog, definition)
    for asset_id in tracked_assets(definition):
        store.clear_asset(asset_id)
        if not deps:
            continue
        store.seed_materialized(asset_id, now_us)
        for dependency in deps:
            if dependency.fan_out or not dependency.usable:
                continue
            after: int | None = None
            while True:
                chunk = store.materialized_rows(dependency.asset_id, after, CHUNK)
                if not chunk:
                    break
                after = chunk[-1][1]
                targets: dict[str, Target] = {}
                for key, _, _ in chunk:
                    try:
                        aligned = downstream_of(
                            dependency.mapping, dependency.upstream_spec, definition.spec, key
                        )
                    except InvalidArgument:
                        continue
                    for target in _targets(definition.spec, asset_id, aligned):
                        targets[target.partition_key] = target
                if targets:
                    marker = max(m for _, _, m in chunk)
                    store.mark_stale(asset_id, list(targets.values()), marker, now_us, only_if_older=True)


# ----------------------------------------------------------------------------- the loop
def _automated(definition: WorkflowDefinition) -> bool:
    return (
        definition.message.automation.condition == workflow_pb2.AUTOMATION_CONDITION_ON_UPSTREAM_MATERIALIZED
    )


def _runs_per_minute(definition: WorkflowDefinition) -> int:
    return definition.message.automation.max_runs_per_minute or DEFAULT_RUNS_PER_MINUTE


def _automation_keys(dependency: Dependency, upstream_key: str, now: datetime) -> list[str]:
    """Downstream keys an upstream materialization triggers: the aligned keys for identity,
    time-window and static mappings; for all/last the newest time window, or every static or
    dynamic key (rate-limited), or the one unpartitioned slice."""
    downstream = dependency.downstream
    try:
        aligned = downstream_of(dependency.mapping, dependency.upstream_spec, downstream.spec, upstream_key)
    except InvalidArgument:
        return []
    if aligned.if_newest and newest_key(dependency.upstream_spec, dependency.asset_id, now) != upstream_key:
        return []
    spec = downstream.spec
    if aligned.kind == "keys":
        return list(aligned.keys)
    if aligned.kind == "range":
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        return [k for k, _, _ in range_keys(spec, aligned.first, aligned.last - aligned.first + 1)]
    if spec is None:
        return [""]
    if isinstance(spec, TimeWindowSpec):
        newest = newest_key(spec, "", now)
        return [newest] if newest is not None else []
    if isinstance(spec, StaticSpec):
        return list(spec.key_list)
    asset = tracked_assets(downstream)[0]
    keys: list[str] = []
    after = 0
    while True:
        rows = dynamic_partitions.live_keys(asset, after, 1000)
        keys.extend(row.partition_key for row in rows)
        if len(rows) < 1000:
            return keys
        after = int(rows[-1].id)


@dataclass
class LoopCursors:
    """Where one process's loop has read up to, ahead of the stored cursors: a stored cursor moves
    when the pass did work (in that transaction), when it lags far behind, or every minute —
    so an idle server writes nothing, and a restart re-reads at most what did not matter (or
    what the automation's staleness check skips)."""

    automation: int = 0
    holds: int = 0
    stored_at: float = field(default_factory=time.monotonic)

    def due(self, behind: int) -> bool:
        return behind >= PERSIST_BEHIND or time.monotonic() - self.stored_at >= PERSIST_INTERVAL


def lineage_pass_tx(
    outbox: Outbox, catalog: Catalog, now: datetime, sweep: bool, cursors: LoopCursors | None = None
) -> tuple[int, bool]:
    """One pass of the loop: new MATERIALIZED events → automation requests and releases of held
    runs; requests → runs within each workflow's budget; new runs of WAIT workflows → holds;
    with `sweep`: held runs re-checked (released, or failed past max_wait). Returns (runs made
    claimable, whether more events are waiting)."""
    cursors = cursors if cursors is not None else LoopCursors()
    now_us = micros(now)
    stored = store.lock_cursor("automation")
    cursor = max(stored, cursors.automation)
    oldest = events.oldest_sequence()
    if oldest and cursor < oldest - 1:
        log.warning(
            "automation cursor %s is older than the retained event log (from %s); skipping ahead",
            cursor,
            oldest,
        )
        cursor = oldest - 1
    if catalog.any_reacting():
        batch, reached = events.materialized_after(cursor, EVENT_BATCH)
    else:  # no workflow acts on upstream materializations: the events need no reading
        batch, reached = [], events.head_sequence()
    more = len(batch) == EVENT_BATCH
    consumers_of: dict[str, list[Dependency]] = {}
    requests: dict[tuple[str, str], tuple[str, str, int, str, str]] = {}
    recheck: dict[str, set[str] | None] = {}
    for _, asset_id, partition_key, ids_json in batch:
        if asset_id not in consumers_of:
            consumers_of[asset_id] = consumers(catalog, asset_id)
        materialization_ids = json.loads(ids_json or "[]")
        materialization_id = int(materialization_ids[0]) if materialization_ids else 0
        for dependency in consumers_of[asset_id]:
            downstream = dependency.downstream
            if not dependency.usable:
                continue
            automated, waits = _automated(downstream), _waits(downstream)
            if not automated and not waits:
                continue
            keys = _automation_keys(dependency, partition_key, now)
            if automated:
                for key in keys:
                    requests[(downstream.slug, key)] = (
                        downstream.slug,
                        key,
                        materialization_id,
                        asset_id,
                        partition_key,
                    )
            if waits:
                found = recheck.setdefault(downstream.slug, set())
                if found is not None:
                    if dependency.fan_out:
                        recheck[downstream.slug] = None
                    else:
                        found.update(keys)
    cursors.automation = max(cursors.automation, reached)
    if cursors.automation > stored and (requests or recheck or cursors.due(cursors.automation - stored)):
        store.set_cursor("automation", cursors.automation)
        cursors.stored_at = time.monotonic()
    if requests:
        store.add_requests(list(requests.values()), now_us)
    made = 0
    for slug, keys_to_check in recheck.items():
        for run_id in store.held_runs(
            slug, sorted(keys_to_check) if keys_to_check is not None else None, HOLD_BATCH
        ):
            made += _recheck_held(outbox, catalog, run_id, now)
    made += _drain_requests(outbox, catalog, now)
    _hold_new_runs(outbox, catalog, now, cursors)
    if sweep:
        for run_id in store.held_runs(None, None, HOLD_BATCH):
            made += _recheck_held(outbox, catalog, run_id, now)
    return made, more


def _recheck_held(outbox: Outbox, catalog: Catalog, run_id: int, now: datetime) -> int:
    run = runs.get_run(run_id)
    if run is None or run.state != runs.QUEUED or not run.hold_reason:
        return 0
    definition = catalog.workflow(run.workflow_slug)
    now_us = micros(now)
    if definition is None:
        return 0
    check = check_upstream(catalog, definition, run.partition_key, now) if _waits(definition) else None
    if check is None or not check.missing:
        if store.release(run.id, now_us):
            run.hold_reason = ""
            _hold_event(outbox, run, "released: its upstream slices are complete")
            return 1
        return 0
    max_wait = (
        definition.message.upstream_max_wait.ToTimedelta()
        if definition.message.HasField("upstream_max_wait")
        else None
    )
    if max_wait is not None and now_us - int(run.create_time) > int(max_wait.total_seconds() * 1_000_000):
        from server.lifecycle import fail_queued_tx

        fail_queued_tx(
            outbox,
            catalog,
            run,
            f"upstream data did not arrive within upstream_max_wait ({max_wait}): {'; '.join(check.missing)}"[
                :2000
            ],
            now,
        )
        return 0
    reason = hold_reason(check)
    if reason != run.hold_reason:
        store.hold_queued(run.id, reason, now_us)
    return 0


def _hold_new_runs(outbox: Outbox, catalog: Catalog, now: datetime, cursors: LoopCursors) -> None:
    """Queued runs of WAIT workflows enqueued since the last pass get their hold at once (claims
    hold them too; this makes `hold_reason` visible before a worker asks)."""
    stored = store.lock_cursor("holds")
    cursor = max(stored, cursors.holds)
    newest = store.newest_run_id()
    waiting = [
        slug
        for (slug,) in sql.rows(
            "SELECT slug FROM workflow WHERE definition LIKE %s", ("%UPSTREAM_POLICY_WAIT%",)
        )
    ]
    found = store.queued_runs_after(waiting, cursor, HOLD_BATCH)
    for run_id in found:
        run = runs.get_run(run_id)
        definition = catalog.workflow(run.workflow_slug) if run is not None else None
        if run is None or definition is None or not _waits(definition) or not definition.message.consumes:
            continue
        check = check_upstream(catalog, definition, run.partition_key, now)
        if check.missing:
            reason = hold_reason(check)
            if store.hold_queued(run.id, reason, micros(now)):
                run.hold_reason = reason
                _hold_event(outbox, run, f"held: {reason}")
    cursors.holds = found[-1] if len(found) == HOLD_BATCH else max(cursor, newest)
    if cursors.holds > stored and (found or cursors.due(cursors.holds - stored)):
        store.set_cursor("holds", cursors.holds)


def _drain_requests(outbox: Outbox, catalog: Catalog, now: datetime) -> int:
    from server import keys as key_positions
    from server.api.run_service import new_run
    from server.lifecycle import enqueue_tx

    now_us = micros(now)
    window = now_us - now_us % 60_000_000
    made = 0
    for slug in store.requesting_workflows():
        definition = catalog.workflow(slug)
        if definition is None or not _automated(definition):
            for key, *_ in store.pending_requests(slug, 100_000):
                store.delete_request(slug, key)
            continue
        budget = _runs_per_minute(definition) - store.budget_used(slug, window)
        if budget <= 0:
            continue
        pending = store.pending_requests(slug, max(budget * 4, 100))
        busy = store.running_keys(slug, [key for key, *_ in pending])
        tracked = tracked_assets(definition)
        view = asset_view(catalog, definition, tracked[0]) if tracked else None
        spent = 0
        for key, materialization_id, upstream_asset, upstream_key in pending:
            if spent >= budget:
                break
            if key in busy:
                continue  # a run is reading older data right now: run again after it ends
            try:
                coverage = key_positions.single(definition, key, now, register=False)
            except InvalidArgument:
                if isinstance(definition.spec, TimeWindowSpec) and _future_window(definition.spec, key, now):
                    continue  # the window has not closed yet: keep the request until it has
                store.delete_request(slug, key)
                continue
            store.delete_request(slug, key)
            if check_upstream(catalog, definition, key, now).missing_keyed:
                continue  # re-requested when the missing upstream slice lands
            if view is not None and not partition_flags(view, [(key, None)], {}, now)[0][0]:
                continue  # it already read the triggering data (e.g. a run claimed after it landed)
            label = quote_key(upstream_key) if upstream_key else "(unpartitioned)"
            message = (
                f"automation: upstream {upstream_asset} {label} was materialized "
                f"(materialization {materialization_id})"
            )
            _, created = enqueue_tx(
                outbox,
                new_run(
                    definition,
                    coverage,
                    {},
                    {},
                    "AUTOMATION",
                    "automation",
                    source_id=str(materialization_id),
                ),
                coverage,
                now,
                use_existing=True,
                message=message,
            )
            if created:
                spent += 1
                made += 1
        if spent:
            store.spend_budget(slug, window, spent)
    return made


def _future_window(spec: TimeWindowSpec, key: str, now: datetime) -> bool:
    try:
        return spec.index_of(key) >= spec.count(now)
    except InvalidArgument:
        return False


async def run_lineage_loop(
    context: ServiceContext, stopping: asyncio.Event, interval: float = LOOP_INTERVAL
) -> None:
    """Automation and held runs: a pass every `interval` (at once while events are waiting)."""
    last_sweep = 0.0
    cursors = LoopCursors()
    while not stopping.is_set():
        more = False
        try:
            now = context.clock.now()
            sweep = time.monotonic() - last_sweep >= HOLD_SWEEP_INTERVAL
            attempt = dataclasses.replace(cursors)  # kept only once the pass has committed
            made, more = await context.store.write(
                functools.partial(
                    lineage_pass_tx, catalog=context.catalog, now=now, sweep=sweep, cursors=attempt
                ),
                micros(now),
            )
            cursors = attempt
            if sweep:
                last_sweep = time.monotonic()
            if made:
                context.work.notify(made)
        except Exception:
            log.exception("lineage pass failed; retrying")
        if not more:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
