"""The event log: the outbox every state change writes in its own transaction.

Watchers read `sequence > cursor`. On PostgreSQL a sequence number is taken at INSERT
but seen at COMMIT, so a transaction takes a transaction-level advisory lock right before
inserting its events (its last statements): sequence order is then commit order and a
watcher past N never misses an N-1 that commits later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from storage.models import RunEvent

EVENT_ORDER_LOCK = 0x7061727469746132


@dataclass
class NewEvent:
    type: str
    workflow_slug: str = ""
    run_id: int | None = None
    partition_key: str = ""
    backfill_id: int | None = None
    state: str = ""
    attempt: int = 0
    progress: float = 0.0
    message: str = ""
    asset_id: str = ""
    materialization_ids: Sequence[int] = ()
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outbox:
    """Events gathered during one write transaction, appended at its end."""

    events: list[NewEvent] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)

    def add(self, event: NewEvent) -> None:
        self.events.append(event)

    def flush(self, db: pw.Database, now_micros: int) -> None:
        if self.events:
            self.sequences = append_events(db, self.events, now_micros)
            self.events = []


def append_events(db: pw.Database, events: Sequence[NewEvent], now_micros: int) -> list[int]:
    """Inserts events in order and returns their sequences. Call last in a transaction."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (EVENT_ORDER_LOCK,))
    rows = [
        {
            "time": now_micros,
            "run_id": event.run_id,
            "workflow_slug": event.workflow_slug,
            "partition_key": event.partition_key,
            "backfill_id": event.backfill_id,
            "asset_id": event.asset_id,
            "type": event.type,
            "state": event.state,
            "attempt": event.attempt,
            "progress": event.progress,
            "message": event.message,
            "materialization_ids": json.dumps(list(event.materialization_ids)),
            "data": json.dumps(event.data, separators=(",", ":")),
        }
        for event in events
    ]
    cursor = RunEvent.insert_many(rows).returning(RunEvent.sequence).execute()
    return [row[0] if isinstance(row, tuple) else row.sequence for row in cursor]


def head_sequence() -> int:
    """The newest sequence visible in this transaction's snapshot; 0 for an empty log."""
    value = RunEvent.select(pw.fn.MAX(RunEvent.sequence)).scalar()
    return int(value or 0)


def oldest_sequence() -> int:
    value = RunEvent.select(pw.fn.MIN(RunEvent.sequence)).scalar()
    return int(value or 0)


def events_after(after_sequence: int, limit: int) -> list[RunEvent]:
    return list(
        RunEvent.select().where(RunEvent.sequence > after_sequence).order_by(RunEvent.sequence).limit(limit)
    )
