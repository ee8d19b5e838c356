"""Materializations: recorded slices of assets, with their artifacts and payload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage import sql
from storage.models import Materialization, PartitionState


@dataclass(frozen=True)
class NewMaterialization:
    asset_id: str
    partition_key: str
    run_id: int | None
    artifacts: str
    payload: str
    inputs: str = "[]"


# Rows per INSERT: well under every engine's limit on bound parameters (7 a row).
INSERT_CHUNK = 500


def insert_all(news: Sequence[NewMaterialization], now: int) -> list[Materialization]:
    """Inserts the materializations in multi-row statements; the rows come back in the order given."""
    inserted: dict[tuple[str, str], list[Materialization]] = {}
    for start in range(0, len(news), INSERT_CHUNK):
        chunk = news[start : start + INSERT_CHUNK]
        rows = sql.returning_models(
            Materialization,
            "INSERT INTO materialization (asset_id, partition_key, run_id, artifacts, payload, inputs, "
            "create_time) VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(chunk)),
            [
                value
                for new in chunk
                for value in (
                    new.asset_id,
                    new.partition_key,
                    new.run_id,
                    new.artifacts,
                    new.payload,
                    new.inputs,
                    now,
                )
            ],
        )
        # RETURNING promises no order: match the rows back by their (asset, key), and a slice
        # given twice by id (ids rise in VALUES order).
        for row in sorted(rows, key=lambda row: int(row.id)):
            inserted.setdefault((row.asset_id, row.partition_key), []).append(row)
    return [inserted[(new.asset_id, new.partition_key)].pop(0) for new in news]


def latest(asset_id: str, partition_key: str) -> Materialization | None:
    """From the per-partition state row: one primary-key lookup, no history scan."""
    state = PartitionState.get_or_none(
        (PartitionState.asset_id == asset_id) & (PartitionState.partition_key == partition_key)
    )
    if state is None or state.latest_materialization_id is None:
        return None
    return Materialization.get_or_none(Materialization.id == state.latest_materialization_id)


def list_materializations(
    asset_id: str, partition_key: str | None, before_id: int | None, limit: int
) -> list[Materialization]:
    query = Materialization.select().where(Materialization.asset_id == asset_id)
    if partition_key is not None:
        query = query.where(Materialization.partition_key == partition_key)
    if before_id is not None:
        query = query.where(Materialization.id < before_id)
    return list(query.order_by(Materialization.id.desc()).limit(limit))


def latest_of_asset(asset_id: str) -> Materialization | None:
    return (
        Materialization.select()
        .where(Materialization.asset_id == asset_id)
        .order_by(Materialization.id.desc())
        .first()
    )
