"""The dynamic partition registry: append-only keys per asset, deleted by tombstone."""

from __future__ import annotations

from collections.abc import Sequence

from storage.models import DynamicPartition


def seed(asset_id: str, keys: Sequence[str], now_micros: int) -> None:
    """Registers `keys` that the asset has never had (tombstoned ones stay tombstoned)."""
    if not keys:
        return
    rows = [{"asset_id": asset_id, "partition_key": key, "create_time": now_micros} for key in keys]
    DynamicPartition.insert_many(rows).on_conflict_ignore().execute()
