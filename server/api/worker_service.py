"""WorkerService: leases runs to external workers and records their results."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import timedelta

import grpc
from google.protobuf import json_format

from partita.v1 import asset_pb2, worker_pb2, worker_pb2_grpc
from server import keys, lifecycle
from server.api import convert
from server.api.context import ServiceContext
from server.api.messages import materialization_message, run_message
from server.api.pending import with_pending_rpcs
from server.api.run_service import parse_id
from server.catalog import WorkflowDefinition
from server.domain.errors import FailedPrecondition, InvalidArgument, ViolationCollector
from server.domain.names import slug_violation
from storage import materializations, partition_state
from storage.events import NewEvent, Outbox
from storage.models import RequestRecord, Run, micros

log = logging.getLogger("partita.workers")

# A long poll returns empty this long before the caller's deadline, so the empty answer
# arrives before the caller gives up.
DEADLINE_MARGIN = 1.0
# Waiting claimers re-check the queue this often: retries become due and other replicas
# enqueue without waking this process.
RECHECK_INTERVAL = 1.0
MAX_WORKER_ID_LENGTH = 255


def _duration(message: object, name: str) -> timedelta | None:
    return convert.duration_or_none(message, name)  # type: ignore[arg-type]


def validated_result_assets(
    definition: WorkflowDefinition, assets: list[asset_pb2.ResultAsset], run_key: str, field: str, max_artifacts: int
) -> list[tuple[asset_pb2.ResultAsset, str]]:
    """Each reported asset with the key it lands at; every bad field is named at once."""
    collector = ViolationCollector()
    produced = set(definition.produced_asset_ids)
    seen: set[tuple[str, str]] = set()
    result = []
    for index, asset in enumerate(assets):
        asset_field = f"{field}[{index}]"
        if asset.asset_id not in produced:
            collector.add(
                f"{asset_field}.asset_id",
                f"{asset.asset_id[:128]!r} is not produced by workflow {definition.slug!r} "
                f"(it produces {', '.join(sorted(produced)) or 'nothing'})",
            )
            continue
        key = asset.partition_key or definition.key_of(asset.asset_id, run_key)
        if (asset.asset_id, key) in seen:
            collector.add(f"{asset_field}.partition_key", f"asset {asset.asset_id!r} key {key!r} is reported twice")
        seen.add((asset.asset_id, key))
        if len(asset.artifacts) > max_artifacts:
            collector.add(f"{asset_field}.artifacts", f"has {len(asset.artifacts)} artifacts; at most {max_artifacts}")
        for artifact_index, artifact in enumerate(asset.artifacts):
            artifact_field = f"{asset_field}.artifacts[{artifact_index}]"
            if not artifact.file_name and not artifact.storage_url:
                collector.add(artifact_field, "needs a file_name or a storage_url")
            if artifact.size_bytes < 0:
                collector.add(f"{artifact_field}.size_bytes", "must not be negative")
            if len(artifact.file_name) > 1024 or len(artifact.storage_url) > 4096 or len(artifact.content_type) > 255:
                collector.add(artifact_field, "file_name ≤ 1024, storage_url ≤ 4096, content_type ≤ 255 characters")
        result.append((asset, key))
    collector.raise_if_any("invalid result assets")
    return result


def record_materializations(
    outbox: Outbox,
    definition: WorkflowDefinition,
    reported: list[tuple[asset_pb2.ResultAsset, str]],
    run: Run | None,
    now_us: int,
    positions_of: dict[tuple[str, str], int],
) -> list[materializations.Materialization]:
    """Inserts the materializations, moves each slice's state, and emits MATERIALIZED events."""
    recorded = []
    for asset, key in reported:
        row = materializations.insert(
            materializations.NewMaterialization(
                asset_id=asset.asset_id,
                partition_key=key,
                run_id=run.id if run is not None else None,
                artifacts=convert.dumps(
                    [json_format.MessageToDict(a, preserving_proto_field_name=True) for a in asset.artifacts]
                ),
                payload=json_format.MessageToJson(asset.payload, indent=None),
            ),
            now_us,
        )
        partition_state.record_materialization(
            asset.asset_id, key, positions_of[(asset.asset_id, key)], row.id, run.id if run else None, now_us
        )
        outbox.add(
            NewEvent(
                type="MATERIALIZED",
                workflow_slug=definition.slug,
                run_id=run.id if run else None,
                partition_key=key,
                backfill_id=run.backfill_id if run else None,
                state=run.state if run else "",
                attempt=run.attempt if run else 0,
                asset_id=asset.asset_id,
                materialization_ids=[row.id],
            )
        )
        recorded.append(row)
    return recorded


def resolve_result_positions(
    definition: WorkflowDefinition, reported: list[tuple[asset_pb2.ResultAsset, str]], field: str, now_dt: object
) -> dict[tuple[str, str], int]:
    """Positions of every reported (asset, key); a key not valid for its asset is INVALID_ARGUMENT."""
    positions: dict[tuple[str, str], int] = {}
    cache: dict[str, dict[str, int]] = {}
    for index, (asset, key) in enumerate(reported):
        if asset.asset_id not in definition.partitioned_asset_ids:
            if key:
                raise InvalidArgument.for_field(
                    f"{field}[{index}].partition_key", f"asset {asset.asset_id!r} is not partitioned; omit the key"
                )
            positions[(asset.asset_id, key)] = 0
            continue
        if key not in cache:
            cache[key] = keys.resolve_positions(
                definition, key, now_dt, field=f"{field}[{index}].partition_key", register=False  # type: ignore[arg-type]
            )
        positions[(asset.asset_id, key)] = cache[key][asset.asset_id]
    return positions


@with_pending_rpcs("partita.v1.WorkerService")
class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    def _lease_duration(self, requested: timedelta | None, field: str) -> timedelta:
        limits = self.context.limits
        if requested is None or requested == timedelta(0):
            return limits.default_lease_duration
        if requested < timedelta(seconds=1):
            raise InvalidArgument.for_field(field, "must be at least 1 s")
        return min(requested, limits.max_lease_duration)

    async def ClaimRun(
        self, request: worker_pb2.ClaimRunRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.ClaimRunResponse:
        collector = ViolationCollector()
        if not request.worker_id or len(request.worker_id) > MAX_WORKER_ID_LENGTH:
            collector.add("worker_id", f"is required, at most {MAX_WORKER_ID_LENGTH} characters")
        for index, slug in enumerate(request.workflow_slugs):
            if violation := slug_violation(slug, f"workflow_slugs[{index}]"):
                collector.violations.append(violation)
        wait = _duration(request, "wait") or timedelta(0)
        if wait < timedelta(0):
            collector.add("wait", "must not be negative")
        collector.raise_if_any("invalid claim")
        lease_duration = self._lease_duration(_duration(request, "lease_duration"), "lease_duration")
        wait = min(wait, self.context.limits.max_claim_wait)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait.total_seconds()
        remaining = context.time_remaining()
        if remaining is not None:
            give_up = min(give_up, loop.time() + remaining - DEADLINE_MARGIN)
        slugs = list(request.workflow_slugs)
        while True:
            now = self.context.clock.now()
            lease = await self.context.store.write(
                lambda outbox: lifecycle.claim_tx(outbox, request.worker_id, slugs, lease_duration, now),
                micros(now),
            )
            if lease is not None:
                if context.cancelled() or context.done():
                    await self._release(lease)
                    return worker_pb2.ClaimRunResponse()
                return worker_pb2.ClaimRunResponse(
                    run=run_message(lease.run),
                    lease_id=lease.lease_id,
                    lease_expire_time=convert.timestamp(lease.expire_time),
                )
            left = give_up - loop.time()
            if left <= 0:
                return worker_pb2.ClaimRunResponse()
            await self.context.work.wait(min(left, RECHECK_INTERVAL))

    async def _release(self, lease: lifecycle.Lease) -> None:
        now = self.context.clock.now()
        await self.context.store.write(
            lambda outbox: lifecycle.release_claim_tx(outbox, lease.run.id, lease.lease_id, now), micros(now)
        )
        self.context.work.notify()

    async def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.HeartbeatResponse:
        run_id = parse_id(request.run_id, "run_id")
        if not 0.0 <= request.progress <= 1.0:
            raise InvalidArgument.for_field("progress", f"must be in [0, 1] (got {request.progress})")
        now = self.context.clock.now()
        expire, cancel_requested = await self.context.store.write(
            lambda outbox: lifecycle.heartbeat_tx(
                outbox, run_id, request.lease_id, request.progress, request.message[:1000], now
            ),
            micros(now),
        )
        return worker_pb2.HeartbeatResponse(
            lease_expire_time=convert.timestamp(expire), cancel_requested=cancel_requested
        )

    async def CompleteRun(
        self, request: worker_pb2.CompleteRunRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CompleteRunResponse:
        run_id = parse_id(request.run_id, "run_id")
        body = worker_pb2.CompleteRunRequest()
        body.CopyFrom(request)
        body_hash = hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
        replay_key = f"{run_id}:{request.lease_id}"[:128]
        now = self.context.clock.now()
        now_us = micros(now)
        limits = self.context.limits

        def complete(outbox: Outbox) -> worker_pb2.CompleteRunResponse:
            previous = RequestRecord.get_or_none(
                (RequestRecord.method == "CompleteRun") & (RequestRecord.request_id == replay_key)
            )
            if previous is not None:
                if previous.request_hash != body_hash:
                    raise FailedPrecondition(
                        f"run {run_id} was already completed with a different result",
                        reason="COMPLETION_CONFLICT",
                        metadata={"run_id": str(run_id)},
                    )
                return worker_pb2.CompleteRunResponse.FromString(bytes(previous.response))
            run = lifecycle.leased_run(run_id, request.lease_id, now)
            definition = self.context.catalog.workflow(run.workflow_slug)
            assert definition is not None, "a run's workflow is never deleted"
            reported_assets = list(request.assets) or [
                asset_pb2.ResultAsset(asset_id=asset_id) for asset_id in definition.produced_asset_ids
            ]
            reported = validated_result_assets(
                definition, reported_assets, run.partition_key, "assets", limits.max_artifacts_per_asset
            )
            positions = resolve_result_positions(definition, reported, "assets", now)
            ended = lifecycle.succeed_tx(outbox, run, now)
            recorded = record_materializations(outbox, definition, reported, ended, now_us, positions)
            at_run_key = {row.asset_id for row in recorded if row.partition_key == run.partition_key}
            lifecycle.settle_unmaterialized_tx(definition, run, at_run_key, now)
            response = worker_pb2.CompleteRunResponse(
                materializations=[materialization_message(row) for row in recorded]
            )
            RequestRecord.insert(
                method="CompleteRun",
                request_id=replay_key,
                request_hash=body_hash,
                response=response.SerializeToString(),
                create_time=now_us,
            ).execute()
            return response

        return await self.context.store.write(complete, now_us)

    async def FailRun(
        self, request: worker_pb2.FailRunRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.FailRunResponse:
        run_id = parse_id(request.run_id, "run_id")
        retryable = request.retryable if request.HasField("retryable") else True
        now = self.context.clock.now()

        def fail(outbox: Outbox) -> Run:
            run = lifecycle.leased_run(run_id, request.lease_id, now)
            return lifecycle.fail_attempt_tx(
                outbox, self.context.catalog, run, request.error_message[:10_000], retryable, now
            )

        run = await self.context.store.write(fail, micros(now))
        if run.state == "QUEUED":
            self.context.work.notify()
        return worker_pb2.FailRunResponse(run=run_message(run))
