"""Ranged runs through the real server: EnqueueRun with a range or a key list, validation,
in-flight overlap (refused, or adopted when identical), per-key completion, FailRun, WatchRuns
and ListPartitions under every covered key, and backfills split into ranged runs whose failed
keys RetryBackfill regroups."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from partita.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    backfill_pb2,
    backfill_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.api.test_backfills import ALL, create, partitions, static, wait_for_state
from tests.api.test_runs import DAILY, claim, enqueue, register
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
K = backfill_pb2.BackfillPartitionState
P = asset_pb2.PartitionStatus


def ranged_policy(max_keys: int) -> workflow_pb2.BackfillPolicy:
    return workflow_pb2.BackfillPolicy(max_keys_per_run=max_keys)


def span(start: str, end: str) -> partitions_pb2.PartitionRange:
    return partitions_pb2.PartitionRange(start_key=start, end_key=end)


def statuses(stub: asset_pb2_grpc.AssetServiceStub, asset_id: str) -> dict[str, tuple[int, str]]:
    """Touched keys -> (status, latest run id)."""
    page = stub.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id=asset_id, page_size=1000))
    return {
        p.partition_key: (p.status, p.latest_run.id)
        for p in page.partitions
        if p.status != asset_pb2.PARTITION_STATUS_MISSING
    }


def result(asset_id: str, *keys: str) -> list[asset_pb2.ResultAsset]:
    return [asset_pb2.ResultAsset(asset_id=asset_id, partition_key=key) for key in keys]


def test_ranged_runs_validate_dedupe_complete_and_show_under_each_key(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
) -> None:
    register(workflow_stub, "days", DAILY, backfill_policy=ranged_policy(10))
    register(workflow_stub, "per-key", DAILY)
    register(
        workflow_stub,
        "found",
        partitions_pb2.PartitionsDefinition(dynamic=partitions_pb2.DynamicPartitions(key_pattern="c-[0-9]+")),
        backfill_policy=ranged_policy(0),
    )
    enqueue_run = run_stub.EnqueueRun

    def request(slug: str = "days", **fields: object) -> run_pb2.EnqueueRunRequest:
        return run_pb2.EnqueueRunRequest(workflow_slug=slug, **fields)  # type: ignore[arg-type]

    # Validation: precise fields, nothing written.
    bad = [
        (request("per-key", partition_range=span("2024-01-01", "2024-01-02")), ["partition_range"]),
        (
            request(partition_key="2024-01-01", partition_range=span("2024-01-01", "2024-01-02")),
            ["partition_key"],
        ),
        (request(partition_range=span("2024-01-05", "2024-01-01")), ["partition_range.end_key"]),
        (
            request(partition_range=span("2023-12-31", "2024-01-01x")),
            ["partition_range.start_key", "partition_range.end_key"],
        ),
        (request(partition_range=span("2024-01-01", "2024-01-20")), ["partition_range"]),
        (request(partition_keys=["2024-01-01", "2024-01-02"]), ["partition_keys"]),
        (request("found", partition_range=span("c-1", "c-2")), ["partition_range"]),
        (request("found", partition_keys=["c-1", "nope", "c-1"]), ["partition_keys[1]", "partition_keys[2]"]),
    ]
    for wrong, fields in bad:
        failure = expect_error(enqueue_run, wrong, INVALID)
        assert sorted(failure.fields) == sorted(fields), (wrong, failure)
    assert run_stub.ListRuns(run_pb2.ListRunsRequest()).total_size == 0
    negative = workflow_pb2.Workflow(
        slug="neg",
        produces=[workflow_pb2.AssetDeclaration(asset_id="neg/out", partitioning=DAILY)],
        backfill_policy=ranged_policy(-1),
    )
    failure = expect_error(
        workflow_stub.RegisterWorkflow, workflow_pb2.RegisterWorkflowRequest(workflow=negative), INVALID
    )
    assert failure.fields == ["workflow.backfill_policy.max_keys_per_run"]

    # A range: partition_key '', the range on the run; overlaps are refused, identical adopted.
    first = enqueue_run(request(partition_range=span("2024-01-01", "2024-01-05"))).run
    assert (first.partition_key, first.partition_range.start_key, first.partition_range.end_key) == (
        "",
        "2024-01-01",
        "2024-01-05",
    )
    use_existing = run_pb2.CONFLICT_POLICY_USE_EXISTING
    again = enqueue_run(
        request(partition_range=span("2024-01-01", "2024-01-05"), on_conflict=use_existing)
    ).run
    assert again.id == first.id
    for overlapping in (
        request(partition_range=span("2024-01-03", "2024-01-07"), on_conflict=use_existing),
        request(partition_range=span("2024-01-02", "2024-01-03")),
        request(partition_key="2024-01-04", on_conflict=use_existing),
    ):
        failure = expect_error(enqueue_run, overlapping, grpc.StatusCode.ALREADY_EXISTS)
        assert failure.reason == "RUN_IN_FLIGHT" and failure.info is not None
        assert failure.info.metadata["run_id"] == first.id
    beside = enqueue(run_stub, "days", "2024-01-06")
    assert not beside.HasField("partition_range")
    run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=beside.id))
    listed = enqueue_run(request("found", partition_keys=["c-2", "c-1"])).run
    assert list(listed.partition_keys) == ["c-2", "c-1"]  # registry order: c-2 was registered first

    # ListPartitions and WatchRuns show the ranged run under every key it covers.
    shown = statuses(asset_stub, "days/out")
    for day in range(1, 6):
        assert shown[f"2024-01-0{day}"] == (P.PARTITION_STATUS_IN_PROGRESS, first.id)
    watch = run_stub.WatchRuns(run_pb2.WatchRunsRequest(partition_keys=["2024-01-03"]), timeout=10)
    event = next(iter(watch)).event
    watch.cancel()
    assert (event.run_id, event.type) == (first.id, run_pb2.RUN_EVENT_TYPE_QUEUED)

    # CompleteRun accounts for every key: reported, failed, or all_keys_succeeded.
    lease = claim(worker_stub, "days")
    assert lease.run.id == first.id and lease.run.partition_range.end_key == "2024-01-05"

    def complete(**fields: object) -> worker_pb2.CompleteRunRequest:
        return worker_pb2.CompleteRunRequest(run_id=first.id, lease_id=lease.lease_id, **fields)  # type: ignore[arg-type]

    failure = expect_error(
        worker_stub.CompleteRun, complete(assets=result("days/out", "2024-01-01")), INVALID
    )
    assert failure.fields == ["assets"] and "'2024-01-02'" in failure.message
    failure = expect_error(
        worker_stub.CompleteRun,
        complete(failed_partition_keys=["2024-01-09", "2024-01-02", "2024-01-02"], all_keys_succeeded=True),
        INVALID,
    )
    assert sorted(failure.fields) == [
        "all_keys_succeeded",
        "failed_partition_keys[0]",
        "failed_partition_keys[2]",
    ]
    done = worker_stub.CompleteRun(
        complete(
            assets=result("days/out", "2024-01-01", "2024-01-03", "2024-01-05"),
            failed_partition_keys=["2024-01-02", "2024-01-04"],
        )
    )
    assert sorted(m.partition_key for m in done.materializations) == [
        "2024-01-01",
        "2024-01-03",
        "2024-01-05",
    ]
    assert done.materialization_count == 3
    ended = run_stub.GetRun(run_pb2.GetRunRequest(run_id=first.id)).run
    assert ended.state == run_pb2.RUN_STATE_FAILED and "2 of 5 keys failed" in ended.error_message
    shown = statuses(asset_stub, "days/out")
    assert {key for key, (status, _) in shown.items() if status == P.PARTITION_STATUS_FAILED} == {
        "2024-01-02",
        "2024-01-04",
    }
    assert {key for key, (status, _) in shown.items() if status == P.PARTITION_STATUS_MATERIALIZED} == {
        "2024-01-01",
        "2024-01-03",
        "2024-01-05",
    }

    # all_keys_succeeded: artifact-less materializations of every unreported key.
    second = enqueue_run(request(partition_range=span("2024-01-10", "2024-01-12"))).run
    lease = claim(worker_stub, "days")
    assert lease.run.id == second.id
    done = worker_stub.CompleteRun(
        worker_pb2.CompleteRunRequest(run_id=second.id, lease_id=lease.lease_id, all_keys_succeeded=True)
    )
    assert [m.partition_key for m in done.materializations] == ["2024-01-10", "2024-01-11", "2024-01-12"]
    assert run_stub.GetRun(run_pb2.GetRunRequest(run_id=second.id)).run.state == run_pb2.RUN_STATE_SUCCEEDED

    # FailRun of a ranged run fails every key it covers; then the keys are free again.
    third = enqueue_run(request(partition_range=span("2024-01-20", "2024-01-22"))).run
    lease = claim(worker_stub, "days")
    worker_stub.FailRun(
        worker_pb2.FailRunRequest(
            run_id=third.id, lease_id=lease.lease_id, error_message="boom", retryable=False
        )
    )
    shown = statuses(asset_stub, "days/out")
    assert [shown[f"2024-01-2{day}"] for day in range(3)] == [(P.PARTITION_STATUS_FAILED, third.id)] * 3
    single = enqueue(run_stub, "days", "2024-01-21")
    assert single.partition_key == "2024-01-21"

    # ListRuns by key finds the runs of that key and the ranged runs covering it, newest first.
    def by_key(key: str, **fields: object) -> run_pb2.ListRunsResponse:
        return run_stub.ListRuns(run_pb2.ListRunsRequest(partition_key=key, **fields))  # type: ignore[arg-type]

    found = by_key("2024-01-21")
    assert [run.id for run in found.runs] == [single.id, third.id] and found.total_size == 2
    page = by_key("2024-01-21", workflow_slug="days", page_size=1)
    assert [run.id for run in page.runs] == [single.id] and page.total_size == 2
    rest = by_key("2024-01-21", workflow_slug="days", page_size=1, page_token=page.next_page_token)
    assert [run.id for run in rest.runs] == [third.id] and not rest.next_page_token
    assert [run.id for run in by_key("2024-01-03").runs] == [first.id]
    assert [run.id for run in by_key("c-1", states=[run_pb2.RUN_STATE_QUEUED]).runs] == [listed.id]
    assert by_key("2024-01-03", workflow_slug="per-key").total_size == 0
    assert by_key("2024-01-15").total_size == 0


def drain(
    worker_stub: worker_pb2_grpc.WorkerServiceStub, slug: str, failing: set[str], key_lists: list[list[str]]
) -> None:
    """Claims and completes runs until none comes, failing the keys in `failing`."""
    while True:
        lease = claim(worker_stub, slug, wait=2)
        if not lease.HasField("run"):
            return
        run = lease.run
        covered = list(run.partition_keys)
        if run.HasField("partition_range"):
            first, last = int(run.partition_range.start_key[1:]), int(run.partition_range.end_key[1:])
            covered = [f"k{i:03d}" for i in range(first, last + 1)]
        covered = covered or [run.partition_key]
        key_lists.append(covered)
        failed = [key for key in covered if key in failing]
        request = worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=lease.lease_id)
        if failed:
            request.failed_partition_keys.extend(failed)
            request.assets.extend(result(f"{slug}/out", *(key for key in covered if key not in failing)))
        else:
            request.all_keys_succeeded = True
        worker_stub.CompleteRun(request)


def test_backfill_splits_into_ranged_runs_and_retry_regroups_failed_keys(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    backfill_stub: backfill_pb2_grpc.BackfillServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
) -> None:
    register(workflow_stub, "big", static(1000), backfill_policy=ranged_policy(100))
    backfill = create(backfill_stub, "big", ALL, max_concurrent_runs=4)
    failing = {"k005", "k006", "k007", "k500", "k999"}
    key_lists: list[list[str]] = []
    drain(worker_stub, "big", failing, key_lists)
    done = wait_for_state(backfill_stub, backfill.id, backfill_pb2.BACKFILL_STATE_COMPLETED_WITH_FAILURES)
    assert len(key_lists) == 10 and all(len(keys) == 100 for keys in key_lists)
    assert (done.counts.succeeded, done.counts.failed) == (995, 5)
    assert {
        p.partition_key for p in partitions(backfill_stub, backfill.id, K.BACKFILL_PARTITION_STATE_FAILED)
    } == (failing)
    failed_states = {
        key
        for key, (status, _) in statuses(asset_stub, "big/out").items()
        if status == P.PARTITION_STATUS_FAILED
    }
    assert failed_states == failing

    # RetryBackfill: the failed keys run again in contiguous groups.
    backfill_stub.RetryBackfill(backfill_pb2.RetryBackfillRequest(backfill_id=backfill.id))
    key_lists.clear()
    drain(worker_stub, "big", set(), key_lists)
    wait_for_state(backfill_stub, backfill.id, backfill_pb2.BACKFILL_STATE_COMPLETED)
    assert sorted(key_lists) == [["k005", "k006", "k007"], ["k500"], ["k999"]]
    assert not any(
        status != P.PARTITION_STATUS_MATERIALIZED for status, _ in statuses(asset_stub, "big/out").values()
    )


def test_backfill_groups_by_the_definition_when_it_changed_after_planning(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    backfill_stub: backfill_pb2_grpc.BackfillServiceStub,
) -> None:
    def keyed(keys: list[str]) -> partitions_pb2.PartitionsDefinition:
        return partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=keys))

    keys = [f"k{i:03d}" for i in range(10)]
    register(workflow_stub, "moved", keyed(keys), backfill_policy=ranged_policy(5))
    backfill = create(backfill_stub, "moved", ALL, max_concurrent_runs=1)
    first = claim(worker_stub, "moved", wait=2)
    assert (first.run.partition_range.start_key, first.run.partition_range.end_key) == ("k000", "k004")
    # k007 and k008 trade places: the plan's k005..k009 are no longer one range of the definition,
    # though the range k005..k009 still holds five keys.
    register(
        workflow_stub, "moved", keyed([*keys[:7], "k008", "k007", "k009"]), backfill_policy=ranged_policy(5)
    )
    worker_stub.CompleteRun(
        worker_pb2.CompleteRunRequest(run_id=first.run.id, lease_id=first.lease_id, all_keys_succeeded=True)
    )
    runs: list[tuple[str, str]] = []
    while (lease := claim(worker_stub, "moved", wait=2)).HasField("run"):
        bounds = lease.run.partition_range
        runs.append(
            (bounds.start_key, bounds.end_key) if bounds.start_key else (lease.run.partition_key,) * 2
        )
        worker_stub.CompleteRun(
            worker_pb2.CompleteRunRequest(
                run_id=lease.run.id, lease_id=lease.lease_id, all_keys_succeeded=True
            )
        )
    assert runs == [("k005", "k006"), ("k007", "k007"), ("k008", "k008"), ("k009", "k009")]
    assert (
        wait_for_state(backfill_stub, backfill.id, backfill_pb2.BACKFILL_STATE_COMPLETED).counts.succeeded
        == 10
    )


def test_a_whole_selection_policy_runs_a_backfill_as_one_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    backfill_stub: backfill_pb2_grpc.BackfillServiceStub,
) -> None:
    register(workflow_stub, "whole", static(250), backfill_policy=ranged_policy(0))
    backfill = create(backfill_stub, "whole", ALL)
    key_lists: list[list[str]] = []
    drain(worker_stub, "whole", set(), key_lists)
    assert key_lists == [[f"k{i:03d}" for i in range(250)]]
    assert (
        wait_for_state(backfill_stub, backfill.id, backfill_pb2.BACKFILL_STATE_COMPLETED).counts.succeeded
        == 250
    )


def test_completing_a_run_of_more_than_10000_keys_lists_the_first_10000(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
) -> None:
    """A whole-selection run records a materialization per key; listing a million of them would
    overflow any message, after the run had already succeeded."""
    hourly = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2020-01-01"
        )
    )
    register(workflow_stub, "hours", hourly, backfill_policy=ranged_policy(0))
    last = "2021-03-01-01:00"  # hour 10,202 (2020 has 366 days)
    run_stub.EnqueueRun(
        run_pb2.EnqueueRunRequest(workflow_slug="hours", partition_range=span("2020-01-01-00:00", last))
    )
    leased = claim(worker_stub, "hours")
    done = worker_stub.CompleteRun(
        worker_pb2.CompleteRunRequest(run_id=leased.run.id, lease_id=leased.lease_id, all_keys_succeeded=True)
    )
    assert done.materialization_count == 10_202
    assert len(done.materializations) == 10_000
    assert done.materializations[0].partition_key == "2020-01-01-00:00"
    newest = asset_stub.GetLatestMaterialization(
        asset_pb2.GetLatestMaterializationRequest(asset_id="hours/out", partition_key=last)
    )
    assert newest.materialization.run_id == leased.run.id


def test_overlapping_ranges_enqueued_at_once_start_one_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    """The in-flight claim is atomic: of eight overlapping ranges sent together, one is queued and
    the others are refused (RUN_IN_FLIGHT), never two at once."""
    register(workflow_stub, "race", DAILY, backfill_policy=ranged_policy(0))
    starts = [f"2024-01-{day:02d}" for day in range(1, 9)]

    def enqueue_range(start: str) -> str:
        try:
            request = run_pb2.EnqueueRunRequest(
                workflow_slug="race", partition_range=span(start, "2024-01-20")
            )
            return run_stub.EnqueueRun(request, timeout=30).run.id
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
            return ""

    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        queued = [run_id for run_id in pool.map(enqueue_range, starts) if run_id]
    assert len(queued) == 1
    listed = run_stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug="race")).runs
    assert [run.id for run in listed] == queued
