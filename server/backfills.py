"""Backfills: planning a selection into keys, dispatching keys as runs, and keeping each key's
state in step with its run.

A backfill is a plan — one `backfill_partition` row per key, in key order — plus counters of
keys per state on the backfill row (storage/backfills.py). Everything here runs inside a store
transaction (no awaits) except `plan_keys`' callers, which read first and write after:

- `plan_keys` turns a `PartitionSelection` into the keys in definition order, or raises
  InvalidArgument with one violation per bad key.
- `create_tx` writes the backfill and its plan in bulk; `dispatch_tx` (the dispatcher loop,
  server/scheduler/dispatcher.py) turns PENDING keys into queued runs in key order, never past
  `max_concurrent_runs` queued + running keys, adopting a run already in flight for the slice.
- `run_changed_tx` is the lifecycle hook: every transition of a run (claim, retry, release,
  end) moves the key(s) whose current run it is, in the same transaction, and finishes the
  backfill once no key is undecided.
- `cancel_tx` then `cancel_runs_tx` (CancelBackfill, two transactions), `retry_tx`
  (RetryBackfill).

Locks (PostgreSQL; SQLite has one writer), so that no two transactions wait for each other
in a cycle: dispatch, cancel and retry first take a per-backfill advisory lock (they change the
plan; run transitions never take it); a run transition locks its run, then its keys; the
dispatcher locks PENDING keys (no run has them), creates its runs before it writes partition
state, and never waits for an existing run — adoption and cancel skip a run another
transaction holds (CompleteRun writes partition state before it locks its run); the backfill
row (its counters) is written last, at the end of the transaction through
`Outbox.before_flush`, then the event log.

Every event a transition writes for a backfill carries, in its `data`, the backfill's state
and counts right after it (`{"backfill": {...}}`); WatchBackfill sends those with the event.
Events about the backfill itself (created, canceled, reopened, a key that cannot run) have no
`run_id`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import json_format

from partita.v1 import partitions_pb2
from server import keys as key_positions
from server import lifecycle
from server.catalog import Catalog, WorkflowDefinition
from server.domain.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ViolationCollector,
)
from server.domain.partitions import DynamicSpec, StaticSpec, TimeWindowSpec, key_syntax_problem
from server.domain.partitions.keys import quote_key
from server.domain.retry import RetryPolicy
from server.logging import log_event
from storage import backfills as store
from storage import partition_state, runs
from storage.backfills import BackfillRow, KeyRow
from storage.events import NewEvent, Outbox
from storage.models import Run, micros

logger = logging.getLogger("partita.backfills")

DEFAULT_MAX_CONCURRENT_RUNS = 16
MAX_CONCURRENT_RUNS_LIMIT = 10_000
MAX_BACKFILL_KEYS = 1_000_000
# Explicit time-window keys are checked against the definition's key list when it is at most
# this many times longer than the request (one pass over keys), else one by one.
ENUMERATE_FACTOR = 4
ENUMERATE_MINIMUM = 4096


# --- planning -----------------------------------------------------------------------------------


def plan_keys(
    definition: WorkflowDefinition, selection: partitions_pb2.PartitionSelection, now: datetime
) -> list[str]:
    """Inside a transaction: the selected keys in definition order (every one valid as of `now`).

    An unpartitioned workflow has one slice, key '': `all` selects it and `missing` selects it
    unless every asset it produces is materialized; `range` and `keys` are INVALID_ARGUMENT.
    """
    kind = selection.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument.for_field("selection", "is required: one of range, keys, all or missing")
    spec = definition.spec
    if spec is None:
        if kind in ("range", "keys"):
            raise InvalidArgument.for_field(
                f"selection.{kind}",
                f"workflow {definition.slug!r} is not partitioned: select all (its one slice) or missing",
            )
        if kind == "missing" and not _missing_unpartitioned(definition):
            return []
        return [""]
    if kind == "range":
        return _range_keys(definition, spec, selection.range, now)
    if kind == "keys":
        return _explicit_keys(definition, spec, list(selection.keys.partition_keys), now)
    every = _all_keys(definition, spec, now)
    if kind == "missing":
        done = _materialized_everywhere(definition)
        every = [key for key in every if key not in done]
    _check_size(len(every), "selection")
    return every


def _check_size(count: int, field: str) -> None:
    if count > MAX_BACKFILL_KEYS:
        raise InvalidArgument.for_field(
            field, f"selects {count:,} keys; a backfill holds at most {MAX_BACKFILL_KEYS:,}"
        )


def _partitioned_assets(definition: WorkflowDefinition) -> list[str]:
    return sorted(definition.partitioned_asset_ids)


def _materialized_everywhere(definition: WorkflowDefinition) -> set[str]:
    """Keys every partitioned asset of the workflow has a successful materialization of."""
    done: set[str] | None = None
    for asset_id in _partitioned_assets(definition):
        found = store.materialized_keys(asset_id)
        done = found if done is None else done & found
    return done or set()


def _missing_unpartitioned(definition: WorkflowDefinition) -> bool:
    return any("" not in store.materialized_keys(asset) for asset in definition.produced_asset_ids)


def _all_keys(definition: WorkflowDefinition, spec: Any, now: datetime) -> list[str]:
    if isinstance(spec, DynamicSpec):
        return _live_keys(definition)
    count = spec.count(now)
    _check_size(count, "selection")
    return list(spec.keys_page(0, count, now))


def _live_keys(definition: WorkflowDefinition, low: int | None = None, high: int | None = None) -> list[str]:
    """Live keys of the first partitioned asset's registry (registry order) that every other
    partitioned asset of the workflow has live too."""
    first, *others = _partitioned_assets(definition)
    found = [key for _, key in store.live_dynamic_keys(first, low, high)]
    for asset_id in others:
        live = {key for _, key in store.live_dynamic_keys(asset_id)}
        found = [key for key in found if key in live]
    return found


def _range_keys(
    definition: WorkflowDefinition, spec: Any, bounds: partitions_pb2.PartitionRange, now: datetime
) -> list[str]:
    start_field, end_field = "selection.range.start_key", "selection.range.end_key"
    if isinstance(spec, DynamicSpec):
        positions = _dynamic_positions(
            definition, [bounds.start_key, bounds.end_key], [start_field, end_field]
        )
        low, high = positions
        if high < low:
            raise InvalidArgument.for_field(
                end_field,
                f"{quote_key(bounds.end_key)} comes before the start key {quote_key(bounds.start_key)}",
            )
        found = _live_keys(definition, low, high)
        _check_size(len(found), "selection.range")
        return found
    span = spec.index_range(
        bounds.start_key, bounds.end_key, now, start_field=start_field, end_field=end_field
    )
    _check_size(len(span), "selection.range")
    return list(spec.keys_page(span.start, len(span), now))


def _explicit_keys(
    definition: WorkflowDefinition, spec: Any, requested: list[str], now: datetime
) -> list[str]:
    field = "selection.keys.partition_keys"
    if not requested:
        raise InvalidArgument.for_field(field, "at least one key is required")
    _check_size(len(requested), field)
    collector = ViolationCollector()
    seen: dict[str, int] = {}
    unique: list[tuple[int, str]] = []
    for index, key in enumerate(requested):
        first = seen.setdefault(key, index)
        if first != index:
            collector.add(f"{field}[{index}]", f"duplicate of {field}[{first}] ({quote_key(key)})")
        else:
            unique.append((index, key))
    positions: dict[str, int] = {}
    if isinstance(spec, DynamicSpec):
        try:
            found = _dynamic_positions(
                definition, [key for _, key in unique], [f"{field}[{i}]" for i, _ in unique]
            )
            positions = {key: position for (_, key), position in zip(unique, found, strict=True)}
        except InvalidArgument as error:
            collector.extend(error)
    elif isinstance(spec, TimeWindowSpec) and spec.count(now) <= max(
        ENUMERATE_FACTOR * len(unique), ENUMERATE_MINIMUM
    ):
        index_of = {key: i for i, key in enumerate(spec.keys_page(0, spec.count(now), now))}
        for index, key in unique:
            position = index_of.get(key)
            if position is not None:
                positions[key] = position
                continue
            try:
                spec.validate_key(key, now, f"{field}[{index}]")
            except InvalidArgument as error:
                collector.extend(error)
            else:  # pragma: no cover - the list holds every valid key
                raise AssertionError(f"{key!r} is valid but was not listed")
    else:
        assert isinstance(spec, TimeWindowSpec | StaticSpec)
        for index, key in unique:
            try:
                positions[key] = spec.validate_key(key, now, f"{field}[{index}]")
            except InvalidArgument as error:
                collector.extend(error)
    collector.raise_if_any("invalid backfill selection")
    return sorted(positions, key=positions.__getitem__)


def _dynamic_positions(
    definition: WorkflowDefinition, wanted: Sequence[str], fields: Sequence[str]
) -> list[int]:
    """Registry position (first partitioned asset) of each key, which must be live in every
    partitioned asset of the workflow; one violation per bad key."""
    collector = ViolationCollector()
    assets = _partitioned_assets(definition)
    registries = {asset: store.dynamic_registry(asset, list(wanted)) for asset in assets}
    positions: list[int] = []
    for key, field in zip(wanted, fields, strict=True):
        problem = key_syntax_problem(key)
        if problem is not None:
            collector.add(field, f"partition key {quote_key(key)} {problem}")
            continue
        for asset_id in assets:
            entry = registries[asset_id].get(key)
            if entry is None:
                collector.add(field, f"{quote_key(key)} is not a key of dynamic asset {asset_id!r}")
                break
            if not entry[1]:
                collector.add(field, f"{quote_key(key)} was deleted from dynamic asset {asset_id!r}")
                break
        else:
            positions.append(registries[assets[0]][key][0])
    collector.raise_if_any("invalid backfill selection")
    return positions


# --- retry policies -----------------------------------------------------------------------------


def retry_policy_json(policy: RetryPolicy | None) -> str:
    """How a backfill stores its retry policy override ('' = the workflow's)."""
    if policy is None:
        return ""
    return json.dumps(
        {
            "max_attempts": policy.max_attempts,
            "initial_backoff_s": policy.initial_backoff.total_seconds(),
            "backoff_coefficient": policy.backoff_coefficient,
            "maximum_backoff_s": policy.maximum_backoff.total_seconds(),
        },
        sort_keys=True,
    )


def retry_policy_of(row: BackfillRow) -> RetryPolicy | None:
    if not row.retry_policy:
        return None
    stored = json.loads(row.retry_policy)
    return RetryPolicy(
        max_attempts=int(stored["max_attempts"]),
        initial_backoff=timedelta(seconds=stored["initial_backoff_s"]),
        backoff_coefficient=float(stored["backoff_coefficient"]),
        maximum_backoff=timedelta(seconds=stored["maximum_backoff_s"]),
    )


# --- creating -----------------------------------------------------------------------------------


def create_tx(
    outbox: Outbox, new: store.NewBackfill, keys: Sequence[str], now_us: int, max_keys_per_run: int = 1
) -> BackfillRow:
    """Writes the backfill and its plan (every key PENDING, in order) in this transaction; its
    runs cover up to `max_keys_per_run` contiguous keys (the workflow's backfill policy, 0 = all)."""
    row = store.insert_backfill(new, len(keys), now_us, max_keys_per_run or MAX_BACKFILL_KEYS)
    store.insert_plan(row.id, keys, now_us)
    outbox.add(
        _backfill_event(row, "QUEUED", f"backfill {row.id} created with {len(keys):,} keys", row.snapshot())
    )
    log_event(
        logger,
        "backfill created",
        backfill_id=str(row.id),
        workflow_slug=row.workflow_slug,
        keys=len(keys),
        max_concurrent_runs=row.max_concurrent_runs,
    )
    return row


def selection_json(selection: partitions_pb2.PartitionSelection) -> str:
    return json.dumps(
        json_format.MessageToDict(selection, preserving_proto_field_name=True), separators=(",", ":")
    )


def _backfill_event(
    row: BackfillRow, event_type: str, message: str, snapshot: dict[str, Any], partition_key: str = ""
) -> NewEvent:
    """An event about the backfill itself (no run)."""
    return NewEvent(
        type=event_type,
        workflow_slug=row.workflow_slug,
        partition_key=partition_key,
        backfill_id=row.id,
        message=message,
        data={"backfill": snapshot},
    )


def get_tx(backfill_id: int) -> BackfillRow:
    row = store.get_backfill(backfill_id)
    if row is None:
        raise NotFound(f"backfill {backfill_id} does not exist", metadata={"backfill_id": str(backfill_id)})
    return row


# --- dispatching --------------------------------------------------------------------------------


class DispatchConflict(Exception):
    """Another dispatcher (a deposed leader) or a cancel got there first; nothing was written."""


@dataclass
class _Started:
    state: str
    event: NewEvent
    new_run: bool
    # How many keys moved (a ranged run moves several).
    count: int = 1
    # A new run's keys, marked in flight once every run of the batch exists.
    coverage: key_positions.Coverage | None = None
    run_id: int = 0


def dispatch_tx(outbox: Outbox, catalog: Catalog, backfill_id: int, limit: int, now: datetime) -> int:
    """Turns PENDING keys of a RUNNING backfill, in key order, into up to `limit` queued runs of
    up to `keys_per_run` contiguous keys each (or adopts the run already in flight for a group's
    keys), within max_concurrent_runs; returns how many runs it queued, adopted or failed.
    Raises DispatchConflict (rolling the transaction back) when the backfill changed under it:
    every key write is conditional on the key still being PENDING and the counters on the
    backfill still RUNNING with room, so a deposed leader cannot double-dispatch.
    """
    from server.api.run_service import new_run  # imported late: run_service imports lifecycle

    now_us = micros(now)
    store.lock_backfill(backfill_id)  # no cancel or retry of it meanwhile
    row = store.get_backfill(backfill_id, selection=False)
    if row is None or row.state != store.RUNNING or not row.counts.pending:
        return 0
    held = store.held_keys(backfill_id)  # runs held for upstream data take no slot
    room = min(limit * row.keys_per_run, row.key_cap - row.counts.in_flight + held)
    if room <= 0:
        return 0
    definition = catalog.workflow(row.workflow_slug)
    requested = json.loads(row.parameters or "{}")
    labels = json.loads(row.labels or "{}")
    policy = retry_policy_of(row)
    changes: list[_Change] = []
    added_in_flight = 0
    # Lock order: this backfill's advisory lock (so its PENDING keys cannot move under us), each
    # group's new run (seen by no one before commit) or adopted run (locked only if free), its
    # keys, then per-asset partition state (after every run of the batch: a run transition
    # holding its run may wait for that state), and the backfill row last.
    marks: list[_Started] = []
    pending = store.pending_keys(backfill_id, room)
    for group, coverage in _groups(definition, pending, row, now):
        if len(changes) >= limit:
            break
        started = _start_keys(
            outbox, definition, row, group, coverage, requested, labels, policy, now, new_run
        )
        if started is None:  # its keys' run is busy or just ended: they wait for the next pass
            continue
        changes.append(
            _Change(backfill_id, {store.PENDING: -started.count, started.state: started.count}, started.event)
        )
        if started.state in store.IN_FLIGHT:
            added_in_flight += started.count
        if started.coverage is not None:
            marks.append(started)
    for started in marks:
        assert started.coverage is not None
        partition_state.mark_in_flight(
            started.coverage.positions, started.coverage.keys, started.run_id, now_us
        )
    if not changes:
        return 0
    # The backfill row last, like every transaction that moves its keys (no lock-order deadlocks).
    updated = store.apply_counts(
        backfill_id,
        _total(changes),
        now_us,
        only_if_state=store.RUNNING,
        added_in_flight_cap=added_in_flight,
        held=held,
    )
    if updated is None:
        raise DispatchConflict(f"backfill {backfill_id} changed while dispatching")
    _annotate(outbox, _finish_if_decided(updated, now_us), changes)
    return len(changes)


def _groups(
    definition: WorkflowDefinition | None, pending: Sequence[KeyRow], row: BackfillRow, now: datetime
) -> list[tuple[list[KeyRow], key_positions.Coverage | None]]:
    """Pending keys (in key order) as runs: up to `row.keys_per_run` keys that are contiguous in
    the definition (any dynamic keys), with their coverage; a key alone has none (resolved when
    it starts). Keys whose range no longer resolves run alone, so each fails on its own."""
    keys_per_run = row.keys_per_run
    if keys_per_run <= 1 or definition is None or not definition.ranged:
        return [([key], None) for key in pending]
    # A plan made under this very definition holds its keys, distinct and in its order.
    planned_here = definition.update_time <= row.create_time
    groups: list[tuple[list[KeyRow], key_positions.Coverage | None]] = []
    rest = list(pending)
    while rest:
        chunk = rest[:keys_per_run]
        names = [key.partition_key for key in chunk]
        coverage: key_positions.Coverage | None
        try:
            if isinstance(definition.spec, DynamicSpec):
                coverage = key_positions.resolve_key_list(
                    definition, names, now, field="partition_keys", register=False
                )
                if list(coverage.keys) != names:
                    raise InvalidArgument("the registry order changed")
            else:
                coverage = key_positions.resolve_range(
                    definition,
                    names[0],
                    names[-1],
                    now,
                    field="partition_range",
                    known_keys=names if planned_here else None,
                )
                if list(coverage.keys) != names:
                    # The plan skips keys the selection left out: the run stops before the first gap.
                    same = next(
                        (
                            index
                            for index, (found, planned) in enumerate(zip(coverage.keys, names, strict=False))
                            if found != planned
                        ),
                        min(len(coverage.keys), len(names)),
                    )
                    chunk, coverage = chunk[: max(same, 1)], coverage.head(same) if same > 1 else None
        except InvalidArgument:
            chunk, coverage = rest[:1], None
        rest = rest[len(chunk) :]
        groups.append((chunk, coverage if coverage is not None and len(chunk) > 1 else None))
    return groups


def _start_keys(
    outbox: Outbox,
    definition: WorkflowDefinition | None,
    row: BackfillRow,
    group: list[KeyRow],
    coverage: key_positions.Coverage | None,
    requested: dict[str, Any],
    labels: dict[str, str],
    policy: RetryPolicy | None,
    now: datetime,
    new_run: Any,
) -> _Started | None:
    """PENDING keys the dispatcher starts: queue their run, adopt the run in flight for exactly
    these keys, or fail a lone key that no longer belongs to the definition; None leaves them
    PENDING. Raises DispatchConflict when a key left PENDING meanwhile."""
    now_us = micros(now)
    ordinals = [key.ordinal for key in group]
    first = group[0]
    try:
        if definition is None:
            raise NotFound(f"workflow {row.workflow_slug!r} no longer exists")
        if coverage is None:
            coverage = key_positions.single(definition, first.partition_key, now, register=False)
    except DomainError as error:
        store.fail_pending_key(row.id, first.ordinal, error.message, now_us)
        event = _backfill_event(
            row,
            "FAILED",
            f"key {quote_key(first.partition_key)} cannot run: {error.message}",
            {},
            first.partition_key,
        )
        outbox.add(event)
        return _Started(store.FAILED, event, False)
    assert definition is not None
    # A group re-runs failed keys when its first key does (RetryBackfill reopens keys together).
    retrying = first.next_trigger == "RETRY"
    fresh = new_run(
        definition,
        coverage,
        requested,
        labels,
        "RETRY" if retrying else "BACKFILL",
        row.trigger_principal,
        source_id=str(first.run_id) if retrying and first.run_id is not None else str(row.id),
        backfill_id=row.id,
        policy=policy,
    )
    for _ in range(3):
        run = lifecycle.insert_run(fresh, coverage.keys, now_us)
        if run is not None:
            event = lifecycle.run_event(run, "QUEUED", runs.QUEUED)
            outbox.add(event)
            lifecycle.log_transition(run, runs.QUEUED, f"run {run.id} queued by backfill {row.id}")
            _attach(row, ordinals, run, store.QUEUED, 0, now_us)
            return _Started(store.QUEUED, event, True, len(group), coverage, run.id)
        if coverage.ranged or definition.ranged:
            overlapping = lifecycle.in_flight_overlap(fresh, coverage.keys)
            if len(overlapping) == 1 and key_positions.covered_keys(overlapping[0]) == coverage.keys:
                existing = store.lock_run_if_free(overlapping[0].id)
                if existing is not None and existing.state in runs.IN_FLIGHT:
                    return _adopt(outbox, row, group, existing, now_us)
            break  # overlapping runs of other shapes end first; the keys wait
        existing, busy = store.lock_in_flight_run(definition.slug, first.partition_key)
        if existing is not None:
            return _adopt(outbox, row, group, existing, now_us)
        if busy:  # another transaction holds it (PostgreSQL): never wait for a run here
            break
    return None


def _attach(
    row: BackfillRow, ordinals: Sequence[int], run: Run, state: str, attempts: int, now_us: int
) -> None:
    if not store.attach_run(row.id, ordinals, run.id, state, attempts, now_us):
        raise DispatchConflict(f"keys of backfill {row.id} left PENDING while dispatching")


def _adopt(outbox: Outbox, row: BackfillRow, group: list[KeyRow], run: Run, now_us: int) -> _Started:
    """The keys already have a run in flight (for exactly these keys): they follow that run."""
    attempts = run.attempt if run.state == runs.RUNNING else run.attempt - 1
    _attach(row, [key.ordinal for key in group], run, run.state, attempts, now_us)
    event = lifecycle.run_event(
        run,
        "QUEUED" if run.state == runs.QUEUED else "STARTED",
        run.state,
        f"backfill {row.id} adopted run {run.id}, already {run.state.lower()} for these keys",
    )
    event.backfill_id = row.id  # the adopting backfill's stream shows the run too
    outbox.add(event)
    log_event(
        logger,
        "backfill adopted a run in flight",
        backfill_id=str(row.id),
        run_id=str(run.id),
        partition_key=run.partition_key,
        state=run.state,
    )
    return _Started(run.state, event, False, len(group))


# --- following runs (lifecycle hook) --------------------------------------------------------------

_EVENT_OF_STATE = {
    runs.QUEUED: "RETRY_SCHEDULED",
    runs.RUNNING: "STARTED",
    runs.SUCCEEDED: "SUCCEEDED",
    runs.FAILED: "FAILED",
    runs.CANCELED: "CANCELED",
}


@dataclass
class _Change:
    """Keys of one backfill moved by a transaction: counter `deltas`, the event that gets the
    backfill's snapshot after the change (or, with `copy`, the run whose event is copied for the
    backfill: a run adopted from elsewhere carries another backfill id, or none)."""

    backfill_id: int
    deltas: dict[str, int]
    event: NewEvent | None
    copy: Run | None = None
    copy_type: str = ""


def _total(changes: Sequence[_Change]) -> dict[str, int]:
    total: dict[str, int] = {}
    for change in changes:
        for state, delta in change.deltas.items():
            total[state] = total.get(state, 0) + delta
    return {state: delta for state, delta in total.items() if delta}


class _Changes:
    """The backfill counter changes of one transaction, written at its end (Outbox.before_flush):
    every transaction then locks backfill rows last, after runs and per-asset state counters,
    in id order — so transactions that move keys of one backfill cannot deadlock."""

    def __init__(self, outbox: Outbox, now_us: int) -> None:
        self.outbox = outbox
        self.now_us = now_us
        self.items: list[_Change] = []

    def __call__(self) -> None:
        self.apply()

    def apply(self) -> dict[int, BackfillRow]:
        items, self.items = self.items, []
        rows: dict[int, BackfillRow] = {}
        for backfill_id in sorted({change.backfill_id for change in items}):
            mine = [change for change in items if change.backfill_id == backfill_id]
            row = store.apply_counts(backfill_id, _total(mine), self.now_us)
            if row is not None:
                rows[backfill_id] = _finish_if_decided(row, self.now_us)
                _annotate(self.outbox, rows[backfill_id], mine)
        return rows


def _changes(outbox: Outbox, now_us: int) -> _Changes:
    for work in outbox.before_flush:
        if isinstance(work, _Changes):
            return work
    changes = _Changes(outbox, now_us)
    outbox.before_flush.append(changes)
    return changes


def _annotate(outbox: Outbox, row: BackfillRow, changes: Sequence[_Change]) -> None:
    """Gives each change's event the backfill's state and counts right after that change (`row`
    is the backfill after all of them)."""
    if row.state in store.OPEN:
        before_end = row.state
    else:
        before_end = store.CANCELING if row.state == store.CANCELED else store.RUNNING
    for index, change in enumerate(changes):
        last = index == len(changes) - 1
        later = _total(changes[index + 1 :])
        snapshot = {
            "state": row.state if last else before_end,
            "counts": row.counts.plus({state: -delta for state, delta in later.items()}).as_list(),
            "end_time": row.end_time if last else None,
        }
        if change.event is not None:
            change.event.data["backfill"] = snapshot
            continue
        run = change.copy
        assert run is not None
        copied = lifecycle.run_event(
            run, change.copy_type, run.state, f"run {run.id} of backfill {row.id}", backfill=snapshot
        )
        copied.backfill_id = row.id
        outbox.add(copied)


def run_changed_tx(
    outbox: Outbox,
    run: Run,
    now_us: int,
    *,
    attempted: int = 0,
    error: str | None = None,
    failed_keys: frozenset[str] | None = None,
) -> None:
    """Lifecycle hook, called right after a run transition added its event: the key(s) whose
    current run this is take the run's state (QUEUED again for a retry or a released claim),
    `attempted` attempts more (1 at a claim, -1 when a claim is released) and `error` as their
    last error — except, with `failed_keys`, a FAILED ranged run's other keys, which succeeded.
    The backfill's counters follow at the end of the transaction, where it finishes once every
    key is decided, and the transition's event gets the backfill's snapshot.
    """
    spans = store.run_key_spans(run.id)
    if not spans:
        return
    changes = _changes(outbox, now_us)
    moves: list[tuple[int, str, str, int]] = []  # (backfill, from state, to state, keys moved)
    for span in spans:
        if failed_keys is None:
            moves.append(
                (
                    span.backfill_id,
                    span.state,
                    run.state,
                    store.move_span(span, run.state, attempted, error, now_us),
                )
            )
            continue
        # A FAILED ranged run: its failed keys fail, the others succeeded.
        failed = store.move_span(span, run.state, attempted, error, now_us, only_keys=sorted(failed_keys))
        succeeded = store.move_span(span, runs.SUCCEEDED, attempted, None, now_us)
        moves += [
            (span.backfill_id, span.state, run.state, failed),
            (span.backfill_id, span.state, runs.SUCCEEDED, succeeded),
        ]
    canceling_checked: set[int] = set()
    for backfill_id, old_state, target, moved in moves:
        if not moved or old_state == target:
            continue
        own = _own_event(outbox, run, backfill_id)
        changes.items.append(
            _Change(
                backfill_id,
                {old_state: -moved, target: moved},
                own,
                copy=None if own is not None else run,
                copy_type=_last_event_type(outbox, run),
            )
        )
        if (
            run.state == runs.RUNNING
            and backfill_id not in canceling_checked
            and not run.cancel_requested
            and store.backfill_state(backfill_id) == store.CANCELING
        ):
            canceling_checked.add(backfill_id)
            # Claimed while its backfill was being canceled: ask the worker to stop.
            runs.request_cancel(run.id, now_us)
            run.cancel_requested = True
            outbox.add(
                lifecycle.run_event(
                    run,
                    "PROGRESS",
                    runs.RUNNING,
                    f"cancel requested: backfill {backfill_id} is canceling",
                )
            )


def _own_event(outbox: Outbox, run: Run, backfill_id: int) -> NewEvent | None:
    for event in reversed(outbox.events):
        if isinstance(event, NewEvent) and event.run_id == run.id and event.backfill_id == backfill_id:
            return event
    return None


def _last_event_type(outbox: Outbox, run: Run) -> str:
    for event in reversed(outbox.events):
        if isinstance(event, NewEvent) and event.run_id == run.id:
            return event.type
    return _EVENT_OF_STATE.get(run.state, "PROGRESS")


def _finish_if_decided(row: BackfillRow, now_us: int) -> BackfillRow:
    """Once no key is pending, queued or running: RUNNING -> COMPLETED (every key succeeded) or
    COMPLETED_WITH_FAILURES, CANCELING -> CANCELED."""
    if row.state not in store.OPEN or row.counts.undecided:
        return row
    if row.state == store.CANCELING:
        target = store.CANCELED
    elif row.counts.failed or row.counts.canceled:
        target = store.COMPLETED_WITH_FAILURES
    else:
        target = store.COMPLETED
    done = store.finish(row.id, row.state, target, now_us)
    if done is None:
        return store.get_backfill(row.id, selection=False) or row
    log_event(
        logger,
        "backfill finished",
        backfill_id=str(done.id),
        workflow_slug=done.workflow_slug,
        state=done.state,
        succeeded=done.counts.succeeded,
        failed=done.counts.failed,
        canceled=done.counts.canceled,
    )
    return done


# --- cancel and retry ---------------------------------------------------------------------------


def cancel_tx(outbox: Outbox, backfill_id: int, now: datetime) -> BackfillRow:
    """CancelBackfill, first transaction: PENDING keys -> CANCELED and the backfill CANCELING (or
    CANCELED at once when no run is in flight). `cancel_runs_tx` then cancels its runs.
    A canceling or canceled backfill comes back as it is; a completed one is FAILED_PRECONDITION."""
    now_us = micros(now)
    store.lock_backfill(backfill_id)
    row = get_tx(backfill_id)
    if row.state in (store.CANCELING, store.CANCELED):
        return row
    if row.state != store.RUNNING:
        raise FailedPrecondition(
            f"backfill {backfill_id} is already {row.state.lower()}; there is nothing to cancel",
            reason="BACKFILL_FINISHED",
            metadata={"backfill_id": str(backfill_id), "state": row.state},
        )
    canceled = store.cancel_pending(backfill_id, now_us)
    updated = store.apply_counts(
        backfill_id,
        {store.PENDING: -canceled, store.CANCELED: canceled} if canceled else {},
        now_us,
        transition=((store.RUNNING,), store.CANCELING),
    )
    assert updated is not None
    updated = _finish_if_decided(updated, now_us)
    outbox.add(
        _backfill_event(
            updated,
            "CANCELED",
            f"backfill {backfill_id} canceled: {canceled:,} pending keys canceled",
            updated.snapshot(),
        )
    )
    log_event(logger, "backfill canceled", backfill_id=str(backfill_id), pending_canceled=canceled)
    return get_tx(backfill_id)


@dataclass(frozen=True)
class RunsCanceled:
    backfill: BackfillRow
    # Runs another transaction held (mid-transition, or being adopted): try again shortly.
    skipped: int


def cancel_runs_tx(outbox: Outbox, catalog: Catalog, backfill_id: int, now: datetime) -> RunsCanceled:
    """CancelBackfill, second transaction (also the dispatcher's sweep after a crash between the
    two): a CANCELING backfill's queued runs are canceled, then its running runs asked to stop.

    It never waits for a run another transaction holds (PostgreSQL: SKIP LOCKED) and takes no
    partition state after locking a running run, so it cannot deadlock with CompleteRun (which
    writes partition state before its run): skipped runs are counted for the caller to retry.
    Returns the backfill after it (CANCELED once no run is left).
    """
    row = get_tx(backfill_id)
    if row.state != store.CANCELING:
        return RunsCanceled(row, 0)
    reason = f"backfill {backfill_id} canceled"
    in_flight = store.in_flight_keys(backfill_id)
    skipped = 0
    for wanted in (runs.QUEUED, runs.RUNNING):
        for key in in_flight:
            if key.state != wanted:
                continue
            assert key.run_id is not None
            run = store.lock_run_if_free(key.run_id)
            if run is None:
                skipped += 1
                continue
            if run.backfill_id != backfill_id:
                _detach(outbox, row, key, run, micros(now))
                continue
            if run.state == runs.RUNNING and run.cancel_requested:
                continue
            lifecycle.cancel_tx(outbox, catalog, key.run_id, reason, now)
    _changes(outbox, micros(now)).apply()
    return RunsCanceled(get_tx(backfill_id), skipped)


def _detach(outbox: Outbox, row: BackfillRow, key: KeyRow, run: Run, now_us: int) -> None:
    """A canceled backfill's key that had adopted someone else's run (a manual run or another
    backfill's): the key is canceled, the run goes on for its owner."""
    if run.state not in runs.IN_FLIGHT or not store.move_key(key, store.CANCELED, 0, None, now_us):
        return
    event = _backfill_event(
        row,
        "CANCELED",
        f"key {quote_key(key.partition_key)} canceled; run {run.id}, which it had adopted, goes on",
        {},
        key.partition_key,
    )
    outbox.add(event)
    _changes(outbox, now_us).items.append(_Change(row.id, {key.state: -1, store.CANCELED: 1}, event))


def retry_tx(outbox: Outbox, backfill_id: int, partition_keys: Sequence[str], now: datetime) -> BackfillRow:
    """FAILED and CANCELED keys (all, or the listed ones) -> PENDING, their next run a RETRY;
    the backfill reopens to RUNNING. SUCCEEDED keys never re-run."""
    now_us = micros(now)
    store.lock_backfill(backfill_id)
    row = get_tx(backfill_id)
    if row.state == store.CANCELING:
        raise FailedPrecondition(
            f"backfill {backfill_id} is still canceling; retry it once it is canceled",
            reason="BACKFILL_CANCELING",
            metadata={"backfill_id": str(backfill_id)},
        )
    listed: list[str] | None = None
    if partition_keys:
        listed = _retryable_listed(backfill_id, partition_keys)
    moved = store.reopen(backfill_id, listed, now_us)
    count = sum(moved.values())
    if not count:
        raise FailedPrecondition(
            f"backfill {backfill_id} has no FAILED or CANCELED keys to retry",
            reason="NOTHING_TO_RETRY",
            metadata={"backfill_id": str(backfill_id)},
        )
    _reopen(outbox, backfill_id, moved, store.PENDING, f"{count:,} keys to re-run", now_us)
    log_event(logger, "backfill reopened", backfill_id=str(backfill_id), keys=count)
    return get_tx(backfill_id)


def retry_run_tx(outbox: Outbox, original: Run, enqueue: Callable[[], Run], now: datetime) -> Run:
    """RetryRun of `original`, one of a backfill's runs: the backfill's FAILED and CANCELED keys
    it decided move to the run `enqueue` makes (QUEUED, counted again) and the backfill reopens
    to RUNNING, as RetryBackfill would for those keys — but at once and outside the backfill's
    concurrency cap, since an operator asked for this run."""
    backfill_id = original.backfill_id
    if backfill_id is None:
        return enqueue()
    # The backfill's lock before the run's insert: the dispatcher takes them in that order.
    store.lock_backfill(backfill_id)
    if get_tx(backfill_id).state == store.CANCELING:
        raise FailedPrecondition(
            f"run {original.id}'s backfill {backfill_id} is still canceling; retry the run once it is canceled",
            reason="BACKFILL_CANCELING",
            metadata={"backfill_id": str(backfill_id), "run_id": str(original.id)},
        )
    fresh = enqueue()
    now_us = micros(now)
    moved = store.reattach(backfill_id, original.id, fresh.id, now_us)
    if count := sum(moved.values()):
        _reopen(
            outbox,
            backfill_id,
            moved,
            store.QUEUED,
            f"run {fresh.id} retries {count:,} keys of run {original.id}",
            now_us,
        )
    return fresh


def _reopen(
    outbox: Outbox, backfill_id: int, moved: dict[str, int], into: str, why: str, now_us: int
) -> None:
    """Keys `moved` out of their final states into `into`: the counters follow and the backfill
    is RUNNING again."""
    deltas = {state: -number for state, number in moved.items() if number}
    deltas[into] = sum(moved.values())
    updated = store.apply_counts(
        backfill_id,
        deltas,
        now_us,
        transition=(
            (store.RUNNING, store.COMPLETED, store.COMPLETED_WITH_FAILURES, store.CANCELED),
            store.RUNNING,
        ),
        reopen=True,
    )
    assert updated is not None
    outbox.add(
        _backfill_event(updated, "QUEUED", f"backfill {backfill_id} reopened: {why}", updated.snapshot())
    )


def _retryable_listed(backfill_id: int, partition_keys: Sequence[str]) -> list[str]:
    """The listed keys, each a FAILED or CANCELED key of the backfill: INVALID_ARGUMENT for keys
    it does not have (and duplicates), FAILED_PRECONDITION for keys in another state."""
    field = "partition_keys"
    found = store.keys_by_name(backfill_id, list(dict.fromkeys(partition_keys)))
    unknown = ViolationCollector()
    wrong_state = ViolationCollector()
    seen: dict[str, int] = {}
    for index, key in enumerate(partition_keys):
        first = seen.setdefault(key, index)
        if first != index:
            unknown.add(f"{field}[{index}]", f"duplicate of {field}[{first}] ({quote_key(key)})")
            continue
        row = found.get(key)
        if row is None:
            unknown.add(f"{field}[{index}]", f"{quote_key(key)} is not a key of backfill {backfill_id}")
        elif row.state not in (store.FAILED, store.CANCELED):
            why = (
                "succeeded keys are never re-run" if row.state == store.SUCCEEDED else "it has not ended yet"
            )
            wrong_state.add(
                f"{field}[{index}]",
                f"{quote_key(key)} is {row.state}; only FAILED or CANCELED keys can be retried ({why})",
            )
    unknown.raise_if_any("invalid RetryBackfill request")
    if wrong_state.violations:
        first_violation = wrong_state.violations[0]
        raise FailedPrecondition(
            f"{first_violation.field}: {first_violation.description}"
            + (f" (and {len(wrong_state.violations) - 1} more)" if len(wrong_state.violations) > 1 else ""),
            reason="KEY_NOT_RETRYABLE",
            metadata={"backfill_id": str(backfill_id)},
            violations=wrong_state.violations,
        )
    return list(seen)
