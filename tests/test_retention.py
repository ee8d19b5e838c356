"""Retention: `partita gc` keeps what each workflow's policy says and never a key's latest."""

from __future__ import annotations

import subprocess
import sys
import time

from google.protobuf.duration_pb2 import Duration

from partita.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from storage.database import connect
from tests.harness import RunningServer


def gc(database_url: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "gc", "--database", database_url, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_gc_keeps_what_the_policy_says(server: RunningServer) -> None:
    retention = workflow_pb2.RetentionPolicy(
        keep_runs_per_partition=2,
        keep_materializations_for=Duration(seconds=1),
        compact_tombstones_after=Duration(seconds=1),
    )
    server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="wf",
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id="wf/out",
                        partitioning=partitions_pb2.PartitionsDefinition(
                            dynamic=partitions_pb2.DynamicPartitions(initial_keys=["a", "b", "gone"])
                        ),
                    )
                ],
                retention=retention,
            )
        )
    )
    runs = server.stub(run_pb2_grpc.RunServiceStub)
    workers = server.stub(worker_pb2_grpc.WorkerServiceStub)
    assets = server.stub(asset_pb2_grpc.AssetServiceStub)
    for _ in range(4):
        for key in ("a", "b"):
            runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key))
            claimed = workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w"))
            workers.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
            )
    latest = {
        key: assets.GetLatestMaterialization(
            asset_pb2.GetLatestMaterializationRequest(asset_id="wf/out", partition_key=key)
        ).materialization.id
        for key in ("a", "b")
    }
    assets.DeleteDynamicPartitions(
        asset_pb2.DeleteDynamicPartitionsRequest(asset_id="wf/out", partition_keys=["gone"])
    )
    time.sleep(1.5)  # every materialization and the tombstone are now older than the policy keeps

    dry = gc(server.database_url, "--dry-run")
    assert "wf: would delete 4 runs, 6 materializations, 1 tombstoned dynamic keys" in dry
    assert "wf: deleted 4 runs, 6 materializations, 1 tombstoned dynamic keys" in gc(server.database_url)
    assert "wf: deleted 0 runs, 0 materializations, 0 tombstoned dynamic keys" in gc(server.database_url)

    # What is left: two runs per key, each key's latest materialization, the live keys.
    listed = runs.ListRuns(run_pb2.ListRunsRequest(workflow_slug="wf", page_size=100)).runs
    assert sorted(run.partition_key for run in listed) == ["a", "a", "b", "b"]
    for key, materialization_id in latest.items():
        found = assets.GetLatestMaterialization(
            asset_pb2.GetLatestMaterializationRequest(asset_id="wf/out", partition_key=key)
        )
        assert found.materialization.id == materialization_id
    keys = assets.ListPartitionKeys(asset_pb2.ListPartitionKeysRequest(asset_id="wf/out")).partition_keys
    assert list(keys) == ["a", "b"]
    # A compacted key can be added again, and its surviving state follows it.
    assets.AddDynamicPartitions(
        asset_pb2.AddDynamicPartitionsRequest(asset_id="wf/out", partition_keys=["gone"])
    )
    statuses = assets.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id="wf/out")).partitions
    assert [p.partition_key for p in statuses] == ["a", "b", "gone"]
    db = connect(server.database_url)
    with db.connection_context():
        state_rows = db.execute_sql("SELECT COUNT(*) FROM partition_state").fetchone()[0]
    assert state_rows == 2
