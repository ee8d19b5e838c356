"""The per-partition state kept incrementally equals the one `rebuild_state()` derives from history."""

from __future__ import annotations

import random

import grpc

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
from storage import partition_state, sql
from storage.database import connect
from storage.models import bind_models
from tests.harness import RunningServer
from tests.storage.test_migrations import aggregates_agree

KEYS = [f"k{i}" for i in range(8)]
COLUMNS = (
    "asset_id, partition_key, status, latest_run_id, in_flight_run_id, latest_materialization_id, "
    "latest_materialization_time, latest_failure_time"
)


def test_incremental_state_matches_rebuild(server: RunningServer) -> None:
    rng = random.Random(20261126)
    workflows = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    runs = server.stub(run_pb2_grpc.RunServiceStub)
    workers = server.stub(worker_pb2_grpc.WorkerServiceStub)
    assets = server.stub(asset_pb2_grpc.AssetServiceStub)
    workflows.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="wf",
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id=asset_id,
                        partitioning=partitions_pb2.PartitionsDefinition(
                            static=partitions_pb2.StaticPartitions(keys=KEYS)
                        ),
                    )
                    for asset_id in ("wf/a", "wf/b")
                ],
                retry_policy=workflow_pb2.RetryPolicy(max_attempts=2),
            )
        )
    )
    for _ in range(400):
        action = rng.choice(["enqueue", "enqueue", "work", "work", "cancel", "report"])
        key = rng.choice(KEYS)
        if action == "enqueue":
            try:
                runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        elif action == "work":
            claimed = workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w"))
            if not claimed.HasField("run"):
                continue
            outcome = rng.choice(["complete", "complete_a", "fail", "fail_final"])
            if outcome == "complete":
                workers.CompleteRun(
                    worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
                )
            elif outcome == "complete_a":
                workers.CompleteRun(
                    worker_pb2.CompleteRunRequest(
                        run_id=claimed.run.id,
                        lease_id=claimed.lease_id,
                        assets=[asset_pb2.ResultAsset(asset_id="wf/a")],
                    )
                )
            else:
                workers.FailRun(
                    worker_pb2.FailRunRequest(
                        run_id=claimed.run.id, lease_id=claimed.lease_id, retryable=outcome == "fail"
                    )
                )
        elif action == "cancel":
            listed = runs.ListRuns(
                run_pb2.ListRunsRequest(states=[run_pb2.RUN_STATE_QUEUED], page_size=5)
            ).runs
            if listed:
                runs.CancelRun(run_pb2.CancelRunRequest(run_id=rng.choice(listed).id))
        else:
            assets.ReportMaterializations(
                asset_pb2.ReportMaterializationsRequest(
                    materializations=[
                        asset_pb2.ResultAsset(asset_id=rng.choice(["wf/a", "wf/b"]), partition_key=key)
                    ]
                )
            )

    db = connect(server.database_url)
    bind_models(db)
    with db.connection_context():
        aggregates_agree(db)
    with db.connection_context(), db.atomic() as transaction:
        incremental = sql.rows(f"SELECT {COLUMNS} FROM partition_state ORDER BY asset_id, partition_key")
        partition_state.rebuild_state()
        rebuilt = sql.rows(f"SELECT {COLUMNS} FROM partition_state ORDER BY asset_id, partition_key")
        transaction.rollback()
    assert len(incremental) > 4
    assert incremental == rebuilt
