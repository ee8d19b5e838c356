"""RunService: enqueue runs per partition key, read them, cancel and retry them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format

from partita.v1 import run_pb2, run_pb2_grpc
from server import backfills, keys, lifecycle
from server.api import convert
from server.api.context import ServiceContext
from server.api.errors import abort_with_error
from server.api.idempotency import once
from server.api.messages import run_message
from server.api.pagination import PageToken, decode_page_token, page_size, query_fingerprint
from server.api.pending import with_pending_rpcs
from server.auth import current_principal_name
from server.catalog import WorkflowDefinition
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound, ViolationCollector
from server.domain.names import slug_violation
from server.domain.retry import RetryPolicy
from server.streams import watch_request
from storage import events, runs
from storage.events import Outbox
from storage.models import Run, micros

MAX_LABELS = 64
MAX_LABEL_LENGTH = 256


def parse_id(value: str, field: str) -> int:
    """Ids are opaque strings to clients; these are decimal row ids."""
    if not value:
        raise InvalidArgument.for_field(field, "is required")
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) >= 2**63:
        raise InvalidArgument.for_field(field, f"{value[:64]!r} is not a valid id")
    return int(value)


def check_labels(labels: dict[str, str], field: str) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument.for_field(field, f"has {len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_LENGTH or len(value) > MAX_LABEL_LENGTH:
            raise InvalidArgument.for_field(
                f"{field}[{key[:64]!r}]",
                f"label keys must be 1-{MAX_LABEL_LENGTH} characters, values at most that",
            )


def require_workflow(context: ServiceContext, slug: str, field: str = "workflow_slug") -> WorkflowDefinition:
    """Inside a transaction: the workflow's definition, or NOT_FOUND."""
    definition = context.catalog.workflow(slug)
    if definition is None:
        raise NotFound(f"workflow {slug!r} does not exist", metadata={"workflow_slug": slug})
    return definition


# Ranged runs share partition_key '' and so take a dedupe slot of their own in the run table's
# in-flight index: this base plus their first key's position (two in-flight runs of a workflow
# never share a key, so never a slot), far from the 0 of single-key runs and from the run ids
# that in-flight runs carried over from version 1 use.
RANGED_SLOT_BASE = 2**62


def new_run(
    definition: WorkflowDefinition,
    coverage: keys.Coverage,
    requested: dict[str, Any],
    labels: dict[str, str],
    trigger_kind: str,
    principal: str,
    source_id: str = "",
    backfill_id: int | None = None,
    policy: RetryPolicy | None = None,
) -> runs.NewRun:
    effective = {**definition.default_parameters, **requested}
    retry = policy or definition.retry_policy
    first_asset = min(coverage.positions, default="")
    return runs.NewRun(
        workflow_slug=definition.slug,
        partition_key="" if coverage.ranged else coverage.keys[0],
        parameters=convert.dumps(effective),
        requested_parameters=convert.dumps(requested),
        labels=convert.dumps(labels),
        max_attempts=retry.max_attempts,
        retry_policy=lifecycle.retry_policy_json(retry),
        trigger_kind=trigger_kind,
        trigger_source_id=source_id,
        trigger_principal=principal,
        backfill_id=backfill_id,
        range_start_key=coverage.start_key,
        range_end_key=coverage.end_key,
        range_keys=convert.dumps(list(coverage.keys)) if coverage.ranged else "",
        claims_slices=definition.ranged,
        dedupe_slot=RANGED_SLOT_BASE + coverage.positions[first_asset][0].position if coverage.ranged else 0,
    )


def requested_coverage(
    definition: WorkflowDefinition, request: run_pb2.EnqueueRunRequest, now: datetime
) -> keys.Coverage:
    """The keys an EnqueueRun asks for: one partition_key, or (workflows whose backfill policy
    allows ranged runs) a partition_range of time-window or static keys or a list of dynamic
    partition_keys. A range or list of one key is an ordinary single-key run."""
    ranged_fields = [
        name
        for name, given in (
            ("partition_range", request.HasField("partition_range")),
            ("partition_keys", bool(request.partition_keys)),
        )
        if given
    ]
    if not ranged_fields:
        return keys.single(definition, request.partition_key, now)
    collector = ViolationCollector()
    if request.partition_key:
        collector.add("partition_key", f"give either partition_key or {ranged_fields[0]}, not both")
    if len(ranged_fields) > 1:
        collector.add("partition_keys", "give either partition_range or partition_keys, not both")
    if not definition.ranged:
        collector.add(
            ranged_fields[0],
            f"workflow {definition.slug!r} runs one key per run; set its backfill_policy.max_keys_per_run "
            "to 0 or more than 1 for ranged runs",
        )
    collector.raise_if_any("invalid run keys")
    if request.HasField("partition_range"):
        bounds = request.partition_range
        coverage = keys.resolve_range(
            definition, bounds.start_key, bounds.end_key, now, field="partition_range"
        )
    else:
        coverage = keys.resolve_key_list(
            definition, list(request.partition_keys), now, field="partition_keys"
        )
    limit = definition.max_keys_per_run
    if limit and len(coverage.keys) > limit:
        raise InvalidArgument.for_field(
            ranged_fields[0],
            f"covers {len(coverage.keys):,} keys; workflow {definition.slug!r} allows at most {limit:,} a run "
            "(backfill_policy.max_keys_per_run)",
        )
    if len(coverage.keys) == 1:
        return keys.single(definition, coverage.keys[0], now)
    return coverage


def principal_of(context: grpc.aio.ServicerContext) -> str:
    """The authenticated caller (token or certificate principal, or `anonymous` without auth),
    set by the auth interceptor (server/api/auth_interceptor.py) for this call."""
    return current_principal_name()[:255]


@with_pending_rpcs("partita.v1.RunService")
class RunServicer(run_pb2_grpc.RunServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def EnqueueRun(
        self, request: run_pb2.EnqueueRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.EnqueueRunResponse:
        if violation := slug_violation(request.workflow_slug, "workflow_slug"):
            raise InvalidArgument(f"{violation.field}: {violation.description}", violations=[violation])
        check_labels(dict(request.labels), "labels")
        requested = json_format.MessageToDict(request.parameters)
        labels = dict(request.labels)
        use_existing = request.on_conflict == run_pb2.CONFLICT_POLICY_USE_EXISTING
        principal = principal_of(context)
        now = self.context.clock.now()
        created = False

        def enqueue(outbox: Outbox) -> run_pb2.EnqueueRunResponse:
            nonlocal created
            definition = require_workflow(self.context, request.workflow_slug)
            coverage = requested_coverage(definition, request, now)
            run, created = lifecycle.enqueue_tx(
                outbox,
                new_run(definition, coverage, requested, labels, "MANUAL", principal),
                coverage,
                now,
                use_existing=use_existing,
            )
            return run_pb2.EnqueueRunResponse(run=run_message(run))

        response = await once(self.context, "EnqueueRun", request, run_pb2.EnqueueRunResponse, enqueue)
        if created:
            self.context.work.notify()
        return response

    async def GetRun(
        self, request: run_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.GetRunResponse:
        run_id = parse_id(request.run_id, "run_id")
        run = await self.context.store.read(lambda: runs.get_run(run_id))
        if run is None:
            raise NotFound(f"run {run_id} does not exist", metadata={"run_id": str(run_id)})
        return run_pb2.GetRunResponse(run=run_message(run))

    async def ListRuns(
        self, request: run_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.ListRunsResponse:
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        run_filter = runs.RunFilter(
            workflow_slug=request.workflow_slug,
            partition_key=request.partition_key or None,
            states=convert.enum_filter(request.states, run_pb2.RunState, "states", "run state"),
            backfill_id=parse_id(request.backfill_id, "backfill_id") if request.backfill_id else None,
            labels=dict(request.labels),
        )
        before = position.get("before")
        pinned_head = position.get("head")

        def read() -> tuple[list[Run], int, int]:
            head = events.head_sequence()
            query = run_filter
            if run_filter.partition_key is not None:
                query = dataclasses.replace(
                    run_filter,
                    ranged_workflows=[
                        slug
                        for slug in self.context.catalog.ranged_workflows()
                        if slug == request.workflow_slug or not request.workflow_slug
                    ],
                )
            found = runs.list_runs(query, int(before) if before is not None else None, limit + 1)
            return found, runs.count_runs(query), head

        found, total, head = await self.context.store.read(read)
        response = run_pb2.ListRunsResponse(
            runs=[run_message(run) for run in found[:limit]],
            total_size=total,
            head_sequence=int(pinned_head) if pinned_head is not None else head,
        )
        if len(found) > limit:
            response.next_page_token = PageToken(
                {"before": found[limit - 1].id, "head": response.head_sequence}
            ).encode(fingerprint)
        return response

    async def CancelRun(
        self, request: run_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.CancelRunResponse:
        run_id = parse_id(request.run_id, "run_id")
        now = self.context.clock.now()
        run = await self.context.store.write(
            lambda outbox: lifecycle.cancel_tx(
                outbox, self.context.catalog, run_id, request.reason[:1000], now
            ),
            micros(now),
        )
        return run_pb2.CancelRunResponse(run=run_message(run))

    async def RetryRun(
        self, request: run_pb2.RetryRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.RetryRunResponse:
        run_id = parse_id(request.run_id, "run_id")
        principal = principal_of(context)
        now = self.context.clock.now()

        def retry(outbox: Outbox) -> run_pb2.RetryRunResponse:
            original = runs.get_run(run_id)
            if original is None:
                raise NotFound(f"run {run_id} does not exist", metadata={"run_id": str(run_id)})
            if original.state not in runs.TERMINAL:
                raise FailedPrecondition(
                    f"run {run_id} is still {original.state.lower()}; only a finished run can be retried",
                    reason="RUN_NOT_FINISHED",
                    metadata={"run_id": str(run_id)},
                )
            definition = require_workflow(self.context, original.workflow_slug)
            coverage = keys.of_run(definition, original, now)
            fresh = new_run(
                definition,
                coverage,
                json.loads(original.requested_parameters or "{}"),
                json.loads(original.labels or "{}"),
                "RETRY",
                principal,
                source_id=str(original.id),
                backfill_id=original.backfill_id,
                policy=lifecycle.policy_of(original),
            )
            run = backfills.retry_run_tx(
                outbox,
                original,
                lambda: lifecycle.enqueue_tx(outbox, fresh, coverage, now, use_existing=False)[0],
                now,
            )
            return run_pb2.RetryRunResponse(run=run_message(run))

        response = await once(self.context, "RetryRun", request, run_pb2.RetryRunResponse, retry)
        self.context.work.notify()
        return response

    async def WatchRuns(
        self, request: run_pb2.WatchRunsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[run_pb2.WatchRunsResponse]:
        """Every matching event after `after_sequence`, in order, then the live ones (server/streams.py)."""
        event_filter, after_sequence = watch_request(request)

        async def interrupt(error: BaseException) -> None:
            # Ends the stream while its handler is stuck sending (stalled client, shutdown).
            await abort_with_error(context, error, "/partita.v1.RunService/WatchRuns")

        stream = self.context.events.watch(self.context.store, event_filter, after_sequence, interrupt)
        async for response in stream:
            yield response
