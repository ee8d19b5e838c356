"""Resolving a partition key of a workflow to the position it takes in each produced asset.

Runs inside a store transaction: dynamic keys are looked up (and, when the definition
allows it, registered on first use) in the same transaction as the run that uses them.
"""

from __future__ import annotations

from datetime import datetime

from server.catalog import WorkflowDefinition
from server.domain.errors import InvalidArgument
from server.domain.partitions import DynamicSpec, StaticSpec, check_key_syntax
from storage import dynamic_partitions
from storage.models import micros
from storage.partition_state import SlicePosition

UNPARTITIONED = SlicePosition(0, None)


def resolve_positions(
    definition: WorkflowDefinition,
    key: str,
    now: datetime,
    *,
    field: str = "partition_key",
    register: bool = True,
) -> dict[str, SlicePosition]:
    """Where `key` sits in each partitioned asset the workflow produces (unpartitioned workflow:
    every asset at key '', position 0). Raises InvalidArgument when the key does not belong."""
    if definition.spec is None:
        if key:
            raise InvalidArgument.for_field(
                field, f"must be empty: workflow {definition.slug!r} is not partitioned (got {key[:64]!r})"
            )
        return dict.fromkeys(definition.produced_asset_ids, UNPARTITIONED)
    if not key:
        raise InvalidArgument.for_field(
            field, f"is required: workflow {definition.slug!r} is partitioned ({_describe(definition)})"
        )
    spec = definition.spec
    if not isinstance(spec, DynamicSpec):
        if isinstance(spec, StaticSpec):
            position = ordinal = spec.validate_key(key, now, field)
        else:
            position, ordinal = spec.locate_key(key, now, field)
        return dict.fromkeys(definition.partitioned_asset_ids, SlicePosition(position, ordinal))
    check_key_syntax(key, field)
    positions = {}
    for asset_id in sorted(definition.partitioned_asset_ids):
        row = dynamic_partitions.registry_row(asset_id, key)
        if row is not None and row.delete_time is None:
            positions[asset_id] = SlicePosition(int(row.id), None)
            continue
        if row is not None:
            raise InvalidArgument.for_field(
                field,
                f"{key!r} was deleted from dynamic asset {asset_id!r}; only AddDynamicPartitions revives it",
                reason="PARTITION_KEY_DELETED",
            )
        if not register or not spec.accepts_on_first_use(key):
            expectation = (
                f"matching {spec.key_pattern!r}"
                if spec.key_pattern
                else "added with AddDynamicPartitions first"
            )
            raise InvalidArgument.for_field(
                field,
                f"{key!r} is not a registered key of dynamic asset {asset_id!r}; expected a key {expectation}",
            )
        if spec.max_keys:  # counting live keys is a query: only when there is a cap
            spec.check_capacity(dynamic_partitions.live_count(asset_id), 1, asset_id)
        positions[asset_id] = SlicePosition(dynamic_partitions.register(asset_id, key, micros(now)), None)
    return positions


def _describe(definition: WorkflowDefinition) -> str:
    spec = definition.spec
    if isinstance(spec, DynamicSpec):
        return "dynamic keys"
    return type(spec).__name__.removesuffix("Spec").lower().replace("timewindow", "time-window") + " keys"
