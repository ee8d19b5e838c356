"""WorkflowService: register, read and list workflows."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from partita.v1 import partitions_pb2, workflow_pb2, workflow_pb2_grpc
from server import lineage, schedules
from server.api import convert
from server.api.context import ServiceContext
from server.api.idempotency import once
from server.api.pagination import PageToken, decode_page_token, page_size, query_fingerprint
from server.api.pending import with_pending_rpcs
from server.catalog import max_keys_per_run
from server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ViolationCollector,
)
from server.domain.names import slug_violation
from server.domain.partitions import (
    DynamicSpec,
    PartitionSpec,
    StaticSpec,
    TimeWindowSpec,
    is_partitioning_change,
    positions_stable,
)
from server.domain.retry import retry_policy_violations
from server.domain.workflows import ProducedAsset, WorkflowShape, workflow_spec, workflow_violations
from storage import dynamic_partitions, partition_state, workflows
from storage import schedules as schedule_store
from storage.events import Outbox
from storage.models import Workflow, micros
from storage.partition_state import SlicePosition


def _kind(spec: PartitionSpec | None) -> str:
    if spec is None:
        return ""
    return {"TimeWindowSpec": "time_window", "StaticSpec": "static", "DynamicSpec": "dynamic"}[
        type(spec).__name__
    ]


def _validated_assets(workflow: workflow_pb2.Workflow) -> list[ProducedAsset]:
    """Parses every produced asset's partitioning; raises one error naming every bad field."""
    collector = ViolationCollector()
    produced = []
    for index, declaration in enumerate(workflow.produces):
        spec = None
        if declaration.HasField("partitioning"):
            try:
                spec = convert.partition_spec(
                    declaration.partitioning, f"workflow.produces[{index}].partitioning"
                )
            except InvalidArgument as error:
                collector.extend(error)
        produced.append(ProducedAsset(declaration.asset_id, spec))
    shape = WorkflowShape(
        slug=workflow.slug,
        produces=produced,
        consumes=[dependency.asset_id for dependency in workflow.consumes],
        max_concurrent_runs=workflow.max_concurrent_runs,
        max_keys_per_run=max_keys_per_run(workflow),
    )
    collector.violations.extend(workflow_violations(shape))
    if workflow.HasField("retry_policy"):
        policy = workflow.retry_policy
        collector.violations.extend(
            retry_policy_violations(
                "workflow.retry_policy",
                policy.max_attempts,
                convert.duration_or_none(policy, "initial_backoff"),
                policy.backoff_coefficient,
                convert.duration_or_none(policy, "maximum_backoff"),
            )
        )
    timeout = convert.duration_or_none(workflow, "execution_timeout")
    if timeout is not None and timeout.total_seconds() < 0:
        collector.add("workflow.execution_timeout", "must not be negative")
    collector.violations.extend(schedules.violations(workflow, produced))
    collector.raise_if_any("invalid workflow")
    return produced


def _positions_stable(old: PartitionSpec | None, new: PartitionSpec | None) -> bool:
    """Whether stored positions and ordinals stay right under `new` (else rows are re-positioned)."""
    if old is None or new is None:
        return old is None and new is None
    if isinstance(old, TimeWindowSpec) and isinstance(new, TimeWindowSpec):
        # A moved start keeps window starts but shifts every key's index.
        return positions_stable(old, new) and old.first_window_start == new.first_window_start
    return positions_stable(old, new)


def _position_function(spec: PartitionSpec | None) -> Callable[[str], SlicePosition | None]:
    """Where a stored key sits under `spec` (None: the key is not one of its keys)."""

    def position_of(key: str) -> SlicePosition | None:
        if spec is None:
            return SlicePosition(0, None) if key == "" else None
        if isinstance(spec, DynamicSpec) or key == "":
            return None
        try:
            position = spec.position(key)
            return SlicePosition(position, position if isinstance(spec, StaticSpec) else spec.index_of(key))
        except InvalidArgument:
            return None

    return position_of


def stored_workflow(row: Workflow) -> workflow_pb2.Workflow:
    workflow = workflow_pb2.Workflow()
    convert.from_json(row.definition, workflow)
    workflow.create_time.FromMicroseconds(row.create_time)
    workflow.update_time.FromMicroseconds(row.update_time)
    return workflow


def stored_spec(asset: workflows.AssetRow) -> PartitionSpec | None:
    if not asset.partitioning:
        return None
    definition = partitions_pb2.PartitionsDefinition()
    convert.from_json(asset.partitioning, definition)
    return convert.partition_spec(definition, "partitioning")


def _check_backfill_policy_change(context: ServiceContext, workflow: workflow_pb2.Workflow) -> None:
    """Runs of a ranged workflow claim their keys in run_slice and other runs do not, so a switch
    between the two must not happen while runs are in flight (they would not see each other)."""
    old = context.catalog.workflow(workflow.slug)
    if old is None or old.ranged == (max_keys_per_run(workflow) != 1):
        return
    if workflows.has_runs_in_flight(workflow.slug):
        raise FailedPrecondition(
            "workflow.backfill_policy.max_keys_per_run switches between one key per run and ranged "
            f"runs while runs of workflow {workflow.slug!r} are queued or running; let them end first",
            reason="RUNS_IN_FLIGHT",
            metadata={"workflow_slug": workflow.slug},
        )


@with_pending_rpcs("partita.v1.WorkflowService")
class WorkflowServicer(workflow_pb2_grpc.WorkflowServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def RegisterWorkflow(
        self, request: workflow_pb2.RegisterWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.RegisterWorkflowResponse:
        if not request.HasField("workflow"):
            raise InvalidArgument.for_field("workflow", "is required")
        workflow = request.workflow
        produced = _validated_assets(workflow)
        definition = workflow_pb2.Workflow()
        definition.CopyFrom(workflow)
        definition.ClearField("create_time")
        definition.ClearField("update_time")
        definition_json = convert.to_json(definition)
        now = micros(self.context.clock.now())

        def register(outbox: Outbox) -> workflow_pb2.RegisterWorkflowResponse:
            # Schedule state first: the schedule loop locks it before any partition state.
            schedules.register_tx(workflow, produced, now)
            _check_backfill_policy_change(self.context, workflow)
            owners = workflows.assets_by_id([asset.asset_id for asset in produced])
            rows = []
            for index, (declaration, asset) in enumerate(zip(workflow.produces, produced, strict=True)):
                owner = owners.get(asset.asset_id)
                if owner is not None and owner.workflow_slug != workflow.slug:
                    raise AlreadyExists(
                        f"asset {asset.asset_id!r} is already produced by workflow {owner.workflow_slug!r}; "
                        "an asset has exactly one producing workflow",
                        reason="ASSET_ALREADY_PRODUCED",
                        metadata={"asset_id": asset.asset_id, "workflow_slug": owner.workflow_slug},
                        violations=[],
                    )
                old_spec = stored_spec(owner) if owner is not None else None
                if owner is not None:
                    changed = (old_spec is None) != (asset.spec is None) or (
                        old_spec is not None
                        and asset.spec is not None
                        and is_partitioning_change(old_spec, asset.spec)
                    )
                    if (
                        changed
                        and not request.allow_partitioning_change
                        and workflows.asset_has_history(asset.asset_id, workflow.slug)
                    ):
                        raise FailedPrecondition(
                            f"workflow.produces[{index}].partitioning changes the partitioning of asset "
                            f"{asset.asset_id!r}, which has runs; set allow_partitioning_change to do it anyway",
                            reason="PARTITIONING_CHANGE",
                            metadata={"asset_id": asset.asset_id},
                        )
                    if not _positions_stable(old_spec, asset.spec):
                        partition_state.reposition(asset.asset_id, _position_function(asset.spec), now)
                rows.append(
                    workflows.AssetRow(
                        asset_id=asset.asset_id,
                        workflow_slug=workflow.slug,
                        description=declaration.description,
                        partitioning=convert.to_json(declaration.partitioning)
                        if asset.spec is not None
                        else "",
                        partition_kind=_kind(asset.spec),
                    )
                )
                if isinstance(asset.spec, DynamicSpec):
                    dynamic_partitions.seed(asset.asset_id, asset.spec.initial_keys, now)
            # Mappings, freshness policies and dependency cycles (server/lineage.py).
            plan = lineage.check_registration(
                self.context.catalog,
                workflow,
                workflow_spec(produced),
                {asset.asset_id: asset.spec for asset in produced},
            )
            row = workflows.save_workflow(
                workflow.slug, workflow.description, definition_json, workflow.max_concurrent_runs, rows, now
            )
            lineage.apply_registration(self.context.catalog, workflow.slug, plan, now)
            return workflow_pb2.RegisterWorkflowResponse(workflow=stored_workflow(row))

        return await once(
            self.context, "RegisterWorkflow", request, workflow_pb2.RegisterWorkflowResponse, register
        )

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.GetWorkflowResponse:
        if not request.slug:
            raise InvalidArgument.for_field("slug", "is required")
        row = await self.context.store.read(lambda: workflows.get_workflow(request.slug))
        if row is None:
            raise NotFound(f"workflow {request.slug!r} does not exist", metadata={"slug": request.slug[:128]})
        return workflow_pb2.GetWorkflowResponse(workflow=stored_workflow(row))

    async def ListWorkflows(
        self, request: workflow_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ListWorkflowsResponse:
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        after = str(position.get("after", ""))

        def read() -> tuple[list[Workflow], int]:
            return workflows.list_workflows(after, limit + 1), workflows.count_workflows()

        rows, total = await self.context.store.read(read)
        response = workflow_pb2.ListWorkflowsResponse(
            workflows=[stored_workflow(row) for row in rows[:limit]], total_size=total
        )
        if len(rows) > limit:
            response.next_page_token = PageToken({"after": rows[limit - 1].slug}).encode(fingerprint)
        return response

    async def ListScheduleTicks(
        self, request: workflow_pb2.ListScheduleTicksRequest, context: grpc.aio.ServicerContext
    ) -> workflow_pb2.ListScheduleTicksResponse:
        if violation := slug_violation(request.workflow_slug, "workflow_slug"):
            raise InvalidArgument(f"{violation.field}: {violation.description}", violations=[violation])
        limit = page_size(request.page_size, self.context.limits)
        fingerprint = query_fingerprint(request)
        position = decode_page_token(request.page_token, fingerprint) or {}
        before = position.get("before")

        def read() -> list[schedule_store.TickRow]:
            if workflows.get_workflow(request.workflow_slug) is None:
                raise NotFound(
                    f"workflow {request.workflow_slug!r} does not exist",
                    metadata={"workflow_slug": request.workflow_slug},
                )
            return schedule_store.list_ticks(
                request.workflow_slug, int(before) if before is not None else None, limit + 1
            )

        rows = await self.context.store.read(read)
        response = workflow_pb2.ListScheduleTicksResponse(
            ticks=[schedules.tick_message(row) for row in rows[:limit]]
        )
        if len(rows) > limit:
            response.next_page_token = PageToken({"before": rows[limit - 1].tick_time}).encode(fingerprint)
        return response
