"""Materializations: recorded slices of assets, with their artifacts and payload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from storage import sql
from storage.models import Materialization, PartitionState


class NewMaterialization(NamedTuple):
    """A slice to record: its asset and key, its artifacts and payload as stored (JSON)."""

    asset_id: str
    partition_key: str
    artifacts: str = "[]"
    payload: str = "{}"


class RecordedMaterialization(NamedTuple):
    """A row `insert_all` wrote: a `Materialization`'s columns without a model's cost (a
    ranged run records thousands at once)."""

    id: int
    asset_id: str
    partition_key: str
    artifacts: str
    payload: str
    run_id: int | None
    inputs: str
    create_time: int


def insert_all(
    news: Sequence[NewMaterialization], run_id: int | None, inputs: str, now: int
) -> list[RecordedMaterialization]:
    """Inserts the materializations (all of `run_id`, with `inputs`) in multi-row statements;
    the rows come back in the order given."""
    rows = [(*new, run_id, inputs, now) for new in news]
    ids = sql.insert_all_ids(
        "INSERT INTO materialization (asset_id, partition_key, artifacts, payload, run_id, inputs, create_time) "
        "VALUES",
        "(%s, %s, %s, %s, %s, %s, %s)",
        rows,
        "id",
    )
    make = RecordedMaterialization._make
    return [make((id_, *row)) for id_, row in zip(ids, rows, strict=True)]


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
