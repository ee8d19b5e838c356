"""Schedules in storage: per-workflow schedule state (cursor and next tick) and the tick log.

Every function runs inside the caller's transaction. A tick row is unique per (workflow,
tick_time) and is inserted with ON CONFLICT DO NOTHING, in the transaction that creates the
tick's runs or backfill: whoever inserts it first fires the tick, anyone else (a deposed
leader, a restarted server) finds it taken and writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage import sql
from storage.models import database_proxy

FIRED = "FIRED"
SKIPPED = "SKIPPED"
FAILED = "FAILED"
# Placeholder outcome of a tick row inserted before its runs (same transaction: never seen).
EVALUATING = "EVALUATING"
OUTCOMES = (FIRED, SKIPPED, FAILED)


@dataclass(frozen=True)
class ScheduleState:
    workflow_slug: str
    enabled: bool
    cron_schedule: str
    timezone: str
    cursor_time: int
    next_tick_time: int | None
    update_time: int


_STATE_COLUMNS = "workflow_slug, enabled, cron_schedule, timezone, cursor_time, next_tick_time, update_time"


def _state(row: Sequence[Any]) -> ScheduleState:
    return ScheduleState(
        row[0],
        bool(row[1]),
        row[2],
        row[3],
        int(row[4]),
        None if row[5] is None else int(row[5]),
        int(row[6]),
    )


@dataclass(frozen=True)
class TickRow:
    id: int
    workflow_slug: str
    tick_time: int
    outcome: str
    reason: str
    run_ids: tuple[int, ...]
    backfill_id: int | None
    evaluate_time: int


_TICK_COLUMNS = "id, workflow_slug, tick_time, outcome, reason, run_ids, backfill_id, evaluate_time"


def _tick(row: Sequence[Any]) -> TickRow:
    return TickRow(
        int(row[0]),
        row[1],
        int(row[2]),
        row[3],
        row[4],
        tuple(int(run_id) for run_id in json.loads(row[5] or "[]")),
        None if row[6] is None else int(row[6]),
        int(row[7]),
    )


# --- state ------------------------------------------------------------------------------------------


def get_state(workflow_slug: str, *, lock: bool = False) -> ScheduleState | None:
    suffix = " FOR UPDATE" if lock and sql.is_postgres() else ""
    found = sql.rows(
        f"SELECT {_STATE_COLUMNS} FROM schedule_state WHERE workflow_slug = %s{suffix}", (workflow_slug,)
    )
    return _state(found[0]) if found else None


def save_state(state: ScheduleState) -> None:
    """Inserts or replaces the workflow's schedule state."""
    sql.execute(
        f"INSERT INTO schedule_state ({_STATE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (workflow_slug) DO UPDATE SET enabled = excluded.enabled, "
        "cron_schedule = excluded.cron_schedule, timezone = excluded.timezone, "
        "cursor_time = excluded.cursor_time, next_tick_time = excluded.next_tick_time, "
        "update_time = excluded.update_time",
        (
            state.workflow_slug,
            state.enabled,
            state.cron_schedule,
            state.timezone,
            state.cursor_time,
            state.next_tick_time,
            state.update_time,
        ),
    )


def advance(
    workflow_slug: str,
    seen_next: int,
    cron_schedule: str,
    timezone: str,
    cursor_time: int,
    next_tick_time: int | None,
    now: int,
) -> bool:
    """Moves the cursor past the evaluated ticks, unless someone else moved it first."""
    cursor = sql.execute(
        "UPDATE schedule_state SET cron_schedule = %s, timezone = %s, cursor_time = %s, next_tick_time = %s, "
        "update_time = %s WHERE workflow_slug = %s AND enabled = %s AND next_tick_time = %s",
        (cron_schedule, timezone, cursor_time, next_tick_time, now, workflow_slug, True, seen_next),
    )
    return bool(cursor.rowcount)


def due_workflows(now: int, limit: int = 1000) -> list[str]:
    """Enabled schedules whose next tick is at or before `now`, soonest first."""
    found = sql.rows(
        "SELECT workflow_slug FROM schedule_state WHERE next_tick_time <= %s AND enabled = %s "
        "ORDER BY next_tick_time, workflow_slug LIMIT %s",
        (now, True, limit),
    )
    return [row[0] for row in found]


def earliest_next_tick() -> int | None:
    value = sql.scalar("SELECT MIN(next_tick_time) FROM schedule_state WHERE enabled = %s", (True,))
    return None if value is None else int(value)


def savepoint() -> Any:
    """A savepoint inside the current transaction (peewee's nested atomic)."""
    db = database_proxy.obj
    assert db is not None, "models are not bound to a database"
    return db.atomic()


# --- ticks ------------------------------------------------------------------------------------------


def insert_tick(workflow_slug: str, tick_time: int, now: int) -> int | None:
    """Claims the tick (outcome EVALUATING until `finish_tick`); None when it is already taken."""
    found = sql.rows(
        "INSERT INTO schedule_tick (workflow_slug, tick_time, outcome, reason, run_ids, backfill_id, "
        "evaluate_time) VALUES (%s, %s, %s, '', '[]', NULL, %s) "
        "ON CONFLICT (workflow_slug, tick_time) DO NOTHING RETURNING id",
        (workflow_slug, tick_time, EVALUATING, now),
    )
    return int(found[0][0]) if found else None


def finish_tick(
    tick_id: int, outcome: str, reason: str = "", run_ids: Sequence[int] = (), backfill_id: int | None = None
) -> TickRow:
    found = sql.rows(
        "UPDATE schedule_tick SET outcome = %s, reason = %s, run_ids = %s, backfill_id = %s "
        f"WHERE id = %s RETURNING {_TICK_COLUMNS}",
        (outcome, reason, json.dumps([int(run_id) for run_id in run_ids]), backfill_id, tick_id),
    )
    return _tick(found[0])


def list_ticks(workflow_slug: str, before_tick_time: int | None, limit: int) -> list[TickRow]:
    """The workflow's ticks, newest first, older than `before_tick_time` when given."""
    condition = "workflow_slug = %s AND outcome <> %s"
    params: list[Any] = [workflow_slug, EVALUATING]
    if before_tick_time is not None:
        condition += " AND tick_time < %s"
        params.append(before_tick_time)
    found = sql.rows(
        f"SELECT {_TICK_COLUMNS} FROM schedule_tick WHERE {condition} ORDER BY tick_time DESC LIMIT %s",
        (*params, limit),
    )
    return [_tick(row) for row in found]


def open_schedule_backfill(workflow_slug: str) -> int | None:
    """A backfill a tick of this workflow's schedule created that has not finished, if any."""
    value = sql.scalar(
        "SELECT id FROM backfill WHERE workflow_slug = %s AND trigger_kind = 'SCHEDULE' "
        "AND state IN ('RUNNING', 'CANCELING') ORDER BY id LIMIT 1",
        (workflow_slug,),
    )
    return None if value is None else int(value)
