"""Backfills against a real server on SQLite (`python -m bench.backfills`).

* CreateBackfill of a 100,000-key range of an hourly definition: the plan is validated,
  enumerated and written in one bulk transaction (goal <= 1.5 s, client-observed).
* A 10,000-key backfill end to end with 4 no-op workers at the default concurrency (16): from
  CreateBackfill until the backfill is COMPLETED (goal <= 35 s). The workers are grpc.aio
  clients in this process; the dispatcher runs in the server.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from google.protobuf.duration_pb2 import Duration

from bench.common import WHY_RPC, entry, sqlite_server
from partita.v1 import (
    backfill_pb2,
    backfill_pb2_grpc,
    partitions_pb2,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)

PLAN_KEYS = 100_000
RUN_KEYS = 10_000
WORKERS = 4


def _register(channel: grpc.Channel, slug: str, partitioning: partitions_pb2.PartitionsDefinition) -> None:
    workflow_pb2_grpc.WorkflowServiceStub(channel).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug=slug,
                produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)],
            )
        )
    )


def _hourly() -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2010-01-01"
        )
    )


def _create_plan(channel: grpc.Channel) -> float:
    """Seconds for one CreateBackfill of PLAN_KEYS hourly keys (2010-01-01 00:00 onwards)."""
    last_key = "2021-05-29-15:00"  # the 100,000th hour from 2010-01-01-00:00
    return create_range_backfill(channel, "hourly", "2010-01-01-00:00", last_key, PLAN_KEYS)


def create_range_backfill(channel: grpc.Channel, slug: str, start_key: str, end_key: str, keys: int) -> float:
    """Seconds for one CreateBackfill of the keys `start_key`..`end_key` (inclusive) of `slug`,
    which must be `keys` keys."""
    stub = backfill_pb2_grpc.BackfillServiceStub(channel)
    request = backfill_pb2.CreateBackfillRequest(
        workflow_slug=slug,
        selection=partitions_pb2.PartitionSelection(
            range=partitions_pb2.PartitionRange(start_key=start_key, end_key=end_key)
        ),
        max_concurrent_runs=1,
    )
    started = time.perf_counter()
    created = stub.CreateBackfill(request, timeout=60).backfill
    elapsed = time.perf_counter() - started
    assert created.counts.total == keys, created.counts
    return elapsed


async def run_backfill_to_completion(
    address: str,
    slug: str,
    selection: partitions_pb2.PartitionSelection,
    keys: int,
    *,
    workers: int = WORKERS,
    all_keys_succeeded: bool = False,
) -> tuple[float, int]:
    """Seconds from CreateBackfill of `selection` until the backfill is COMPLETED with `keys`
    keys succeeded, with `workers` no-op grpc.aio workers; and the runs they completed."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(workers + 1)]
    backfills = backfill_pb2_grpc.BackfillServiceStub(channels[-1])
    finished = asyncio.Event()
    done = 0

    async def worker(channel: grpc.aio.Channel, index: int) -> None:
        nonlocal done
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        wait = Duration(seconds=1)
        while not finished.is_set():
            claimed = await stub.ClaimRun(
                worker_pb2.ClaimRunRequest(worker_id=f"bench-{index}", workflow_slugs=[slug], wait=wait),
                timeout=60,  # a claim waits behind whatever holds the writer (a huge run's dispatch)
            )
            if not claimed.HasField("run"):
                continue
            await stub.CompleteRun(
                worker_pb2.CompleteRunRequest(
                    run_id=claimed.run.id, lease_id=claimed.lease_id, all_keys_succeeded=all_keys_succeeded
                ),
                timeout=60,
            )
            done += 1

    tasks = [asyncio.create_task(worker(channel, index)) for index, channel in enumerate(channels[:workers])]
    started = time.perf_counter()
    created = (
        await backfills.CreateBackfill(
            backfill_pb2.CreateBackfillRequest(workflow_slug=slug, selection=selection), timeout=120
        )
    ).backfill
    while True:
        current = (
            await backfills.GetBackfill(backfill_pb2.GetBackfillRequest(backfill_id=created.id))
        ).backfill
        if current.state == backfill_pb2.BACKFILL_STATE_COMPLETED:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    finished.set()
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    assert current.counts.succeeded == keys, current.counts
    return elapsed, done


def run() -> list[dict[str, object]]:
    with sqlite_server() as server:
        channel = server.channel()
        _register(channel, "hourly", _hourly())
        _register(
            channel,
            "wide",
            partitions_pb2.PartitionsDefinition(
                static=partitions_pb2.StaticPartitions(keys=[f"k{i:05d}" for i in range(RUN_KEYS)])
            ),
        )
        plan_seconds = _create_plan(channel)
        run_seconds, runs = asyncio.run(
            run_backfill_to_completion(
                server.address,
                "wide",
                partitions_pb2.PartitionSelection(all=partitions_pb2.PartitionSelection.All()),
                RUN_KEYS,
            )
        )
    assert runs == RUN_KEYS, runs
    return [
        entry("create_backfill_100k_keys_sqlite", plan_seconds, "s", 1.5),
        entry("backfill_10k_keys_4_workers_sqlite", run_seconds, "s", 35, why=WHY_RPC),
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
