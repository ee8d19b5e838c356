"""Queries over workflows and the assets they produce."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage import sql
from storage.models import Asset, PartitionState, Run, Workflow


@dataclass(frozen=True)
class AssetRow:
    asset_id: str
    workflow_slug: str
    description: str
    partitioning: str  # JSON of the PartitionsDefinition; '' when unpartitioned
    partition_kind: str


def get_workflow(slug: str) -> Workflow | None:
    return Workflow.get_or_none(Workflow.slug == slug)


def list_workflows(after_slug: str, limit: int) -> list[Workflow]:
    return list(Workflow.select().where(Workflow.slug > after_slug).order_by(Workflow.slug).limit(limit))


def count_workflows() -> int:
    return int(Workflow.select().count())


def assets_by_id(asset_ids: Sequence[str]) -> dict[str, AssetRow]:
    if not asset_ids:
        return {}
    rows = Asset.select().where(Asset.asset_id.in_(list(asset_ids)))
    return {row.asset_id: _asset_row(row) for row in rows}


def asset_has_history(asset_id: str, workflow_slug: str) -> bool:
    """Whether the asset has runs or materializations (a partitioning change would strand them)."""
    return bool(
        PartitionState.select().where(PartitionState.asset_id == asset_id).exists()
        or Run.select().where(Run.workflow_slug == workflow_slug).exists()
    )


def save_workflow(
    slug: str,
    description: str,
    definition: str,
    max_concurrent_runs: int,
    assets: Sequence[AssetRow],
    now_micros: int,
) -> Workflow:
    """Creates or replaces the workflow row and its asset rows (assets it no longer produces are released)."""
    existing = get_workflow(slug)
    if existing is None:
        Workflow.insert(
            slug=slug,
            description=description,
            definition=definition,
            max_concurrent_runs=max_concurrent_runs,
            create_time=now_micros,
            update_time=now_micros,
        ).execute()
    else:
        Workflow.update(
            description=description,
            definition=definition,
            max_concurrent_runs=max_concurrent_runs,
            update_time=max(now_micros, existing.update_time + 1),
        ).where(Workflow.slug == slug).execute()
    kept = [asset.asset_id for asset in assets]
    release = Asset.delete().where(Asset.workflow_slug == slug)
    if kept:
        release = release.where(Asset.asset_id.not_in(kept))
    release.execute()
    for asset in assets:
        Asset.insert(
            asset_id=asset.asset_id,
            workflow_slug=slug,
            description=asset.description,
            partitioning=asset.partitioning,
            partition_kind=asset.partition_kind,
        ).on_conflict(
            conflict_target=[Asset.asset_id],
            update={
                Asset.description: asset.description,
                Asset.partitioning: asset.partitioning,
                Asset.partition_kind: asset.partition_kind,
            },
        ).execute()
    workflow = get_workflow(slug)
    assert workflow is not None
    return workflow


def _asset_row(row: Asset) -> AssetRow:
    return AssetRow(row.asset_id, row.workflow_slug, row.description, row.partitioning, row.partition_kind)


def concurrency_caps() -> dict[str, int]:
    """Workflows with a cap on running runs."""
    return {
        slug: int(cap)
        for slug, cap in sql.rows(
            "SELECT slug, max_concurrent_runs FROM workflow WHERE max_concurrent_runs > 0"
        )
    }


def list_assets(workflow_slug: str, after_asset_id: str, limit: int) -> list[Asset]:
    query = Asset.select().where(Asset.asset_id > after_asset_id)
    if workflow_slug:
        query = query.where(Asset.workflow_slug == workflow_slug)
    return list(query.order_by(Asset.asset_id).limit(limit))


def count_assets(workflow_slug: str) -> int:
    query = Asset.select()
    if workflow_slug:
        query = query.where(Asset.workflow_slug == workflow_slug)
    return int(query.count())


def has_runs_in_flight(workflow_slug: str) -> bool:
    return bool(
        sql.rows(
            "SELECT 1 FROM run WHERE workflow_slug = %s AND state IN ('QUEUED', 'RUNNING') LIMIT 1",
            (workflow_slug,),
        )
    )
