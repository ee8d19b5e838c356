"""Lineage storage (migration 5): per-partition staleness, upstream watermarks, the inputs a run
read, held runs, and the automation loop's cursor, requests and budgets. Plain SQL on both
engines; every function runs inside the caller's transaction.

`partition_lineage` has a row per downstream (asset, key) that lineage has touched: keys an
upstream materialization marked stale (`stale = 1`, `marked_by` = the newest upstream
materialization id that marked it) and keys materialized since the asset had dependencies
(`materialization_id`, `fanout_horizon` = the all/last watermark it read). `lineage_count`
keeps the number of stale rows per asset, adjusted by the statement row counts of every
write here (no trigger), so counting stale keys is one row read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from storage import sql


class LineageRow(NamedTuple):
    partition_key: str
    position: int
    ordinal: int | None
    stale: int
    marked_by: int
    materialization_id: int | None
    fanout_horizon: int | None


class Target(NamedTuple):
    """A downstream key to mark, with where it sits in its definition."""

    partition_key: str
    position: int
    ordinal: int | None


class RunLineage(NamedTuple):
    run_id: int
    key_horizon: int
    fanout_horizon: int
    input_count: int
    missing: str


_LINEAGE_COLUMNS = "partition_key, position, ordinal, stale, marked_by, materialization_id, fanout_horizon"


def _lineage_row(row: Sequence[Any]) -> LineageRow:
    key, position, ordinal, stale, marked_by, materialization_id, horizon = row
    return LineageRow(
        key,
        int(position),
        None if ordinal is None else int(ordinal),
        int(stale),
        int(marked_by),
        None if materialization_id is None else int(materialization_id),
        None if horizon is None else int(horizon),
    )


def _add_to_count(asset_id: str, delta: int) -> None:
    if delta:
        sql.execute(
            "INSERT INTO lineage_count (asset_id, stale_count) VALUES (%s, %s) ON CONFLICT (asset_id) "
            "DO UPDATE SET stale_count = lineage_count.stale_count + excluded.stale_count",
            (asset_id, delta),
        )


# ------------------------------------------------------------------- per-partition rows
def lineage_rows(asset_id: str, partition_keys: Sequence[str]) -> dict[str, LineageRow]:
    found: dict[str, LineageRow] = {}
    for chunk in sql.chunks(list(partition_keys)):
        for row in sql.rows(
            f"SELECT {_LINEAGE_COLUMNS} FROM partition_lineage WHERE asset_id = %s "
            f"AND partition_key IN ({sql.placeholders(chunk)})",
            (asset_id, *chunk),
        ):
            found[row[0]] = _lineage_row(row)
    return found


def mark_stale(
    asset_id: str, targets: Sequence[Target], marked_by: int, now: int, *, only_if_older: bool = False
) -> int:
    """Marks the downstream keys stale because upstream materialization `marked_by` is newer than
    what they read (with `only_if_older`: only keys whose own materialization is older than it —
    for rebuilds); returns how many keys became stale."""
    added = 0
    for chunk in sql.chunks(list(targets)):
        values = ", ".join(["(%s, %s, %s, %s, 1, %s, %s)"] * len(chunk))
        params: list[Any] = []
        for key, position, ordinal in chunk:
            params.extend((asset_id, key, position, ordinal, marked_by, now))
        added += sql.execute(
            "INSERT INTO partition_lineage (asset_id, partition_key, position, ordinal, stale, marked_by, "
            f"update_time) VALUES {values} ON CONFLICT (asset_id, partition_key) DO NOTHING",
            params,
        ).rowcount
        keys = [target.partition_key for target in chunk]
        older = " AND (materialization_id IS NULL OR materialization_id < %s)" if only_if_older else ""
        older_params = [marked_by] if only_if_older else []
        added += sql.execute(
            "UPDATE partition_lineage SET stale = 1, marked_by = CASE WHEN marked_by > %s THEN marked_by "
            f"ELSE %s END, update_time = %s WHERE asset_id = %s AND partition_key IN ({sql.placeholders(keys)}) "
            f"AND stale = 0{older}",
            (marked_by, marked_by, now, asset_id, *keys, *older_params),
        ).rowcount
        sql.execute(
            "UPDATE partition_lineage SET marked_by = %s, update_time = %s WHERE asset_id = %s "
            f"AND partition_key IN ({sql.placeholders(keys)}) AND stale = 1 AND marked_by < %s",
            (marked_by, now, asset_id, *keys, marked_by),
        )
    _add_to_count(asset_id, added)
    return added


def record_downstream(
    asset_id: str,
    items: Sequence[tuple[Target, int]],
    key_horizon: int | None,
    fanout_horizon: int,
    now: int,
) -> None:
    """Downstream keys were materialized (each with its materialization id): a key is stale
    afterwards only when an upstream materialization newer than everything its run read
    (`key_horizon`: the newest upstream id of its slices when the run was claimed) marked it
    meanwhile; None (a reported slice) means it read everything. Rows are locked (PostgreSQL)
    before they are judged, so a concurrent mark is never lost."""
    lock = " FOR UPDATE" if sql.is_postgres() else ""
    for chunk in sql.chunks(list(items)):
        keys = [target.partition_key for target, _ in chunk]

        def existing(wanted: Sequence[str]) -> dict[str, tuple[int, int, int | None]]:
            return {
                key: (int(stale), int(marked_by), None if materialization is None else int(materialization))
                for key, stale, marked_by, materialization in sql.rows(
                    "SELECT partition_key, stale, marked_by, materialization_id FROM partition_lineage "
                    f"WHERE asset_id = %s AND partition_key IN ({sql.placeholders(wanted)}) ORDER BY partition_key{lock}",
                    (asset_id, *wanted),
                )
            }

        found = existing(keys)
        fresh = [(target, m) for target, m in chunk if target.partition_key not in found]
        if fresh:
            values = ", ".join(["(%s, %s, %s, %s, 0, 0, %s, %s, %s)"] * len(fresh))
            params: list[Any] = []
            for target, materialization_id in fresh:
                params.extend((asset_id, *target, materialization_id, fanout_horizon, now))
            inserted = {
                row[0]
                for row in sql.rows(
                    "INSERT INTO partition_lineage (asset_id, partition_key, position, ordinal, stale, marked_by, "
                    f"materialization_id, fanout_horizon, update_time) VALUES {values} "
                    "ON CONFLICT (asset_id, partition_key) DO NOTHING RETURNING partition_key",
                    params,
                )
            }
            raced = [target.partition_key for target, _ in fresh if target.partition_key not in inserted]
            if raced:  # inserted by a concurrent transaction meanwhile: judge them like the others
                found.update(existing(raced))
        updates: list[Any] = []
        delta = 0
        for target, materialization_id in chunk:
            old = found.get(target.partition_key)
            if old is None:
                continue
            old_stale, marked_by, old_materialization = old
            if old_materialization is not None and old_materialization > materialization_id:
                continue
            stale = 1 if key_horizon is not None and marked_by > key_horizon else 0
            delta += stale - old_stale
            updates.extend((target.partition_key, stale, materialization_id, target.position, target.ordinal))
        if updates:
            rows = len(updates) // 5
            cast = "(%s, CAST(%s AS BIGINT), CAST(%s AS BIGINT), CAST(%s AS BIGINT), CAST(%s AS BIGINT))"
            sql.execute(
                "UPDATE partition_lineage SET stale = v.column2, materialization_id = v.column3, "
                "position = v.column4, ordinal = v.column5, fanout_horizon = %s, update_time = %s "
                f"FROM (VALUES {', '.join([cast] * rows)}) AS v "
                "WHERE partition_lineage.asset_id = %s AND partition_lineage.partition_key = v.column1",
                (fanout_horizon, now, *updates, asset_id),
            )
        _add_to_count(asset_id, delta)


def stale_count(asset_id: str, low: int | None, high: int | None) -> int:
    """Stale keys of the asset whose position is in low..high (None: unbounded): the counter less
    the stale rows outside the range (usually none)."""
    total = int(sql.scalar("SELECT stale_count FROM lineage_count WHERE asset_id = %s", (asset_id,)) or 0)
    for condition, bound in (("position < %s", low), ("position > %s", high)):
        if bound is not None:
            total -= int(
                sql.scalar(
                    f"SELECT COUNT(*) FROM partition_lineage WHERE asset_id = %s AND stale = 1 AND {condition}",
                    (asset_id, bound),
                )
                or 0
            )
    return total


def stale_rows(asset_id: str, low: int, high: int | None, limit: int) -> list[LineageRow]:
    """Stale rows with position in low..high, in position order."""
    bound = "" if high is None else " AND position <= %s"
    params: list[Any] = [asset_id, low] if high is None else [asset_id, low, high]
    return [
        _lineage_row(row)
        for row in sql.rows(
            f"SELECT {_LINEAGE_COLUMNS} FROM partition_lineage WHERE asset_id = %s AND stale = 1 "
            f"AND position >= %s{bound} ORDER BY position LIMIT {int(limit)}",
            params,
        )
    ]


def _within(conditions: list[str], params: list[Any], low: int | None, high: int | None) -> None:
    """Adds `position` in low..high (an open end where None) to a WHERE being built."""
    if low is not None:
        conditions.append("position >= %s")
        params.append(low)
    if high is not None:
        conditions.append("position <= %s")
        params.append(high)


def fresh_count(asset_id: str, watermark: int, low: int | None, high: int | None) -> int:
    """Keys materialized after reading the all/last watermark `watermark` (and not marked stale)
    whose position is in low..high."""
    conditions = ["asset_id = %s", "stale = 0", "fanout_horizon >= %s", "materialization_id IS NOT NULL"]
    params: list[Any] = [asset_id, watermark]
    _within(conditions, params, low, high)
    return int(
        sql.scalar(f"SELECT COUNT(*) FROM partition_lineage WHERE {' AND '.join(conditions)}", params) or 0
    )


def clear_asset(asset_id: str) -> None:
    sql.execute("DELETE FROM partition_lineage WHERE asset_id = %s", (asset_id,))
    sql.execute("DELETE FROM lineage_count WHERE asset_id = %s", (asset_id,))


def seed_materialized(asset_id: str, now: int) -> None:
    """Rebuilds: every materialized key of the asset counts as having read what existed when it
    was materialized (its horizon is its own materialization id)."""
    sql.execute(
        "INSERT INTO partition_lineage (asset_id, partition_key, position, ordinal, stale, marked_by, "
        "materialization_id, fanout_horizon, update_time) SELECT asset_id, partition_key, position, ordinal, "
        "0, 0, latest_materialization_id, latest_materialization_id, %s FROM partition_state "
        "WHERE asset_id = %s AND latest_materialization_id IS NOT NULL",
        (now, asset_id),
    )


# ------------------------------------------------------------------ upstream state reads
class Latest(NamedTuple):
    materialization_id: int
    create_time: int


def latest_of_keys(asset_id: str, partition_keys: Sequence[str]) -> dict[str, Latest]:
    """Latest materialization (id, time) of each key that has one."""
    found: dict[str, Latest] = {}
    for chunk in sql.chunks(list(partition_keys)):
        for key, materialization_id, created in sql.rows(
            "SELECT partition_key, latest_materialization_id, latest_materialization_time FROM partition_state "
            f"WHERE asset_id = %s AND partition_key IN ({sql.placeholders(chunk)}) AND latest_materialization_id IS NOT NULL",
            (asset_id, *chunk),
        ):
            found[key] = Latest(int(materialization_id), int(created or 0))
    return found


def materialized_in_ordinals(
    asset_id: str, first: int, last: int, limit: int | None = None
) -> list[tuple[str, int, int]]:
    """(key, ordinal, latest materialization id) of materialized keys with ordinal first..last."""
    suffix = f" LIMIT {int(limit)}" if limit is not None else ""
    return [
        (key, int(ordinal), int(materialization_id))
        for key, ordinal, materialization_id in sql.rows(
            "SELECT partition_key, ordinal, latest_materialization_id FROM partition_state WHERE asset_id = %s "
            "AND ordinal BETWEEN %s AND %s AND latest_materialization_id IS NOT NULL ORDER BY ordinal"
            + suffix,
            (asset_id, first, last),
        )
    ]


def ordinal_range_summary(asset_id: str, first: int, last: int) -> tuple[int, int]:
    """(materialized keys, newest latest materialization id) among ordinals first..last."""
    row = sql.execute(
        "SELECT COUNT(latest_materialization_id), MAX(latest_materialization_id) FROM partition_state "
        "WHERE asset_id = %s AND ordinal BETWEEN %s AND %s",
        (asset_id, first, last),
    ).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


def materialized_rows(asset_id: str, after_position: int | None, limit: int) -> list[tuple[str, int, int]]:
    """(key, position, latest materialization id) of materialized keys, in position order."""
    after = "" if after_position is None else " AND position > %s"
    params: list[Any] = [asset_id] if after_position is None else [asset_id, after_position]
    return [
        (key, int(position), int(materialization_id))
        for key, position, materialization_id in sql.rows(
            "SELECT partition_key, position, latest_materialization_id FROM partition_state WHERE asset_id = %s "
            f"AND latest_materialization_id IS NOT NULL{after} ORDER BY position LIMIT {int(limit)}",
            params,
        )
    ]


def unmaterialized_touched(asset_id: str, first_ordinal: int, stop_ordinal: int, limit: int) -> list[int]:
    """Ordinals in first..stop-1 whose row is FAILED or IN_PROGRESS without any materialization."""
    return [
        int(row[0])
        for row in sql.rows(
            "SELECT ordinal FROM partition_state WHERE asset_id = %s AND status IN ('FAILED', 'IN_PROGRESS') "
            "AND latest_materialization_id IS NULL AND ordinal >= %s AND ordinal < %s "
            f"ORDER BY ordinal LIMIT {int(limit)}",
            (asset_id, first_ordinal, stop_ordinal),
        )
    ]


def touched_with_materialization(asset_id: str, low: int, high: int) -> int:
    """FAILED or IN_PROGRESS rows that have a materialization, with position in low..high."""
    return int(
        sql.scalar(
            "SELECT COUNT(*) FROM partition_state WHERE asset_id = %s AND status IN ('FAILED', 'IN_PROGRESS') "
            "AND latest_materialization_id IS NOT NULL AND position BETWEEN %s AND %s",
            (asset_id, low, high),
        )
        or 0
    )


def materialized_since(asset_id: str, cutoff: int, low: int | None, high: int | None) -> int:
    """Rows whose latest materialization is at or after `cutoff` (µs), position in low..high."""
    conditions = ["asset_id = %s", "latest_materialization_time >= %s"]
    params: list[Any] = [asset_id, cutoff]
    _within(conditions, params, low, high)
    return int(
        sql.scalar(f"SELECT COUNT(*) FROM partition_state WHERE {' AND '.join(conditions)}", params) or 0
    )


def dynamic_positions(asset_id: str, partition_keys: Sequence[str]) -> dict[str, int]:
    """Registry positions of the live keys among `partition_keys`."""
    found: dict[str, int] = {}
    for chunk in sql.chunks(list(partition_keys)):
        for key, position in sql.rows(
            "SELECT partition_key, id FROM dynamic_partition WHERE asset_id = %s AND delete_time IS NULL "
            f"AND partition_key IN ({sql.placeholders(chunk)})",
            (asset_id, *chunk),
        ):
            found[key] = int(position)
    return found


def newest_dynamic_key(asset_id: str) -> str | None:
    return sql.scalar(
        "SELECT partition_key FROM dynamic_partition WHERE asset_id = %s AND delete_time IS NULL "
        "ORDER BY id DESC LIMIT 1",
        (asset_id,),
    )


# ------------------------------------------------------------------------- watermarks
def bump_watermarks(latest: Mapping[str, tuple[int, int]]) -> None:
    """Each asset's newest materialization (id, time), kept for all/last reads."""
    for asset_id, (materialization_id, created) in sorted(latest.items()):
        sql.execute(
            "INSERT INTO asset_watermark (asset_id, materialization_id, create_time) VALUES (%s, %s, %s) "
            "ON CONFLICT (asset_id) DO UPDATE SET materialization_id = excluded.materialization_id, "
            "create_time = excluded.create_time WHERE asset_watermark.materialization_id < excluded.materialization_id",
            (asset_id, materialization_id, created),
        )


def watermarks(asset_ids: Sequence[str]) -> dict[str, int]:
    if not asset_ids:
        return {}
    return {
        asset_id: int(value)
        for asset_id, value in sql.rows(
            f"SELECT asset_id, materialization_id FROM asset_watermark WHERE asset_id IN ({sql.placeholders(asset_ids)})",
            list(asset_ids),
        )
    }


# ------------------------------------------------------------------------- run inputs
def save_run_inputs(
    run_id: int,
    inputs: Sequence[tuple[str, str, int]],
    key_horizon: int,
    fanout_horizon: int,
    input_count: int,
    missing: str,
    now: int,
) -> None:
    """What the run's current attempt reads (replacing an earlier attempt's record)."""
    sql.execute("DELETE FROM run_input WHERE run_id = %s", (run_id,))
    sql.execute("DELETE FROM run_lineage WHERE run_id = %s", (run_id,))
    sql.execute(
        "INSERT INTO run_lineage (run_id, key_horizon, fanout_horizon, input_count, missing, record_time) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (run_id, key_horizon, fanout_horizon, input_count, missing, now),
    )
    for chunk in sql.chunks(list(inputs)):
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
        params: list[Any] = []
        for ordinal, (asset_id, key, materialization_id) in enumerate(chunk):
            params.extend((run_id, asset_id, key, materialization_id, ordinal))
        sql.execute(
            "INSERT INTO run_input (run_id, asset_id, partition_key, materialization_id, ordinal) "
            f"VALUES {values} ON CONFLICT (run_id, asset_id, partition_key) DO NOTHING",
            params,
        )


def run_inputs(run_id: int, limit: int) -> list[tuple[str, str, int]]:
    return [
        (asset_id, key, int(materialization_id))
        for asset_id, key, materialization_id in sql.rows(
            "SELECT asset_id, partition_key, materialization_id FROM run_input WHERE run_id = %s "
            f"ORDER BY ordinal LIMIT {int(limit)}",
            (run_id,),
        )
    ]


def run_lineage(run_id: int) -> RunLineage | None:
    row = sql.execute(
        "SELECT run_id, key_horizon, fanout_horizon, input_count, missing FROM run_lineage WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    return RunLineage(int(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4])


# ------------------------------------------------------------------------------ holds
def hold_claimed(run_id: int, reason: str, now: int) -> bool:
    """Puts a run just claimed back in the queue, held (not claimable) for `reason`."""
    return bool(
        sql.execute(
            "UPDATE run SET state = 'QUEUED', hold_reason = %s, worker_id = '', lease_id = '', "
            "lease_expire_time = NULL, start_time = NULL, update_time = %s WHERE id = %s AND state = 'RUNNING'",
            (reason[:1000], now, run_id),
        ).rowcount
    )


def hold_queued(run_id: int, reason: str, now: int) -> bool:
    return bool(
        sql.execute(
            "UPDATE run SET hold_reason = %s, update_time = %s WHERE id = %s AND state = 'QUEUED'",
            (reason[:1000], now, run_id),
        ).rowcount
    )


def release(run_id: int, now: int) -> bool:
    return bool(
        sql.execute(
            "UPDATE run SET hold_reason = '', update_time = %s WHERE id = %s AND state = 'QUEUED' "
            "AND hold_reason <> ''",
            (now, run_id),
        ).rowcount
    )


def held_runs(workflow_slug: str | None, partition_keys: Sequence[str] | None, limit: int) -> list[int]:
    """Ids of held runs (of a workflow, at some keys), oldest first."""
    conditions = ["state = 'QUEUED'", "hold_reason <> ''"]
    params: list[Any] = []
    if workflow_slug is not None:
        conditions.append("workflow_slug = %s")
        params.append(workflow_slug)
    if partition_keys is not None:
        if not partition_keys:
            return []
        conditions.append(f"partition_key IN ({sql.placeholders(partition_keys)})")
        params.extend(partition_keys)
    return [
        int(row[0])
        for row in sql.rows(
            f"SELECT id FROM run WHERE {' AND '.join(conditions)} ORDER BY id LIMIT {int(limit)}", params
        )
    ]


def queued_runs_after(workflow_slugs: Sequence[str], after_id: int, limit: int) -> list[int]:
    """Queued, unheld runs of the workflows with id > after_id (runs not yet looked at)."""
    if not workflow_slugs:
        return []
    return [
        int(row[0])
        for row in sql.rows(
            f"SELECT id FROM run WHERE id > %s AND state = 'QUEUED' AND hold_reason = '' "
            f"AND workflow_slug IN ({sql.placeholders(workflow_slugs)}) ORDER BY id LIMIT {int(limit)}",
            (after_id, *workflow_slugs),
        )
    ]


def newest_run_id() -> int:
    return int(sql.scalar("SELECT MAX(id) FROM run") or 0)


def running_keys(workflow_slug: str, partition_keys: Sequence[str]) -> set[str]:
    if not partition_keys:
        return set()
    return {
        row[0]
        for row in sql.rows(
            f"SELECT partition_key FROM run WHERE workflow_slug = %s AND state = 'RUNNING' "
            f"AND partition_key IN ({sql.placeholders(partition_keys)})",
            (workflow_slug, *partition_keys),
        )
    }


# ------------------------------------------------------------------------- automation
def lock_cursor(name: str) -> int:
    """The named cursor, locked until the transaction ends (PostgreSQL: replicas take turns)."""
    lock = " FOR UPDATE" if sql.is_postgres() else ""
    value = sql.scalar(f"SELECT position FROM lineage_cursor WHERE name = %s{lock}", (name,))
    if value is None:
        sql.execute(
            "INSERT INTO lineage_cursor (name, position) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING",
            (name,),
        )
        value = sql.scalar(f"SELECT position FROM lineage_cursor WHERE name = %s{lock}", (name,))
    return int(value or 0)


def set_cursor(name: str, position: int) -> None:
    sql.execute("UPDATE lineage_cursor SET position = %s WHERE name = %s", (position, name))


def add_requests(requests: Sequence[tuple[str, str, int, str, str]], now: int) -> None:
    """(workflow, key, materialization id, upstream asset, upstream key): one request per
    (workflow, key); a later materialization replaces the trigger of a waiting one."""
    for chunk in sql.chunks(list(requests)):
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
        params: list[Any] = []
        for request in chunk:
            params.extend((*request, now))
        sql.execute(
            "INSERT INTO automation_request (workflow_slug, partition_key, materialization_id, asset_id, "
            f"upstream_key, create_time) VALUES {values} ON CONFLICT (workflow_slug, partition_key) DO UPDATE "
            "SET materialization_id = excluded.materialization_id, asset_id = excluded.asset_id, "
            "upstream_key = excluded.upstream_key",
            params,
        )


def pending_requests(workflow_slug: str, limit: int) -> list[tuple[str, int, str, str]]:
    """(key, materialization id, upstream asset, upstream key), oldest first."""
    return [
        (key, int(materialization_id), asset_id, upstream_key)
        for key, materialization_id, asset_id, upstream_key in sql.rows(
            "SELECT partition_key, materialization_id, asset_id, upstream_key FROM automation_request "
            f"WHERE workflow_slug = %s ORDER BY create_time, partition_key LIMIT {int(limit)}",
            (workflow_slug,),
        )
    ]


def requesting_workflows() -> list[str]:
    return [row[0] for row in sql.rows("SELECT DISTINCT workflow_slug FROM automation_request ORDER BY 1")]


def delete_request(workflow_slug: str, partition_key: str) -> None:
    sql.execute(
        "DELETE FROM automation_request WHERE workflow_slug = %s AND partition_key = %s",
        (workflow_slug, partition_key),
    )


def budget_used(workflow_slug: str, window_start: int) -> int:
    row = sql.execute(
        "SELECT window_start, used FROM automation_budget WHERE workflow_slug = %s", (workflow_slug,)
    ).fetchone()
    if row is None or int(row[0]) != window_start:
        return 0
    return int(row[1])


def spend_budget(workflow_slug: str, window_start: int, runs: int) -> None:
    sql.execute(
        "INSERT INTO automation_budget (workflow_slug, window_start, used) VALUES (%s, %s, %s) "
        "ON CONFLICT (workflow_slug) DO UPDATE SET used = CASE WHEN automation_budget.window_start = "
        "excluded.window_start THEN automation_budget.used + excluded.used ELSE excluded.used END, "
        "window_start = excluded.window_start",
        (workflow_slug, window_start, runs),
    )
