"""Retention queries: what history a policy lets go, deleted in small batches.

Never deleted: runs in flight, the latest run and the latest materialization of any slice
(what per-partition state points at), and per-partition state itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from storage import sql


def surplus_runs(workflow_slug: str, keep_per_partition: int, limit: int) -> list[int]:
    """Finished runs of the workflow beyond the newest `keep_per_partition` of their key."""
    found = sql.rows(
        "SELECT id FROM (SELECT id, state, ROW_NUMBER() OVER (PARTITION BY partition_key ORDER BY id DESC) "
        "AS newest FROM run WHERE workflow_slug = %s) ranked "
        "WHERE newest > %s AND state IN ('SUCCEEDED', 'FAILED', 'CANCELED') "
        "AND id NOT IN (SELECT latest_run_id FROM partition_state WHERE latest_run_id IS NOT NULL) "
        "ORDER BY id LIMIT %s",
        (workflow_slug, keep_per_partition, limit),
    )
    return [int(row[0]) for row in found]


def expired_materializations(asset_ids: Sequence[str], older_than: int, limit: int) -> list[int]:
    """Materializations of the assets created before `older_than` that no slice has as its latest."""
    if not asset_ids:
        return []
    placeholders = sql.placeholders(asset_ids)
    found = sql.rows(
        f"SELECT id FROM materialization WHERE asset_id IN ({placeholders}) AND create_time < %s "
        "AND id NOT IN (SELECT latest_materialization_id FROM partition_state "
        "WHERE latest_materialization_id IS NOT NULL) ORDER BY id LIMIT %s",
        (*asset_ids, older_than, limit),
    )
    return [int(row[0]) for row in found]


def old_tombstones(asset_ids: Sequence[str], deleted_before: int, limit: int) -> list[int]:
    if not asset_ids:
        return []
    placeholders = sql.placeholders(asset_ids)
    found = sql.rows(
        f"SELECT id FROM dynamic_partition WHERE asset_id IN ({placeholders}) AND delete_time IS NOT NULL "
        "AND delete_time < %s ORDER BY id LIMIT %s",
        (*asset_ids, deleted_before, limit),
    )
    return [int(row[0]) for row in found]


def delete_runs(run_ids: Sequence[int]) -> None:
    if not run_ids:
        return
    placeholders = sql.placeholders(run_ids)
    sql.execute(f"DELETE FROM run_input WHERE run_id IN ({placeholders})", run_ids)
    sql.execute(f"DELETE FROM run_lineage WHERE run_id IN ({placeholders})", run_ids)
    sql.execute(f"DELETE FROM run WHERE id IN ({placeholders})", run_ids)


def delete_by_id(table: str, ids: Sequence[int]) -> None:
    if ids:
        sql.execute(f"DELETE FROM {table} WHERE id IN ({sql.placeholders(ids)})", ids)
