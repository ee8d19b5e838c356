"""The five partita.v1 services, added to a server in one place."""

from __future__ import annotations

import grpc

from partita.v1 import asset_pb2_grpc, backfill_pb2_grpc, run_pb2_grpc, worker_pb2_grpc, workflow_pb2_grpc
from server.api.asset_service import AssetServicer
from server.api.backfill_service import BackfillServicer
from server.api.context import ServiceContext
from server.api.run_service import RunServicer
from server.api.worker_service import WorkerServicer
from server.api.workflow_service import WorkflowServicer

SERVICE_NAMES = (
    "partita.v1.WorkflowService",
    "partita.v1.AssetService",
    "partita.v1.RunService",
    "partita.v1.WorkerService",
    "partita.v1.BackfillService",
)


def add_partita_services(server: grpc.aio.Server, context: ServiceContext) -> tuple[str, ...]:
    """Adds every partita.v1 servicer to `server`; returns the full service names."""
    workflow_pb2_grpc.add_WorkflowServiceServicer_to_server(WorkflowServicer(context), server)
    asset_pb2_grpc.add_AssetServiceServicer_to_server(AssetServicer(context), server)
    run_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(context), server)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(context), server)
    backfill_pb2_grpc.add_BackfillServiceServicer_to_server(BackfillServicer(context), server)
    return SERVICE_NAMES
