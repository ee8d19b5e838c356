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
    max_keys_per_run: int = 1


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
    if shape.max_keys_per_run < 0:
        collector.add(
            f"{field}.backfill_policy.max_keys_per_run",
            "must not be negative (1 = a run per key, 0 = the whole selection in one run)",
        )
    elif shape.max_keys_per_run != 1:
        if workflow_spec(shape.produces) is None:
            collector.add(
                f"{field}.backfill_policy.max_keys_per_run",
                "ranged runs need partitions: an unpartitioned workflow has one slice (omit it or use 1)",
            )
        if shape.consumes:
            # A ranged run's upstream inputs would be a union of slices per key: not tracked yet.
            collector.add(
                f"{field}.backfill_policy.max_keys_per_run",
                "ranged runs are not available to workflows that consume assets yet (use 1)",
            )
    if shape.max_concurrent_runs < 0:
        collector.add(f"{field}.max_concurrent_runs", "must not be negative (0 = unlimited)")
    return collector.violations


def workflow_spec(produces: Sequence[ProducedAsset]) -> PartitionSpec | None:
    """The one PartitionsDefinition a workflow's partitioned assets share, if any."""
    return next((asset.spec for asset in produces if asset.spec is not None), None)
