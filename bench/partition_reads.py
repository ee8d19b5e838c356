"""Partition reads at scale against a real server on SQLite (`python -m bench.partition_reads`).

Two hourly assets of 1,000,000 keys: one with 99.99 % of its keys materialized, one with
0.01 %. Their state rows and materializations are bulk-inserted into the server's database
file (as years of history would leave them); everything is then measured over gRPC:
* a ListPartitions page of 100 filtered by status (goal <= 50 ms), for MISSING and MATERIALIZED;
* status counts over the whole asset (goal <= 100 ms);
* every page of a 10,000-key asset (goal <= 100 ms in all);
* GetLatestMaterialization (goal <= 2 ms, median);
* recording 10,000 materializations with ReportMaterializations, 1,000 per call (goal <= 1 s),
  and one per call from 50 concurrent clients (goal <= 7 s).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.common import WHY_RPC, entry, sqlite_server
from partita.v1 import asset_pb2, asset_pb2_grpc, partitions_pb2, workflow_pb2, workflow_pb2_grpc

KEYS = 1_000_000
START = datetime(2000, 1, 1, tzinfo=UTC)
AS_OF = START + timedelta(hours=KEYS)
S = asset_pb2.PartitionStatus


def _hourly(start: str = "2000-01-01-00:00") -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start=start
        )
    )


def _register(channel: grpc.Channel, slug: str, partitioning: partitions_pb2.PartitionsDefinition) -> None:
    workflow_pb2_grpc.WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug=slug,
                produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)],
            )
        )
    )


def _fill(database: Path, asset_id: str, every: int) -> None:
    """Materializes every `every`-th... key of the hourly asset: keys i with i % every != 0 when
    every > 1 (so 1/every are missing), else only keys i % 10_000 == 0."""
    connection = sqlite3.connect(database, timeout=60)
    created = int(time.time() * 1_000_000)

    def chosen(i: int) -> bool:
        return i % every != 0 if every > 1 else i % 10_000 == 0

    indexes = [i for i in range(KEYS) if chosen(i)]
    with connection:
        first_id = (connection.execute("SELECT COALESCE(MAX(id), 0) FROM materialization").fetchone()[0]) + 1
        connection.executemany(
            "INSERT INTO materialization (id, asset_id, partition_key, run_id, artifacts, payload, inputs, "
            "create_time) VALUES (?, ?, ?, NULL, '[]', '{}', '[]', ?)",
            (
                (first_id + n, asset_id, (START + timedelta(hours=i)).strftime("%Y-%m-%d-%H:%M"), created)
                for n, i in enumerate(indexes)
            ),
        )
        connection.executemany(
            "INSERT INTO partition_state (asset_id, partition_key, position, ordinal, status, "
            "latest_materialization_id, latest_materialization_time, update_time) "
            "VALUES (?, ?, ?, ?, 'MATERIALIZED', ?, ?, ?)",
            (
                (
                    asset_id,
                    (START + timedelta(hours=i)).strftime("%Y-%m-%d-%H:%M"),
                    int((START + timedelta(hours=i)).timestamp()),
                    i,
                    first_id + n,
                    created,
                    created,
                )
                for n, i in enumerate(indexes)
            ),
        )
    connection.close()


def _median_ms(call: Callable[[], object], repeat: int = 7) -> float:
    call()  # warm caches (definition, zone, statements)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def report_in_batches(
    assets: asset_pb2_grpc.AssetServiceStub, asset_id: str, keys: list[str], per_call: int = 1000
) -> None:
    """Records a materialization of each key with ReportMaterializations, `per_call` per call."""
    for offset in range(0, len(keys), per_call):
        assets.ReportMaterializations(
            asset_pb2.ReportMaterializationsRequest(
                materializations=[
                    asset_pb2.ResultAsset(asset_id=asset_id, partition_key=key)
                    for key in keys[offset : offset + per_call]
                ]
            )
        )


def count_all_pages(
    assets: asset_pb2_grpc.AssetServiceStub, asset_id: str, as_of: Timestamp, page_size: int = 1000
) -> int:
    """Reads every ListPartitions page of `asset_id` (each key with its status); the keys seen."""
    token = ""
    seen = 0
    while True:
        page = assets.ListPartitions(
            asset_pb2.ListPartitionsRequest(
                asset_id=asset_id, as_of=as_of, page_size=page_size, page_token=token
            )
        )
        seen += len(page.partitions)
        token = page.next_page_token
        if not token:
            return seen


async def _report_one_per_call(address: str, keys: list[str]) -> float:
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    stubs = [asset_pb2_grpc.AssetServiceStub(channel) for channel in channels]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)

    async def client(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while not queue.empty():
            key = queue.get_nowait()
            await stub.ReportMaterializations(
                asset_pb2.ReportMaterializationsRequest(
                    materializations=[asset_pb2.ResultAsset(asset_id="report/out", partition_key=key)]
                )
            )

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(50)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return elapsed


def run() -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    as_of = Timestamp()
    as_of.FromDatetime(AS_OF)
    with sqlite_server() as server:
        database = Path(server.database_url.removeprefix("sqlite:///"))
        channel = server.channel()
        assets = asset_pb2_grpc.AssetServiceStub(channel)
        for slug in ("dense", "sparse", "small"):
            _register(channel, slug, _hourly())
        _register(channel, "report", _hourly())
        _fill(database, "dense/out", 10_000)  # 99.99 % materialized
        _fill(database, "sparse/out", 1)  # 0.01 % materialized

        for slug, label in (("dense", "99.99pct"), ("sparse", "0.01pct")):
            for status in (S.PARTITION_STATUS_MISSING, S.PARTITION_STATUS_MATERIALIZED):
                name = S.Name(status).removeprefix("PARTITION_STATUS_").lower()
                request = asset_pb2.ListPartitionsRequest(
                    asset_id=f"{slug}/out", statuses=[status], as_of=as_of, page_size=100
                )
                first = assets.ListPartitions(request)
                assert len(first.partitions) == 100, (slug, name, len(first.partitions))
                later = asset_pb2.ListPartitionsRequest(
                    asset_id=f"{slug}/out", statuses=[status], page_size=100, page_token=first.next_page_token
                )
                results.append(
                    entry(
                        f"list_partitions_1m_{label}_{name}_first_page",
                        _median_ms(functools.partial(assets.ListPartitions, request)),
                        "ms",
                        50,
                    )
                )
                if first.next_page_token:  # 99.99 % materialized has exactly 100 MISSING keys: one page
                    results.append(
                        entry(
                            f"list_partitions_1m_{label}_{name}_second_page",
                            _median_ms(functools.partial(assets.ListPartitions, later)),
                            "ms",
                            50,
                        )
                    )
            counts_request = asset_pb2.GetAssetRequest(asset_id=f"{slug}/out", as_of=as_of)
            results.append(
                entry(
                    f"status_counts_1m_{label}",
                    _median_ms(functools.partial(assets.GetAsset, counts_request)),
                    "ms",
                    100,
                )
            )

        small_as_of = Timestamp()
        small_as_of.FromDatetime(START + timedelta(hours=10_000))

        def all_pages() -> None:
            seen = count_all_pages(assets, "small/out", small_as_of)
            assert seen == 10_000, seen

        results.append(entry("list_partitions_10k_all_pages", _median_ms(all_pages, repeat=3), "ms", 100))

        latest = asset_pb2.GetLatestMaterializationRequest(
            asset_id="dense/out", partition_key="2000-01-01-05:00"
        )
        results.append(
            entry(
                "get_latest_materialization_grpc",
                _median_ms(lambda: assets.GetLatestMaterialization(latest), repeat=200),
                "ms",
                2,
            )
        )

        keys = [(START + timedelta(hours=i)).strftime("%Y-%m-%d-%H:%M") for i in range(10_000)]
        started = time.perf_counter()
        report_in_batches(assets, "report/out", keys)
        results.append(
            entry(
                "report_10k_materializations_1000_per_call",
                time.perf_counter() - started,
                "s",
                1,
                why="10,000 keys parsed and located, then a materialization, a state upsert (with its "
                "aggregate triggers) and an event each, on SQLite's one writer thread",
            )
        )
        results.append(
            entry(
                "report_10k_materializations_1_per_call_50_clients",
                asyncio.run(_report_one_per_call(server.address, keys)),
                "s",
                7,
                why=WHY_RPC,
            )
        )
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
