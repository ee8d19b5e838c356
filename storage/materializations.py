"""Materializations: recorded slices of assets, with their artifacts and payload."""

from __future__ import annotations

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


def insert(new: NewMaterialization, now: int) -> Materialization:
    return sql.returning_models(
        Materialization,
        "INSERT INTO materialization (asset_id, partition_key, run_id, artifacts, payload, inputs, create_time) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (new.asset_id, new.partition_key, new.run_id, new.artifacts, new.payload, new.inputs, now),
    )[0]


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
