"""`buf curl` (node_modules/.bin/buf) calls the server through server reflection, no protos needed.

It is the project's grpcurl (docs/operations.md): JSON in with `-d`, JSON out, errors as JSON
on stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from partita.v1 import partitions_pb2, workflow_pb2, workflow_pb2_grpc
from tests.harness import REPO_ROOT, RunningServer

BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"
BUF_TIMEOUT = 30


def buf_curl(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), f"{BUF} is missing: run `make install` (npm install)"
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUF_TIMEOUT,
        check=False,
    )


@pytest.fixture
def registered(server: RunningServer) -> str:
    daily = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01"
        )
    )
    server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="sales",
                produces=[workflow_pb2.AssetDeclaration(asset_id="sales/daily-csv", partitioning=daily)],
            )
        )
    )
    return "sales"


def test_buf_curl_lists_workflows_through_reflection(server: RunningServer, registered: str) -> None:
    result = buf_curl(server, f"http://{server.address}/partita.v1.WorkflowService/ListWorkflows", "-d", "{}")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert [workflow["slug"] for workflow in body["workflows"]] == [registered]
    assert body["totalSize"] == "1"
    time_window = body["workflows"][0]["produces"][0]["partitioning"]["timeWindow"]
    assert time_window == {"scheduleType": "SCHEDULE_TYPE_DAILY", "start": "2024-01-01"}


def test_buf_curl_enqueues_and_lists_methods(server: RunningServer, registered: str) -> None:
    enqueue = buf_curl(
        server,
        f"http://{server.address}/partita.v1.RunService/EnqueueRun",
        "-d",
        json.dumps({"workflowSlug": registered, "partitionKey": "2024-01-15"}),
    )
    assert enqueue.returncode == 0, enqueue.stderr
    run = json.loads(enqueue.stdout)["run"]
    assert (run["partitionKey"], run["state"]) == ("2024-01-15", "RUN_STATE_QUEUED")

    listed = buf_curl(server, "--list-methods", f"http://{server.address}")
    assert listed.returncode == 0, listed.stderr
    methods = set(listed.stdout.split())
    assert {
        "partita.v1.WorkflowService/ListWorkflows",
        "partita.v1.RunService/WatchRuns",
        "partita.v1.WorkerService/ClaimRun",
        "grpc.health.v1.Health/Check",
    } <= methods


def test_buf_curl_reports_errors_as_json(server: RunningServer) -> None:
    result = buf_curl(
        server, f"http://{server.address}/partita.v1.RunService/GetRun", "-d", '{"runId": "999"}'
    )
    assert result.returncode != 0
    error = json.loads(result.stderr)
    assert error["code"] == "not_found"
    assert [detail["type"] for detail in error["details"]] == ["google.rpc.ErrorInfo"]
