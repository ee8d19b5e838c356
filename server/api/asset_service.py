"""AssetService: partition keys, dynamic registries, materializations and partition status."""

from __future__ import annotations

from datetime import datetime

import grpc
from partita.v1 import asset_pb2, asset_pb2_grpc

from server.api import convert
from server.api.context import ServiceContext
from server.api.idempotency import once
from server.api.messages import materialization_message
from server.api.pagination import PageToken, decode_page_token, page_size, query_fingerprint
from server.api.pending import with_pending_rpcs
from server.catalog import WorkflowDefinition
from server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ViolationCollector,
)
from server.domain.names import asset_id_violation
from server.domain.partitions import DynamicSpec, check_key_syntax
from server.results import record_materializations, resolve_result_positions, validated_result_assets
from storage import dynamic_partitions, materializations
from storage.events import Outbox
from storage.models import from_micros, micros

MAX_KEYS_PER_REQUEST = 10_000


def check_asset_id(asset_id: str, field: str = "asset_id") -> None:
    if violation := asset_id_violation(asset_id, field):
        raise InvalidArgument(f"{violation.field}: {violation.description}", violations=[violation])


def require_producer(context: ServiceContext, asset_id: str) -> WorkflowDefinition:
    """Inside a transaction: the definition of the workflow producing `asset_id`, or NOT_FOUND."""
    definition = context.catalog.producer_of(asset_id)
    if definition is None:
        raise NotFound(f"asset {asset_id!r} does not exist", metadata={"asset_id": asset_id})
    return definition


def resolve_as_of(
    context: ServiceContext, request_as_of: object, has_as_of: bool, pinned: object
) -> datetime:
    """The "now" of a read: pinned by the page token, else the request's as_of, else the clock."""
    if pinned is not None:
        return from_micros(int(pinned))  # type: ignore[call-overload]
    if has_as_of:
        return convert.instant(request_as_of)  # type: ignore[arg-type]
    return context.clock.now()


def check_keys(partition_keys: list[str], field: str) -> None:
    if not partition_keys:
        raise InvalidArgument.for_field(field, "must list at least one key")
    if len(partition_keys) > MAX_KEYS_PER_REQUEST:
        raise InvalidArgument.for_field(
            field, f"lists {len(partition_keys)} keys; at most {MAX_KEYS_PER_REQUEST}"
        )
    collector = ViolationCollector()
    seen: set[str] = set()
    for index, key in enumerate(partition_keys):
        try:
            check_key_syntax(key, f"{field}[{index}]")
        except InvalidArgument as error:
            collector.extend(error)
            continue
        if key in seen:
            collector.add(f"{field}[{index}]", f"{key!r} is listed twice")
        seen.add(key)
    collector.raise_if_any("invalid partition keys")


@with_pending_rpcs("partita.v1.AssetService")
class AssetServicer(asset_pb2_grpc.AssetServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def ListPartitionKeys(
        self, request: asset_pb2.ListPartitionKeysRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.ListPartitionKeysResponse:
        check_asset_id(request.asset_id)
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request, "as_of")
        position = decode_page_token(request.page_token, fingerprint) or {}
        as_of = resolve_as_of(self.context, request.as_of, request.HasField("as_of"), position.get("as_of"))

        def read() -> tuple[list[str], int, dict[str, int]]:
            definition = require_producer(self.context, request.asset_id)
            spec = definition.spec if request.asset_id in definition.partitioned_asset_ids else None
            if spec is None:
                return [], 0, {}
            if isinstance(spec, DynamicSpec):
                after = int(position.get("after", 0))
                rows = dynamic_partitions.live_keys(request.asset_id, after, limit + 1)
                total = dynamic_partitions.live_count(request.asset_id)
                following = {"after": rows[limit - 1].id} if len(rows) > limit else {}
                return [row.partition_key for row in rows[:limit]], total, following
            offset = int(position.get("offset", 0))
            total = spec.count(as_of)
            page = spec.keys_page(offset, limit, as_of) if offset < total else []
            following = {"offset": offset + limit} if offset + limit < total else {}
            return page, total, following

        page, total, following = await self.context.store.read(read)
        response = asset_pb2.ListPartitionKeysResponse(partition_keys=page, total_size=total)
        if following:
            response.next_page_token = PageToken({**following, "as_of": micros(as_of)}).encode(fingerprint)
        return response

    async def AddDynamicPartitions(
        self, request: asset_pb2.AddDynamicPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.AddDynamicPartitionsResponse:
        check_asset_id(request.asset_id)
        partition_keys = list(request.partition_keys)
        check_keys(partition_keys, "partition_keys")
        now = micros(self.context.clock.now())

        def add(outbox: Outbox) -> asset_pb2.AddDynamicPartitionsResponse:
            spec = self._dynamic_spec(request.asset_id)
            if spec.key_pattern:
                collector = ViolationCollector()
                for index, key in enumerate(partition_keys):
                    if not spec.accepts_on_first_use(key):
                        collector.add(
                            f"partition_keys[{index}]", f"{key!r} does not match {spec.key_pattern!r}"
                        )
                collector.raise_if_any("keys outside the dynamic definition's pattern")
            added = dynamic_partitions.revive_or_add(request.asset_id, partition_keys, now)
            if spec.max_keys and dynamic_partitions.live_count(request.asset_id) > spec.max_keys:
                raise ResourceExhausted(
                    f"adding {len(added)} keys would exceed the {spec.max_keys} live keys dynamic asset "
                    f"{request.asset_id!r} may have; nothing was added",
                    reason="DYNAMIC_KEY_LIMIT",
                    metadata={"asset_id": request.asset_id, "max_keys": str(spec.max_keys)},
                )
            return asset_pb2.AddDynamicPartitionsResponse(added_partition_keys=added)

        return await once(
            self.context, "AddDynamicPartitions", request, asset_pb2.AddDynamicPartitionsResponse, add
        )

    async def DeleteDynamicPartitions(
        self, request: asset_pb2.DeleteDynamicPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.DeleteDynamicPartitionsResponse:
        check_asset_id(request.asset_id)
        partition_keys = list(request.partition_keys)
        check_keys(partition_keys, "partition_keys")
        now = micros(self.context.clock.now())

        def delete(outbox: Outbox) -> asset_pb2.DeleteDynamicPartitionsResponse:
            self._dynamic_spec(request.asset_id)
            deleted = dynamic_partitions.tombstone(request.asset_id, partition_keys, now)
            return asset_pb2.DeleteDynamicPartitionsResponse(deleted_partition_keys=deleted)

        return await self.context.store.write(delete, now)

    def _dynamic_spec(self, asset_id: str) -> DynamicSpec:
        definition = require_producer(self.context, asset_id)
        if not isinstance(definition.spec, DynamicSpec) or asset_id not in definition.partitioned_asset_ids:
            raise FailedPrecondition(
                f"asset {asset_id!r} does not have dynamic partitions",
                reason="NOT_DYNAMIC",
                metadata={"asset_id": asset_id},
            )
        return definition.spec

    async def GetLatestMaterialization(
        self, request: asset_pb2.GetLatestMaterializationRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.GetLatestMaterializationResponse:
        check_asset_id(request.asset_id)
        if request.partition_key:
            check_key_syntax(request.partition_key)
        row = await self.context.store.read(
            lambda: materializations.latest(request.asset_id, request.partition_key)
        )
        if row is None:
            raise NotFound(
                f"asset {request.asset_id!r} has no materialization for partition key {request.partition_key!r}",
                metadata={"asset_id": request.asset_id, "partition_key": request.partition_key},
            )
        return asset_pb2.GetLatestMaterializationResponse(materialization=materialization_message(row))

    async def ListMaterializations(
        self, request: asset_pb2.ListMaterializationsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.ListMaterializationsResponse:
        check_asset_id(request.asset_id)
        if request.partition_key:
            check_key_syntax(request.partition_key)
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        before = position.get("before")
        rows = await self.context.store.read(
            lambda: materializations.list_materializations(
                request.asset_id, request.partition_key or None, int(before) if before else None, limit + 1
            )
        )
        response = asset_pb2.ListMaterializationsResponse(
            materializations=[materialization_message(row) for row in rows[:limit]]
        )
        if len(rows) > limit:
            response.next_page_token = PageToken({"before": rows[limit - 1].id}).encode(fingerprint)
        return response

    async def ReportMaterializations(
        self, request: asset_pb2.ReportMaterializationsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.ReportMaterializationsResponse:
        limits = self.context.limits
        if not request.materializations:
            raise InvalidArgument.for_field("materializations", "must list at least one materialization")
        if len(request.materializations) > limits.max_report_materializations:
            raise InvalidArgument.for_field(
                "materializations",
                f"lists {len(request.materializations)}; at most {limits.max_report_materializations} per call",
            )
        collector = ViolationCollector()
        for index, item in enumerate(request.materializations):
            if violation := asset_id_violation(item.asset_id, f"materializations[{index}].asset_id"):
                collector.violations.append(violation)
        collector.raise_if_any("invalid materializations")
        now_dt = self.context.clock.now()
        now = micros(now_dt)

        def report(outbox: Outbox) -> asset_pb2.ReportMaterializationsResponse:
            by_workflow: dict[str, tuple[WorkflowDefinition, list[int]]] = {}
            for index, item in enumerate(request.materializations):
                definition = self.context.catalog.producer_of(item.asset_id)
                if definition is None:
                    raise NotFound(
                        f"materializations[{index}].asset_id: asset {item.asset_id!r} does not exist",
                        metadata={"asset_id": item.asset_id},
                    )
                by_workflow.setdefault(definition.slug, (definition, []))[1].append(index)
            recorded: dict[int, asset_pb2.Materialization] = {}
            for definition, indexes in by_workflow.values():
                items = [request.materializations[i] for i in indexes]
                for position, item in zip(indexes, items, strict=True):
                    if item.asset_id in definition.partitioned_asset_ids and not item.partition_key:
                        raise InvalidArgument.for_field(
                            f"materializations[{position}].partition_key",
                            f"is required: asset {item.asset_id!r} is partitioned",
                        )
                fields = [f"materializations[{i}]" for i in indexes]
                reported = validated_result_assets(
                    definition, items, "", fields, limits.max_artifacts_per_asset
                )
                positions = resolve_result_positions(definition, reported, fields, now_dt)
                rows = record_materializations(outbox, definition, reported, None, now, positions)
                for index, row in zip(indexes, rows, strict=True):
                    recorded[index] = materialization_message(row)
            return asset_pb2.ReportMaterializationsResponse(
                materializations=[recorded[i] for i in range(len(request.materializations))]
            )

        return await once(
            self.context, "ReportMaterializations", request, asset_pb2.ReportMaterializationsResponse, report
        )
