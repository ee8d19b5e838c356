"""RunService: the transport side; logic lives in the domain and storage."""

from __future__ import annotations

from partita.v1 import run_pb2_grpc
from server.api.context import ServiceContext
from server.api.pending import with_pending_rpcs


@with_pending_rpcs("partita.v1.RunService")
class RunServicer(run_pb2_grpc.RunServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
