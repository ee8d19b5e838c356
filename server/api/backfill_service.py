"""BackfillService: the transport side; logic lives in the domain and storage."""

from __future__ import annotations

from partita.v1 import backfill_pb2_grpc
from server.api.context import ServiceContext
from server.api.pending import with_pending_rpcs


@with_pending_rpcs("partita.v1.BackfillService")
class BackfillServicer(backfill_pb2_grpc.BackfillServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
