"""The run lifecycle: every transition of a run as one transaction of storage calls.

Each `*_tx` function runs inside a store write transaction (no awaits), writes the run,
the per-partition state and the events together, and logs one JSON line per transition.
The servicers and the scheduler loops share these, so a transition means the same thing
whoever causes it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from server import backfills, keys, lineage
from server.catalog import Catalog, WorkflowDefinition
from server.domain.errors import AlreadyExists, FailedPrecondition, NotFound
from server.domain.retry import RetryPolicy
from storage import partition_state, runs, sql, workflows
from storage.events import EncodedJson, NewEvent, Outbox
from storage.materializations import RecordedMaterialization
from storage.models import Run, micros

log = logging.getLogger("partita.runs")


@dataclass(frozen=True)
class Lease:
    run: Run
    lease_id: str
    expire_time: int
    # (asset_id, partition_key, materialization_id) current for the run's upstream slices.
    inputs: tuple[tuple[str, str, int], ...] = ()


def log_transition(run: Run, state: str, message: str = "") -> None:
    log.info(
        message or f"run {run.id} {state.lower()}",
        extra={
            "run_id": str(run.id),
            "workflow_slug": run.workflow_slug,
            "partition_key": run.partition_key,
            "attempt": run.attempt,
            "state": state,
            "trigger": run.trigger_kind,
        },
    )


def key_data(run: Run) -> dict[str, object]:
    """What a ranged run's events carry besides partition_key '': every key the run covers, so a
    watcher filtering by key sees the run under each of them (storage/events.py)."""
    return {"partition_keys": EncodedJson(run.range_keys)} if run.range_keys else {}


def run_event(run: Run, event_type: str, state: str, message: str = "", **extra: object) -> NewEvent:
    if run.range_keys:
        extra = {**key_data(run), **extra}
    return NewEvent(
        type=event_type,
        workflow_slug=run.workflow_slug,
        run_id=run.id,
        partition_key=run.partition_key,
        backfill_id=run.backfill_id,
        state=state,
        attempt=run.attempt,
        progress=run.progress,
        message=message,
        data=dict(extra),
    )


def retry_policy_json(policy: RetryPolicy) -> str:
    return json.dumps(
        {
            "initial_backoff_s": policy.initial_backoff.total_seconds(),
            "backoff_coefficient": policy.backoff_coefficient,
            "maximum_backoff_s": policy.maximum_backoff.total_seconds(),
        }
    )


def policy_of(run: Run) -> RetryPolicy:
    stored = json.loads(run.retry_policy) if run.retry_policy else {}
    if not stored:
        return RetryPolicy(max_attempts=run.max_attempts)
    return RetryPolicy(
        max_attempts=run.max_attempts,
        initial_backoff=timedelta(seconds=stored["initial_backoff_s"]),
        backoff_coefficient=stored["backoff_coefficient"],
        maximum_backoff=timedelta(seconds=stored["maximum_backoff_s"]),
    )


def state_assets(definition: WorkflowDefinition | None, run: Run) -> list[str]:
    """The assets whose per-partition state a run of `run`'s key drives."""
    if definition is None:
        return []
    if definition.partitioned:
        return sorted(definition.partitioned_asset_ids)
    return list(definition.produced_asset_ids)


def enqueue_tx(
    outbox: Outbox,
    new_run: runs.NewRun,
    coverage: keys.Coverage,
    now: datetime,
    *,
    use_existing: bool,
    message: str = "",
) -> tuple[Run, bool]:
    """Queues a run unless one of its keys has a run in flight; returns the run and whether it
    is new. USE_EXISTING adopts the run in flight only when it covers exactly the same keys."""
    now_us = micros(now)
    run = insert_run(new_run, coverage.keys, now_us)
    if run is None:
        overlapping = in_flight_overlap(new_run, coverage.keys)
        if not overlapping:  # it ended between our insert and this read
            raise AlreadyExists(
                "a run for this slice was in flight; try again",
                reason="RUN_IN_FLIGHT",
                metadata={"run_id": ""},
            )
        existing = overlapping[0]
        if use_existing and len(overlapping) == 1 and keys.covered_keys(existing) == coverage.keys:
            return existing, False
        if not coverage.ranged and not existing.range_keys:
            raise AlreadyExists(
                f"run {existing.id} for workflow {new_run.workflow_slug!r} and partition key "
                f"{new_run.partition_key!r} is still {existing.state.lower()}; use on_conflict USE_EXISTING to get it",
                reason="RUN_IN_FLIGHT",
                metadata={"run_id": str(existing.id)},
            )
        raise AlreadyExists(
            f"run {existing.id} of workflow {new_run.workflow_slug!r} ({_describe_keys(existing)}) is still "
            f"{existing.state.lower()} and covers some of the requested keys"
            + (f", as do {len(overlapping) - 1} more runs" if len(overlapping) > 1 else "")
            + "; on_conflict USE_EXISTING adopts an in-flight run only when it covers exactly the same keys",
            reason="RUN_IN_FLIGHT",
            metadata={"run_id": str(existing.id)},
        )
    partition_state.mark_in_flight(coverage.positions, coverage.keys, run.id, now_us)
    outbox.add(run_event(run, "QUEUED", runs.QUEUED, message))
    log_transition(run, runs.QUEUED)
    return run, True


def _describe_keys(run: Run) -> str:
    if run.range_start_key:
        return f"keys {run.range_start_key!r} to {run.range_end_key!r}"
    if run.range_keys:
        covered = keys.covered_keys(run)
        return f"{len(covered)} keys from {covered[0]!r}"
    return f"partition key {run.partition_key!r}"


def insert_run(new_run: runs.NewRun, partition_keys: Sequence[str], now_us: int) -> Run | None:
    """Inserts the QUEUED run unless a run in flight has one of its keys; None then (nothing
    written). Single keys are deduped by the run table's in-flight index; runs of ranged
    workflows also claim every key in run_slice, whose primary key makes overlaps impossible."""
    run = runs.insert_if_no_run_in_flight(new_run, now_us)
    if run is None or not new_run.claims_slices:
        return run
    if not runs.claim_slices(new_run.workflow_slug, partition_keys, run.id):
        runs.delete_run(run.id)  # an in-flight run holds one of the keys
        return None
    return run


def in_flight_overlap(new_run: runs.NewRun, partition_keys: Sequence[str]) -> list[Run]:
    """The in-flight runs of the workflow that cover any of the keys, oldest first."""
    found: list[Run] = []
    if new_run.claims_slices:
        for run_id in runs.slice_holders(new_run.workflow_slug, partition_keys):
            run = runs.get_run(run_id)
            if run is not None:
                found.append(run)
    if not found and not new_run.range_keys:
        existing = runs.in_flight_run(new_run.workflow_slug, new_run.partition_key)
        if existing is not None:
            found.append(existing)
    return found


def claim_tx(
    outbox: Outbox,
    worker_id: str,
    workflow_slugs: Sequence[str],
    lease_duration: timedelta,
    now: datetime,
    catalog: Catalog | None = None,
) -> Lease | None:
    now_us = micros(now)
    caps = _caps_for(workflow_slugs)
    # The lease id carries its duration, so heartbeats extend by what the worker asked for.
    lease_id = f"{secrets.token_hex(12)}-{int(lease_duration.total_seconds() * 1000)}"
    expire = now_us + int(lease_duration.total_seconds() * 1_000_000)
    # Records the run's upstream inputs; runs of WAIT workflows missing upstream data are held.
    run, inputs = lineage.claim_checked(
        outbox,
        catalog or Catalog(),
        lambda: runs.claim_next(workflow_slugs, caps, worker_id, lease_id, expire, now_us),
        now,
    )
    if run is None:
        return None
    outbox.add(run_event(run, "STARTED", runs.RUNNING, f"claimed by {worker_id}", worker_id=worker_id))
    backfills.run_changed_tx(outbox, run, now_us, attempted=1)
    log_transition(run, runs.RUNNING, f"run {run.id} claimed by {worker_id}")
    return Lease(run, lease_id, expire, tuple(inputs))


def _caps_for(workflow_slugs: Sequence[str]) -> dict[str, int]:
    caps = workflows.concurrency_caps()
    if workflow_slugs:
        caps = {slug: cap for slug, cap in caps.items() if slug in workflow_slugs}
    if caps and sql.is_postgres():
        # Counting running runs and claiming one must not interleave with another replica's
        # claim of the same capped workflow; SQLite's single writer already serializes them.
        for slug in sorted(caps):
            sql.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("partita.claim." + slug,))
    return caps


def release_claim_tx(outbox: Outbox, run_id: int, lease_id: str, now: datetime) -> None:
    """Puts back a run claimed for a caller that went away before it got the answer."""
    run = runs.release_claim(run_id, lease_id, micros(now))
    if run is not None:
        outbox.add(run_event(run, "QUEUED", runs.QUEUED, "claim released: the worker went away"))
        backfills.run_changed_tx(outbox, run, micros(now), attempted=-1)
        log_transition(run, runs.QUEUED, f"run {run_id} claim released")


def leased_run(run_id: int, lease_id: str, now: datetime) -> Run:
    """The run whose current attempt holds `lease_id`; NOT_FOUND or FAILED_PRECONDITION otherwise."""
    run = runs.get_run(run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist", metadata={"run_id": str(run_id)})
    if run.lease_id != lease_id or not lease_id:
        raise FailedPrecondition(
            f"lease {lease_id[:64]!r} does not hold run {run_id} (its attempt {run.attempt} is "
            f"{run.state.lower()}); claim the run again",
            reason="LEASE_MISMATCH",
            metadata={"run_id": str(run_id)},
        )
    if run.state != runs.RUNNING or (
        run.lease_expire_time is not None and run.lease_expire_time < micros(now)
    ):
        raise FailedPrecondition(
            f"the lease on run {run_id} has lapsed; the attempt no longer belongs to this worker",
            reason="LEASE_EXPIRED",
            metadata={"run_id": str(run_id)},
        )
    return run


def lease_duration_of(lease_id: str) -> timedelta:
    return timedelta(milliseconds=int(lease_id.rpartition("-")[2]))


def heartbeat_tx(
    outbox: Outbox, run_id: int, lease_id: str, progress: float, message: str, now: datetime
) -> tuple[int, bool]:
    run = leased_run(run_id, lease_id, now)
    now_us = micros(now)
    expire = now_us + int(lease_duration_of(lease_id).total_seconds() * 1_000_000)
    runs.extend_lease(run_id, lease_id, expire, progress, message, now_us)
    if progress != run.progress or message != run.progress_message:
        run.progress = progress
        outbox.add(run_event(run, "PROGRESS", runs.RUNNING, message))
    return expire, bool(run.cancel_requested)


def fail_attempt_tx(
    outbox: Outbox,
    catalog: Catalog,
    run: Run,
    error_message: str,
    retryable: bool,
    now: datetime,
) -> Run:
    """Ends the run's current attempt with a failure: a retry when allowed, else FAILED
    (or CANCELED when cancellation was asked for)."""
    now_us = micros(now)
    policy = policy_of(run)
    if run.cancel_requested:
        return _end(outbox, catalog, run, runs.CANCELED, "canceled as requested", now_us, (runs.RUNNING,))
    if retryable and policy.allows_another_attempt(run.attempt):
        next_time = now_us + int(policy.backoff_after(run.attempt).total_seconds() * 1_000_000)
        updated = runs.requeue_for_retry(run.id, run.lease_id, next_time, error_message, now_us)
        if updated is not None:
            outbox.add(
                run_event(updated, "RETRY_SCHEDULED", runs.QUEUED, error_message, next_attempt_time=next_time)
            )
            log_transition(
                updated, runs.QUEUED, f"run {run.id} attempt {run.attempt} failed; retry scheduled"
            )
            backfills.run_changed_tx(outbox, updated, now_us, error=error_message)
            return updated
    return _end(outbox, catalog, run, runs.FAILED, error_message, now_us, (runs.RUNNING,))


def cancel_tx(outbox: Outbox, catalog: Catalog, run_id: int, reason: str, now: datetime) -> Run:
    run = runs.get_run(run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist", metadata={"run_id": str(run_id)})
    now_us = micros(now)
    if run.state == runs.QUEUED:
        return _end(outbox, catalog, run, runs.CANCELED, reason or "canceled", now_us, (runs.QUEUED,))
    if run.state == runs.RUNNING and not run.cancel_requested:
        runs.request_cancel(run_id, now_us)
        run.cancel_requested = True
        outbox.add(run_event(run, "PROGRESS", runs.RUNNING, "cancel requested"))
        log_transition(run, runs.RUNNING, f"run {run_id} cancel requested")
    return run


def _end(
    outbox: Outbox,
    catalog: Catalog,
    run: Run,
    state: str,
    message: str,
    now_us: int,
    from_states: Sequence[str],
    failed_keys: frozenset[str] | None = None,
) -> Run:
    """Ends the run; with `failed_keys` (a ranged run that failed only some keys) the other
    keys it covers succeeded: their materializations are recorded already."""
    ended = runs.finish(run.id, from_states, state, now_us, message if state == runs.FAILED else None)
    if ended is None:
        raise FailedPrecondition(
            f"run {run.id} is {run.state.lower()}, it cannot become {state.lower()}",
            reason="RUN_STATE_CHANGED",
            metadata={"run_id": str(run.id)},
        )
    if run.claims_slices:
        runs.release_slices(run.id)
    definition = catalog.workflow(run.workflow_slug)
    # Slices the run materialized are no longer in flight, so only the others settle.
    partition_state.settle(
        state_assets(definition, run), keys.covered_keys(run), run.id, state == runs.FAILED, now_us
    )
    outbox.add(run_event(ended, state, state, message))
    backfills.run_changed_tx(
        outbox, ended, now_us, error=message if state == runs.FAILED else None, failed_keys=failed_keys
    )
    log_transition(ended, state, f"run {run.id} {state.lower()}: {message}" if message else "")
    return ended


def fail_queued_tx(outbox: Outbox, catalog: Catalog, run: Run, message: str, now: datetime) -> Run:
    """Ends a queued run FAILED (a held run whose upstream data did not come in time)."""
    return _end(outbox, catalog, run, runs.FAILED, message, micros(now), (runs.QUEUED,))


def succeed_tx(outbox: Outbox, run: Run, now: datetime) -> Run:
    """Marks the run SUCCEEDED (materializations are recorded by the caller in the same transaction)."""
    now_us = micros(now)
    ended = runs.finish(run.id, (runs.RUNNING,), runs.SUCCEEDED, now_us)
    if ended is None:
        raise FailedPrecondition(f"run {run.id} is no longer running", reason="LEASE_EXPIRED")
    if run.claims_slices:
        runs.release_slices(run.id)
    outbox.add(run_event(ended, "SUCCEEDED", runs.SUCCEEDED))
    backfills.run_changed_tx(outbox, ended, now_us)
    log_transition(ended, runs.SUCCEEDED)
    return ended


def fail_keys_tx(
    outbox: Outbox, catalog: Catalog, run: Run, failed_keys: Sequence[str], now: datetime
) -> Run:
    """CompleteRun of a ranged run that failed some keys (the caller recorded the others'
    materializations): the run ends FAILED, with no retry — its successes stand — and only the
    failed keys' slices and backfill keys become FAILED."""
    shown = ", ".join(repr(key) for key in failed_keys[:5]) + (", ..." if len(failed_keys) > 5 else "")
    message = f"{len(failed_keys)} of {len(keys.covered_keys(run))} keys failed: {shown}"
    return _end(
        outbox, catalog, run, runs.FAILED, message, micros(now), (runs.RUNNING,), frozenset(failed_keys)
    )


def settle_unmaterialized_tx(
    definition: WorkflowDefinition, run: Run, recorded: Sequence[RecordedMaterialization], now: datetime
) -> None:
    """Produced assets the run did not materialize (`recorded`) at each of its keys leave
    IN_PROGRESS."""
    covered = keys.covered_keys(run)
    members = set(covered)
    # A CompleteRun records each (asset, key) once, so a count tells which assets are done.
    done = Counter(row.asset_id for row in recorded if row.partition_key in members)
    pending = [asset for asset in state_assets(definition, run) if done[asset] < len(covered)]
    partition_state.settle(pending, covered, run.id, False, micros(now))


def reap_tx(outbox: Outbox, catalog: Catalog, now: datetime, limit: int = 100) -> int:
    """Fails (retryably) the attempts whose lease lapsed or whose execution timeout passed."""
    now_us = micros(now)
    ended = 0
    for run in runs.lapsed_runs(now_us, limit):
        fail_attempt_tx(outbox, catalog, run, "the worker's lease lapsed", True, now)
        ended += 1
    for slug, timeout in _timeouts(catalog):
        started_before = now_us - int(timeout.total_seconds() * 1_000_000)
        for run in runs.running_runs_started_before(slug, started_before, limit):
            fail_attempt_tx(outbox, catalog, run, f"execution timeout of {timeout} exceeded", True, now)
            ended += 1
    return ended


def _timeouts(catalog: Catalog) -> list[tuple[str, timedelta]]:
    slugs = runs.running_workflow_slugs()
    result = []
    for slug in slugs:
        definition = catalog.workflow(slug)
        if definition is not None and definition.execution_timeout:
            result.append((slug, definition.execution_timeout))
    return result
