"""Workflow definitions: the invariants a registration must hold, free of transport and storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.domain.errors import FieldViolation, ViolationCollector
from server.domain.names import asset_id_violation, slug_violation
from server.domain.partitions import PartitionSpec


@dataclass(frozen=True)
class ProducedAsset:
    asset_id: str
    spec: PartitionSpec | None


@dataclass(frozen=True)
class WorkflowShape:
    """The parts of a workflow whose rules do not depend on stored state."""

    slug: str
    produces: Sequence[ProducedAsset]
    consumes: Sequence[str]
    max_concurrent_runs: int


def workflow_violations(shape: WorkflowShape, field: str = "workflow") -> list[FieldViolation]:
    collector = ViolationCollector()
    if violation := slug_violation(shape.slug, f"{field}.slug"):
        collector.violations.append(violation)
    produced_ids: set[str] = set()
    shared_spec: PartitionSpec | None = None
    for index, asset in enumerate(shape.produces):
        asset_field = f"{field}.produces[{index}]"
        if violation := asset_id_violation(asset.asset_id, f"{asset_field}.asset_id"):
            collector.violations.append(violation)
        elif asset.asset_id in produced_ids:
            collector.add(f"{asset_field}.asset_id", f"{asset.asset_id!r} is declared twice")
        produced_ids.add(asset.asset_id)
        if asset.spec is not None:
            if shared_spec is None:
                shared_spec = asset.spec
            elif asset.spec != shared_spec:
                collector.add(
                    f"{asset_field}.partitioning",
                    "differs from an earlier produced asset's; all partitioned assets of a workflow "
                    "share one PartitionsDefinition",
                )
    consumed_ids: set[str] = set()
    for index, asset_id in enumerate(shape.consumes):
        asset_field = f"{field}.consumes[{index}].asset_id"
        if violation := asset_id_violation(asset_id, asset_field):
            collector.violations.append(violation)
        elif asset_id in consumed_ids:
            collector.add(asset_field, f"{asset_id!r} is listed twice")
        elif asset_id in produced_ids:
            collector.add(
                asset_field, f"{asset_id!r} is produced by the same workflow; it cannot read itself"
            )
        consumed_ids.add(asset_id)
    if shape.max_concurrent_runs < 0:
        collector.add(f"{field}.max_concurrent_runs", "must not be negative (0 = unlimited)")
    return collector.violations


def workflow_spec(produces: Sequence[ProducedAsset]) -> PartitionSpec | None:
    """The one PartitionsDefinition a workflow's partitioned assets share, if any."""
    return next((asset.spec for asset in produces if asset.spec is not None), None)
