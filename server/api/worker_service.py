"""WorkerService: leases runs to external workers and records their results."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from datetime import timedelta

import grpc

from partita.v1 import asset_pb2, worker_pb2, worker_pb2_grpc
from server import lifecycle
from server.api import convert
from server.api.context import ServiceContext
from server.api.messages import add_materializations, run_message
from server.api.pending import with_pending_rpcs
from server.api.run_service import parse_id
from server.domain.errors import FailedPrecondition, InvalidArgument, ViolationCollector
from server.domain.names import slug_violation
from server.results import complete_tx
from storage import requests
from storage.events import Outbox
from storage.models import Run, micros

log = logging.getLogger("partita.workers")

# A long poll returns empty this long before the caller's deadline, so the empty answer
# arrives before the caller gives up.
DEADLINE_MARGIN = 1.0
# Waiting claimers re-check the queue this often: retries become due and other replicas
# enqueue without waking this process.
RECHECK_INTERVAL = 1.0
MAX_WORKER_ID_LENGTH = 255
# Materializations a CompleteRunResponse lists at most (its materialization_count says how many
# were recorded): about 0.6 MB of messages.
MAX_LISTED_MATERIALIZATIONS = 10_000
# A CompleteRun reporting more assets than this (or a ranged run's key outcomes) is a large
# write, committed by itself (storage/store.py).
LARGE_REPORT = 100


def _duration(message: object, name: str) -> timedelta | None:
    return convert.duration_or_none(message, name)  # type: ignore[arg-type]


@with_pending_rpcs("partita.v1.WorkerService")
class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self._background: set[asyncio.Task[None]] = set()

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
            # Shielded: if the caller goes away while the claim commits, the lease must still be
            # seen here so it can be released instead of left to lapse.
            claim = asyncio.ensure_future(
                self.context.store.write(
                    functools.partial(
                        lifecycle.claim_tx,
                        worker_id=request.worker_id,
                        workflow_slugs=slugs,
                        lease_duration=lease_duration,
                        now=now,
                        catalog=self.context.catalog,
                    ),
                    micros(now),
                )
            )
            try:
                lease = await asyncio.shield(claim)
            except asyncio.CancelledError:
                claim.add_done_callback(self._release_abandoned)
                raise
            if lease is not None:
                if context.cancelled() or context.done():
                    await self._release(lease)
                    return worker_pb2.ClaimRunResponse()
                return worker_pb2.ClaimRunResponse(
                    run=run_message(lease.run),
                    lease_id=lease.lease_id,
                    lease_expire_time=convert.timestamp(lease.expire_time),
                    inputs=[
                        asset_pb2.MaterializationInput(
                            asset_id=asset_id, partition_key=key, materialization_id=str(materialization_id)
                        )
                        for asset_id, key, materialization_id in lease.inputs
                    ],
                )
            left = give_up - loop.time()
            if left <= 0:
                return worker_pb2.ClaimRunResponse()
            await self.context.work.wait(min(left, RECHECK_INTERVAL))

    def _release_abandoned(self, claim: asyncio.Future[lifecycle.Lease | None]) -> None:
        if claim.cancelled() or claim.exception() is not None:
            return
        lease = claim.result()
        if lease is not None:
            task = asyncio.ensure_future(self._release(lease))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

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
            previous = requests.find_record("CompleteRun", replay_key)
            if previous is not None:
                recorded_hash, recorded_response = previous
                if recorded_hash != body_hash:
                    raise FailedPrecondition(
                        f"run {run_id} was already completed with a different result",
                        reason="COMPLETION_CONFLICT",
                        metadata={"run_id": str(run_id)},
                    )
                return worker_pb2.CompleteRunResponse.FromString(recorded_response)
            run = lifecycle.leased_run(run_id, request.lease_id, now)
            definition = self.context.catalog.workflow(run.workflow_slug)
            assert definition is not None, "a run's workflow is never deleted"
            recorded = complete_tx(
                outbox, self.context.catalog, definition, run, request, now, limits.max_artifacts_per_asset
            )
            response = worker_pb2.CompleteRunResponse()
            # Bounded: a whole-selection run records a million, far past any message size.
            add_materializations(response.materializations, recorded[:MAX_LISTED_MATERIALIZATIONS])
            response.materialization_count = len(recorded)
            requests.record_response(
                "CompleteRun", replay_key, body_hash, response.SerializeToString(), now_us
            )
            return response

        large = (
            bool(request.all_keys_succeeded or request.failed_partition_keys)
            or len(request.assets) > LARGE_REPORT
        )
        return await self.context.store.write(complete, now_us, alone=large)

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
