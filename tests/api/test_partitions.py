"""Partition reads through the real server: status per key, counts, materializations, assets."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

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
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
S = asset_pb2.PartitionStatus


def static(*keys: str) -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=list(keys)))


def register(
    stub: workflow_pb2_grpc.WorkflowServiceStub,
    slug: str,
    partitioning: partitions_pb2.PartitionsDefinition | None,
    consumes: tuple[str, ...] = (),
    allow_change: bool = False,
) -> None:
    wf = workflow_pb2.Workflow(
        slug=slug,
        produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)],
        consumes=[workflow_pb2.AssetDependency(asset_id=asset_id) for asset_id in consumes],
        retry_policy=workflow_pb2.RetryPolicy(max_attempts=1),
    )
    stub.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(workflow=wf, allow_partitioning_change=allow_change)
    )


class Driver:
    """Enqueues runs and finishes them as a worker would."""

    def __init__(self, runs: run_pb2_grpc.RunServiceStub, workers: worker_pb2_grpc.WorkerServiceStub) -> None:
        self.runs = runs
        self.workers = workers

    def claim(self, slug: str, key: str) -> worker_pb2.ClaimRunResponse:
        self.runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug=slug, partition_key=key))
        claimed = self.workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=[slug]))
        assert claimed.run.partition_key == key
        return claimed

    def succeed(self, slug: str, key: str) -> None:
        claimed = self.claim(slug, key)
        self.workers.CompleteRun(
            worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
        )

    def fail(self, slug: str, key: str) -> None:
        claimed = self.claim(slug, key)
        self.workers.FailRun(
            worker_pb2.FailRunRequest(
                run_id=claimed.run.id, lease_id=claimed.lease_id, error_message="x", retryable=False
            )
        )


def statuses(
    stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, *filters: Any, **fields: Any
) -> list[tuple[str, int]]:
    result: list[tuple[str, int]] = []
    token = ""
    while True:
        page = stub.ListPartitions(
            asset_pb2.ListPartitionsRequest(
                asset_id=asset_id, statuses=list(filters), page_token=token, **fields
            )
        )
        result.extend((p.partition_key, p.status) for p in page.partitions)
        token = page.next_page_token
        if not token:
            return result


def counts(stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, **fields: Any) -> dict[int, int]:
    page = stub.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id=asset_id, page_size=1, **fields))  # type: ignore[arg-type]
    return {c.status: c.count for c in page.status_counts}


def test_static_statuses_counts_and_filters(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", static("us", "eu", "apac", "latam", "mea"))
    driver = Driver(run_stub, worker_stub)
    assert statuses(asset_stub, "regions/out") == [
        (k, S.PARTITION_STATUS_MISSING) for k in ("us", "eu", "apac", "latam", "mea")
    ]
    driver.succeed("regions", "eu")
    driver.fail("regions", "apac")
    run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="mea"))
    expected = [
        ("us", S.PARTITION_STATUS_MISSING),
        ("eu", S.PARTITION_STATUS_MATERIALIZED),
        ("apac", S.PARTITION_STATUS_FAILED),
        ("latam", S.PARTITION_STATUS_MISSING),
        ("mea", S.PARTITION_STATUS_IN_PROGRESS),
    ]
    assert statuses(asset_stub, "regions/out", page_size=2) == expected
    assert counts(asset_stub, "regions/out") == {
        S.PARTITION_STATUS_MISSING: 2,
        S.PARTITION_STATUS_MATERIALIZED: 1,
        S.PARTITION_STATUS_FAILED: 1,
        S.PARTITION_STATUS_IN_PROGRESS: 1,
    }
    assert statuses(asset_stub, "regions/out", S.PARTITION_STATUS_MISSING, page_size=1) == [
        ("us", S.PARTITION_STATUS_MISSING),
        ("latam", S.PARTITION_STATUS_MISSING),
    ]
    assert statuses(
        asset_stub, "regions/out", S.PARTITION_STATUS_FAILED, S.PARTITION_STATUS_IN_PROGRESS, page_size=1
    ) == [
        ("apac", S.PARTITION_STATUS_FAILED),
        ("mea", S.PARTITION_STATUS_IN_PROGRESS),
    ]
    page = asset_stub.ListPartitions(
        asset_pb2.ListPartitionsRequest(asset_id="regions/out", statuses=[S.PARTITION_STATUS_MISSING])
    )
    assert page.total_size == 2
    eu = next(
        p
        for p in asset_stub.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id="regions/out")).partitions
        if p.partition_key == "eu"
    )
    assert eu.latest_run.state == run_pb2.RUN_STATE_SUCCEEDED
    assert eu.latest_materialization.partition_key == "eu"
    expect_error(
        asset_stub.ListPartitions,
        asset_pb2.ListPartitionsRequest(asset_id="regions/out", statuses=[S.PARTITION_STATUS_UNSPECIFIED]),
        INVALID,
    )


def test_recency_decides_failed_or_materialized(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", static("us", "eu"))
    driver = Driver(run_stub, worker_stub)
    driver.succeed("regions", "us")
    driver.fail("regions", "us")
    assert statuses(asset_stub, "regions/out")[0] == ("us", S.PARTITION_STATUS_FAILED)
    asset_stub.ReportMaterializations(
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="regions/out", partition_key="us")]
        )
    )
    assert statuses(asset_stub, "regions/out") == [
        ("us", S.PARTITION_STATUS_MATERIALIZED),
        ("eu", S.PARTITION_STATUS_MISSING),
    ]
    # A newer run supersedes; the other key is untouched.
    run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="regions", partition_key="us"))
    assert statuses(asset_stub, "regions/out") == [
        ("us", S.PARTITION_STATUS_IN_PROGRESS),
        ("eu", S.PARTITION_STATUS_MISSING),
    ]


def test_time_window_counts_include_keys_never_run(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    daily = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01"
        )
    )
    register(workflow_stub, "daily", daily)
    Driver(run_stub, worker_stub).succeed("daily", "2024-01-03")
    as_of = Timestamp()
    as_of.FromJsonString("2024-01-11T00:00:00Z")  # ten windows have closed
    assert counts(asset_stub, "daily/out", as_of=as_of) == {
        S.PARTITION_STATUS_MISSING: 9,
        S.PARTITION_STATUS_MATERIALIZED: 1,
        S.PARTITION_STATUS_FAILED: 0,
        S.PARTITION_STATUS_IN_PROGRESS: 0,
    }
    listed = statuses(asset_stub, "daily/out", as_of=as_of, page_size=3)
    assert [k for k, _ in listed] == [f"2024-01-{d:02d}" for d in range(1, 11)]
    assert listed[2] == ("2024-01-03", S.PARTITION_STATUS_MATERIALIZED)
    missing = statuses(asset_stub, "daily/out", S.PARTITION_STATUS_MISSING, as_of=as_of, page_size=4)
    assert len(missing) == 9 and "2024-01-03" not in dict(missing)
    page = asset_stub.ListPartitions(
        asset_pb2.ListPartitionsRequest(asset_id="daily/out", as_of=as_of, page_size=1)
    )
    assert page.partitions[0].window_start.ToJsonString() == "2024-01-01T00:00:00Z"
    assert page.partitions[0].window_end.ToJsonString() == "2024-01-02T00:00:00Z"


def test_dynamic_and_unpartitioned_assets(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    dynamic = partitions_pb2.PartitionsDefinition(
        dynamic=partitions_pb2.DynamicPartitions(initial_keys=["a", "b", "c"])
    )
    register(workflow_stub, "files", dynamic)
    register(workflow_stub, "plain", None)
    driver = Driver(run_stub, worker_stub)
    driver.succeed("files", "b")
    asset_stub.DeleteDynamicPartitions(
        asset_pb2.DeleteDynamicPartitionsRequest(asset_id="files/out", partition_keys=["c"])
    )
    assert statuses(asset_stub, "files/out", page_size=1) == [
        ("a", S.PARTITION_STATUS_MISSING),
        ("b", S.PARTITION_STATUS_MATERIALIZED),
    ]
    assert statuses(asset_stub, "files/out", S.PARTITION_STATUS_MATERIALIZED) == [
        ("b", S.PARTITION_STATUS_MATERIALIZED)
    ]
    assert counts(asset_stub, "files/out")[S.PARTITION_STATUS_MISSING] == 1
    assert statuses(asset_stub, "plain/out") == [("", S.PARTITION_STATUS_MISSING)]
    driver.succeed("plain", "")
    assert statuses(asset_stub, "plain/out") == [("", S.PARTITION_STATUS_MATERIALIZED)]
    assert (
        asset_stub.ListPartitionKeys(asset_pb2.ListPartitionKeysRequest(asset_id="plain/out")).total_size == 0
    )


def test_definition_change_drops_out_of_set_keys(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", static("a", "b", "c"))
    driver = Driver(run_stub, worker_stub)
    driver.succeed("regions", "a")
    driver.succeed("regions", "c")
    register(workflow_stub, "regions", static("c", "d", "b"), allow_change=True)
    assert statuses(asset_stub, "regions/out") == [
        ("c", S.PARTITION_STATUS_MATERIALIZED),
        ("d", S.PARTITION_STATUS_MISSING),
        ("b", S.PARTITION_STATUS_MISSING),
    ]
    assert counts(asset_stub, "regions/out")[S.PARTITION_STATUS_MATERIALIZED] == 1
    # History of the dropped key stays readable.
    latest = asset_stub.GetLatestMaterialization(
        asset_pb2.GetLatestMaterializationRequest(asset_id="regions/out", partition_key="a")
    )
    assert latest.materialization.partition_key == "a"


def test_materializations_latest_list_and_report(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", static("us", "eu"))
    expect_error(
        asset_stub.GetLatestMaterialization,
        asset_pb2.GetLatestMaterializationRequest(asset_id="regions/out", partition_key="us"),
        grpc.StatusCode.NOT_FOUND,
    )
    Driver(run_stub, worker_stub).succeed("regions", "us")
    report = asset_pb2.ReportMaterializationsRequest(
        materializations=[
            asset_pb2.ResultAsset(
                asset_id="regions/out",
                partition_key="us",
                artifacts=[
                    asset_pb2.Artifact(file_name="us.csv", storage_url="file:///data/us.csv", size_bytes=5)
                ],
            ),
            asset_pb2.ResultAsset(asset_id="regions/out", partition_key="eu"),
        ],
        request_id="report-1",
    )
    reported = asset_stub.ReportMaterializations(report)
    assert [(m.partition_key, m.run_id) for m in reported.materializations] == [("us", ""), ("eu", "")]
    assert asset_stub.ReportMaterializations(report) == reported
    latest = asset_stub.GetLatestMaterialization(
        asset_pb2.GetLatestMaterializationRequest(asset_id="regions/out", partition_key="us")
    )
    assert latest.materialization.id == reported.materializations[0].id
    history = asset_stub.ListMaterializations(
        asset_pb2.ListMaterializationsRequest(asset_id="regions/out", partition_key="us", page_size=1)
    )
    assert history.materializations[0].id == reported.materializations[0].id and history.next_page_token
    older = asset_stub.ListMaterializations(
        asset_pb2.ListMaterializationsRequest(
            asset_id="regions/out", partition_key="us", page_token=history.next_page_token
        )
    )
    assert [m.run_id != "" for m in older.materializations] == [True]
    # All or nothing: one bad key rejects the whole report.
    bad = asset_pb2.ReportMaterializationsRequest(
        materializations=[
            asset_pb2.ResultAsset(asset_id="regions/out", partition_key="eu"),
            asset_pb2.ResultAsset(asset_id="regions/out", partition_key="mars"),
        ]
    )
    assert expect_error(asset_stub.ReportMaterializations, bad, INVALID).fields == [
        "materializations[1].partition_key"
    ]
    everything = asset_stub.ListMaterializations(
        asset_pb2.ListMaterializationsRequest(asset_id="regions/out")
    )
    assert len(everything.materializations) == 3
    too_many = asset_pb2.ReportMaterializationsRequest(
        materializations=[asset_pb2.ResultAsset(asset_id="regions/out", partition_key="us")] * 1001
    )
    expect_error(asset_stub.ReportMaterializations, too_many, INVALID)


def test_get_and_list_assets(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, "regions", static("us", "eu"))
    register(workflow_stub, "report", None, consumes=("regions/out",))
    Driver(run_stub, worker_stub).succeed("regions", "eu")
    asset = asset_stub.GetAsset(asset_pb2.GetAssetRequest(asset_id="regions/out")).asset
    assert asset.producer_workflow_slug == "regions"
    assert list(asset.partitioning.static.keys) == ["us", "eu"]
    assert {c.status: c.count for c in asset.status_counts}[S.PARTITION_STATUS_MATERIALIZED] == 1
    assert asset.latest_materialization.partition_key == "eu"
    assert [d.asset_id for d in asset.downstream] == ["report/out"]
    report = asset_stub.GetAsset(asset_pb2.GetAssetRequest(asset_id="report/out")).asset
    assert [u.asset_id for u in report.upstream] == ["regions/out"]
    listed = asset_stub.ListAssets(asset_pb2.ListAssetsRequest(page_size=1))
    assert [a.asset_id for a in listed.assets] == ["regions/out"] and listed.total_size == 2
    rest = asset_stub.ListAssets(asset_pb2.ListAssetsRequest(page_size=1, page_token=listed.next_page_token))
    assert [a.asset_id for a in rest.assets] == ["report/out"]
    expect_error(asset_stub.GetAsset, asset_pb2.GetAssetRequest(asset_id="ghost"), grpc.StatusCode.NOT_FOUND)


def test_missing_pages_skip_long_materialized_runs(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, asset_stub: asset_pb2_grpc.AssetServiceStub
) -> None:
    keys = [f"k{i:04d}" for i in range(3000)]
    register(workflow_stub, "many", static(*keys))
    missing = {keys[i] for i in (0, 1, 700, 701, 702, 1500, 2047, 2048, 2999)}
    done = [key for key in keys if key not in missing]
    for start in range(0, len(done), 1000):
        asset_stub.ReportMaterializations(
            asset_pb2.ReportMaterializationsRequest(
                materializations=[
                    asset_pb2.ResultAsset(asset_id="many/out", partition_key=k)
                    for k in done[start : start + 1000]
                ]
            )
        )
    listed = statuses(asset_stub, "many/out", S.PARTITION_STATUS_MISSING, page_size=2)
    assert [key for key, _ in listed] == sorted(missing)
    assert counts(asset_stub, "many/out")[S.PARTITION_STATUS_MISSING] == len(missing)
