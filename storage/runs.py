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


@dataclass(frozen=True)
class RunFilter:
    workflow_slug: str = ""
    partition_key: str | None = None
    states: Sequence[str] = ()
    backfill_id: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def insert_if_no_run_in_flight(new: NewRun, now: int) -> int | None:
    """Inserts a QUEUED run unless its slice has one queued or running; returns its id or None.

    The partial unique index decides, not a prior read, so this holds across threads and
    replicas; DO NOTHING keeps the PostgreSQL transaction usable after a conflict.
    """
    return sql.scalar(
        "INSERT INTO run (workflow_slug, partition_key, backfill_id, dedupe_slot, parameters, "
        "requested_parameters, state, attempt, max_attempts, retry_policy, trigger_kind, trigger_source_id, "
        "trigger_principal, labels, worker_id, lease_id, progress, progress_message, error_message, "
        "cancel_requested, create_time, update_time) "
        "VALUES (%s, %s, %s, 0, %s, %s, 'QUEUED', 1, %s, %s, %s, %s, %s, %s, '', '', 0, '', '', %s, %s, %s) "
        "ON CONFLICT (workflow_slug, partition_key, dedupe_slot) WHERE state IN ('QUEUED', 'RUNNING') "
        "DO NOTHING RETURNING id",
        (
            new.workflow_slug,
            new.partition_key,
            new.backfill_id,
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
        ),
    )


def in_flight_run(workflow_slug: str, partition_key: str) -> Run | None:
    return (
        Run.select()
        .where(
            (Run.workflow_slug == workflow_slug)
            & (Run.partition_key == partition_key)
            & Run.state.in_(IN_FLIGHT)
        )
        .order_by(Run.id)
        .first()
    )


def get_run(run_id: int) -> Run | None:
    return Run.get_or_none(Run.id == run_id)


def _filtered(run_filter: RunFilter) -> pw.ModelSelect:
    query = Run.select()
    if run_filter.workflow_slug:
        query = query.where(Run.workflow_slug == run_filter.workflow_slug)
    if run_filter.partition_key is not None:
        query = query.where(Run.partition_key == run_filter.partition_key)
    if run_filter.states:
        query = query.where(Run.state.in_(list(run_filter.states)))
    if run_filter.backfill_id is not None:
        query = query.where(Run.backfill_id == run_filter.backfill_id)
    return query


def list_runs(run_filter: RunFilter, before_id: int | None, limit: int) -> list[Run]:
    """Newest first. Label filters apply in Python over the id-ordered scan (labels are JSON)."""
    query = _filtered(run_filter)
    if before_id is not None:
        query = query.where(Run.id < before_id)
    query = query.order_by(Run.id.desc())
    if not run_filter.labels:
        return list(query.limit(limit))
    matched: list[Run] = []
    for run in query.iterator():
        if labels_match(run.labels, run_filter.labels):
            matched.append(run)
            if len(matched) == limit:
                break
    return matched


def count_runs(run_filter: RunFilter) -> int:
    if not run_filter.labels:
        return int(_filtered(run_filter).count())
    return sum(1 for run in _filtered(run_filter).iterator() if labels_match(run.labels, run_filter.labels))


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
    """Leases the oldest claimable QUEUED run, honouring per-workflow caps on running runs.

    One UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) on PostgreSQL, so concurrent
    claimers skip each other's rows instead of waiting; SQLite has a single writer.
    """
    conditions = ["state = 'QUEUED'", "(next_attempt_time IS NULL OR next_attempt_time <= %s)"]
    params: list[Any] = [now]
    if workflow_slugs:
        conditions.append(f"workflow_slug IN ({', '.join(['%s'] * len(workflow_slugs))})")
        params.extend(workflow_slugs)
    full = [slug for slug, cap in capped_workflows.items() if running_count(slug) >= cap]
    if full:
        conditions.append(f"workflow_slug NOT IN ({', '.join(['%s'] * len(full))})")
        params.extend(full)
    lock = " FOR UPDATE SKIP LOCKED" if sql.is_postgres() else ""
    run_id = sql.scalar(
        f"UPDATE run SET state = 'RUNNING', worker_id = %s, lease_id = %s, lease_expire_time = %s, "
        f"start_time = %s, update_time = %s, progress = 0, progress_message = '', next_attempt_time = NULL "
        f"WHERE id = (SELECT id FROM run WHERE {' AND '.join(conditions)} "
        f"ORDER BY COALESCE(next_attempt_time, create_time), id LIMIT 1{lock}) RETURNING id",
        (worker_id, lease_id, lease_expire_time, now, now, *params),
    )
    return get_run(int(run_id)) if run_id is not None else None


def running_count(workflow_slug: str) -> int:
    return int(Run.select().where((Run.workflow_slug == workflow_slug) & (Run.state == RUNNING)).count())


def extend_lease(
    run_id: int, lease_id: str, lease_expire_time: int, progress: float, message: str, now: int
) -> bool:
    updated = (
        Run.update(
            lease_expire_time=lease_expire_time, progress=progress, progress_message=message, update_time=now
        )
        .where((Run.id == run_id) & (Run.lease_id == lease_id) & (Run.state == RUNNING))
        .execute()
    )
    return bool(updated)


def finish(
    run_id: int, from_states: Sequence[str], state: str, now: int, error_message: str | None = None
) -> bool:
    """Moves the run to a terminal state if it is still in one of `from_states`."""
    values: dict[Any, Any] = {
        Run.state: state,
        Run.end_time: now,
        Run.update_time: now,
        Run.lease_expire_time: None,
        Run.next_attempt_time: None,
    }
    if error_message is not None:
        values[Run.error_message] = error_message
    if state == SUCCEEDED:
        values[Run.progress] = 1.0
    updated = Run.update(values).where((Run.id == run_id) & Run.state.in_(list(from_states))).execute()
    return bool(updated)


def requeue_for_retry(
    run_id: int, lease_id: str, next_attempt_time: int, error_message: str, now: int
) -> bool:
    updated = (
        Run.update(
            state=QUEUED,
            attempt=Run.attempt + 1,
            next_attempt_time=next_attempt_time,
            lease_id="",
            lease_expire_time=None,
            worker_id="",
            error_message=error_message,
            update_time=now,
        )
        .where((Run.id == run_id) & (Run.lease_id == lease_id) & (Run.state == RUNNING))
        .execute()
    )
    return bool(updated)


def request_cancel(run_id: int, now: int) -> bool:
    updated = (
        Run.update(cancel_requested=True, update_time=now)
        .where((Run.id == run_id) & (Run.state == RUNNING))
        .execute()
    )
    return bool(updated)


def lapsed_runs(now: int, limit: int) -> list[Run]:
    """Running runs whose lease expired."""
    return list(
        Run.select()
        .where((Run.state == RUNNING) & (Run.lease_expire_time < now))
        .order_by(Run.lease_expire_time)
        .limit(limit)
    )


def running_runs_started_before(workflow_slug: str, started_before: int, limit: int) -> list[Run]:
    return list(
        Run.select()
        .where(
            (Run.workflow_slug == workflow_slug) & (Run.state == RUNNING) & (Run.start_time < started_before)
        )
        .limit(limit)
    )


def next_attempt_due() -> int | None:
    """The earliest next_attempt_time among queued retries (to wake claimers when it comes)."""
    value = Run.select(pw.fn.MIN(Run.next_attempt_time)).where(Run.state == QUEUED).scalar()
    return int(value) if value is not None else None
