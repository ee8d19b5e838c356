"""Several servers on one PostgreSQL database serve one API: races across replicas."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from partita.v1 import (
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.harness import RunningServer, start_server

KEYS = [f"k{i:03d}" for i in range(150)]


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share one PostgreSQL database")
    servers = [start_server(database_url, log_dir=tmp_path / f"replica-{i}") for i in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            assert server.stop() == 0


def register(server: RunningServer) -> None:
    server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="wide",
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id="wide/out",
                        partitioning=partitions_pb2.PartitionsDefinition(
                            static=partitions_pb2.StaticPartitions(keys=KEYS)
                        ),
                    )
                ],
            )
        )
    )


@pytest.mark.postgres
def test_workers_on_three_replicas_never_share_a_run(replicas: list[RunningServer]) -> None:
    register(replicas[0])
    for index, key in enumerate(KEYS):
        replicas[index % 3].stub(run_pb2_grpc.RunServiceStub).EnqueueRun(
            run_pb2.EnqueueRunRequest(workflow_slug="wide", partition_key=key)
        )
    claimed: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        stub = worker_pb2_grpc.WorkerServiceStub(replicas[index % 3].new_channel())
        while True:
            response = stub.ClaimRun(worker_pb2.ClaimRunRequest(worker_id=f"w{index}"))
            if not response.HasField("run"):
                return
            with lock:
                claimed.append(response.run.id)
            stub.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=response.run.id, lease_id=response.lease_id)
            )

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    assert len(claimed) == len(KEYS) and len(set(claimed)) == len(KEYS)
    done = (
        replicas[1]
        .stub(run_pb2_grpc.RunServiceStub)
        .ListRuns(run_pb2.ListRunsRequest(states=[run_pb2.RUN_STATE_SUCCEEDED], page_size=1))
    )
    assert done.total_size == len(KEYS)


@pytest.mark.postgres
def test_request_id_replays_across_replicas(replicas: list[RunningServer]) -> None:
    register(replicas[0])
    request = run_pb2.EnqueueRunRequest(workflow_slug="wide", partition_key="k001", request_id="once-only")

    def enqueue(index: int) -> str:
        return str(replicas[index % 3].stub(run_pb2_grpc.RunServiceStub).EnqueueRun(request).run.id)

    with ThreadPoolExecutor(12) as pool:
        ids = set(pool.map(enqueue, range(24)))
    assert len(ids) == 1
    different = run_pb2.EnqueueRunRequest(workflow_slug="wide", partition_key="k002", request_id="once-only")
    with pytest.raises(grpc.RpcError) as caught:
        replicas[2].stub(run_pb2_grpc.RunServiceStub).EnqueueRun(different)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
