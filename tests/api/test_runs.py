"""The run lifecycle through the real server: enqueue, claim, heartbeat, complete, fail, retry, cancel."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from partita.v1 import (
    asset_pb2,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.harness import RunningServer, start_server
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


def register(
    stub: workflow_pb2_grpc.WorkflowServiceStub,
    slug: str,
    partitioning: partitions_pb2.PartitionsDefinition | None = None,
    assets: tuple[str, ...] = (),
    **fields: object,
) -> workflow_pb2.Workflow:
    wf = workflow_pb2.Workflow(
        slug=slug,
        produces=[
            workflow_pb2.AssetDeclaration(asset_id=asset_id, partitioning=partitioning)
            for asset_id in (assets or (f"{slug}/out",))
        ],
        **fields,  # type: ignore[arg-type]
    )
    return stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=wf)).workflow


DAILY = partitions_pb2.PartitionsDefinition(
    time_window=partitions_pb2.TimeWindowPartitions(
        schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01", end="2024-03-01"
    )
)
STATIC = partitions_pb2.PartitionsDefinition(
    static=partitions_pb2.StaticPartitions(keys=["eu", "us", "apac"])
)


def enqueue(stub: run_pb2_grpc.RunServiceStub, slug: str, key: str = "", **fields: object) -> run_pb2.Run:
    return stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug=slug, partition_key=key, **fields)).run  # type: ignore[arg-type]


def claim(
    stub: worker_pb2_grpc.WorkerServiceStub, *slugs: str, wait: float = 0, lease: float = 30
) -> worker_pb2.ClaimRunResponse:
    return stub.ClaimRun(
        worker_pb2.ClaimRunRequest(
            worker_id="w1", workflow_slugs=list(slugs), wait=seconds(wait), lease_duration=seconds(lease)
        ),
        timeout=wait + 10,
    )


def test_enqueue_validates_the_partition_key(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    register(workflow_stub, "daily", DAILY)
    register(workflow_stub, "regions", STATIC)
    register(workflow_stub, "plain")

    run = enqueue(run_stub, "daily", "2024-01-15", labels={"team": "a"})
    assert run.state == run_pb2.RUN_STATE_QUEUED
    assert run.partition_key == "2024-01-15"
    assert run.trigger.kind == run_pb2.TRIGGER_KIND_MANUAL
    assert run.attempt == 1

    cases = [
        ("daily", "", "partition_key", "is required"),
        ("daily", "2024-13-01", "partition_key", "%Y-%m-%d"),
        ("daily", "2024-03-01", "partition_key", ""),  # at the exclusive end
        ("daily", "2023-12-31", "partition_key", ""),  # before the start
        ("regions", "mars", "partition_key", ""),
        ("plain", "2024-01-01", "partition_key", "not partitioned"),
    ]
    for slug, key, field, hint in cases:
        failure = expect_error(
            run_stub.EnqueueRun, run_pb2.EnqueueRunRequest(workflow_slug=slug, partition_key=key), INVALID
        )
        assert failure.fields == [field], (slug, key)
        assert hint in failure.bad_request.field_violations[0].description, failure  # type: ignore[union-attr]
    expect_error(
        run_stub.EnqueueRun, run_pb2.EnqueueRunRequest(workflow_slug="ghost"), grpc.StatusCode.NOT_FOUND
    )
    runs = run_stub.ListRuns(run_pb2.ListRunsRequest()).runs
    assert [r.id for r in runs] == [run.id]


def test_in_flight_dedupe_and_use_existing(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    register(workflow_stub, "regions", STATIC)
    first = enqueue(run_stub, "regions", "eu")
    failure = expect_error(
        run_stub.EnqueueRun,
        run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="eu"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert failure.reason == "RUN_IN_FLIGHT"
    assert failure.info is not None and failure.info.metadata["run_id"] == first.id
    same = enqueue(run_stub, "regions", "eu", on_conflict=run_pb2.CONFLICT_POLICY_USE_EXISTING)
    assert same.id == first.id
    other = enqueue(run_stub, "regions", "us")
    assert other.id != first.id
    run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=first.id))
    again = enqueue(run_stub, "regions", "eu")
    assert again.id not in (first.id, other.id)


def test_request_id_replay(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    register(workflow_stub, "regions", STATIC)
    request = run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="eu", request_id="r-1")
    first = run_stub.EnqueueRun(request).run
    assert run_stub.EnqueueRun(request).run == first
    reused = run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="us", request_id="r-1")
    assert expect_error(run_stub.EnqueueRun, reused, INVALID).reason == "REQUEST_ID_REUSED"
    assert run_stub.ListRuns(run_pb2.ListRunsRequest()).total_size == 1


def test_claim_heartbeat_complete_with_artifacts(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    asset_stub: object,
) -> None:
    register(workflow_stub, "daily", DAILY, assets=("sales/csv", "sales/summary"))
    run = enqueue(run_stub, "daily", "2024-01-02", parameters=None)
    claimed = claim(worker_stub)
    assert claimed.run.id == run.id and claimed.run.state == run_pb2.RUN_STATE_RUNNING
    beat = worker_stub.Heartbeat(
        worker_pb2.HeartbeatRequest(run_id=run.id, lease_id=claimed.lease_id, progress=0.5, message="half")
    )
    assert not beat.cancel_requested
    assert beat.lease_expire_time.ToDatetime() >= claimed.lease_expire_time.ToDatetime()
    got = run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run
    assert got.progress == 0.5 and got.progress_message == "half"

    complete = worker_pb2.CompleteRunRequest(
        run_id=run.id,
        lease_id=claimed.lease_id,
        assets=[
            asset_pb2.ResultAsset(
                asset_id="sales/csv",
                artifacts=[
                    asset_pb2.Artifact(
                        file_name="2024-01-02.csv", storage_url="s3://b/2024-01-02.csv", size_bytes=10
                    )
                ],
            )
        ],
    )
    done = worker_stub.CompleteRun(complete)
    assert [(m.asset_id, m.partition_key, m.run_id) for m in done.materializations] == [
        ("sales/csv", "2024-01-02", run.id)
    ]
    assert done.materializations[0].artifacts[0].storage_url == "s3://b/2024-01-02.csv"
    assert worker_stub.CompleteRun(complete) == done  # a repeat returns the first answer
    conflicting = worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=claimed.lease_id)
    assert (
        expect_error(worker_stub.CompleteRun, conflicting, grpc.StatusCode.FAILED_PRECONDITION).reason
        == "COMPLETION_CONFLICT"
    )
    final = run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run
    assert final.state == run_pb2.RUN_STATE_SUCCEEDED and final.end_time.seconds > 0


def test_complete_without_assets_materializes_every_produced_asset(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", STATIC, assets=("r/a", "r/b"))
    run = enqueue(run_stub, "regions", "us")
    claimed = claim(worker_stub)
    done = worker_stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=claimed.lease_id))
    assert sorted((m.asset_id, m.partition_key, len(m.artifacts)) for m in done.materializations) == [
        ("r/a", "us", 0),
        ("r/b", "us", 0),
    ]


def test_complete_rejects_foreign_assets_and_bad_keys(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", STATIC)
    run = enqueue(run_stub, "regions", "us")
    claimed = claim(worker_stub)
    bad = worker_pb2.CompleteRunRequest(
        run_id=run.id,
        lease_id=claimed.lease_id,
        assets=[
            asset_pb2.ResultAsset(asset_id="someone/else"),
            asset_pb2.ResultAsset(asset_id="regions/out", partition_key="mars"),
        ],
    )
    failure = expect_error(worker_stub.CompleteRun, bad, INVALID)
    assert failure.fields == ["assets[0].asset_id"]
    bad_key = worker_pb2.CompleteRunRequest(
        run_id=run.id,
        lease_id=claimed.lease_id,
        assets=[asset_pb2.ResultAsset(asset_id="regions/out", partition_key="mars")],
    )
    assert expect_error(worker_stub.CompleteRun, bad_key, INVALID).fields == ["assets[0].partition_key"]
    # The run is untouched and can still complete.
    assert run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run.state == run_pb2.RUN_STATE_RUNNING
    worker_stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=claimed.lease_id))


def test_wrong_lease_and_unknown_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "plain")
    run = enqueue(run_stub, "plain")
    claim(worker_stub)
    failure = expect_error(
        worker_stub.Heartbeat,
        worker_pb2.HeartbeatRequest(run_id=run.id, lease_id="nope-1000"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.reason == "LEASE_MISMATCH"
    expect_error(
        worker_stub.FailRun,
        worker_pb2.FailRunRequest(run_id="999999", lease_id="x"),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(worker_stub.Heartbeat, worker_pb2.HeartbeatRequest(run_id="abc", lease_id="x"), INVALID)


def test_fail_retries_with_backoff_then_fails(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    policy = workflow_pb2.RetryPolicy(max_attempts=2, initial_backoff=seconds(1), backoff_coefficient=2)
    register(workflow_stub, "flaky", retry_policy=policy)
    run = enqueue(run_stub, "flaky")
    first = claim(worker_stub)
    retried = worker_stub.FailRun(
        worker_pb2.FailRunRequest(run_id=run.id, lease_id=first.lease_id, error_message="boom")
    ).run
    assert retried.state == run_pb2.RUN_STATE_QUEUED and retried.attempt == 2
    assert retried.next_attempt_time.ToDatetime() > retried.create_time.ToDatetime()
    assert not claim(worker_stub).HasField("run")  # not claimable before its next attempt time
    second = claim(worker_stub, wait=5)
    assert second.run.id == run.id and second.run.attempt == 2
    assert second.lease_id != first.lease_id
    # The first attempt's lease is dead.
    expect_error(
        worker_stub.FailRun,
        worker_pb2.FailRunRequest(run_id=run.id, lease_id=first.lease_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    final = worker_stub.FailRun(
        worker_pb2.FailRunRequest(run_id=run.id, lease_id=second.lease_id, error_message="boom again")
    ).run
    assert final.state == run_pb2.RUN_STATE_FAILED and final.error_message == "boom again"


def test_non_retryable_failure_ends_at_once(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "plain")
    run = enqueue(run_stub, "plain")
    lease = claim(worker_stub).lease_id
    ended = worker_stub.FailRun(
        worker_pb2.FailRunRequest(run_id=run.id, lease_id=lease, error_message="bad input", retryable=False)
    ).run
    assert ended.state == run_pb2.RUN_STATE_FAILED and ended.attempt == 1


def test_lapsed_lease_retries_then_fails(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    policy = workflow_pb2.RetryPolicy(max_attempts=2, initial_backoff=seconds(0))
    register(workflow_stub, "lapsing", retry_policy=policy)
    run = enqueue(run_stub, "lapsing")
    first = claim(worker_stub, lease=1)
    second = claim(worker_stub, wait=6, lease=1)  # the reaper re-queues it once the lease lapses
    assert second.run.id == run.id and second.run.attempt == 2
    failure = expect_error(
        worker_stub.Heartbeat,
        worker_pb2.HeartbeatRequest(run_id=run.id, lease_id=first.lease_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.reason == "LEASE_MISMATCH"
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        state = run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run
        if state.state == run_pb2.RUN_STATE_FAILED:
            break
        time.sleep(0.2)
    assert state.state == run_pb2.RUN_STATE_FAILED and "lease" in state.error_message


def test_execution_timeout_bounds_a_heartbeating_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(
        workflow_stub,
        "slow",
        retry_policy=workflow_pb2.RetryPolicy(max_attempts=1),
        execution_timeout=seconds(1),
    )
    run = enqueue(run_stub, "slow")
    lease = claim(worker_stub, lease=60).lease_id
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        try:
            worker_stub.Heartbeat(worker_pb2.HeartbeatRequest(run_id=run.id, lease_id=lease, progress=0.1))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            break
        time.sleep(0.2)
    final = run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run
    assert final.state == run_pb2.RUN_STATE_FAILED and "timeout" in final.error_message


def test_cancel_queued_and_running(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", STATIC)
    queued = enqueue(run_stub, "regions", "eu")
    canceled = run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=queued.id)).run
    assert canceled.state == run_pb2.RUN_STATE_CANCELED
    running = enqueue(run_stub, "regions", "us")
    lease = claim(worker_stub).lease_id
    asked = run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=running.id)).run
    assert asked.state == run_pb2.RUN_STATE_RUNNING and asked.cancel_requested
    beat = worker_stub.Heartbeat(worker_pb2.HeartbeatRequest(run_id=running.id, lease_id=lease, progress=0.2))
    assert beat.cancel_requested
    acknowledged = worker_stub.FailRun(
        worker_pb2.FailRunRequest(run_id=running.id, lease_id=lease, retryable=False)
    ).run
    assert acknowledged.state == run_pb2.RUN_STATE_CANCELED


def test_retry_run_creates_a_new_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", STATIC, default_parameters=None)
    run = enqueue(run_stub, "regions", "eu")
    expect_error(
        run_stub.RetryRun, run_pb2.RetryRunRequest(run_id=run.id), grpc.StatusCode.FAILED_PRECONDITION
    )
    lease = claim(worker_stub).lease_id
    worker_stub.FailRun(worker_pb2.FailRunRequest(run_id=run.id, lease_id=lease, retryable=False))
    retry = run_stub.RetryRun(run_pb2.RetryRunRequest(run_id=run.id)).run
    assert retry.id != run.id and retry.partition_key == "eu"
    assert retry.trigger.kind == run_pb2.TRIGGER_KIND_RETRY and retry.trigger.source_id == run.id


def test_parameters_merge_over_defaults(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    wf = workflow_pb2.Workflow(slug="p", produces=[workflow_pb2.AssetDeclaration(asset_id="p/out")])
    wf.default_parameters.update({"region": "eu", "limit": 10})
    workflow_stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=wf))
    request = run_pb2.EnqueueRunRequest(workflow_slug="p")
    request.parameters.update({"limit": 20})
    run = run_stub.EnqueueRun(request).run
    assert dict(run.parameters) == {"region": "eu", "limit": 20}
    assert dict(run.requested_parameters) == {"limit": 20}


def test_max_concurrent_runs_is_enforced_at_claim(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "capped", STATIC, max_concurrent_runs=1)
    enqueue(run_stub, "capped", "eu")
    enqueue(run_stub, "capped", "us")
    first = claim(worker_stub)
    assert first.HasField("run")
    assert not claim(worker_stub).HasField("run")
    worker_stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=first.run.id, lease_id=first.lease_id))
    assert claim(worker_stub).HasField("run")


def test_long_poll_is_woken_by_an_enqueue(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "plain")
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(claim, worker_stub, "plain", wait=20)
        time.sleep(0.5)
        run = enqueue(run_stub, "plain")
        claimed = pending.result(timeout=15)
    assert claimed.run.id == run.id
    assert time.monotonic() - started < 5


def test_long_poll_returns_empty_before_the_deadline(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, worker_stub: worker_pb2_grpc.WorkerServiceStub
) -> None:
    started = time.monotonic()
    response = worker_stub.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", wait=seconds(30)), timeout=3)
    assert not response.HasField("run")
    assert time.monotonic() - started < 3


def test_two_workers_never_share_a_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    server: RunningServer,
) -> None:
    register(
        workflow_stub,
        "many",
        partitions_pb2.PartitionsDefinition(
            static=partitions_pb2.StaticPartitions(keys=[f"k{i}" for i in range(200)])
        ),
    )
    for i in range(200):
        enqueue(run_stub, "many", f"k{i}")
    claimed: list[str] = []
    lock = threading.Lock()

    def work(worker_id: str) -> None:
        stub = worker_pb2_grpc.WorkerServiceStub(server.new_channel())
        while True:
            response = stub.ClaimRun(worker_pb2.ClaimRunRequest(worker_id=worker_id))
            if not response.HasField("run"):
                return
            with lock:
                claimed.append(response.run.id)
            stub.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=response.run.id, lease_id=response.lease_id)
            )

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(work, ["w1", "w2"]))
    assert len(claimed) == 200 and len(set(claimed)) == 200
    states = run_stub.ListRuns(run_pb2.ListRunsRequest(states=[run_pb2.RUN_STATE_SUCCEEDED], page_size=1000))
    assert states.total_size == 200


def test_list_runs_filters_and_pages(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    register(workflow_stub, "regions", STATIC)
    register(workflow_stub, "plain")
    eu = enqueue(run_stub, "regions", "eu", labels={"team": "x"})
    us = enqueue(run_stub, "regions", "us")
    plain = enqueue(run_stub, "plain")
    everything = run_stub.ListRuns(run_pb2.ListRunsRequest())
    assert [r.id for r in everything.runs] == [plain.id, us.id, eu.id]  # newest first
    assert everything.head_sequence >= 3
    assert [
        r.id
        for r in run_stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug="regions", partition_key="us")).runs
    ] == [us.id]
    assert [r.id for r in run_stub.ListRuns(run_pb2.ListRunsRequest(labels={"team": "x"})).runs] == [eu.id]
    first = run_stub.ListRuns(run_pb2.ListRunsRequest(page_size=2))
    second = run_stub.ListRuns(run_pb2.ListRunsRequest(page_size=2, page_token=first.next_page_token))
    assert [r.id for r in (*first.runs, *second.runs)] == [plain.id, us.id, eu.id]
    assert not second.next_page_token
    expect_error(
        run_stub.ListRuns,
        run_pb2.ListRunsRequest(workflow_slug="plain", page_token=first.next_page_token),
        INVALID,
    )


@pytest.mark.postgres
def test_concurrent_identical_enqueues_across_two_servers_create_one_run(
    database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("two servers share one database only on PostgreSQL")
    first = start_server(database_url, log_dir=tmp_path / "a")
    second = start_server(database_url, log_dir=tmp_path / "b")
    try:
        register(first.stub(workflow_pb2_grpc.WorkflowServiceStub), "regions", STATIC)
        stubs = [first.stub(run_pb2_grpc.RunServiceStub), second.stub(run_pb2_grpc.RunServiceStub)]

        def attempt(index: int) -> str:
            try:
                return (
                    stubs[index % 2]
                    .EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="eu"))
                    .run.id
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
                return ""

        with ThreadPoolExecutor(20) as pool:
            created = [run_id for run_id in pool.map(attempt, range(20)) if run_id]
        assert len(created) == 1
        assert stubs[0].ListRuns(run_pb2.ListRunsRequest()).total_size == 1
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


def test_materialized_events_come_before_succeeded(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", STATIC)
    run = enqueue(run_stub, "regions", "eu")
    claimed = claim(worker_stub)
    worker_stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=claimed.lease_id))
    seen = []
    for response in run_stub.WatchRuns(run_pb2.WatchRunsRequest(run_id=run.id), timeout=10):
        seen.append(response.event.type)
        if response.event.type == run_pb2.RUN_EVENT_TYPE_SUCCEEDED:
            break
    assert seen.index(run_pb2.RUN_EVENT_TYPE_MATERIALIZED) < seen.index(run_pb2.RUN_EVENT_TYPE_SUCCEEDED)
