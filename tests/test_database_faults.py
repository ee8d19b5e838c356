"""Losing the database connection under load: RPCs fail UNAVAILABLE, nothing is half-written,
and the server reconnects by itself."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import psycopg
import pytest

from partita.v1 import partitions_pb2, run_pb2, run_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.harness import start_server


@pytest.mark.postgres
@pytest.mark.faults
def test_server_reconnects_after_its_connections_are_killed(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection is what gets killed")
    server = start_server(database_url, log_dir=tmp_path)
    try:
        keys = [f"k{i}" for i in range(200)]
        server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
            workflow_pb2.RegisterWorkflowRequest(
                workflow=workflow_pb2.Workflow(
                    slug="wf",
                    produces=[
                        workflow_pb2.AssetDeclaration(
                            asset_id="wf/out",
                            partitioning=partitions_pb2.PartitionsDefinition(
                                static=partitions_pb2.StaticPartitions(keys=keys)
                            ),
                        )
                    ],
                )
            )
        )
        runs = server.stub(run_pb2_grpc.RunServiceStub)
        acknowledged: list[str] = []
        failures: list[grpc.StatusCode] = []
        database = database_url.rpartition("/")[2]
        for index, key in enumerate(keys):
            if index in (50, 120):
                with psycopg.connect(database_url.rpartition("/")[0] + "/postgres", autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (database,),
                    )
            try:
                run = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key))
                acknowledged.append(run.run.partition_key)
            except grpc.RpcError as error:
                failures.append(error.code())
        assert failures, "killing the connections went unnoticed"
        assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}, failures
        # The server recovered: later calls went through, and every acknowledged run is there, once.
        assert len(acknowledged) > 150
        deadline = time.monotonic() + 10
        while True:
            listed = runs.ListRuns(run_pb2.ListRunsRequest(page_size=1000))
            if listed.total_size == len(acknowledged) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(run.partition_key for run in listed.runs) == sorted(acknowledged)
    finally:
        assert server.stop() == 0
