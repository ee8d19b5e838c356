"""Staleness bookkeeping against a real server on SQLite (`python -m bench.lineage`).

Two hourly upstream assets of 10,000 keys with the same shape: `plain` has no readers, `up` is
read key by key (the default time-window mapping) by the hourly asset `down`. Measured over gRPC:
* reporting the 10,000 upstream keys with ReportMaterializations, 1,000 per call, for `plain`
  (no lineage work) and for `up` (each call also marks the aligned `down` keys stale): the
  difference is the marking (goal <= 1 s for 10,000 keys);
* from the first report of `up` until ListPartitions(stale_only) on `down` shows all 10,000
  (goal <= 2 s: the reports' own cost plus the marking);
* every page (1,000 each) of the 10,000 stale keys, and the stale/overdue counts alone;
* GetPartition of a daily key reading 24 hourly keys (median);
* reporting the 10,000 `down` keys, which clears their staleness (goal <= 2 s).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.common import entry, sqlite_server
from partita.v1 import asset_pb2, asset_pb2_grpc, partitions_pb2, workflow_pb2, workflow_pb2_grpc

KEYS = 10_000
BATCH = 1000
START = datetime(2000, 1, 1, tzinfo=UTC)
AS_OF = START + timedelta(hours=KEYS)


def _hourly() -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2000-01-01-00:00"
        )
    )


def _daily() -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2000-01-01"
        )
    )


def _register(
    stub: workflow_pb2_grpc.WorkflowServiceStub,
    slug: str,
    partitioning: partitions_pb2.PartitionsDefinition,
    reads: tuple[str, ...] = (),
) -> None:
    stub.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug=slug,
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id=f"{slug}/out",
                        partitioning=partitioning,
                        freshness_policy=workflow_pb2.FreshnessPolicy(deadline_cron="0 6 * * *"),
                    )
                ],
                consumes=[workflow_pb2.AssetDependency(asset_id=asset_id) for asset_id in reads],
            )
        )
    )


def _keys() -> list[str]:
    return [(START + timedelta(hours=i)).strftime("%Y-%m-%d-%H:%M") for i in range(KEYS)]


def _report(stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, keys: list[str]) -> float:
    started = time.perf_counter()
    for first in range(0, len(keys), BATCH):
        stub.ReportMaterializations(
            asset_pb2.ReportMaterializationsRequest(
                materializations=[
                    asset_pb2.ResultAsset(asset_id=asset_id, partition_key=key)
                    for key in keys[first : first + BATCH]
                ]
            )
        )
    return time.perf_counter() - started


def _median(call: Callable[[], object], times: int = 30) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run() -> list[dict[str, object]]:
    as_of = Timestamp()
    as_of.FromDatetime(AS_OF)
    keys = _keys()
    results: list[dict[str, object]] = []
    with sqlite_server() as server:
        channel: grpc.Channel = server.channel()
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        assets = asset_pb2_grpc.AssetServiceStub(channel)
        _register(workflows, "plain", _hourly())
        _register(workflows, "up", _hourly())
        _register(workflows, "down", _hourly(), ("up/out",))
        _register(workflows, "day", _daily(), ("up/out",))

        baseline = _report(assets, "plain/out", keys)
        results.append(entry("report 10,000 keys, no readers (1,000 per call)", baseline, "s", 1.0))

        def stale_total() -> int:
            page = assets.ListPartitions(
                asset_pb2.ListPartitionsRequest(
                    asset_id="down/out", as_of=as_of, stale_only=True, page_size=1
                )
            )
            return int(page.total_size)

        started = time.perf_counter()
        with_marking = _report(assets, "up/out", keys)
        while stale_total() < KEYS:
            time.sleep(0.001)
        until_listed = time.perf_counter() - started
        results.append(entry("report 10,000 keys read by 2 assets (1,000 per call)", with_marking, "s", 2.0))
        results.append(
            entry(
                "marking 10,000 + 417 downstream keys stale (difference)",
                max(0.0, with_marking - baseline),
                "s",
                1.0,
            )
        )
        results.append(
            entry("first report until ListPartitions(stale_only) shows 10,000", until_listed, "s", 2.0)
        )

        def all_stale_pages() -> int:
            seen, token = 0, ""
            while True:
                page = assets.ListPartitions(
                    asset_pb2.ListPartitionsRequest(
                        asset_id="down/out", as_of=as_of, stale_only=True, page_size=1000, page_token=token
                    )
                )
                seen += len(page.partitions)
                token = page.next_page_token
                if not token:
                    return seen

        started = time.perf_counter()
        assert all_stale_pages() == KEYS
        results.append(
            entry(
                "every stale_only page of 10,000 stale keys (1,000 per page)",
                time.perf_counter() - started,
                "s",
                1.0,
            )
        )
        counts = _median(lambda: stale_total())
        results.append(
            entry("stale and overdue counts (ListPartitions page of 1, median)", counts * 1000, "ms", 20.0)
        )
        detail = _median(
            lambda: assets.GetPartition(
                asset_pb2.GetPartitionRequest(asset_id="day/out", partition_key="2000-06-01", as_of=as_of)
            )
        )
        results.append(entry("GetPartition of a day reading 24 hours (median)", detail * 1000, "ms", 20.0))

        cleared = _report(assets, "down/out", keys)
        assert stale_total() == 0
        results.append(entry("report 10,000 downstream keys, clearing their staleness", cleared, "s", 2.0))
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
