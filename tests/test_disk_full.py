"""A full disk under the SQLite database: a clear error, nothing acknowledged lost, no corruption."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from partita.v1 import run_pb2, run_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from server.api.errors import error_details
from tests.harness import start_server


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.faults
def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(tiny_disk: Path, tmp_path: Path) -> None:
    database = tiny_disk / "partita.db"
    server = start_server(f"sqlite:///{database}", log_dir=tmp_path / "logs")
    acknowledged: list[str] = []
    failures: list[tuple[grpc.StatusCode, str]] = []
    try:
        server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
            workflow_pb2.RegisterWorkflowRequest(
                workflow=workflow_pb2.Workflow(
                    slug="wf", produces=[workflow_pb2.AssetDeclaration(asset_id="wf/out")]
                )
            )
        )
        runs = server.stub(run_pb2_grpc.RunServiceStub)
        for index in range(400):
            request = run_pb2.EnqueueRunRequest(
                workflow_slug="wf", on_conflict=run_pb2.CONFLICT_POLICY_USE_EXISTING
            )
            request.parameters.update({"blob": "x" * 30_000, "index": index})
            try:
                run = runs.EnqueueRun(request).run
            except grpc.RpcError as error:
                info, _ = error_details(error)
                failures.append((error.code(), info.reason if info else ""))
                if len(failures) >= 5:
                    break
                continue
            acknowledged.append(run.id)
            runs.CancelRun(run_pb2.CancelRunRequest(run_id=run.id))
        assert failures, "the disk never filled"
        assert {reason for _, reason in failures} == {"STORAGE_FULL"}
        assert {code for code, _ in failures} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        health = health_pb2_grpc.HealthStub(server.channel()).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {str(row[0]) for row in connection.execute("SELECT id FROM run")}
    assert set(acknowledged) <= stored
