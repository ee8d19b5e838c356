"""Lineage and freshness through the real server: upstream slices of a key, inputs recorded at
claim, staleness as upstream data changes, overdue as time passes (`as_of`), held runs,
automation, and the registration checks (impossible mappings, timezones, cycles)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
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
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
S = asset_pb2.PartitionStatus
Mapping = partitions_pb2.PartitionMapping


def at(iso: str) -> Timestamp:
    value = Timestamp()
    value.FromJsonString(iso)
    return value


def hourly(start: str = "2024-01-01-00:00", timezone: str = "") -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start=start, timezone=timezone
        )
    )


def daily(
    start: str = "2024-01-01", timezone: str = "", end: str = ""
) -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start=start, timezone=timezone, end=end
        )
    )


def static(*keys: str) -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=list(keys)))


def reads(
    asset_id: str, mapping: partitions_pb2.PartitionMapping | None = None
) -> workflow_pb2.AssetDependency:
    return workflow_pb2.AssetDependency(asset_id=asset_id, partition_mapping=mapping)


def workflow(
    slug: str,
    partitioning: partitions_pb2.PartitionsDefinition | None,
    consumes: Sequence[workflow_pb2.AssetDependency] = (),
    **fields: Any,
) -> workflow_pb2.Workflow:
    freshness = fields.pop("freshness", None)
    return workflow_pb2.Workflow(
        slug=slug,
        produces=[
            workflow_pb2.AssetDeclaration(
                asset_id=f"{slug}/out", partitioning=partitioning, freshness_policy=freshness
            )
        ],
        consumes=list(consumes),
        retry_policy=workflow_pb2.RetryPolicy(max_attempts=1),
        **fields,
    )


def register(stub: workflow_pb2_grpc.WorkflowServiceStub, wf: workflow_pb2.Workflow) -> None:
    stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=wf))


def report(stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, keys: Sequence[str]) -> list[str]:
    """Reports the keys (in batches of 1,000); returns the materialization ids."""
    ids: list[str] = []
    for start in range(0, len(keys), 1000):
        answer = stub.ReportMaterializations(
            asset_pb2.ReportMaterializationsRequest(
                materializations=[
                    asset_pb2.ResultAsset(asset_id=asset_id, partition_key=k)
                    for k in keys[start : start + 1000]
                ]
            )
        )
        ids.extend(m.id for m in answer.materializations)
    return ids


def hours(day: str) -> list[str]:
    return [f"{day}-{hour:02d}:00" for hour in range(24)]


def listing(
    stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, **fields: Any
) -> list[asset_pb2.PartitionSummary]:
    result: list[asset_pb2.PartitionSummary] = []
    token = ""
    while True:
        page = stub.ListPartitions(
            asset_pb2.ListPartitionsRequest(asset_id=asset_id, page_token=token, **fields)
        )
        result.extend(page.partitions)
        token = page.next_page_token
        if not token:
            return result


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


class Worker:
    def __init__(self, runs: run_pb2_grpc.RunServiceStub, workers: worker_pb2_grpc.WorkerServiceStub) -> None:
        self.runs = runs
        self.workers = workers

    def claim(self, slug: str) -> worker_pb2.ClaimRunResponse:
        return self.workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=[slug]))

    def run(self, slug: str, key: str) -> tuple[worker_pb2.ClaimRunResponse, worker_pb2.CompleteRunResponse]:
        self.runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug=slug, partition_key=key))
        claimed = self.claim(slug)
        assert claimed.run.partition_key == key
        done = self.workers.CompleteRun(
            worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
        )
        return claimed, done


def test_daily_reads_24_hourly_keys_and_goes_stale(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, workflow("events", hourly()))
    register(workflow_stub, workflow("rollup", daily(), [reads("events/out")]))  # default: time window
    upstream = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="rollup/out", partition_key="2024-01-02")
    ).slices
    assert len(upstream) == 1
    (slice_,) = upstream
    assert list(slice_.partition_keys) == hours("2024-01-02") and slice_.partition_key_count == 24
    assert slice_.partition_mapping.WhichOneof("kind") == "time_window" and slice_.registered
    assert not slice_.materialized and len(slice_.missing_partition_keys) == 24
    down = asset_stub.GetDownstreamPartitions(
        asset_pb2.GetDownstreamPartitionsRequest(asset_id="events/out", partition_key="2024-01-02-13:00")
    ).slices
    assert [(d.asset_id, list(d.partition_keys), d.workflow_slug) for d in down] == [
        ("rollup/out", ["2024-01-02"], "rollup")
    ]

    as_of = at("2024-01-04T00:00:00Z")
    assert not any(p.stale for p in listing(asset_stub, "rollup/out", as_of=as_of))
    ids = report(asset_stub, "events/out", hours("2024-01-02"))
    # Never materialized, while its upstream has data: stale. Only the aligned day.
    page = asset_stub.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id="rollup/out", as_of=as_of))
    assert [(p.partition_key, p.stale) for p in page.partitions] == [
        ("2024-01-01", False),
        ("2024-01-02", True),
        ("2024-01-03", False),
    ]
    assert page.stale_count == 1
    detail = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="rollup/out", partition_key="2024-01-02", as_of=as_of)
    )
    assert detail.partition.stale and detail.upstream[0].materialized
    assert len(detail.upstream[0].newer_partition_keys) == 24
    assert any("never materialized" in note for note in detail.explanations)

    worker = Worker(run_stub, worker_stub)
    claimed, done = worker.run("rollup", "2024-01-02")
    assert [(i.asset_id, i.partition_key, i.materialization_id) for i in claimed.inputs] == [
        ("events/out", key, id_) for key, id_ in zip(hours("2024-01-02"), ids, strict=True)
    ]
    assert list(done.materializations[0].inputs) == list(claimed.inputs)
    latest = asset_stub.GetLatestMaterialization(
        asset_pb2.GetLatestMaterializationRequest(asset_id="rollup/out", partition_key="2024-01-02")
    ).materialization
    assert len(latest.inputs) == 24
    page = asset_stub.ListPartitions(asset_pb2.ListPartitionsRequest(asset_id="rollup/out", as_of=as_of))
    assert page.stale_count == 0 and not any(p.stale for p in page.partitions)

    # One upstream hour changes: the day is stale again and says which hour.
    report(asset_stub, "events/out", ["2024-01-02-05:00"])
    stale = listing(asset_stub, "rollup/out", as_of=as_of, stale_only=True)
    assert [p.partition_key for p in stale] == ["2024-01-02"]
    detail = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="rollup/out", partition_key="2024-01-02", as_of=as_of)
    )
    assert detail.partition.stale
    assert list(detail.upstream[0].newer_partition_keys) == ["2024-01-02-05:00"]
    assert any(
        "2024-01-02-05:00" in note and "after this partition read it" in note for note in detail.explanations
    )
    # A run claimed before an upstream change stays stale after it completes.
    run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="rollup", partition_key="2024-01-02"))
    claimed = worker.claim("rollup")
    report(asset_stub, "events/out", ["2024-01-02-06:00"])
    worker_stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id))
    detail = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="rollup/out", partition_key="2024-01-02", as_of=as_of)
    )
    assert detail.partition.stale
    assert list(detail.upstream[0].newer_partition_keys) == ["2024-01-02-06:00"]
    worker.run("rollup", "2024-01-02")
    assert (
        asset_stub.ListPartitions(
            asset_pb2.ListPartitionsRequest(asset_id="rollup/out", as_of=as_of, stale_only=True)
        ).total_size
        == 0
    )


def test_offsets_identity_static_and_last(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    previous = Mapping(time_window=partitions_pb2.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1))
    register(workflow_stub, workflow("prices", daily()))
    register(workflow_stub, workflow("returns", daily(), [reads("prices/out", previous)]))
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="returns/out", partition_key="2024-01-05")
    ).slices
    assert list(slice_.partition_keys) == ["2024-01-04"]
    (first,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="returns/out", partition_key="2024-01-01")
    ).slices
    assert list(first.partition_keys) == [] and first.partition_key_count == 0 and first.materialized
    (down,) = asset_stub.GetDownstreamPartitions(
        asset_pb2.GetDownstreamPartitionsRequest(asset_id="prices/out", partition_key="2024-01-04")
    ).slices
    assert list(down.partition_keys) == ["2024-01-05"]
    report(asset_stub, "prices/out", ["2024-01-04"])
    as_of = at("2024-01-10T00:00:00Z")
    assert [p.partition_key for p in listing(asset_stub, "returns/out", as_of=as_of, stale_only=True)] == [
        "2024-01-05"
    ]

    register(workflow_stub, workflow("regions", static("us", "eu", "apac")))
    register(
        workflow_stub,
        workflow(
            "region-report",
            static("eu", "apac", "latam"),
            [reads("regions/out", Mapping(identity=partitions_pb2.IdentityPartitionMapping()))],
        ),
    )
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="region-report/out", partition_key="eu")
    ).slices
    assert list(slice_.partition_keys) == ["eu"]
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="region-report/out", partition_key="latam")
    ).slices
    assert list(slice_.partition_keys) == []
    report(asset_stub, "regions/out", ["eu", "us"])
    stale = asset_stub.ListPartitions(
        asset_pb2.ListPartitionsRequest(asset_id="region-report/out", stale_only=True)
    )
    assert [p.partition_key for p in stale.partitions] == ["eu"] and stale.stale_count == 1

    # A static table: upstream key -> downstream keys.
    table = Mapping(
        static=partitions_pb2.StaticPartitionMapping(
            entries=[
                partitions_pb2.StaticPartitionMappingEntry(upstream_key="us", downstream_keys=["americas"]),
                partitions_pb2.StaticPartitionMappingEntry(
                    upstream_key="eu", downstream_keys=["emea", "world"]
                ),
            ]
        )
    )
    register(
        workflow_stub, workflow("zones", static("americas", "emea", "world"), [reads("regions/out", table)])
    )
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="zones/out", partition_key="world")
    ).slices
    assert list(slice_.partition_keys) == ["eu"] and slice_.materialized
    (down,) = asset_stub.GetDownstreamPartitions(
        asset_pb2.GetDownstreamPartitionsRequest(asset_id="regions/out", partition_key="eu")
    ).slices[-1:]
    assert down.asset_id == "zones/out" and list(down.partition_keys) == ["emea", "world"]
    first_page = asset_stub.GetDownstreamPartitions(
        asset_pb2.GetDownstreamPartitionsRequest(asset_id="regions/out", partition_key="eu", page_size=1)
    )
    second_page = asset_stub.GetDownstreamPartitions(
        asset_pb2.GetDownstreamPartitionsRequest(
            asset_id="regions/out", partition_key="eu", page_size=1, page_token=first_page.next_page_token
        )
    )
    assert [s.asset_id for s in (*first_page.slices, *second_page.slices)] == [
        "region-report/out",
        "zones/out",
    ]
    assert not second_page.next_page_token

    # last: an unpartitioned summary reads the newest daily key; which one depends on as_of.
    register(
        workflow_stub,
        workflow("latest", None, [reads("prices/out", Mapping(last=partitions_pb2.LastPartitionMapping()))]),
    )
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="latest/out", as_of=at("2024-01-05T12:00:00Z"))
    ).slices
    assert list(slice_.partition_keys) == ["2024-01-04"] and slice_.materialized
    (slice_,) = asset_stub.GetUpstreamPartitions(
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="latest/out", as_of=at("2024-01-06T12:00:00Z"))
    ).slices
    assert list(slice_.partition_keys) == ["2024-01-05"] and not slice_.materialized
    worker = Worker(run_stub, worker_stub)
    claimed, _ = worker.run("latest", "")
    # The server's clock is now: the newest key is yesterday's, which has no data.
    assert list(claimed.inputs) == []
    summary = asset_stub.GetPartition(asset_pb2.GetPartitionRequest(asset_id="latest/out")).partition
    assert not summary.stale
    # Data for the key that is newest as of 2024-01-05 makes the summary stale then, not now.
    report(asset_stub, "prices/out", ["2024-01-04"])
    old = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="latest/out", as_of=at("2024-01-05T12:00:00Z"))
    )
    assert old.partition.stale
    assert not asset_stub.GetPartition(asset_pb2.GetPartitionRequest(asset_id="latest/out")).partition.stale


def test_registration_rejects_impossible_mappings_timezones_and_cycles(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
) -> None:
    register(workflow_stub, workflow("utc", daily()))
    register(workflow_stub, workflow("regions", static("us", "eu")))
    register(workflow_stub, workflow("plain", None))

    def rejected(wf: workflow_pb2.Workflow, code: grpc.StatusCode = INVALID) -> Any:
        return expect_error(
            workflow_stub.RegisterWorkflow, workflow_pb2.RegisterWorkflowRequest(workflow=wf), code
        )

    failure = rejected(workflow("ny", daily(timezone="America/New_York"), [reads("utc/out")]))
    assert failure.fields == ["workflow.consumes[0].partition_mapping"] and "timezone" in failure.message
    explicit = Mapping(time_window=partitions_pb2.TimeWindowPartitionMapping())
    failure = rejected(workflow("ny", daily(timezone="America/New_York"), [reads("utc/out", explicit)]))
    assert failure.fields == ["workflow.consumes[0].partition_mapping.time_window"]
    register(
        workflow_stub,
        workflow(
            "ny",
            daily(timezone="America/New_York"),
            [reads("utc/out", Mapping(all=partitions_pb2.AllPartitionMapping()))],
        ),
    )

    failure = rejected(workflow("other", static("apac", "latam"), [reads("regions/out")]))
    assert "share no static key" in failure.message
    table = Mapping(
        static=partitions_pb2.StaticPartitionMapping(
            entries=[
                partitions_pb2.StaticPartitionMappingEntry(upstream_key="mars", downstream_keys=["x", "y"])
            ]
        )
    )
    failure = rejected(workflow("other", static("x"), [reads("regions/out", table)]))
    assert failure.fields == [
        "workflow.consumes[0].partition_mapping.static.entries[0].upstream_key",
        "workflow.consumes[0].partition_mapping.static.entries[0].downstream_keys[1]",
    ]
    failure = rejected(
        workflow(
            "other",
            daily(),
            [reads("plain/out", Mapping(identity=partitions_pb2.IdentityPartitionMapping()))],
        )
    )
    assert "unpartitioned" in failure.message
    failure = rejected(
        workflow(
            "other", None, [reads("regions/out", Mapping(identity=partitions_pb2.IdentityPartitionMapping()))]
        )
    )
    assert "unpartitioned" in failure.message
    backwards = Mapping(time_window=partitions_pb2.TimeWindowPartitionMapping(start_offset=1, end_offset=0))
    rejected(workflow("other", daily(), [reads("utc/out", backwards)]))
    failure = rejected(
        workflow(
            "other",
            daily(),
            freshness=workflow_pb2.FreshnessPolicy(
                maximum_lag=Duration(seconds=-1), deadline_cron="not a cron"
            ),
        )
    )
    assert set(failure.fields) == {
        "workflow.produces[0].freshness_policy.maximum_lag",
        "workflow.produces[0].freshness_policy.deadline_cron",
    }

    # Cycles across workflows, named in the message.
    register(workflow_stub, workflow("a", None, [reads("c/out")]))  # c is not registered yet
    register(workflow_stub, workflow("b", None, [reads("a/out")]))
    failure = rejected(workflow("c", None, [reads("b/out")]), PRECONDITION)
    assert failure.reason == "DEPENDENCY_CYCLE"
    assert "c → (c/out) → a → (a/out) → b → (b/out) → c" in failure.message
    register(workflow_stub, workflow("b", None, [reads("a/out"), reads("b2/out")]))  # unknown assets are fine
    register(workflow_stub, workflow("c", None))
    failure = rejected(workflow("a", None, [reads("c/out"), reads("b/out")]), PRECONDITION)
    assert "a → (a/out) → b → (b/out) → a" in failure.message

    # A later upstream registration must fit the mappings that read it.
    register(
        workflow_stub,
        workflow(
            "reader",
            static("us"),
            [reads("future/out", Mapping(identity=partitions_pb2.IdentityPartitionMapping()))],
        ),
    )
    failure = rejected(workflow("future", daily()), PRECONDITION)
    assert failure.reason == "PARTITION_MAPPING_MISMATCH" and "reader" in failure.message
    register(workflow_stub, workflow("future", static("us", "eu")))


def test_upstream_registered_later_resolves_at_read_time(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, asset_stub: asset_pb2_grpc.AssetServiceStub
) -> None:
    register(workflow_stub, workflow("rollup", daily(), [reads("events/out")]))
    as_of = at("2024-01-03T00:00:00Z")
    detail = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="rollup/out", partition_key="2024-01-01", as_of=as_of)
    )
    assert not detail.upstream[0].registered and not detail.upstream[0].materialized
    assert any("not registered" in note for note in detail.explanations)
    register(workflow_stub, workflow("events", hourly()))
    detail = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(asset_id="rollup/out", partition_key="2024-01-01", as_of=as_of)
    )
    assert detail.upstream[0].registered and detail.upstream[0].partition_key_count == 24
    assert [d.asset_id for d in detail.downstream] == []
    report(asset_stub, "events/out", ["2024-01-01-03:00"])
    assert (
        asset_stub.ListPartitions(
            asset_pb2.ListPartitionsRequest(asset_id="rollup/out", as_of=as_of, stale_only=True)
        ).stale_count
        == 1
    )
    # A new consumer of existing data starts with the right marks.
    register(workflow_stub, workflow("rollup2", daily(), [reads("events/out")]))
    assert [p.partition_key for p in listing(asset_stub, "rollup2/out", as_of=as_of, stale_only=True)] == [
        "2024-01-01"
    ]


def test_freshness_as_time_passes_and_as_upstream_changes(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
) -> None:
    policy = workflow_pb2.FreshnessPolicy(maximum_lag=Duration(seconds=6 * 3600))
    register(workflow_stub, workflow("sales", daily(end="2024-01-10"), freshness=policy))

    def overdue(iso: str) -> tuple[list[str], int]:
        page = listing(asset_stub, "sales/out", as_of=at(iso), overdue_only=True)
        count = asset_stub.ListPartitions(
            asset_pb2.ListPartitionsRequest(asset_id="sales/out", as_of=at(iso), page_size=1)
        ).overdue_count
        return [p.partition_key for p in page], count

    # 2024-01-01 closes at midnight on the 2nd and is due six hours later.
    assert overdue("2024-01-02T05:59:59Z") == ([], 0)
    assert overdue("2024-01-02T06:00:00Z") == (["2024-01-01"], 1)
    assert overdue("2024-01-03T07:00:00Z") == (["2024-01-01", "2024-01-02"], 2)
    report(asset_stub, "sales/out", ["2024-01-01"])
    assert overdue("2024-01-03T07:00:00Z") == (["2024-01-02"], 1)
    summary = asset_stub.GetPartition(
        asset_pb2.GetPartitionRequest(
            asset_id="sales/out", partition_key="2024-01-02", as_of=at("2024-01-03T07:00:00Z")
        )
    )
    assert summary.partition.overdue
    assert any(note.startswith("overdue: window 2024-01-02") for note in summary.explanations)
    asset = asset_stub.GetAsset(
        asset_pb2.GetAssetRequest(asset_id="sales/out", as_of=at("2024-01-03T07:00:00Z"))
    )
    assert asset.asset.overdue_count == 1
    combined = asset_stub.ListPartitions(
        asset_pb2.ListPartitionsRequest(
            asset_id="sales/out",
            as_of=at("2024-01-05T07:00:00Z"),
            overdue_only=True,
            statuses=[S.PARTITION_STATUS_MISSING],
            page_size=2,
        )
    )
    assert [p.partition_key for p in combined.partitions] == ["2024-01-02", "2024-01-03"]
    assert combined.total_size == 3 and combined.overdue_count == 3 and combined.next_page_token

    # Non-window keys: the latest materialization must be younger than the lag.
    register(
        workflow_stub,
        workflow(
            "stores",
            static("north", "south"),
            freshness=workflow_pb2.FreshnessPolicy(maximum_lag=Duration(seconds=3600)),
        ),
    )
    report(asset_stub, "stores/out", ["north"])
    now = time.time()

    def stores_overdue(offset: float) -> list[str]:
        moment = Timestamp()
        moment.FromSeconds(int(now + offset))
        return [p.partition_key for p in listing(asset_stub, "stores/out", as_of=moment) if p.overdue]

    assert stores_overdue(60) == ["south"]
    assert stores_overdue(2 * 3600) == ["north", "south"]


def test_automation_runs_the_aligned_keys_once(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, workflow("events", hourly()))
    automation = workflow_pb2.Automation(condition=workflow_pb2.AUTOMATION_CONDITION_ON_UPSTREAM_MATERIALIZED)
    register(workflow_stub, workflow("rollup", daily(), [reads("events/out")], automation=automation))

    def automatic_runs() -> list[run_pb2.Run]:
        listed = run_stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug="rollup")).runs
        return sorted(listed, key=lambda r: r.partition_key)

    ids = report(asset_stub, "events/out", hours("2024-01-02"))
    first = wait_for(automatic_runs)
    time.sleep(1.5)  # more passes of the loop must not add runs
    runs = automatic_runs()
    assert [(r.partition_key, r.trigger.kind) for r in runs] == [
        ("2024-01-02", run_pb2.TRIGGER_KIND_AUTOMATION)
    ]
    assert runs[0].id == first[0].id and runs[0].trigger.source_id in ids
    events = run_stub.WatchRuns(run_pb2.WatchRunsRequest(run_id=runs[0].id), timeout=2)
    queued = next(e for e in events if e.event.type == run_pb2.RUN_EVENT_TYPE_QUEUED)
    assert f"materialization {runs[0].trigger.source_id}" in queued.event.message
    assert "events/out" in queued.event.message

    # Half a day: nothing (its other hours are missing); the rest: one run for that day.
    report(asset_stub, "events/out", hours("2024-01-03")[:12])
    time.sleep(1.5)
    assert [r.partition_key for r in automatic_runs()] == ["2024-01-02"]
    report(asset_stub, "events/out", hours("2024-01-03")[12:])
    wait_for(lambda: len(automatic_runs()) == 2)
    time.sleep(1.0)
    assert [r.partition_key for r in automatic_runs()] == ["2024-01-02", "2024-01-03"]

    # After the day's run completes, a changed hour triggers it again, once.
    worker = Worker(run_stub, worker_stub)
    for _ in range(2):
        claimed = worker.claim("rollup")
        worker_stub.CompleteRun(
            worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
        )
    report(asset_stub, "events/out", ["2024-01-02-07:00"])
    wait_for(lambda: len(automatic_runs()) == 3)
    time.sleep(1.0)
    assert [r.partition_key for r in automatic_runs()] == ["2024-01-02", "2024-01-02", "2024-01-03"]

    # An unpartitioned reader of every key (default all mapping) runs once per upstream change.
    register(workflow_stub, workflow("summary", None, [reads("events/out")], automation=automation))
    report(asset_stub, "events/out", ["2024-01-05-01:00"])
    summary_runs = wait_for(lambda: run_stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug="summary")).runs)
    time.sleep(1.0)
    assert [
        r.partition_key for r in run_stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug="summary")).runs
    ] == [""]
    assert summary_runs[0].trigger.kind == run_pb2.TRIGGER_KIND_AUTOMATION


def test_wait_policy_holds_runs_until_upstream_lands(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    register(workflow_stub, workflow("regions", static("us", "eu")))
    register(
        workflow_stub,
        workflow(
            "report",
            static("us", "eu"),
            [reads("regions/out")],
            upstream_policy=workflow_pb2.UPSTREAM_POLICY_WAIT,
            upstream_max_wait=Duration(seconds=2),
        ),
    )
    worker = Worker(run_stub, worker_stub)
    run = run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="report", partition_key="us")).run
    assert worker.claim("report").run.id == ""  # held, not claimable
    held = run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run
    assert held.state == run_pb2.RUN_STATE_QUEUED and "regions/out" in held.hold_reason
    detail = asset_stub.GetPartition(asset_pb2.GetPartitionRequest(asset_id="report/out", partition_key="us"))
    assert detail.partition.status == S.PARTITION_STATUS_IN_PROGRESS
    assert any("held" in note for note in detail.explanations)
    ids = report(asset_stub, "regions/out", ["us"])
    released = wait_for(lambda: run_stub.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run.hold_reason == "")
    assert released
    claimed = worker.claim("report")
    assert claimed.run.id == run.id
    assert [(i.asset_id, i.partition_key, i.materialization_id) for i in claimed.inputs] == [
        ("regions/out", "us", ids[0])
    ]

    # Past upstream_max_wait, a held run fails.
    late = run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="report", partition_key="eu")).run
    wait_for(lambda: run_stub.GetRun(run_pb2.GetRunRequest(run_id=late.id)).run.hold_reason)
    failed = wait_for(
        lambda: (
            (r := run_stub.GetRun(run_pb2.GetRunRequest(run_id=late.id)).run).state
            == run_pb2.RUN_STATE_FAILED
            and r
        ),
        timeout=20,
    )
    assert "upstream_max_wait" in failed.error_message
