"""The dynamic partition registry: append-only keys per asset, deleted by tombstone."""

from __future__ import annotations

from collections.abc import Sequence

from storage import sql
from storage.models import DynamicPartition


def seed(asset_id: str, keys: Sequence[str], now_micros: int) -> None:
    """Registers `keys` that the asset has never had (tombstoned ones stay tombstoned)."""
    if not keys:
        return
    rows = [{"asset_id": asset_id, "partition_key": key, "create_time": now_micros} for key in keys]
    DynamicPartition.insert_many(rows).on_conflict_ignore().execute()


def registry_row(asset_id: str, partition_key: str) -> DynamicPartition | None:
    return DynamicPartition.get_or_none(
        (DynamicPartition.asset_id == asset_id) & (DynamicPartition.partition_key == partition_key)
    )


def live_count(asset_id: str) -> int:
    return int(
        DynamicPartition.select()
        .where((DynamicPartition.asset_id == asset_id) & DynamicPartition.delete_time.is_null())
        .count()
    )


def register(asset_id: str, partition_key: str, now_micros: int) -> int:
    """Registers a never-seen key (concurrent registrations of one key keep one row); returns its position."""
    DynamicPartition.insert(
        asset_id=asset_id, partition_key=partition_key, create_time=now_micros
    ).on_conflict_ignore().execute()
    row = registry_row(asset_id, partition_key)
    assert row is not None
    return int(row.id)


def revive_or_add(asset_id: str, partition_keys: Sequence[str], now_micros: int) -> list[str]:
    """Makes every key live (new keys appended, tombstoned ones revived); returns the keys that were not live."""
    existing = {
        row.partition_key: row
        for row in DynamicPartition.select().where(
            (DynamicPartition.asset_id == asset_id) & DynamicPartition.partition_key.in_(list(partition_keys))
        )
    }
    changed = [key for key in partition_keys if key not in existing or existing[key].delete_time is not None]
    fresh = [key for key in partition_keys if key not in existing]
    seed(asset_id, fresh, now_micros)
    if fresh:
        # A key compacted away by retention and added again gets a new registry position; its
        # surviving history must sit there too.
        placeholders = sql.placeholders(fresh)
        sql.execute(
            "UPDATE partition_state SET position = (SELECT d.id FROM dynamic_partition d "
            "WHERE d.asset_id = partition_state.asset_id AND d.partition_key = partition_state.partition_key) "
            f"WHERE asset_id = %s AND partition_key IN ({placeholders})",
            (asset_id, *fresh),
        )
    revived = [key for key in partition_keys if key in existing and existing[key].delete_time is not None]
    if revived:
        DynamicPartition.update(delete_time=None).where(
            (DynamicPartition.asset_id == asset_id) & DynamicPartition.partition_key.in_(revived)
        ).execute()
    return changed


def tombstone(asset_id: str, partition_keys: Sequence[str], now_micros: int) -> list[str]:
    """Tombstones live keys; returns those that were live."""
    live = [
        row.partition_key
        for row in DynamicPartition.select(DynamicPartition.partition_key).where(
            (DynamicPartition.asset_id == asset_id)
            & DynamicPartition.partition_key.in_(list(partition_keys))
            & DynamicPartition.delete_time.is_null()
        )
    ]
    if live:
        DynamicPartition.update(delete_time=now_micros).where(
            (DynamicPartition.asset_id == asset_id) & DynamicPartition.partition_key.in_(live)
        ).execute()
    return live


def live_keys(asset_id: str, after_position: int, limit: int) -> list[DynamicPartition]:
    return list(
        DynamicPartition.select()
        .where(
            (DynamicPartition.asset_id == asset_id)
            & DynamicPartition.delete_time.is_null()
            & (DynamicPartition.id > after_position)
        )
        .order_by(DynamicPartition.id)
        .limit(limit)
    )
