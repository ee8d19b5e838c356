"""Per-partition state: one row per (asset, key) ever touched, kept in the transaction of
each run transition, so status reads are page reads and counts are index scans.

Every update is a conditional upsert or a guarded UPDATE (never read-modify-write), so
concurrent transitions of different runs cannot overwrite each other's facts.
`rebuild_state()` derives the same table from history; a randomized test compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from storage import sql
from storage.materializations import RecordedMaterialization
from storage.models import PartitionState


class SlicePosition(NamedTuple):
    """Where a key sits in its asset's definition: `position` orders keys (window start in epoch
    seconds, static index, registry sequence); `ordinal` is its index in the key list, for the
    kinds that have one (None for dynamic keys)."""

    position: int
    ordinal: int | None


IN_PROGRESS = "IN_PROGRESS"
MATERIALIZED = "MATERIALIZED"
FAILED = "FAILED"
MISSING = "MISSING"

# Status from the facts, for a row whose in-flight run just ended (old column values).
_SETTLED_STATUS = """CASE
    WHEN latest_materialization_id IS NULL AND latest_failure_time IS NULL THEN 'MISSING'
    WHEN latest_materialization_id IS NULL THEN 'FAILED'
    WHEN latest_failure_time IS NOT NULL AND latest_failure_time > latest_materialization_time THEN 'FAILED'
    ELSE 'MATERIALIZED' END"""


def mark_in_flight(
    positions: Mapping[str, Sequence[SlicePosition]], partition_keys: Sequence[str], run_id: int, now: int
) -> None:
    """A run for the keys was queued: each key's slice of each asset (at `positions[asset][i]`
    for `partition_keys[i]`) is IN_PROGRESS and this is its latest run."""
    rows = [
        (asset_id, key, position, ordinal, run_id, run_id, now)
        for asset_id, found in positions.items()
        for key, (position, ordinal) in zip(partition_keys, found, strict=True)
    ]
    for values, params in sql.values_chunks("(%s, %s, %s, %s, 'IN_PROGRESS', %s, %s, %s)", rows):
        sql.execute(
            "INSERT INTO partition_state (asset_id, partition_key, position, ordinal, status, latest_run_id, "
            f"in_flight_run_id, update_time) VALUES {values} "
            "ON CONFLICT (asset_id, partition_key) DO UPDATE SET status = 'IN_PROGRESS', "
            "latest_run_id = excluded.latest_run_id, in_flight_run_id = excluded.in_flight_run_id, "
            "position = excluded.position, ordinal = excluded.ordinal, update_time = excluded.update_time "
            "WHERE partition_state.latest_run_id IS NULL OR partition_state.latest_run_id <= excluded.latest_run_id",
            params,
        )


def settle(
    asset_ids: Sequence[str], partition_keys: Sequence[str], run_id: int, failed: bool, now: int
) -> None:
    """The keys' in-flight run ended without a materialization of them (failed or canceled)."""
    if not asset_ids or not partition_keys:
        return
    placeholders = sql.placeholders(asset_ids)
    status = "'FAILED'" if failed else _SETTLED_STATUS
    failure_time = "%s" if failed else "latest_failure_time"
    params: list[object] = [now] if failed else []
    for chunk in sql.chunks(partition_keys):
        sql.execute(
            f"UPDATE partition_state SET in_flight_run_id = NULL, status = {status}, "
            f"latest_failure_time = {failure_time}, update_time = %s "
            f"WHERE asset_id IN ({placeholders}) AND partition_key IN ({sql.placeholders(chunk)}) "
            "AND in_flight_run_id = %s",
            (*params, now, *asset_ids, *chunk, run_id),
        )


def record_materializations(
    recorded: Sequence[RecordedMaterialization], positions: Mapping[tuple[str, str], SlicePosition], now: int
) -> None:
    """Materializations of the slices (at `positions`) were recorded; where a slice's in-flight
    run was the one that recorded it, that run ended."""
    # One row per slice, its newest (ids rise in `recorded` order): one upsert statement may not
    # touch a row twice on PostgreSQL, and the upsert keeps only the newest anyway.
    newest = {(row.asset_id, row.partition_key): row for row in recorded}
    rows = [(*slice_, *positions[slice_], row.run_id, row.id, now, now) for slice_, row in newest.items()]
    # The recording run is excluded.latest_run_id (-1 when none, which no in-flight run equals).
    for values, params in sql.values_chunks("(%s, %s, %s, %s, 'MATERIALIZED', %s, %s, %s, %s)", rows):
        sql.execute(
            "INSERT INTO partition_state (asset_id, partition_key, position, ordinal, status, latest_run_id, "
            f"latest_materialization_id, latest_materialization_time, update_time) VALUES {values} "
            "ON CONFLICT (asset_id, partition_key) DO UPDATE SET "
            "in_flight_run_id = CASE WHEN partition_state.in_flight_run_id = COALESCE(excluded.latest_run_id, -1) "
            "THEN NULL ELSE partition_state.in_flight_run_id END, "
            "status = CASE WHEN partition_state.in_flight_run_id IS NOT NULL "
            "AND partition_state.in_flight_run_id <> COALESCE(excluded.latest_run_id, -1) THEN 'IN_PROGRESS' "
            "ELSE 'MATERIALIZED' END, "
            "latest_materialization_id = excluded.latest_materialization_id, "
            "latest_materialization_time = excluded.latest_materialization_time, "
            "update_time = excluded.update_time "
            "WHERE partition_state.latest_materialization_id IS NULL "
            "OR partition_state.latest_materialization_id < excluded.latest_materialization_id",
            params,
        )


def rebuild_state() -> None:
    """Derives the whole table from runs and materializations (a run counts for the assets its
    workflow produces now, a ranged run at every key it covers). The incremental updates above
    must always agree with it, up to `position` and `update_time`; a randomized test compares
    them."""
    _rebuild("", (), "0")


def rebuild_slice(asset_id: str, partition_key: str, where: SlicePosition) -> None:
    """Re-derives one slice's row from history (removing it when the slice has none)."""
    _rebuild(
        "WHERE s.asset_id = %s AND s.partition_key = %s", (asset_id, partition_key), str(int(where.position))
    )
    sql.execute(
        "UPDATE partition_state SET ordinal = %s WHERE asset_id = %s AND partition_key = %s",
        (where.ordinal, asset_id, partition_key),
    )
    sql.execute(
        "DELETE FROM partition_state WHERE asset_id = %s AND partition_key = %s AND latest_run_id IS NULL "
        "AND latest_materialization_id IS NULL",
        (asset_id, partition_key),
    )


def _covering_runs(aggregate: str, condition: str = "") -> str:
    """`aggregate` (over run `r`) of the runs of slice `s`'s workflow (asset `a`) that cover its
    key: single-key runs of the key, and ranged runs whose key list holds it."""
    return (
        f"(SELECT MAX(found) FROM (SELECT {aggregate} AS found FROM run r "
        "WHERE r.workflow_slug = a.workflow_slug AND r.partition_key = s.partition_key "
        f"AND r.range_keys = '' {condition} "
        f"UNION ALL SELECT {aggregate} FROM run r "
        "WHERE r.workflow_slug = a.workflow_slug AND r.partition_key = '' AND r.range_keys <> '' "
        f"{condition} AND EXISTS (SELECT 1 FROM {sql.json_elements('r.range_keys')} "
        "WHERE element.value = s.partition_key)) AS covering)"
    )


def _rebuild(slice_filter: str, params: Sequence[object], position: str) -> None:
    delete_filter = slice_filter.replace("s.", "")
    sql.execute(f"DELETE FROM partition_state {delete_filter}", params)
    # A key of a ranged run that failed only some keys failed only where the run recorded no
    # materialization of it (its other keys succeeded).
    failure_time = _covering_runs(
        "MAX(r.end_time)",
        "AND r.state = 'FAILED' AND NOT EXISTS (SELECT 1 FROM materialization m WHERE m.run_id = r.id "
        "AND m.asset_id = s.asset_id AND m.partition_key = s.partition_key)",
    )
    latest_run = _covering_runs("MAX(r.id)")
    in_flight_run = _covering_runs("MAX(r.id)", "AND r.state IN ('QUEUED', 'RUNNING')")
    sql.execute(
        "INSERT INTO partition_state (asset_id, partition_key, position, status, latest_run_id, "
        "in_flight_run_id, latest_materialization_id, latest_materialization_time, latest_failure_time, "
        "update_time) "
        f"SELECT s.asset_id, s.partition_key, {position}, 'MISSING', "
        f"{latest_run}, {in_flight_run}, "
        "(SELECT MAX(m.id) FROM materialization m WHERE m.asset_id = s.asset_id "
        "  AND m.partition_key = s.partition_key), "
        "NULL, "
        f"{failure_time}, 0 "
        "FROM (SELECT a2.asset_id, r2.partition_key FROM run r2 "
        "      JOIN asset a2 ON a2.workflow_slug = r2.workflow_slug WHERE r2.range_keys = '' "
        "      UNION SELECT a3.asset_id, element.value FROM run r3 "
        "      JOIN asset a3 ON a3.workflow_slug = r3.workflow_slug "
        f"     CROSS JOIN {sql.json_elements('r3.range_keys')} WHERE r3.range_keys <> '' "
        "      UNION SELECT m2.asset_id, m2.partition_key FROM materialization m2) s "
        f"JOIN asset a ON a.asset_id = s.asset_id {slice_filter}",
        params,
    )
    sql.execute(
        "UPDATE partition_state SET latest_materialization_time = "
        "(SELECT m.create_time FROM materialization m WHERE m.id = partition_state.latest_materialization_id) "
        f"{delete_filter}",
        params,
    )
    sql.execute(
        f"UPDATE partition_state SET status = CASE WHEN in_flight_run_id IS NOT NULL THEN 'IN_PROGRESS' "
        f"ELSE {_SETTLED_STATUS} END {delete_filter}",
        params,
    )


# Position of a state row whose key no longer belongs to its asset's definition (after a
# partitioning change): below every real position, so range reads and counts never see it,
# while its history stays readable by key.
DETACHED_POSITION = -(2**62)


def reposition(asset_id: str, position_of: Callable[[str], SlicePosition | None], now: int) -> int:
    """Recomputes every state row's position and ordinal under a new definition (keys that left
    it are detached); returns how many rows moved."""
    moved = 0
    for key, position, ordinal in sql.rows(
        "SELECT partition_key, position, ordinal FROM partition_state WHERE asset_id = %s", (asset_id,)
    ):
        new = position_of(key) or SlicePosition(DETACHED_POSITION, None)
        if new != (position, ordinal):
            sql.execute(
                "UPDATE partition_state SET position = %s, ordinal = %s, update_time = %s "
                "WHERE asset_id = %s AND partition_key = %s",
                (new.position, new.ordinal, now, asset_id, key),
            )
            moved += 1
    return moved


def rows_for_keys(asset_id: str, partition_keys: Sequence[str]) -> dict[str, PartitionState]:
    if not partition_keys:
        return {}
    found = sql.select_models(
        PartitionState,
        f"asset_id = %s AND partition_key IN ({sql.placeholders(partition_keys)})",
        (asset_id, *partition_keys),
    )
    return {row.partition_key: row for row in found}


def rows_between(
    asset_id: str, low: int, high: int, statuses: Sequence[str], limit: int
) -> list[PartitionState]:
    """Rows among positions low..high in one of `statuses`, in position order."""
    return list(
        PartitionState.select()
        .where(
            (PartitionState.asset_id == asset_id)
            & PartitionState.status.in_(list(statuses))
            & (PartitionState.position >= low)
            & (PartitionState.position <= high)
        )
        .order_by(PartitionState.position)
        .limit(limit)
    )


def dynamic_page(
    asset_id: str, after_position: int, statuses: Sequence[str] | None, limit: int
) -> list[tuple[int, str, PartitionState | None]]:
    """Live dynamic keys after a registry position with their state rows (None: never touched)."""
    status_filter = ""
    params: list[object] = [asset_id, after_position]
    if statuses:
        status_filter = f"AND COALESCE(s.status, 'MISSING') IN ({sql.placeholders(statuses)})"
        params.extend(statuses)
    params.append(limit)
    found = sql.rows(
        "SELECT d.id, d.partition_key, s.partition_key FROM dynamic_partition d "
        "LEFT JOIN partition_state s ON s.asset_id = d.asset_id AND s.partition_key = d.partition_key "
        f"WHERE d.asset_id = %s AND d.delete_time IS NULL AND d.id > %s {status_filter} "
        "ORDER BY d.id LIMIT %s",
        params,
    )
    states = rows_for_keys(asset_id, [key for _, key, touched in found if touched is not None])
    return [(int(position), key, states.get(key)) for position, key, _ in found]


def dynamic_status_counts(asset_id: str) -> tuple[dict[str, int], int]:
    """Per-status counts over live dynamic keys (never-touched keys count as MISSING) and the total."""
    rows = sql.rows(
        "SELECT COALESCE(s.status, 'MISSING'), COUNT(*) FROM dynamic_partition d "
        "LEFT JOIN partition_state s ON s.asset_id = d.asset_id AND s.partition_key = d.partition_key "
        "WHERE d.asset_id = %s AND d.delete_time IS NULL GROUP BY 1",
        (asset_id,),
    )
    counts = {status: int(count) for status, count in rows}
    return counts, sum(counts.values())


def status_counts(asset_id: str) -> dict[str, int]:
    """Rows per status of the asset, from the trigger-kept counters (no scan)."""
    rows = sql.rows("SELECT status, count FROM partition_status_count WHERE asset_id = %s", (asset_id,))
    return {status: int(count) for status, count in rows if count}


def status_counts_outside(asset_id: str, low: int, high: int) -> dict[str, int]:
    """Rows per status whose position is outside low..high: rows of keys that are not (or no
    longer) in the definition as of some time, to take away from the counters."""
    counts: dict[str, int] = {}
    # Two range scans of the (asset_id, position) index, counted here: an OR of the ranges, or
    # a GROUP BY status, makes planners prefer the status index and read every row of the asset.
    for condition, bound in (("position < %s", low), ("position > %s", high)):
        for (status,) in sql.rows(
            f"SELECT status FROM partition_state WHERE asset_id = %s AND {condition}", (asset_id, bound)
        ):
            counts[status] = counts.get(status, 0) + 1
    return counts


# Ordinals per bucket of the trigger-kept `partition_bucket` aggregate (migration 3; a landed
# migration keeps its own copy of the number).
BUCKET_SIZE = 64


def missing_ordinals(asset_id: str, first: int, stop: int, limit: int) -> list[int]:
    """Up to `limit` + 1 ordinals in first..stop-1 of keys with no row (MISSING), in order,
    visiting only the buckets that hold one."""
    missing: list[int] = []
    if stop <= first:
        return missing
    bucket = first // BUCKET_SIZE
    last_bucket = (stop - 1) // BUCKET_SIZE
    while bucket <= last_bucket and len(missing) <= limit:
        shorts = short_buckets(asset_id, bucket, last_bucket, BUCKET_SIZE, limit + 1)
        if not shorts:
            break
        for short in shorts:
            low = max(short * BUCKET_SIZE, first)
            high = min(short * BUCKET_SIZE + BUCKET_SIZE, stop) - 1
            touched = touched_ordinals(asset_id, low, high)
            missing.extend(ordinal for ordinal in range(low, high + 1) if ordinal not in touched)
            bucket = short + 1
            if len(missing) > limit:
                break
    return missing[: limit + 1]


def short_buckets(asset_id: str, first_bucket: int, last_bucket: int, full: int, limit: int) -> list[int]:
    """Buckets in first..last (inclusive) with fewer than `full` touched keys — including those
    with no row at all — in order: where MISSING keys can be."""
    found = sql.rows(
        "SELECT bucket, touched FROM partition_bucket WHERE asset_id = %s AND bucket BETWEEN %s AND %s "
        "ORDER BY bucket",
        (asset_id, first_bucket, last_bucket),
    )
    short: list[int] = []
    expected = first_bucket
    for bucket, touched in found:
        while expected < bucket and len(short) < limit:
            short.append(expected)
            expected += 1
        if len(short) >= limit:
            return short
        if touched < full:
            short.append(int(bucket))
        expected = int(bucket) + 1
    while expected <= last_bucket and len(short) < limit:
        short.append(expected)
        expected += 1
    return short


def touched_ordinals(asset_id: str, first: int, last: int) -> set[int]:
    """Ordinals in first..last whose row's status is not MISSING."""
    rows = sql.rows(
        "SELECT ordinal FROM partition_state WHERE asset_id = %s AND ordinal BETWEEN %s AND %s "
        "AND status <> 'MISSING'",
        (asset_id, first, last),
    )
    return {int(row[0]) for row in rows}
