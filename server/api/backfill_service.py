"""BackfillService: the transport side; planning, dispatch and transitions live in
server/backfills.py (the dispatcher loop in server/scheduler/dispatcher.py), storage in
storage/backfills.py.

Semantics chosen where the contract leaves room:
- An unpartitioned workflow has one slice (key ''): `all` plans it, `missing` plans it unless
  every produced asset is materialized; `range` and `keys` are INVALID_ARGUMENT.
- Explicit keys come back in definition order; a duplicate is a violation like a bad key.
- A selection with no keys (e.g. `missing` when nothing is missing) creates a backfill that is
  COMPLETED at once.
- CancelBackfill cancels pending keys and the backfill's queued runs, asks its running runs to
  stop, and answers CANCELING (CANCELED once none is left). A key that adopted someone else's
  run in flight (a manual run, another backfill's) is canceled without touching that run.
  Canceling a canceling or canceled backfill returns it as it is (stopping runs a crash left);
  a completed one is FAILED_PRECONDITION (BACKFILL_FINISHED).
- RetryBackfill: a listed key the backfill does not have is INVALID_ARGUMENT; a listed key that
  is not FAILED or CANCELED is FAILED_PRECONDITION (KEY_NOT_RETRYABLE), both with a violation
  per key; nothing to retry is FAILED_PRECONDITION (NOTHING_TO_RETRY); a canceling backfill
  is FAILED_PRECONDITION (BACKFILL_CANCELING).
- WatchBackfill sends the backfill without its `selection` (GetBackfill has it) and ends with
  OK after the backfill's newest event once it is terminal (at once when the client has seen it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from partita.v1 import backfill_pb2, backfill_pb2_grpc, partitions_pb2, run_pb2, workflow_pb2
from server import backfills
from server.api import convert
from server.api.context import ServiceContext
from server.api.errors import abort_with_error
from server.api.idempotency import MAX_REQUEST_ID_LENGTH, once, request_hash
from server.api.pagination import PageToken, decode_page_token, page_size, query_fingerprint
from server.api.pending import with_pending_rpcs
from server.api.run_service import check_labels, parse_id, principal_of, require_workflow
from server.domain.errors import DomainError, InvalidArgument, ViolationCollector
from server.domain.names import slug_violation
from server.domain.retry import retry_policy_violations
from storage import backfills as store
from storage import requests
from storage.backfills import BackfillRow, KeyRow
from storage.events import EventFilter, Outbox
from storage.models import micros

SNAPSHOT_PREFETCH = 256
# CancelBackfill retries runs another transaction held this often, this many times (then the
# dispatcher's sweep and the claim hook take over).
CANCEL_ROUNDS = 20
CANCEL_RETRY_SECONDS = 0.05


def _timestamp(value: int | None) -> Any:
    return convert.timestamp(value)


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromMicroseconds(round(seconds * 1_000_000))
    return duration


def backfill_message(
    row: BackfillRow, *, include_selection: bool = True, snapshot: dict[str, Any] | None = None
) -> backfill_pb2.Backfill:
    state = snapshot["state"] if snapshot else row.state
    counts = store.Counts.from_list(snapshot["counts"]) if snapshot else row.counts
    end_time = snapshot.get("end_time") if snapshot else row.end_time
    message = backfill_pb2.Backfill(
        id=str(row.id),
        workflow_slug=row.workflow_slug,
        state=backfill_pb2.BackfillState.Value(f"BACKFILL_STATE_{state}"),
        counts=backfill_pb2.BackfillCounts(
            total=counts.total,
            pending=counts.pending,
            queued=counts.queued,
            running=counts.running,
            succeeded=counts.succeeded,
            failed=counts.failed,
            canceled=counts.canceled,
        ),
        max_concurrent_runs=row.max_concurrent_runs,
        labels=json.loads(row.labels or "{}"),
        trigger=run_pb2.Trigger(
            kind=run_pb2.TriggerKind.Value(f"TRIGGER_KIND_{row.trigger_kind}"),
            source_id=row.trigger_source_id,
            principal=row.trigger_principal,
        ),
    )
    message.parameters.update(json.loads(row.parameters or "{}"))
    created = _timestamp(row.create_time)
    if created is not None:
        message.create_time.CopyFrom(created)
    ended = _timestamp(end_time)
    if ended is not None:
        message.end_time.CopyFrom(ended)
    if include_selection:
        json_format.ParseDict(json.loads(row.selection or "{}"), message.selection)
    if row.retry_policy:
        stored = json.loads(row.retry_policy)
        message.retry_policy.CopyFrom(
            workflow_pb2.RetryPolicy(
                max_attempts=int(stored["max_attempts"]),
                initial_backoff=_duration(stored["initial_backoff_s"]),
                backoff_coefficient=float(stored["backoff_coefficient"]),
                maximum_backoff=_duration(stored["maximum_backoff_s"]),
            )
        )
    return message


def partition_message(row: KeyRow) -> backfill_pb2.BackfillPartition:
    return backfill_pb2.BackfillPartition(
        partition_key=row.partition_key,
        state=backfill_pb2.BackfillPartitionState.Value(f"BACKFILL_PARTITION_STATE_{row.state}"),
        attempts=row.attempts,
        run_id=str(row.run_id) if row.run_id is not None else "",
        last_error=row.last_error,
    )


@with_pending_rpcs("partita.v1.BackfillService")
class BackfillServicer(backfill_pb2_grpc.BackfillServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def CreateBackfill(
        self, request: backfill_pb2.CreateBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.CreateBackfillResponse:
        collector = ViolationCollector()
        if violation := slug_violation(request.workflow_slug, "workflow_slug"):
            collector.violations.append(violation)
        try:
            check_labels(dict(request.labels), "labels")
        except InvalidArgument as error:
            collector.extend(error)
        if not 0 <= request.max_concurrent_runs <= backfills.MAX_CONCURRENT_RUNS_LIMIT:
            collector.add(
                "max_concurrent_runs",
                f"must be between 0 (the default, {backfills.DEFAULT_MAX_CONCURRENT_RUNS}) and "
                f"{backfills.MAX_CONCURRENT_RUNS_LIMIT} (got {request.max_concurrent_runs})",
            )
        policy = None
        if request.HasField("retry_policy"):
            given = request.retry_policy
            collector.violations.extend(
                retry_policy_violations(
                    "retry_policy",
                    given.max_attempts,
                    convert.duration_or_none(given, "initial_backoff"),
                    given.backoff_coefficient,
                    convert.duration_or_none(given, "maximum_backoff"),
                )
            )
            policy = convert.retry_policy(given)
        if not request.HasField("selection") or request.selection.WhichOneof("kind") is None:
            collector.add("selection", "is required: one of range, keys, all or missing")
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            collector.add("request_id", f"is longer than {MAX_REQUEST_ID_LENGTH} characters")
        collector.raise_if_any("invalid CreateBackfill request")

        now = self.context.clock.now()
        selection = partitions_pb2.PartitionSelection()
        selection.CopyFrom(request.selection)
        new = store.NewBackfill(
            workflow_slug=request.workflow_slug,
            selection=backfills.selection_json(selection),
            parameters=convert.dumps(json_format.MessageToDict(request.parameters)),
            max_concurrent_runs=request.max_concurrent_runs or backfills.DEFAULT_MAX_CONCURRENT_RUNS,
            retry_policy=backfills.retry_policy_json(policy),
            labels=convert.dumps(dict(request.labels)),
            trigger_principal=principal_of(context),
        )
        fingerprint = request_hash(request) if request.request_id else ""

        def plan() -> tuple[int, list[str]] | bytes:
            # Keys are enumerated in a read transaction, so the writer is held only to insert them.
            if request.request_id:
                recorded = requests.recorded_response("CreateBackfill", request.request_id, fingerprint)
                if recorded is not None:
                    return recorded
            definition = require_workflow(self.context, request.workflow_slug)
            return definition.update_time, backfills.plan_keys(definition, selection, now)

        planned = await self.context.store.read(plan)
        if isinstance(planned, bytes):
            return backfill_pb2.CreateBackfillResponse.FromString(planned)
        version, keys = planned

        def create(outbox: Outbox) -> backfill_pb2.CreateBackfillResponse:
            definition = require_workflow(self.context, request.workflow_slug)
            chosen = (
                keys if definition.update_time == version else backfills.plan_keys(definition, selection, now)
            )
            row = backfills.create_tx(outbox, new, chosen, micros(now), definition.max_keys_per_run)
            return backfill_pb2.CreateBackfillResponse(backfill=backfill_message(row))

        return await once(
            self.context, "CreateBackfill", request, backfill_pb2.CreateBackfillResponse, create
        )

    async def GetBackfill(
        self, request: backfill_pb2.GetBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.GetBackfillResponse:
        backfill_id = parse_id(request.backfill_id, "backfill_id")
        row = await self.context.store.read(functools.partial(backfills.get_tx, backfill_id))
        return backfill_pb2.GetBackfillResponse(backfill=backfill_message(row))

    async def ListBackfills(
        self, request: backfill_pb2.ListBackfillsRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.ListBackfillsResponse:
        if request.workflow_slug and (violation := slug_violation(request.workflow_slug, "workflow_slug")):
            raise InvalidArgument(f"{violation.field}: {violation.description}", violations=[violation])
        states = convert.enum_filter(request.states, backfill_pb2.BackfillState, "states", "backfill state")
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        before = position.get("before")
        found = await self.context.store.read(
            functools.partial(
                store.list_backfills,
                request.workflow_slug,
                states,
                int(before) if before is not None else None,
                limit + 1,
            )
        )
        response = backfill_pb2.ListBackfillsResponse(
            backfills=[backfill_message(row) for row in found[:limit]]
        )
        if len(found) > limit:
            response.next_page_token = PageToken({"before": found[limit - 1].id}).encode(fingerprint)
        return response

    async def ListBackfillPartitions(
        self, request: backfill_pb2.ListBackfillPartitionsRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.ListBackfillPartitionsResponse:
        backfill_id = parse_id(request.backfill_id, "backfill_id")
        states = convert.enum_filter(
            request.states, backfill_pb2.BackfillPartitionState, "states", "backfill partition state"
        )
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        after = int(position.get("after", -1))

        def read() -> tuple[BackfillRow, list[KeyRow]]:
            row = backfills.get_tx(backfill_id)
            return row, store.list_keys(backfill_id, states, after, limit + 1)

        row, found = await self.context.store.read(read)
        total = sum(row.counts.of(state) for state in set(states)) if states else row.counts.total
        response = backfill_pb2.ListBackfillPartitionsResponse(
            partitions=[partition_message(key) for key in found[:limit]], total_size=total
        )
        if len(found) > limit:
            response.next_page_token = PageToken({"after": found[limit - 1].ordinal}).encode(fingerprint)
        return response

    async def CancelBackfill(
        self, request: backfill_pb2.CancelBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.CancelBackfillResponse:
        backfill_id = parse_id(request.backfill_id, "backfill_id")
        now = self.context.clock.now()
        row = await self.context.store.write(
            lambda outbox: backfills.cancel_tx(outbox, backfill_id, now), micros(now)
        )
        # Its runs in further transactions (the backfill row is then written after them), again
        # while another transaction held one of them.
        for _ in range(CANCEL_ROUNDS):
            if row.state != store.CANCELING:
                break
            now = self.context.clock.now()
            canceled = await self.context.store.write(
                functools.partial(
                    backfills.cancel_runs_tx, catalog=self.context.catalog, backfill_id=backfill_id, now=now
                ),
                micros(now),
            )
            row = canceled.backfill
            if not canceled.skipped:
                break
            await asyncio.sleep(CANCEL_RETRY_SECONDS)
        return backfill_pb2.CancelBackfillResponse(backfill=backfill_message(row))

    async def RetryBackfill(
        self, request: backfill_pb2.RetryBackfillRequest, context: grpc.aio.ServicerContext
    ) -> backfill_pb2.RetryBackfillResponse:
        backfill_id = parse_id(request.backfill_id, "backfill_id")
        listed = list(request.partition_keys)
        if len(listed) > backfills.MAX_BACKFILL_KEYS:
            raise InvalidArgument.for_field("partition_keys", f"at most {backfills.MAX_BACKFILL_KEYS:,} keys")
        now = self.context.clock.now()

        def retry(outbox: Outbox) -> backfill_pb2.RetryBackfillResponse:
            row = backfills.retry_tx(outbox, backfill_id, listed, now)
            return backfill_pb2.RetryBackfillResponse(backfill=backfill_message(row))

        return await once(self.context, "RetryBackfill", request, backfill_pb2.RetryBackfillResponse, retry)

    async def WatchBackfill(
        self, request: backfill_pb2.WatchBackfillRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[backfill_pb2.WatchBackfillResponse]:
        """The backfill's events after `after_sequence` (resumable like WatchRuns, through the
        process's event follower), each with the backfill's state and counts right after it."""
        backfill_id = parse_id(request.backfill_id, "backfill_id")
        if request.after_sequence < 0:
            raise InvalidArgument.for_field("after_sequence", f"must be >= 0 (got {request.after_sequence})")
        database = self.context.store

        def start() -> tuple[BackfillRow, int]:
            return backfills.get_tx(backfill_id), store.last_event_sequence(backfill_id)

        def terminal_now() -> tuple[str, int]:
            row = store.get_backfill(backfill_id)
            return (row.state if row else store.CANCELED), store.last_event_sequence(backfill_id)

        row, last = await database.read(start)
        if row.state in store.TERMINAL and last <= request.after_sequence:
            return
        current = row.snapshot()
        snapshots: dict[int, dict[str, Any] | None] = {}

        async def interrupt(error: DomainError) -> None:
            await abort_with_error(context, error, "/partita.v1.BackfillService/WatchBackfill")

        stream = self.context.events.watch(
            database, EventFilter(backfill_id=backfill_id), request.after_sequence, interrupt
        )
        assert isinstance(stream, AsyncGenerator)
        async with contextlib.aclosing(stream):
            async for item in stream:
                event = item.event
                if event.type == run_pb2.RUN_EVENT_TYPE_BOOKMARK:
                    yield backfill_pb2.WatchBackfillResponse(
                        backfill=backfill_message(row, include_selection=False, snapshot=current), event=event
                    )
                    continue
                if event.sequence not in snapshots:
                    snapshots = dict(
                        await database.read(
                            functools.partial(
                                store.event_snapshots, backfill_id, event.sequence, SNAPSHOT_PREFETCH
                            )
                        )
                    )
                snapshot = snapshots.get(event.sequence)
                if snapshot is not None:
                    current = snapshot
                yield backfill_pb2.WatchBackfillResponse(
                    backfill=backfill_message(row, include_selection=False, snapshot=current), event=event
                )
                if current["state"] in store.TERMINAL:
                    state, last = await database.read(terminal_now)
                    if state in store.TERMINAL and event.sequence >= last:
                        return
