"""Queries and transitions of runs. Each function runs inside the caller's transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from storage import sql
from storage.models import Run

QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELED = "CANCELED"
IN_FLIGHT = (QUEUED, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELED)


@dataclass(frozen=True)
class NewRun:
    workflow_slug: str
    partition_key: str
    parameters: str
    requested_parameters: str
    labels: str
    max_attempts: int
    retry_policy: str
    trigger_kind: str
    trigger_source_id: str = ""
    trigger_principal: str = ""
    backfill_id: int | None = None
    # Ranged runs (partition_key ''): the range, or the dynamic keys as a JSON list.
    range_start_key: str = ""
    range_end_key: str = ""
    range_keys: str = ""
    claims_slices: bool = False
    # Nonzero for ranged runs, whose partition_key '' would otherwise collide in the in-flight
    # index: unique among the workflow's in-flight runs because their keys cannot overlap.
    dedupe_slot: int = 0


@dataclass(frozen=True)
class RunFilter:
    workflow_slug: str = ""
    partition_key: str | None = None
    states: Sequence[str] = ()
    backfill_id: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # With `partition_key`: the workflows whose ranged runs (partition_key '') may cover it.
    ranged_workflows: Sequence[str] = ()


def insert_if_no_run_in_flight(new: NewRun, now: int) -> Run | None:
    """Inserts a QUEUED run unless its slice has one queued or running; returns it, or None.

    The partial unique index decides, not a prior read, so this holds across threads and
    replicas; DO NOTHING keeps the PostgreSQL transaction usable after a conflict.
    """
    inserted = sql.returning_models(
        Run,
        "INSERT INTO run (workflow_slug, partition_key, backfill_id, dedupe_slot, parameters, "
        "requested_parameters, state, attempt, max_attempts, retry_policy, trigger_kind, trigger_source_id, "
        "trigger_principal, labels, worker_id, lease_id, progress, progress_message, error_message, "
        "cancel_requested, create_time, update_time, range_start_key, range_end_key, range_keys, claims_slices) "
        "VALUES (%s, %s, %s, %s, %s, %s, 'QUEUED', 1, %s, %s, %s, %s, %s, %s, '', '', 0, '', '', %s, %s, %s, "
        "%s, %s, %s, %s) "
        "ON CONFLICT (workflow_slug, partition_key, dedupe_slot) WHERE state IN ('QUEUED', 'RUNNING') "
        "DO NOTHING",
        (
            new.workflow_slug,
            new.partition_key,
            new.backfill_id,
            new.dedupe_slot,
            new.parameters,
            new.requested_parameters,
            new.max_attempts,
            new.retry_policy,
            new.trigger_kind,
            new.trigger_source_id,
            new.trigger_principal,
            new.labels,
            False,
            now,
            now,
            new.range_start_key,
            new.range_end_key,
            new.range_keys,
            new.claims_slices,
        ),
    )
    return inserted[0] if inserted else None


def claim_slices(workflow_slug: str, partition_keys: Sequence[str], run_id: int) -> bool:
    """Claims every key for the in-flight run `run_id`; False (claiming none) when another
    in-flight run of the workflow holds one. The primary key decides, as for single keys; DO
    NOTHING keeps the PostgreSQL transaction usable after a conflict."""
    claimed = 0
    for values, params in sql.values_chunks(
        "(%s, %s, %s)", [(workflow_slug, key, run_id) for key in partition_keys]
    ):
        cursor = sql.execute(
            f"INSERT INTO run_slice (workflow_slug, partition_key, run_id) VALUES {values} "
            "ON CONFLICT (workflow_slug, partition_key) DO NOTHING",
            params,
        )
        claimed += int(cursor.rowcount)
    if claimed == len(partition_keys):
        return True
    release_slices(run_id)
    return False


def release_slices(run_id: int) -> None:
    sql.execute("DELETE FROM run_slice WHERE run_id = %s", (run_id,))


def slice_holders(workflow_slug: str, partition_keys: Sequence[str]) -> list[int]:
    """Ids of the in-flight runs that hold any of the keys, oldest first."""
    holders: set[int] = set()
    for chunk in sql.chunks(partition_keys):
        holders.update(
            int(row[0])
            for row in sql.rows(
                "SELECT DISTINCT run_id FROM run_slice WHERE workflow_slug = %s "
                f"AND partition_key IN ({sql.placeholders(chunk)})",
                (workflow_slug, *chunk),
            )
        )
    return sorted(holders)


def delete_run(run_id: int) -> None:
    """Takes back a run inserted in this transaction whose keys turned out to be taken."""
    sql.execute("DELETE FROM run WHERE id = %s", (run_id,))


def _one(found: list[Run]) -> Run | None:
    return found[0] if found else None


def in_flight_run(workflow_slug: str, partition_key: str) -> Run | None:
    return _one(
        sql.select_models(
            Run,
            "workflow_slug = %s AND partition_key = %s AND state IN ('QUEUED', 'RUNNING')",
            (workflow_slug, partition_key),
            "ORDER BY id LIMIT 1",
        )
    )


def get_run(run_id: int) -> Run | None:
    return _one(sql.select_models(Run, "id = %s", (run_id,)))


def _filtered(run_filter: RunFilter, *, ranged: bool = False) -> Any:
    """The filter's runs; with `ranged`, the ranged runs of `ranged_workflows` that may cover
    its partition key (a substring test on their key lists, made exact by `_covers`)."""
    query = Run.select()
    if run_filter.workflow_slug:
        query = query.where(Run.workflow_slug == run_filter.workflow_slug)
    if ranged:
        find = pw.fn.strpos if sql.is_postgres() else pw.fn.instr
        query = query.where(
            Run.workflow_slug.in_(list(run_filter.ranged_workflows)),
            Run.partition_key == "",
            Run.range_keys != "",
            find(Run.range_keys, json.dumps(run_filter.partition_key)) > 0,
        )
    elif run_filter.partition_key is not None:
        query = query.where(Run.partition_key == run_filter.partition_key)
    if run_filter.states:
        query = query.where(Run.state.in_(list(run_filter.states)))
    if run_filter.backfill_id is not None:
        query = query.where(Run.backfill_id == run_filter.backfill_id)
    return query


def _queries(run_filter: RunFilter) -> list[tuple[Any, bool]]:
    """(query, whether its rows need the Python check): the filter's own, and for a partition
    key of ranged workflows, their ranged runs (each found through the (workflow, key, id) index)."""
    queries = [(_filtered(run_filter), bool(run_filter.labels))]
    if run_filter.partition_key is not None and run_filter.ranged_workflows:
        queries.append((_filtered(run_filter, ranged=True), True))
    return queries


def _covers(run: Run, run_filter: RunFilter) -> bool:
    if run_filter.labels and not labels_match(run.labels, run_filter.labels):
        return False
    key = run_filter.partition_key
    return key is None or run.partition_key == key or key in json.loads(run.range_keys or "[]")


def list_runs(run_filter: RunFilter, before_id: int | None, limit: int) -> list[Run]:
    """Newest first. Label filters and ranged runs' keys are checked in Python over id-ordered
    scans (both are JSON)."""
    found: list[Run] = []
    for query, checked in _queries(run_filter):
        if before_id is not None:
            query = query.where(Run.id < before_id)
        query = query.order_by(Run.id.desc())
        if not checked:
            found.extend(query.limit(limit))
            continue
        matched = 0
        for run in query.iterator():
            if _covers(run, run_filter):
                found.append(run)
                matched += 1
                if matched == limit:
                    break
    return sorted(found, key=lambda run: -int(run.id))[:limit]


def count_runs(run_filter: RunFilter) -> int:
    return sum(
        sum(1 for run in query.iterator() if _covers(run, run_filter)) if checked else int(query.count())
        for query, checked in _queries(run_filter)
    )


def labels_match(stored: str, wanted: Mapping[str, str]) -> bool:
    labels: dict[str, Any] = json.loads(stored or "{}")
    return all(labels.get(key) == value for key, value in wanted.items())


def claim_next(
    workflow_slugs: Sequence[str],
    capped_workflows: Mapping[str, int],
    worker_id: str,
    lease_id: str,
    lease_expire_time: int,
    now: int,
) -> Run | None:
    """Leases the oldest claimable QUEUED run (in enqueue order; a retry waits for its
    next_attempt_time), honouring per-workflow caps on running runs.

    One UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) on PostgreSQL, so concurrent
    claimers skip each other's rows instead of waiting; SQLite has a single writer.
    """
    conditions = [
        "state = 'QUEUED'",
        "(next_attempt_time IS NULL OR next_attempt_time <= %s)",
        "hold_reason = ''",  # held for upstream data (server/lineage.py)
    ]
    params: list[Any] = [now]
    if workflow_slugs:
        conditions.append(f"workflow_slug IN ({sql.placeholders(workflow_slugs)})")
        params.extend(workflow_slugs)
    full = [slug for slug, cap in capped_workflows.items() if running_count(slug) >= cap]
    if full:
        conditions.append(f"workflow_slug NOT IN ({sql.placeholders(full)})")
        params.extend(full)
    lock = " FOR UPDATE SKIP LOCKED" if sql.is_postgres() else ""
    return _one(
        sql.returning_models(
            Run,
            "UPDATE run SET state = 'RUNNING', worker_id = %s, lease_id = %s, lease_expire_time = %s, "
            "start_time = %s, update_time = %s, progress = 0, progress_message = '', next_attempt_time = NULL "
            f"WHERE id = (SELECT id FROM run WHERE {' AND '.join(conditions)} "
            f"ORDER BY id LIMIT 1{lock})",
            (worker_id, lease_id, lease_expire_time, now, now, *params),
        )
    )


def running_count(workflow_slug: str) -> int:
    return int(
        sql.scalar(
            "SELECT COUNT(*) FROM run WHERE workflow_slug = %s AND state = 'RUNNING'", (workflow_slug,)
        )
    )


def extend_lease(
    run_id: int, lease_id: str, lease_expire_time: int, progress: float, message: str, now: int
) -> bool:
    updated = sql.execute(
        "UPDATE run SET lease_expire_time = %s, progress = %s, progress_message = %s, update_time = %s "
        "WHERE id = %s AND lease_id = %s AND state = 'RUNNING'",
        (lease_expire_time, progress, message, now, run_id, lease_id),
    )
    return bool(updated.rowcount)


def finish(
    run_id: int, from_states: Sequence[str], state: str, now: int, error_message: str | None = None
) -> Run | None:
    """Moves the run to a terminal state if it is still in one of `from_states`; returns it then."""
    error = ", error_message = %s" if error_message is not None else ""
    progress = ", progress = 1" if state == SUCCEEDED else ""
    return _one(
        sql.returning_models(
            Run,
            f"UPDATE run SET state = %s, end_time = %s, update_time = %s, lease_expire_time = NULL, "
            f"next_attempt_time = NULL{error}{progress} "
            f"WHERE id = %s AND state IN ({sql.placeholders(from_states)})",
            (state, now, now, *([error_message] if error_message is not None else []), run_id, *from_states),
        )
    )


def requeue_for_retry(
    run_id: int, lease_id: str, next_attempt_time: int, error_message: str, now: int
) -> Run | None:
    return _one(
        sql.returning_models(
            Run,
            "UPDATE run SET state = 'QUEUED', attempt = attempt + 1, next_attempt_time = %s, lease_id = '', "
            "lease_expire_time = NULL, worker_id = '', error_message = %s, update_time = %s "
            "WHERE id = %s AND lease_id = %s AND state = 'RUNNING'",
            (next_attempt_time, error_message, now, run_id, lease_id),
        )
    )


def release_claim(run_id: int, lease_id: str, now: int) -> Run | None:
    """Puts a claimed run back in the queue as it was before the claim."""
    return _one(
        sql.returning_models(
            Run,
            "UPDATE run SET state = 'QUEUED', lease_id = '', lease_expire_time = NULL, worker_id = '', "
            "start_time = NULL, update_time = %s WHERE id = %s AND lease_id = %s AND state = 'RUNNING'",
            (now, run_id, lease_id),
        )
    )


def request_cancel(run_id: int, now: int) -> bool:
    updated = sql.execute(
        "UPDATE run SET cancel_requested = %s, update_time = %s WHERE id = %s AND state = 'RUNNING'",
        (True, now, run_id),
    )
    return bool(updated.rowcount)


def lapsed_runs(now: int, limit: int) -> list[Run]:
    """Running runs whose lease expired."""
    return sql.select_models(
        Run,
        "state = 'RUNNING' AND lease_expire_time < %s",
        (now,),
        f"ORDER BY lease_expire_time LIMIT {int(limit)}",
    )


def running_runs_started_before(workflow_slug: str, started_before: int, limit: int) -> list[Run]:
    return sql.select_models(
        Run,
        "workflow_slug = %s AND state = 'RUNNING' AND start_time < %s",
        (workflow_slug, started_before),
        f"LIMIT {int(limit)}",
    )


def running_workflow_slugs() -> list[str]:
    return [row[0] for row in sql.rows("SELECT DISTINCT workflow_slug FROM run WHERE state = 'RUNNING'")]
