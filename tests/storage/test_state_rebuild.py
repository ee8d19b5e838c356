"""The per-partition state kept incrementally equals the one `rebuild_state()` derives from history,
with single-key runs and ranged runs (some of whose keys fail) side by side."""

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


def _register(workflows: workflow_pb2_grpc.WorkflowServiceStub, slug: str, keys_per_run: int) -> None:
    workflows.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug=slug,
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id=f"{slug}/{name}",
                        partitioning=partitions_pb2.PartitionsDefinition(
                            static=partitions_pb2.StaticPartitions(keys=KEYS)
                        ),
                    )
                    for name in ("a", "b")
                ],
                retry_policy=workflow_pb2.RetryPolicy(max_attempts=2),
                backfill_policy=workflow_pb2.BackfillPolicy(max_keys_per_run=keys_per_run),
            )
        )
    )


def _complete_ranged(
    workers: worker_pb2_grpc.WorkerServiceStub, claimed: worker_pb2.ClaimRunResponse, rng: random.Random
) -> None:
    """Completes a ranged run: every key succeeded, or some failed and the rest report one asset."""
    covered = KEYS[
        KEYS.index(claimed.run.partition_range.start_key) : KEYS.index(claimed.run.partition_range.end_key)
        + 1
    ]
    request = worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
    if rng.random() < 0.5:
        request.all_keys_succeeded = True
    else:
        failed = rng.sample(covered, rng.randint(1, len(covered)))
        request.failed_partition_keys.extend(failed)
        request.assets.extend(
            asset_pb2.ResultAsset(asset_id="rg/a", partition_key=key) for key in covered if key not in failed
        )
    workers.CompleteRun(request)


def test_incremental_state_matches_rebuild(server: RunningServer) -> None:
    rng = random.Random(20261126)
    workflows = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    runs = server.stub(run_pb2_grpc.RunServiceStub)
    workers = server.stub(worker_pb2_grpc.WorkerServiceStub)
    assets = server.stub(asset_pb2_grpc.AssetServiceStub)
    _register(workflows, "wf", 1)
    _register(workflows, "rg", 3)
    for _ in range(600):
        action = rng.choice(
            ["enqueue", "enqueue", "enqueue_range", "work", "work", "work", "cancel", "report"]
        )
        key = rng.choice(KEYS)
        if action.startswith("enqueue"):
            first = rng.randrange(len(KEYS))
            last = min(len(KEYS) - 1, first + rng.randrange(3))
            request = (
                run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key)
                if action == "enqueue"
                else run_pb2.EnqueueRunRequest(
                    workflow_slug="rg",
                    partition_range=partitions_pb2.PartitionRange(start_key=KEYS[first], end_key=KEYS[last]),
                )
            )
            try:
                runs.EnqueueRun(request)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        elif action == "work":
            claimed = workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w"))
            if not claimed.HasField("run"):
                continue
            outcome = rng.choice(["complete", "complete_a", "fail", "fail_final"])
            if not claimed.run.partition_key and outcome.startswith("complete"):
                _complete_ranged(workers, claimed, rng)
                continue
            if outcome == "complete":
                workers.CompleteRun(
                    worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
                )
            elif outcome == "complete_a":
                workers.CompleteRun(
                    worker_pb2.CompleteRunRequest(
                        run_id=claimed.run.id,
                        lease_id=claimed.lease_id,
                        assets=[asset_pb2.ResultAsset(asset_id=f"{claimed.run.workflow_slug}/a")],
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
                        asset_pb2.ResultAsset(
                            asset_id=rng.choice(["wf/a", "wf/b", "rg/a", "rg/b"]), partition_key=key
                        )
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
    assert {row[0] for row in incremental} == {"wf/a", "wf/b", "rg/a", "rg/b"}
    assert any(row[0].startswith("rg/") and row[7] is not None for row in incremental)  # a failed key
    assert incremental == rebuilt
