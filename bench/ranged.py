"""Ranged runs against a real server on SQLite (`python -m bench.ranged`).

* A 1,000,000-key hourly backfill of a workflow with `backfill_policy.max_keys_per_run = 1000`,
  planned and completed by 4 no-op workers (`CompleteRun(all_keys_succeeded=True)`): from
  CreateBackfill until the backfill is COMPLETED, so 1,000 runs and a materialization, a
  per-partition state row and a MATERIALIZED event per key (goal <= 60 s).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta

import grpc
from google.protobuf.duration_pb2 import Duration

from bench.common import entry, sqlite_server
from partita.v1 import (
    backfill_pb2,
    backfill_pb2_grpc,
    partitions_pb2,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)

KEYS = 1_000_000
KEYS_PER_RUN = 1000
WORKERS = 4
START = datetime(1900, 1, 1)
FMT = "%Y-%m-%d-%H:%M"


def _register(channel: grpc.Channel) -> None:
    hourly = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start=START.strftime("%Y-%m-%d")
        )
    )
    workflow_pb2_grpc.WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="hours",
                produces=[workflow_pb2.AssetDeclaration(asset_id="hours/out", partitioning=hourly)],
                backfill_policy=workflow_pb2.BackfillPolicy(max_keys_per_run=KEYS_PER_RUN),
            )
        )
    )


async def _run_backfill(address: str) -> tuple[float, int]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(WORKERS + 1)]
    backfills = backfill_pb2_grpc.BackfillServiceStub(channels[-1])
    finished = asyncio.Event()
    runs = 0

    async def worker(channel: grpc.aio.Channel, index: int) -> None:
        nonlocal runs
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        wait = Duration(seconds=1)
        while not finished.is_set():
            claimed = await stub.ClaimRun(
                worker_pb2.ClaimRunRequest(worker_id=f"bench-{index}", workflow_slugs=["hours"], wait=wait),
                timeout=5,
            )
            if not claimed.HasField("run"):
                continue
            await stub.CompleteRun(
                worker_pb2.CompleteRunRequest(
                    run_id=claimed.run.id, lease_id=claimed.lease_id, all_keys_succeeded=True
                ),
                timeout=60,
            )
            runs += 1

    tasks = [asyncio.create_task(worker(channel, index)) for index, channel in enumerate(channels[:WORKERS])]
    last_key = (START + timedelta(hours=KEYS - 1)).strftime(FMT)
    started = time.perf_counter()
    created = (
        await backfills.CreateBackfill(
            backfill_pb2.CreateBackfillRequest(
                workflow_slug="hours",
                selection=partitions_pb2.PartitionSelection(
                    range=partitions_pb2.PartitionRange(start_key=START.strftime(FMT), end_key=last_key)
                ),
            ),
            timeout=120,
        )
    ).backfill
    while True:
        current = (
            await backfills.GetBackfill(backfill_pb2.GetBackfillRequest(backfill_id=created.id))
        ).backfill
        if current.state == backfill_pb2.BACKFILL_STATE_COMPLETED:
            break
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - started
    finished.set()
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    assert current.counts.succeeded == KEYS, current.counts
    return elapsed, runs


def run() -> list[dict[str, object]]:
    with sqlite_server() as server:
        _register(server.channel())
        seconds, runs = asyncio.run(_run_backfill(server.address))
    assert runs == KEYS // KEYS_PER_RUN, runs
    return [entry("ranged_backfill_1m_hourly_keys_1000_per_run_sqlite", seconds, "s", 60)]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
