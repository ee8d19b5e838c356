"""Backfills in storage: the plan (one `backfill_partition` row per key, in key order), the
per-state counters on the `backfill` row, and conditional transitions.

Every function runs inside the caller's transaction. Key transitions are guarded UPDATEs
(`WHERE state = <the state we saw>`), so a deposed dispatcher, a cancel and a run's own
transition can never both move one key; the counters move by the same deltas in the same
transaction, so `pending + queued + running = 0` means every key is decided.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import peewee as pw

from storage import sql
from storage.models import Run, database_proxy

# Key states.
PENDING = "PENDING"
QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELED = "CANCELED"
KEY_STATES = (PENDING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
IN_FLIGHT = (QUEUED, RUNNING)
UNDECIDED = (PENDING, QUEUED, RUNNING)

# Backfill states (RUNNING and CANCELED as above).
COMPLETED = "COMPLETED"
COMPLETED_WITH_FAILURES = "COMPLETED_WITH_FAILURES"
CANCELING = "CANCELING"
BACKFILL_STATES = (RUNNING, COMPLETED, COMPLETED_WITH_FAILURES, CANCELING, CANCELED)
TERMINAL = (COMPLETED, COMPLETED_WITH_FAILURES, CANCELED)
OPEN = (RUNNING, CANCELING)


@dataclass(frozen=True)
class Counts:
    total: int = 0
    pending: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0

    @property
    def in_flight(self) -> int:
        return self.queued + self.running

    @property
    def undecided(self) -> int:
        return self.pending + self.queued + self.running

    def of(self, state: str) -> int:
        return int(getattr(self, state.lower()))

    def as_list(self) -> list[int]:
        return [
            self.total,
            self.pending,
            self.queued,
            self.running,
            self.succeeded,
            self.failed,
            self.canceled,
        ]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Counts:
        return cls(*(int(value) for value in values))

    def plus(self, deltas: Mapping[str, int]) -> Counts:
        values = {state.lower(): self.of(state) + deltas.get(state, 0) for state in KEY_STATES}
        return Counts(total=self.total, **values)


@dataclass(frozen=True)
class BackfillRow:
    id: int
    workflow_slug: str
    state: str
    selection: str
    parameters: str
    max_concurrent_runs: int
    retry_policy: str
    labels: str
    trigger_kind: str
    trigger_source_id: str
    trigger_principal: str
    create_time: int
    end_time: int | None
    update_time: int
    counts: Counts
    keys_per_run: int = 1

    @property
    def key_cap(self) -> int:
        """In-flight keys allowed: max_concurrent_runs runs of up to keys_per_run keys."""
        return self.max_concurrent_runs * self.keys_per_run

    def snapshot(self) -> dict[str, Any]:
        """What an event of this backfill carries: its state and counts right after the event."""
        return {"state": self.state, "counts": self.counts.as_list(), "end_time": self.end_time}


_BACKFILL_COLUMNS = (
    "id, workflow_slug, state, selection, parameters, max_concurrent_runs, retry_policy, labels, "
    "trigger_kind, trigger_source_id, trigger_principal, create_time, end_time, update_time, total_count, "
    "pending_count, queued_count, running_count, succeeded_count, failed_count, canceled_count, keys_per_run"
)
# The same without the selection (which may list a million keys): '' in its place. Counter
# updates and the dispatcher read these.
_BACKFILL_COLUMNS_BRIEF = _BACKFILL_COLUMNS.replace("selection", "''", 1)


def _backfill(row: Sequence[Any]) -> BackfillRow:
    return BackfillRow(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        int(row[5]),
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        int(row[11]),
        None if row[12] is None else int(row[12]),
        int(row[13]),
        Counts.from_list(row[14:21]),
        int(row[21]),
    )


class KeyRow(NamedTuple):
    """One key of a backfill's plan (a tuple: dispatch reads a thousand at a time)."""

    backfill_id: int
    ordinal: int
    partition_key: str
    state: str
    attempts: int
    run_id: int | None
    last_error: str
    next_trigger: str


_KEY_COLUMNS = "backfill_id, ordinal, partition_key, state, attempts, run_id, last_error, next_trigger"
# Both drivers return these columns as the types KeyRow declares.
_key = KeyRow._make


def _database() -> pw.Database:
    db = database_proxy.obj
    assert db is not None, "models are not bound to a database"
    return db


# --- creating -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewBackfill:
    workflow_slug: str
    selection: str
    parameters: str
    max_concurrent_runs: int
    retry_policy: str
    labels: str
    trigger_principal: str
    trigger_kind: str = "MANUAL"
    trigger_source_id: str = ""


def insert_backfill(new: NewBackfill, total: int, now: int, keys_per_run: int = 1) -> BackfillRow:
    """The backfill row, RUNNING with every key pending (COMPLETED at once when it has none)."""
    state = RUNNING if total else COMPLETED
    found = sql.rows(
        "INSERT INTO backfill (workflow_slug, state, selection, parameters, max_concurrent_runs, retry_policy, "
        "labels, trigger_kind, trigger_source_id, trigger_principal, create_time, end_time, update_time, "
        "total_count, pending_count, queued_count, running_count, succeeded_count, failed_count, canceled_count, "
        "keys_per_run) "
        f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, 0, 0, 0, 0, %s) "
        f"RETURNING {_BACKFILL_COLUMNS}",
        (
            new.workflow_slug,
            state,
            new.selection,
            new.parameters,
            new.max_concurrent_runs,
            new.retry_policy,
            new.labels,
            new.trigger_kind,
            new.trigger_source_id,
            new.trigger_principal,
            now,
            None if total else now,
            now,
            total,
            total,
            keys_per_run,
        ),
    )
    return _backfill(found[0])


def insert_plan(backfill_id: int, keys: Sequence[str], now: int) -> None:
    """One PENDING row per key, ordinal = index in `keys` (key order), in bulk: COPY on
    PostgreSQL, multi-row VALUES statements on SQLite — never a statement per row from Python."""
    if not keys:
        return
    db = _database()
    if isinstance(db, pw.PostgresqlDatabase):
        cursor = db.cursor()
        try:
            with cursor.copy(
                "COPY backfill_partition (backfill_id, ordinal, partition_key, state, attempts, last_error, "
                "update_time, next_trigger) FROM STDIN"
            ) as copy:
                for ordinal, key in enumerate(keys):
                    copy.write_row((backfill_id, ordinal, key, PENDING, 0, "", now, "BACKFILL"))
        finally:
            cursor.close()
        return
    for values, params in sql.values_chunks(
        f"({backfill_id}, %s, %s, 'PENDING', 0, '', {now}, 'BACKFILL')", list(enumerate(keys))
    ):
        sql.execute(
            "INSERT INTO backfill_partition (backfill_id, ordinal, partition_key, state, attempts, last_error, "
            f"update_time, next_trigger) VALUES {values}",
            params,
        )


# --- reading ------------------------------------------------------------------------------------


def get_backfill(backfill_id: int, *, selection: bool = True) -> BackfillRow | None:
    """The backfill; without `selection` its `selection` is '' (cheaper for large key lists)."""
    columns = _BACKFILL_COLUMNS if selection else _BACKFILL_COLUMNS_BRIEF
    found = sql.rows(f"SELECT {columns} FROM backfill WHERE id = %s", (backfill_id,))
    return _backfill(found[0]) if found else None


def backfill_state(backfill_id: int) -> str | None:
    found = sql.scalar("SELECT state FROM backfill WHERE id = %s", (backfill_id,))
    return str(found) if found is not None else None


def canceling_with_runs_to_stop(unchanged_since: int, limit: int = 100) -> list[int]:
    """CANCELING backfills unchanged since `unchanged_since` that still have a queued run, or a
    running one not asked to stop (left so by a crash between CancelBackfill's two transactions)."""
    return [
        int(row[0])
        for row in sql.rows(
            "SELECT b.id FROM backfill b WHERE b.state = 'CANCELING' AND b.update_time < %s AND EXISTS ("
            "SELECT 1 FROM backfill_partition p JOIN run r ON r.id = p.run_id WHERE p.backfill_id = b.id "
            "AND p.state IN ('QUEUED', 'RUNNING') "
            "AND (r.state = 'QUEUED' OR (r.state = 'RUNNING' AND r.cancel_requested = %s))) "
            f"ORDER BY b.id LIMIT {int(limit)}",
            (unchanged_since, False),
        )
    ]


# Transaction-level advisory lock keys of backfills (PostgreSQL): this base plus the id.
BACKFILL_LOCK_BASE = 0x7061_7274_0000_0000


def lock_backfill(backfill_id: int) -> None:
    """Serializes the transactions that change a backfill's plan — dispatch, cancel, retry —
    until this one ends (PostgreSQL; SQLite has one writer). Taken first in those transactions;
    run transitions never take it, and everyone writes the backfill row (its counters) last."""
    if sql.is_postgres():
        sql.execute("SELECT pg_advisory_xact_lock(%s)", (BACKFILL_LOCK_BASE + backfill_id,))


def list_backfills(
    workflow_slug: str, states: Sequence[str], before_id: int | None, limit: int
) -> list[BackfillRow]:
    """Newest first."""
    conditions = ["1 = 1"]
    params: list[Any] = []
    if workflow_slug:
        conditions.append("workflow_slug = %s")
        params.append(workflow_slug)
    if states:
        conditions.append(f"state IN ({sql.placeholders(states)})")
        params.extend(states)
    if before_id is not None:
        conditions.append("id < %s")
        params.append(before_id)
    found = sql.rows(
        f"SELECT {_BACKFILL_COLUMNS} FROM backfill WHERE {' AND '.join(conditions)} "
        f"ORDER BY id DESC LIMIT {int(limit)}",
        params,
    )
    return [_backfill(row) for row in found]


def list_keys(backfill_id: int, states: Sequence[str], after_ordinal: int, limit: int) -> list[KeyRow]:
    """Keys after `after_ordinal` in key order, only `states` (empty: all)."""
    state_filter = f"AND state IN ({sql.placeholders(states)}) " if states else ""
    found = sql.rows(
        f"SELECT {_KEY_COLUMNS} FROM backfill_partition WHERE backfill_id = %s {state_filter}"
        f"AND ordinal > %s ORDER BY ordinal LIMIT {int(limit)}",
        (backfill_id, *states, after_ordinal),
    )
    return [_key(row) for row in found]


def keys_by_name(backfill_id: int, partition_keys: Sequence[str]) -> dict[str, KeyRow]:
    found: dict[str, KeyRow] = {}
    for chunk in sql.chunks(partition_keys):
        for row in sql.rows(
            f"SELECT {_KEY_COLUMNS} FROM backfill_partition WHERE backfill_id = %s AND partition_key IN ({sql.placeholders(chunk)})",
            (backfill_id, *chunk),
        ):
            key = _key(row)
            found[key.partition_key] = key
    return found


def _held() -> str:
    """Keys of a backfill whose current run is queued but held for upstream data (lineage's WAIT
    policy): such runs do not take a slot under max_concurrent_runs.

    Counted from the workflow's held runs (the partial index run_held), which are few, to their
    keys (a key's run is always a run of the backfill's workflow). Counting from the keys read
    every queued key of the backfill on every dispatcher pass (a ranged backfill queues
    thousands); SQLite is told the index, PostgreSQL's planner finds it."""
    index = "" if sql.is_postgres() else " INDEXED BY run_held"
    return (
        f"(SELECT COUNT(*) FROM run r{index} CROSS JOIN backfill_partition p "
        "WHERE r.workflow_slug = backfill.workflow_slug AND r.hold_reason <> '' AND r.state = 'QUEUED' "
        "AND p.run_id = r.id AND p.backfill_id = backfill.id AND p.state = 'QUEUED')"
    )


# A backfill is refilled once this share of its cap is free (or every pending key fits, or no
# run of it is ready to claim): one dispatch transaction then queues several runs rather than
# one per completion, while workers still find runs to claim.
REFILL_SHARE = 4

# Whether a worker could claim one of the backfill's queued runs now (not held, not waiting to
# retry): found at the first such key, not counted over all of them.
_CLAIMABLE = (
    "EXISTS (SELECT 1 FROM backfill_partition p JOIN run r ON r.id = p.run_id "
    "WHERE p.backfill_id = backfill.id AND p.state = 'QUEUED' AND r.state = 'QUEUED' AND r.hold_reason = '' "
    "AND (r.next_attempt_time IS NULL OR r.next_attempt_time <= %s))"
)


def dispatchable(now: int, limit: int = 1000) -> list[tuple[int, int]]:
    """(backfill id, free key slots) of RUNNING backfills with pending keys and room under their cap
    worth a dispatch now (runs held for upstream data take no slot), oldest first."""
    found = sql.rows(
        f"SELECT id, max_concurrent_runs * keys_per_run, queued_count, running_count, pending_count, {_held()}, "
        f"{_CLAIMABLE} "
        f"FROM backfill WHERE state = 'RUNNING' AND pending_count > 0 ORDER BY id LIMIT {int(limit)}",
        (now,),
    )
    ready: list[tuple[int, int]] = []
    for backfill_id, cap, queued, running, pending, held, claimable in found:
        free = int(cap) - int(queued) - int(running) + int(held)
        refill_at = min(max(1, int(cap) // REFILL_SHARE), int(pending))
        if free > 0 and (free >= refill_at or not claimable):
            ready.append((int(backfill_id), free))
    return ready


def held_keys(backfill_id: int) -> int:
    """Keys of the backfill whose run is held for upstream data."""
    return int(sql.scalar(f"SELECT {_held()} FROM backfill WHERE id = %s", (backfill_id,)) or 0)


def pending_keys(backfill_id: int, limit: int) -> list[KeyRow]:
    found = sql.rows(
        f"SELECT {_KEY_COLUMNS} FROM backfill_partition WHERE backfill_id = %s AND state = 'PENDING' "
        f"ORDER BY ordinal LIMIT {int(limit)}",
        (backfill_id,),
    )
    return [_key(row) for row in found]


def in_flight_keys(backfill_id: int) -> list[KeyRow]:
    found = sql.rows(
        f"SELECT {_KEY_COLUMNS} FROM backfill_partition WHERE backfill_id = %s AND state IN ('QUEUED', 'RUNNING') "
        "ORDER BY ordinal",
        (backfill_id,),
    )
    return [_key(row) for row in found]


@dataclass(frozen=True)
class KeySpan:
    """The keys of one backfill in one state whose current run is `run_id`: `count` keys with
    ordinals in `first`..`last` (other backfills' or runs' keys may lie between)."""

    backfill_id: int
    state: str
    run_id: int
    first: int
    last: int
    count: int


def run_key_spans(run_id: int) -> list[KeySpan]:
    """The in-flight keys (of any backfill) whose current run is `run_id`, per (backfill, state),
    in backfill order: a ranged run's thousand keys are a row, not a thousand."""
    found = sql.rows(
        "SELECT backfill_id, state, MIN(ordinal), MAX(ordinal), COUNT(*) FROM backfill_partition "
        "WHERE run_id = %s AND state IN ('QUEUED', 'RUNNING') GROUP BY backfill_id, state "
        "ORDER BY backfill_id, state",
        (run_id,),
    )
    return [
        KeySpan(int(backfill_id), state, run_id, int(first), int(last), int(count))
        for backfill_id, state, first, last, count in found
    ]


def last_event_sequence(backfill_id: int) -> int:
    """The newest retained event of the backfill (0 when none)."""
    return int(sql.scalar("SELECT MAX(sequence) FROM run_event WHERE backfill_id = %s", (backfill_id,)) or 0)


def event_snapshots(
    backfill_id: int, from_sequence: int, limit: int
) -> list[tuple[int, dict[str, Any] | None]]:
    """(sequence, backfill snapshot or None) of the backfill's events from `from_sequence` on."""
    found = sql.rows(
        "SELECT sequence, data FROM run_event WHERE backfill_id = %s AND sequence >= %s "
        f"ORDER BY sequence LIMIT {int(limit)}",
        (backfill_id, from_sequence),
    )
    result: list[tuple[int, dict[str, Any] | None]] = []
    for sequence, data in found:
        snapshot = json.loads(data or "{}").get("backfill")
        result.append((int(sequence), snapshot if isinstance(snapshot, dict) else None))
    return result


def materialized_keys(asset_id: str) -> set[str]:
    """Keys of the asset with a successful materialization."""
    return {
        row[0]
        for row in sql.rows(
            "SELECT partition_key FROM partition_state WHERE asset_id = %s AND latest_materialization_id IS NOT NULL",
            (asset_id,),
        )
    }


def live_dynamic_keys(
    asset_id: str, low_id: int | None = None, high_id: int | None = None
) -> list[tuple[int, str]]:
    """(registry sequence, key) of the asset's live dynamic keys, in registry order, optionally
    between two sequences (inclusive)."""
    bounds = ""
    params: list[Any] = [asset_id]
    if low_id is not None and high_id is not None:
        bounds = "AND id BETWEEN %s AND %s "
        params.extend((low_id, high_id))
    return [
        (int(position), key)
        for position, key in sql.rows(
            "SELECT id, partition_key FROM dynamic_partition WHERE asset_id = %s AND delete_time IS NULL "
            f"{bounds}ORDER BY id",
            params,
        )
    ]


def dynamic_registry(asset_id: str, partition_keys: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """key -> (registry sequence, live) for the keys the asset's registry has."""
    found: dict[str, tuple[int, bool]] = {}
    for chunk in sql.chunks(partition_keys):
        for position, key, deleted in sql.rows(
            "SELECT id, partition_key, delete_time FROM dynamic_partition WHERE asset_id = %s "
            f"AND partition_key IN ({sql.placeholders(chunk)})",
            (asset_id, *chunk),
        ):
            found[key] = (int(position), deleted is None)
    return found


# --- transitions --------------------------------------------------------------------------------


def _ordinals(ordinals: Sequence[int]) -> tuple[str, list[int]]:
    """A condition on `ordinal` for the keys of one run: a range when they are consecutive."""
    if len(ordinals) > 1 and ordinals[-1] - ordinals[0] == len(ordinals) - 1:
        return "ordinal BETWEEN %s AND %s", [ordinals[0], ordinals[-1]]
    return f"ordinal IN ({sql.placeholders(ordinals)})", list(ordinals)


def attach_run(
    backfill_id: int, ordinals: Sequence[int], run_id: int, state: str, attempts: int, now: int
) -> bool:
    """PENDING -> `state` with `run_id` for keys the dispatcher queued (or adopted) a run for,
    all of the keys or none: False when one had left PENDING (the caller rolls back)."""
    condition, params = _ordinals(ordinals)
    cursor = sql.execute(
        "UPDATE backfill_partition SET run_id = %s, state = %s, attempts = attempts + %s, update_time = %s "
        f"WHERE backfill_id = %s AND {condition} AND state = 'PENDING'",
        (run_id, state, attempts, now, backfill_id, *params),
    )
    return int(cursor.rowcount) == len(ordinals)


def fail_pending_key(backfill_id: int, ordinal: int, error: str, now: int) -> None:
    sql.execute(
        "UPDATE backfill_partition SET state = 'FAILED', last_error = %s, update_time = %s "
        "WHERE backfill_id = %s AND ordinal = %s AND state = 'PENDING'",
        (error, now, backfill_id, ordinal),
    )


def move_key(key: KeyRow, state: str, attempts: int, error: str | None, now: int) -> bool:
    """The key's run changed: `key.state` -> `state`; False when the key had moved already."""
    assert key.run_id is not None
    span = KeySpan(key.backfill_id, key.state, key.run_id, key.ordinal, key.ordinal, 1)
    return bool(move_span(span, state, attempts, error, now))


def move_span(
    span: KeySpan,
    state: str,
    attempts: int,
    error: str | None,
    now: int,
    only_keys: Sequence[str] | None = None,
) -> int:
    """The span's keys (those of `only_keys`, when given) follow their run: `span.state` ->
    `state`; returns how many moved (keys that had moved already stay)."""
    error_update = ", last_error = %s" if error is not None else ""
    params: list[Any] = [state, attempts, *([error] if error is not None else []), now]
    where = "WHERE backfill_id = %s AND ordinal BETWEEN %s AND %s AND state = %s AND run_id = %s"
    span_params = [span.backfill_id, span.first, span.last, span.state, span.run_id]
    update = (
        f"UPDATE backfill_partition SET state = %s, attempts = attempts + %s{error_update}, update_time = %s "
    )
    if only_keys is None:
        return int(sql.execute(update + where, (*params, *span_params)).rowcount)
    moved = 0
    for chunk in sql.chunks(only_keys):
        cursor = sql.execute(
            update + where + f" AND partition_key IN ({sql.placeholders(chunk)})",
            (*params, *span_params, *chunk),
        )
        moved += int(cursor.rowcount)
    return moved


def cancel_pending(backfill_id: int, now: int) -> int:
    cursor = sql.execute(
        "UPDATE backfill_partition SET state = 'CANCELED', update_time = %s WHERE backfill_id = %s AND state = 'PENDING'",
        (now, backfill_id),
    )
    return int(cursor.rowcount)


def reopen(backfill_id: int, partition_keys: Sequence[str] | None, now: int) -> dict[str, int]:
    """FAILED and CANCELED keys (all, or those of `partition_keys`) -> PENDING, their next run a
    RETRY; returns how many left each state."""
    moved: dict[str, int] = {}
    for state in (FAILED, CANCELED):
        if partition_keys is None:
            cursor = sql.execute(
                "UPDATE backfill_partition SET state = 'PENDING', next_trigger = 'RETRY', update_time = %s "
                "WHERE backfill_id = %s AND state = %s",
                (now, backfill_id, state),
            )
            moved[state] = int(cursor.rowcount)
            continue
        moved[state] = 0
        for chunk in sql.chunks(partition_keys):
            cursor = sql.execute(
                "UPDATE backfill_partition SET state = 'PENDING', next_trigger = 'RETRY', update_time = %s "
                f"WHERE backfill_id = %s AND state = %s AND partition_key IN ({sql.placeholders(chunk)})",
                (now, backfill_id, state, *chunk),
            )
            moved[state] += int(cursor.rowcount)
    return moved


def reattach(backfill_id: int, from_run_id: int, to_run_id: int, now: int) -> dict[str, int]:
    """FAILED and CANCELED keys whose last run is `from_run_id` -> QUEUED on `to_run_id` (a
    RetryRun of that run); returns how many left each state."""
    moved: dict[str, int] = {}
    for state in (FAILED, CANCELED):
        cursor = sql.execute(
            "UPDATE backfill_partition SET state = 'QUEUED', run_id = %s, update_time = %s "
            "WHERE backfill_id = %s AND run_id = %s AND state = %s",
            (to_run_id, now, backfill_id, from_run_id, state),
        )
        moved[state] = int(cursor.rowcount)
    return moved


def apply_counts(
    backfill_id: int,
    deltas: Mapping[str, int],
    now: int,
    *,
    transition: tuple[Sequence[str], str] | None = None,
    reopen: bool = False,
    only_if_state: str | None = None,
    added_in_flight_cap: int | None = None,
    held: int = 0,
) -> BackfillRow | None:
    """Moves the counters by `deltas` (key state -> change) and returns the row after it
    (without its selection).

    `transition` (from states, to state) changes the state too, when it is one of the from
    states (`reopen` then clears end_time). `only_if_state` / `added_in_flight_cap` make the whole
    update conditional (None when it does not apply): the backfill must be in that state, and
    `added_in_flight_cap` more queued + running keys must still fit under max_concurrent_runs
    (plus `held` keys whose runs are held for upstream data) — the dispatcher's guard against a
    second (deposed) dispatcher.
    """
    sets = [f"{state.lower()}_count = {state.lower()}_count + %s" for state in deltas]
    params: list[Any] = [int(value) for value in deltas.values()]
    if transition is not None:
        sources, target = transition
        matches = f"state IN ({sql.placeholders(sources)})"
        sets.append(f"state = CASE WHEN {matches} THEN %s ELSE state END")
        params.extend((*sources, target))
        if reopen:
            sets.append(f"end_time = CASE WHEN {matches} THEN NULL ELSE end_time END")
            params.extend(sources)
    sets.append("update_time = %s")
    params.append(now)
    conditions = ["id = %s"]
    params.append(backfill_id)
    if only_if_state is not None:
        conditions.append("state = %s")
        params.append(only_if_state)
    if added_in_flight_cap is not None:
        conditions.append("queued_count + running_count + %s <= max_concurrent_runs * keys_per_run + %s")
        params.extend((added_in_flight_cap, held))
    found = sql.rows(
        f"UPDATE backfill SET {', '.join(sets)} WHERE {' AND '.join(conditions)} "
        f"RETURNING {_BACKFILL_COLUMNS_BRIEF}",
        params,
    )
    return _backfill(found[0]) if found else None


def finish(backfill_id: int, from_state: str, state: str, now: int) -> BackfillRow | None:
    """from_state -> a terminal `state` once no key is undecided (checked by the counters)."""
    found = sql.rows(
        "UPDATE backfill SET state = %s, end_time = %s, update_time = %s WHERE id = %s AND state = %s "
        f"AND pending_count = 0 AND queued_count = 0 AND running_count = 0 RETURNING {_BACKFILL_COLUMNS_BRIEF}",
        (state, now, now, backfill_id, from_state),
    )
    return _backfill(found[0]) if found else None


def lock_in_flight_run(workflow_slug: str, partition_key: str) -> tuple[Run | None, bool]:
    """The slice's queued or running run, locked until the transaction ends, so it cannot end
    before the key that adopts it is recorded; (None, True) when another transaction holds it
    (PostgreSQL: SKIP LOCKED — the caller never waits for a run), (None, False) when there is none."""
    found = sql.rows(
        "SELECT id FROM run WHERE workflow_slug = %s AND partition_key = %s AND state IN ('QUEUED', 'RUNNING') "
        "ORDER BY id LIMIT 1",
        (workflow_slug, partition_key),
    )
    if not found:
        return None, False
    if not sql.is_postgres():
        return get_run_row(int(found[0][0])), False
    locked = sql.select_models(
        Run,
        "id = %s AND state IN ('QUEUED', 'RUNNING')",
        (int(found[0][0]),),
        "FOR UPDATE SKIP LOCKED",
    )
    if locked:
        return locked[0], False
    return None, bool(
        sql.rows("SELECT 1 FROM run WHERE id = %s AND state IN ('QUEUED', 'RUNNING')", found[0])
    )


def get_run_row(run_id: int) -> Run | None:
    found = sql.select_models(Run, "id = %s", (run_id,))
    return found[0] if found else None


def lock_run_if_free(run_id: int) -> Run | None:
    """The run, locked (PostgreSQL: SKIP LOCKED — None when another transaction holds it)."""
    lock = " FOR UPDATE SKIP LOCKED" if sql.is_postgres() else ""
    found = sql.select_models(Run, "id = %s", (run_id,), lock)
    return found[0] if found else None


def deltas_of(moves: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Counter deltas of key moves (old state, new state)."""
    deltas: dict[str, int] = {}
    for old, new in moves:
        if old == new:
            continue
        deltas[old] = deltas.get(old, 0) - 1
        deltas[new] = deltas.get(new, 0) + 1
    return {state: delta for state, delta in deltas.items() if delta}
