"""Recording result assets: validation of reported slices, their materializations, the
per-partition state they move and their MATERIALIZED events. Shared by CompleteRun and
ReportMaterializations; runs inside a store transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf import json_format

from partita.v1 import asset_pb2, worker_pb2
from server import keys, lifecycle, lineage
from server.api import convert
from server.catalog import Catalog, WorkflowDefinition
from server.domain.errors import InvalidArgument, ViolationCollector
from storage import materializations, partition_state
from storage.events import MaterializedEvents, Outbox
from storage.materializations import NewMaterialization, RecordedMaterialization
from storage.models import Run, micros
from storage.partition_state import SlicePosition


def validated_result_assets(
    definition: WorkflowDefinition,
    assets: Sequence[asset_pb2.ResultAsset],
    run_key: str,
    fields: Sequence[str],
    max_artifacts: int,
) -> list[NewMaterialization]:
    """Each reported asset at the key it lands at, ready to store; every bad field is named at
    once. `fields[i]` is the request path of `assets[i]` (e.g. `assets[3]`)."""
    collector = ViolationCollector()
    produced = set(definition.produced_asset_ids)
    seen: set[tuple[str, str]] = set()
    result: list[tuple[asset_pb2.ResultAsset, str]] = []
    for asset, asset_field in zip(assets, fields, strict=True):
        if asset.asset_id not in produced:
            collector.add(
                f"{asset_field}.asset_id",
                f"{asset.asset_id[:128]!r} is not produced by workflow {definition.slug!r} "
                f"(it produces {', '.join(sorted(produced)) or 'nothing'})",
            )
            continue
        key = asset.partition_key or definition.key_of(asset.asset_id, run_key)
        if (asset.asset_id, key) in seen:
            collector.add(
                f"{asset_field}.partition_key", f"asset {asset.asset_id!r} key {key!r} is reported twice"
            )
        seen.add((asset.asset_id, key))
        if len(asset.artifacts) > max_artifacts:
            collector.add(
                f"{asset_field}.artifacts", f"has {len(asset.artifacts)} artifacts; at most {max_artifacts}"
            )
        for artifact_index, artifact in enumerate(asset.artifacts):
            artifact_field = f"{asset_field}.artifacts[{artifact_index}]"
            if not artifact.file_name and not artifact.storage_url:
                collector.add(artifact_field, "needs a file_name or a storage_url")
            if artifact.size_bytes < 0:
                collector.add(f"{artifact_field}.size_bytes", "must not be negative")
            if (
                len(artifact.file_name) > 1024
                or len(artifact.storage_url) > 4096
                or len(artifact.content_type) > 255
            ):
                collector.add(
                    artifact_field, "file_name ≤ 1024, storage_url ≤ 4096, content_type ≤ 255 characters"
                )
        result.append((asset, key))
    collector.raise_if_any("invalid result assets")
    return [_stored(asset, key) for asset, key in result]


def _stored(asset: asset_pb2.ResultAsset, key: str) -> NewMaterialization:
    return NewMaterialization(
        asset.asset_id,
        key,
        convert.dumps(
            [json_format.MessageToDict(a, preserving_proto_field_name=True) for a in asset.artifacts]
        )
        if asset.artifacts
        else "[]",
        json_format.MessageToJson(asset.payload, indent=None) if asset.payload.fields else "{}",
    )


def record_materializations(
    outbox: Outbox,
    definition: WorkflowDefinition,
    reported: list[NewMaterialization],
    run: Run | None,
    now_us: int,
    positions_of: dict[tuple[str, str], SlicePosition],
    *,
    catalog: Catalog | None = None,
) -> list[RecordedMaterialization]:
    """Inserts the materializations, moves each slice's state, and emits MATERIALIZED events;
    a run's materializations carry the upstream inputs recorded when it was claimed, and the
    lineage of upstream and downstream keys moves with them (server/lineage.py)."""
    inputs = lineage.inputs_json(run)
    run_id = run.id if run is not None else None
    recorded = materializations.insert_all(reported, run_id, inputs, now_us)
    partition_state.record_materializations(recorded, positions_of, now_us)
    outbox.add(
        MaterializedEvents(
            definition.slug,
            run_id,
            run.backfill_id if run else None,
            run.state if run else "",
            run.attempt if run else 0,
            recorded,
        )
    )
    lineage.on_materialized(catalog or Catalog(), definition, recorded, run, positions_of, now_us)
    return recorded


def resolve_result_positions(
    definition: WorkflowDefinition,
    reported: list[NewMaterialization],
    fields: Sequence[str],
    now: datetime,
) -> dict[tuple[str, str], SlicePosition]:
    """Positions of every reported (asset, key); a key not valid for its asset is INVALID_ARGUMENT."""
    positions: dict[tuple[str, str], SlicePosition] = {}
    cache: dict[str, dict[str, SlicePosition]] = {}
    for (asset_id, key, _, _), field in zip(reported, fields, strict=True):
        if asset_id not in definition.partitioned_asset_ids:
            if key:
                raise InvalidArgument.for_field(
                    f"{field}.partition_key", f"asset {asset_id!r} is not partitioned; omit the key"
                )
            positions[(asset_id, key)] = keys.UNPARTITIONED
            continue
        if key not in cache:
            cache[key] = keys.resolve_positions(
                definition, key, now, field=f"{field}.partition_key", register=False
            )
        positions[(asset_id, key)] = cache[key][asset_id]
    return positions


def complete_tx(
    outbox: Outbox,
    catalog: Catalog,
    definition: WorkflowDefinition,
    run: Run,
    request: worker_pb2.CompleteRunRequest,
    now: datetime,
    max_artifacts: int,
) -> list[RecordedMaterialization]:
    """CompleteRun of the leased `run`: records the reported slices, then ends the run — SUCCEEDED,
    or FAILED when it reports failed keys (the others' materializations stand).

    Every key the run covers must be accounted for: reported in `assets`, listed in
    `failed_partition_keys`, or covered by `all_keys_succeeded` (an artifact-less materialization
    of each produced asset the worker did not report). A single-key run with no `assets` counts
    as all keys succeeded, as it always has; any other unreported key is INVALID_ARGUMENT.
    """
    covered = keys.covered_keys(run)
    failed = _failed_keys(run, covered, request)
    reported_assets = list(request.assets)
    fields = [f"assets[{index}]" for index in range(len(reported_assets))]
    reported = validated_result_assets(definition, reported_assets, run.partition_key, fields, max_artifacts)
    reported_keys = {item.partition_key for item in reported}
    collector = ViolationCollector()
    for index, key in enumerate(request.failed_partition_keys):
        if key in reported_keys:
            collector.add(f"failed_partition_keys[{index}]", f"{key!r} is also reported in assets")
    all_succeeded = request.all_keys_succeeded or (not reported_assets and not failed and not run.range_keys)
    if not all_succeeded:
        unreported = [key for key in covered if key not in reported_keys and key not in failed]
        if unreported and run.range_keys:
            shown = ", ".join(repr(key) for key in unreported[:5]) + (", ..." if len(unreported) > 5 else "")
            collector.add(
                "assets",
                f"{len(unreported)} keys of run {run.id} are neither reported nor in failed_partition_keys "
                f"({shown}); report them, list them as failed, or set all_keys_succeeded",
            )
    collector.raise_if_any("invalid CompleteRun request")
    positions = resolve_result_positions(definition, reported, fields, now)
    if all_succeeded:
        done = {(item.asset_id, item.partition_key) for item in reported}
        coverage = keys.of_run(definition, run, now)
        for asset_id in definition.produced_asset_ids:
            slices = [("", keys.UNPARTITIONED)]
            if asset_id in definition.partitioned_asset_ids:
                where_of = dict(zip(coverage.keys, coverage.positions[asset_id], strict=True))
                slices = [(key, where_of[key]) for key in covered]
            for key, where in slices:
                if key in failed or (asset_id, key) in done:
                    continue
                reported.append(NewMaterialization(asset_id, key))
                positions[(asset_id, key)] = where
    # Materializations first, the run's end last: a watcher that stops at it has seen them.
    recorded = record_materializations(
        outbox, definition, reported, run, micros(now), positions, catalog=catalog
    )
    if failed:
        lifecycle.fail_keys_tx(outbox, catalog, run, [key for key in covered if key in failed], now)
        return recorded
    lifecycle.succeed_tx(outbox, run, now)
    lifecycle.settle_unmaterialized_tx(definition, run, recorded, now)
    return recorded


def _failed_keys(run: Run, covered: Sequence[str], request: worker_pb2.CompleteRunRequest) -> frozenset[str]:
    """`failed_partition_keys`, each a key the run covers, listed once, and not with
    all_keys_succeeded; INVALID_ARGUMENT naming each bad one."""
    collector = ViolationCollector()
    field = "failed_partition_keys"
    if request.all_keys_succeeded and request.failed_partition_keys:
        collector.add("all_keys_succeeded", "cannot be set together with failed_partition_keys")
    members = set(covered)
    seen: dict[str, int] = {}
    for index, key in enumerate(request.failed_partition_keys):
        first = seen.setdefault(key, index)
        if first != index:
            collector.add(f"{field}[{index}]", f"duplicate of {field}[{first}]")
        elif key not in members:
            collector.add(f"{field}[{index}]", f"{key[:64]!r} is not a key run {run.id} covers")
    collector.raise_if_any("invalid CompleteRun request")
    return frozenset(seen)
