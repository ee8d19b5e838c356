"""The event log: the outbox every state change writes in its own transaction.

Watchers read `sequence > cursor`. On PostgreSQL a sequence number is taken at INSERT
but seen at COMMIT, so a transaction takes a transaction-level advisory lock right before
inserting its events (its last statements): sequence order is then commit order and a
watcher past N never misses an N-1 that commits later. The same transaction sends
`NOTIFY partita_events` (delivered at COMMIT, carrying only the newest sequence) so followers
on other replicas wake up; it never carries the data — they read the rows.

Pruning deletes a prefix of the log in small batches and never the newest event, so the
retained log is always `oldest_sequence() .. head_sequence()` without holes.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import peewee as pw

from storage import sql
from storage.materializations import RecordedMaterialization
from storage.models import RunEvent

EVENT_ORDER_LOCK = 0x7061727469746132
# The LISTEN/NOTIFY channel that wakes the event followers of every replica (PostgreSQL).
EVENTS_CHANNEL = "partita_events"


# One encoder for every event: json.dumps with options builds a new one each time.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class EncodedJson(str):
    """JSON text an event's `data` holds as is: a ranged run's stored key list, which each of its
    events carries and which would otherwise be decoded and encoded again for every event."""


def _data_json(data: dict[str, Any]) -> str:
    if not data:
        return "{}"
    if not any(isinstance(value, EncodedJson) for value in data.values()):
        return _COMPACT.encode(data)
    return (
        "{"
        + ",".join(
            _COMPACT.encode(name)
            + ":"
            + (value if isinstance(value, EncodedJson) else _COMPACT.encode(value))
            for name, value in data.items()
        )
        + "}"
    )


@dataclass(slots=True)
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


@dataclass(frozen=True)
class MaterializedEvents:
    """The MATERIALIZED events of slices recorded together (one run's, or one report's), one per
    row in order: added as one entry, since a ranged run records thousands."""

    workflow_slug: str
    run_id: int | None
    backfill_id: int | None
    state: str
    attempt: int
    rows: Sequence[RecordedMaterialization]


class Commit(NamedTuple):
    """What one write appended to the log: its newest event's sequence, and whether any of its
    events belongs to a backfill (only those can change what the backfill dispatcher may do)."""

    head_sequence: int
    touches_backfill: bool


@dataclass
class Outbox:
    """Events gathered during one write transaction, appended at its end."""

    events: list[NewEvent | MaterializedEvents] = field(default_factory=list)
    # Set by `flush` when it appended events.
    committed: Commit | None = None
    # Work that must come last in the transaction, right before its events are appended (and
    # may add events): writes to rows many transactions share, such as a backfill's counters,
    # so that every transaction locks them at the same point (no lock-order deadlocks).
    before_flush: list[Callable[[], None]] = field(default_factory=list)

    def add(self, event: NewEvent | MaterializedEvents) -> None:
        self.events.append(event)

    def flush(self, db: pw.Database, now_micros: int) -> None:
        while self.before_flush:
            self.before_flush.pop(0)()
        if self.events:
            sequences = append_events(db, self.events, now_micros)
            touches_backfill = any(event.backfill_id is not None for event in self.events)
            self.committed = Commit(max(sequences), touches_backfill)
            self.events = []


def append_events(
    db: pw.Database, events: Sequence[NewEvent | MaterializedEvents], now_micros: int
) -> list[int]:
    """Inserts events in order and returns their sequences. Call last in a transaction."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (EVENT_ORDER_LOCK,))
    rows: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, MaterializedEvents):
            rows += [
                (
                    now_micros,
                    event.run_id,
                    event.workflow_slug,
                    row.partition_key,
                    event.backfill_id,
                    row.asset_id,
                    "MATERIALIZED",
                    event.state,
                    event.attempt,
                    0.0,
                    "",
                    f"[{row.id}]",
                    "{}",
                )
                for row in event.rows
            ]
            continue
        rows.append(
            (
                now_micros,
                event.run_id,
                event.workflow_slug,
                event.partition_key,
                event.backfill_id,
                event.asset_id,
                event.type,
                event.state,
                event.attempt,
                event.progress,
                event.message,
                "[" + ",".join(map(str, event.materialization_ids)) + "]",
                _data_json(event.data),
            )
        )
    # Rows take their sequences in VALUES order, which is the order the events were added in.
    sequences = sql.insert_all_ids(
        "INSERT INTO run_event (time, run_id, workflow_slug, partition_key, backfill_id, asset_id, type, state, "
        "attempt, progress, message, materialization_ids, data) VALUES",
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        rows,
        "sequence",
    )
    if sequences and isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, str(max(sequences)))
        )
    return sequences


def head_sequence() -> int:
    """The newest sequence visible in this transaction's snapshot; 0 for an empty log."""
    return int(sql.scalar("SELECT MAX(sequence) FROM run_event") or 0)


def oldest_sequence() -> int:
    return int(sql.scalar("SELECT MIN(sequence) FROM run_event") or 0)


def materialized_after(after_sequence: int, limit: int) -> tuple[list[tuple[int, str, str, str]], int]:
    """MATERIALIZED events of an asset after `after_sequence`, as (sequence, asset_id,
    partition_key, materialization_ids JSON), and how far the scan got: the last one returned
    when `limit` cut it short, else the head of the log (the head is read first, so nothing
    committed between the two reads is passed over)."""
    head = head_sequence()
    found = [
        (int(sequence), asset_id, partition_key, ids)
        for sequence, asset_id, partition_key, ids in sql.rows(
            "SELECT sequence, asset_id, partition_key, materialization_ids FROM run_event "
            "WHERE sequence > %s AND sequence <= %s AND type = 'MATERIALIZED' AND asset_id <> '' "
            f"ORDER BY sequence LIMIT {int(limit)}",
            (after_sequence, head),
        )
    ]
    reached = found[-1][0] if len(found) == limit else max(head, after_sequence)
    return found, reached


# How a ranged run's events list its keys in `data` (server/lifecycle.py key_data).
RANGED_MARK = '"partition_keys":'


def covered_keys(partition_key: str, data: str) -> list[str]:
    """The keys of the ranged run an event row is about ([] for other events)."""
    if partition_key or RANGED_MARK not in data:
        return []
    found = json.loads(data).get("partition_keys")
    return [str(key) for key in found] if isinstance(found, list) else []


@dataclass(frozen=True)
class EventFilter:
    """What a watcher wants; the fields combine with AND and an unset field matches everything.
    `partition_keys` may hold `""` to match events without a key."""

    workflow_slug: str = ""
    partition_keys: frozenset[str] = frozenset()
    backfill_id: int | None = None
    run_id: int | None = None

    @property
    def is_empty(self) -> bool:
        return (
            not (self.workflow_slug or self.partition_keys)
            and self.backfill_id is None
            and self.run_id is None
        )

    def matches(
        self,
        workflow_slug: str,
        partition_key: str,
        backfill_id: int | None,
        run_id: int | None,
        covered_keys: Sequence[str] = (),
    ) -> bool:
        """`covered_keys`: every key of a ranged run the event is about (its partition_key is '')."""
        return (
            (not self.workflow_slug or workflow_slug == self.workflow_slug)
            and (
                not self.partition_keys
                or partition_key in self.partition_keys
                or any(key in self.partition_keys for key in covered_keys)
            )
            and (self.backfill_id is None or backfill_id == self.backfill_id)
            and (self.run_id is None or run_id == self.run_id)
        )

    def condition(self) -> Any:
        """The filter as a peewee WHERE expression (True when it is empty)."""
        condition: Any = True
        if self.workflow_slug:
            condition &= RunEvent.workflow_slug == self.workflow_slug
        if self.partition_keys:
            # Events of ranged runs (key '', their keys in data) are matched exactly by `matches`.
            condition &= RunEvent.partition_key.in_(sorted(self.partition_keys)) | (
                (RunEvent.partition_key == "") & RunEvent.data.contains(RANGED_MARK)
            )
        if self.backfill_id is not None:
            condition &= RunEvent.backfill_id == self.backfill_id
        if self.run_id is not None:
            condition &= RunEvent.run_id == self.run_id
        return condition


@dataclass(frozen=True)
class Scan:
    """One step of reading the log for a watcher: the matching `rows` after the cursor (named
    tuples with RunEvent's column names, cheaper than model instances), the position the step
    has fully scanned through (`scanned`, >= every row's sequence), and the oldest retained
    sequence (`oldest`, 0 for an empty log)."""

    rows: list[Any]
    scanned: int
    oldest: int
    head: int


def scan_events(after_sequence: int, event_filter: EventFilter, limit: int) -> Scan:
    """Inside a read transaction: up to `limit` events matching `event_filter` after
    `after_sequence`, in sequence order.

    The head is read first and bounds the query. Sequence order is commit order (see the
    module docstring), so every event up to that head is committed and visible to the second
    statement even under READ COMMITTED: when fewer than `limit` rows come back, everything
    up to the head has been scanned.
    """
    head = head_sequence()
    oldest = oldest_sequence()
    if head <= after_sequence:
        return Scan([], after_sequence, oldest, head)
    query = RunEvent.select().where((RunEvent.sequence > after_sequence) & (RunEvent.sequence <= head))
    if not event_filter.is_empty:
        query = query.where(event_filter.condition())
    rows = list(query.order_by(RunEvent.sequence).limit(limit).namedtuples())
    scanned = rows[-1].sequence if len(rows) >= limit else head
    if event_filter.partition_keys:
        rows = [
            row
            for row in rows
            if row.partition_key
            or event_filter.matches(
                row.workflow_slug, "", row.backfill_id, row.run_id, covered_keys("", row.data)
            )
        ]
    return Scan(rows, scanned, oldest, head)


EventRow = collections.namedtuple("EventRow", sql.columns(RunEvent))  # type: ignore[misc]


def event_rows_after(after_sequence: int, limit: int) -> list[Any]:
    """Like `events_after`, as named tuples with RunEvent's column names (for the follower).
    Plain SQL: the follower reads after every commit, where peewee's builder cost dominated."""
    found = sql.rows(
        f"SELECT {sql.column_list(RunEvent)} FROM run_event WHERE sequence > %s ORDER BY sequence LIMIT %s",
        (after_sequence, int(limit)),
    )
    return [EventRow(*row) for row in found]


def prune_events(*, older_than_micros: int | None, keep_last: int | None, limit: int) -> int:
    """Inside a write transaction: deletes at most `limit` sequence numbers' worth of the oldest
    events — those written before `older_than_micros`, and those more than `keep_last`
    sequences behind the head — and returns how many rows went.

    Only a prefix of the log is ever deleted (an event is kept when any older one is), and never
    the newest event, so `oldest_sequence()` always tells a watcher whether its cursor is still
    covered. `keep_last` counts sequence numbers, so gaps (rolled-back inserts) make it keep
    slightly fewer rows. Per-partition state is never touched.
    """
    if older_than_micros is None and keep_last is None:
        return 0
    head = head_sequence()
    oldest = oldest_sequence()
    if head == 0 or oldest >= head:
        return 0
    # A batch deletes sequences oldest .. stop, never the head.
    stop = min(head - 1, oldest + max(limit, 1) - 1)
    cut = oldest - 1
    if keep_last is not None:
        cut = max(cut, head - max(keep_last, 1))
    if older_than_micros is not None:
        first_young = (
            RunEvent.select(pw.fn.MIN(RunEvent.sequence))
            .where(
                (RunEvent.sequence >= oldest)
                & (RunEvent.sequence <= stop)
                & (RunEvent.time >= older_than_micros)
            )
            .scalar()
        )
        cut = max(cut, stop if first_young is None else int(first_young) - 1)
    cut = min(cut, stop)
    if cut < oldest:
        return 0
    return int(RunEvent.delete().where(RunEvent.sequence <= cut).execute())
