"""AssetService: partition keys, dynamic registries, materializations and partition status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from partita.v1 import asset_pb2, asset_pb2_grpc, workflow_pb2
from server import lineage
from server.api import convert
from server.api.context import ServiceContext
from server.api.idempotency import once
from server.api.messages import materialization_message, run_message
from server.api.pagination import PageToken, decode_page_token, page_size, query_fingerprint
from server.api.pending import with_pending_rpcs
from server.catalog import WorkflowDefinition
from server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ViolationCollector,
)
from server.domain.names import asset_id_violation
from server.domain.partitions import DynamicSpec, TimeWindowSpec, check_key_syntax
from server.partition_views import STATUSES, list_partitions, status_counts, status_of
from server.results import record_materializations, resolve_result_positions, validated_result_assets
from storage import dynamic_partitions, events, materializations, sql, workflows
from storage.events import Outbox
from storage.models import Materialization, PartitionState, Run, from_micros, micros

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


STATUS_VALUES = {status: asset_pb2.PartitionStatus.Value(f"PARTITION_STATUS_{status}") for status in STATUSES}


def _id_in(ids: list[int]) -> str:
    return f"id IN ({sql.placeholders(ids)})"


def summaries(
    definition: WorkflowDefinition,
    asset_id: str,
    entries: list[tuple[str, PartitionState | None]],
    windows: dict[str, tuple[datetime, datetime]] | None = None,
    *,
    view: lineage.AssetView | None = None,
    as_of: datetime | None = None,
) -> list[asset_pb2.PartitionSummary]:
    """Inside a transaction: full summaries, loading the page's runs and materializations at once;
    with a lineage `view`, `stale` and `overdue` (as of `as_of`) too."""
    run_ids = [s.latest_run_id for _, s in entries if s is not None and s.latest_run_id is not None]
    materialization_ids = [
        s.latest_materialization_id
        for _, s in entries
        if s is not None and s.latest_materialization_id is not None
    ]
    run_rows = {row.id: row for row in sql.select_models(Run, _id_in(run_ids), run_ids)} if run_ids else {}
    materialization_rows = (
        {
            row.id: row
            for row in sql.select_models(Materialization, _id_in(materialization_ids), materialization_ids)
        }
        if materialization_ids
        else {}
    )
    spec = definition.spec if asset_id in definition.partitioned_asset_ids else None
    windows = windows or {}
    flags = (
        lineage.partition_flags(view, entries, windows, as_of)
        if view is not None and as_of is not None
        else [(False, False)] * len(entries)
    )
    result = []
    for (key, state), (stale, overdue) in zip(entries, flags, strict=True):
        summary = asset_pb2.PartitionSummary(
            partition_key=key, status=STATUS_VALUES[status_of(state)], stale=stale, overdue=overdue
        )
        if state is not None and state.latest_run_id in run_rows:
            summary.latest_run.CopyFrom(run_message(run_rows[state.latest_run_id]))
        if state is not None and state.latest_materialization_id in materialization_rows:
            summary.latest_materialization.CopyFrom(
                materialization_message(materialization_rows[state.latest_materialization_id])
            )
        if isinstance(spec, TimeWindowSpec) and key:
            bounds = windows.get(key)
            if bounds is None:
                window = spec.window(key)
                bounds = (window.start, window.end)
            start, end = bounds
            summary.window_start.FromSeconds(int(start.timestamp()))
            summary.window_end.FromSeconds(int(end.timestamp()))
        result.append(summary)
    return result


def status_count_messages(counts: dict[str, int]) -> list[asset_pb2.StatusCount]:
    return [
        asset_pb2.StatusCount(
            status=asset_pb2.PartitionStatus.Value(f"PARTITION_STATUS_{status}"), count=counts[status]
        )
        for status in STATUSES
    ]


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
            spec.validate_new_keys(partition_keys)
            added = dynamic_partitions.revive_or_add(request.asset_id, partition_keys, now)
            if spec.max_keys:
                live = dynamic_partitions.live_count(request.asset_id)
                spec.check_capacity(live - len(added), len(added), request.asset_id)
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

    async def ListPartitions(
        self, request: asset_pb2.ListPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.ListPartitionsResponse:
        check_asset_id(request.asset_id)
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request, "as_of")
        position = decode_page_token(request.page_token, fingerprint) or {}
        as_of = resolve_as_of(self.context, request.as_of, request.HasField("as_of"), position.get("as_of"))
        statuses = convert.enum_filter(
            request.statuses, asset_pb2.PartitionStatus, "statuses", "partition status"
        )
        cursor = position.get("cursor", {})

        def read() -> asset_pb2.ListPartitionsResponse:
            head = events.head_sequence()
            definition = require_producer(self.context, request.asset_id)
            view = lineage.asset_view(self.context.catalog, definition, request.asset_id)
            if request.stale_only or request.overdue_only:
                page = lineage.filtered_page(
                    view, statuses, request.stale_only, request.overdue_only, as_of, cursor, limit
                )
            else:
                page = list_partitions(definition, request.asset_id, statuses, as_of, cursor, limit)
            response = asset_pb2.ListPartitionsResponse(
                partitions=summaries(
                    definition, request.asset_id, page.entries, page.windows, view=view, as_of=as_of
                ),
                status_counts=status_count_messages(page.counts),
                head_sequence=int(position.get("head", head)),
                total_size=page.total_matching,
                stale_count=lineage.stale_count(view, as_of),
                overdue_count=lineage.overdue_count(view, as_of),
            )
            if page.next_cursor is not None:
                response.next_page_token = PageToken(
                    {"cursor": page.next_cursor, "as_of": micros(as_of), "head": response.head_sequence}
                ).encode(fingerprint)
            return response

        return await self.context.store.read(read)

    async def GetAsset(
        self, request: asset_pb2.GetAssetRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.GetAssetResponse:
        check_asset_id(request.asset_id)
        as_of = (
            request.as_of.ToDatetime(tzinfo=UTC) if request.HasField("as_of") else self.context.clock.now()
        )

        def read() -> asset_pb2.GetAssetResponse:
            definition = require_producer(self.context, request.asset_id)
            return asset_pb2.GetAssetResponse(asset=self._asset(definition, request.asset_id, as_of))

        return await self.context.store.read(read)

    async def ListAssets(
        self, request: asset_pb2.ListAssetsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.ListAssetsResponse:
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        after = str(position.get("after", ""))
        now = self.context.clock.now()

        def read() -> asset_pb2.ListAssetsResponse:
            rows = workflows.list_assets(request.workflow_slug, after, limit + 1)
            response = asset_pb2.ListAssetsResponse(total_size=workflows.count_assets(request.workflow_slug))
            for row in rows[:limit]:
                definition = self.context.catalog.workflow(row.workflow_slug)
                if definition is not None:
                    response.assets.append(self._asset(definition, row.asset_id, now))
            if len(rows) > limit:
                response.next_page_token = PageToken({"after": rows[limit - 1].asset_id}).encode(fingerprint)
            return response

        return await self.context.store.read(read)

    def _asset(self, definition: WorkflowDefinition, asset_id: str, as_of: datetime) -> asset_pb2.Asset:
        declaration = next(d for d in definition.message.produces if d.asset_id == asset_id)
        asset = asset_pb2.Asset(
            asset_id=asset_id,
            producer_workflow_slug=definition.slug,
            upstream=list(definition.message.consumes),
            status_counts=status_count_messages(status_counts(definition, asset_id, as_of)),
            description=declaration.description,
        )
        if declaration.HasField("partitioning"):
            asset.partitioning.CopyFrom(declaration.partitioning)
        if declaration.HasField("freshness_policy"):
            asset.freshness_policy.CopyFrom(declaration.freshness_policy)
        for reader in self.context.catalog.consumers_of(asset_id):
            for dependency in reader.message.consumes:
                if dependency.asset_id != asset_id:
                    continue
                for produced in reader.produced_asset_ids:
                    asset.downstream.append(
                        workflow_pb2.AssetDependency(
                            asset_id=produced, partition_mapping=dependency.partition_mapping
                        )
                    )
        latest = materializations.latest_of_asset(asset_id)
        if latest is not None:
            asset.latest_materialization.CopyFrom(materialization_message(latest))
        view = lineage.asset_view(self.context.catalog, definition, asset_id)
        asset.stale_count = lineage.stale_count(view, as_of)
        asset.overdue_count = lineage.overdue_count(view, as_of)
        return asset

    def _dynamic_spec(self, asset_id: str) -> DynamicSpec:
        definition = require_producer(self.context, asset_id)
        if not isinstance(definition.spec, DynamicSpec) or asset_id not in definition.partitioned_asset_ids:
            raise FailedPrecondition(
                f"asset {asset_id!r} does not have dynamic partitions",
                reason="NOT_DYNAMIC",
                metadata={"asset_id": asset_id},
            )
        return definition.spec

    async def GetPartition(
        self, request: asset_pb2.GetPartitionRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.GetPartitionResponse:
        check_asset_id(request.asset_id)
        as_of = resolve_as_of(self.context, request.as_of, request.HasField("as_of"), None)

        def read() -> asset_pb2.GetPartitionResponse:
            definition = require_producer(self.context, request.asset_id)
            return lineage.partition_response(
                self.context.catalog, definition, request.asset_id, request.partition_key, as_of, summaries
            )

        return await self.context.store.read(read)

    async def GetUpstreamPartitions(
        self, request: asset_pb2.GetUpstreamPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.GetUpstreamPartitionsResponse:
        slices, token = await self._lineage_page(request, lineage.upstream_page)
        return asset_pb2.GetUpstreamPartitionsResponse(slices=slices, next_page_token=token)

    async def GetDownstreamPartitions(
        self, request: asset_pb2.GetDownstreamPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> asset_pb2.GetDownstreamPartitionsResponse:
        slices, token = await self._lineage_page(request, lineage.downstream_page)
        return asset_pb2.GetDownstreamPartitionsResponse(slices=slices, next_page_token=token)

    async def _lineage_page(
        self,
        request: asset_pb2.GetUpstreamPartitionsRequest | asset_pb2.GetDownstreamPartitionsRequest,
        page: Callable[..., tuple[list[Any], bool]],
    ) -> tuple[list[Any], str]:
        """One page of a key's upstream or downstream slices, and the token of the next."""
        check_asset_id(request.asset_id)
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request, "as_of")
        position = decode_page_token(request.page_token, fingerprint) or {}
        as_of = resolve_as_of(self.context, request.as_of, request.HasField("as_of"), position.get("as_of"))
        offset = int(position.get("offset", 0))

        def read() -> tuple[list[Any], str]:
            definition = require_producer(self.context, request.asset_id)
            slices, more = page(
                self.context.catalog,
                definition,
                request.asset_id,
                request.partition_key,
                as_of,
                offset,
                limit,
            )
            token = (
                PageToken({"offset": offset + limit, "as_of": micros(as_of)}).encode(fingerprint)
                if more
                else ""
            )
            return slices, token

        return await self.context.store.read(read)

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
            producers: dict[str, WorkflowDefinition | None] = {}
            for index, item in enumerate(request.materializations):
                if item.asset_id not in producers:
                    producers[item.asset_id] = self.context.catalog.producer_of(item.asset_id)
                definition = producers[item.asset_id]
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
                rows = record_materializations(
                    outbox, definition, reported, None, now, positions, catalog=self.context.catalog
                )
                for index, row in zip(indexes, rows, strict=True):
                    recorded[index] = materialization_message(row)
            return asset_pb2.ReportMaterializationsResponse(
                materializations=[recorded[i] for i in range(len(request.materializations))]
            )

        return await once(
            self.context, "ReportMaterializations", request, asset_pb2.ReportMaterializationsResponse, report
        )
