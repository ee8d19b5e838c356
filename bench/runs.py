"""Run lifecycle throughput against a real server on SQLite (`python -m bench.runs`).

* EnqueueRun from 50 concurrent clients (goal >= 1,500 runs/s);
* the worker cycle ClaimRun -> CompleteRun with 4 concurrent workers (goal >= 500 runs/s).
Clients are grpc.aio stubs in this process; the server is a separate process.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc

from bench.common import WHY_RPC, entry, sqlite_server
from partita.v1 import (
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)

KEYS = 6000
CLIENTS = 50
WORKERS = 4


async def _enqueue_all(address: str, keys: list[str]) -> float:
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    stubs = [run_pb2_grpc.RunServiceStub(channel) for channel in channels]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)

    async def client(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while not queue.empty():
            key = queue.get_nowait()
            await stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="bench", partition_key=key))

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return len(keys) / elapsed


async def _work_all(address: str, total: int) -> float:
    channels = [grpc.aio.insecure_channel(address) for _ in range(WORKERS)]
    done = 0

    async def worker(channel: grpc.aio.Channel) -> None:
        nonlocal done
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        while True:
            claimed = await stub.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="bench"))
            if not claimed.HasField("run"):
                return
            await stub.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
            )
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(channel) for channel in channels))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    assert done == total, (done, total)
    return total / elapsed


def run() -> list[dict[str, object]]:
    keys = [f"k{i:05d}" for i in range(KEYS)]
    with sqlite_server() as server:
        workflow_pb2_grpc.WorkflowServiceStub(server.channel()).RegisterWorkflow(
            workflow_pb2.RegisterWorkflowRequest(
                workflow=workflow_pb2.Workflow(
                    slug="bench",
                    produces=[
                        workflow_pb2.AssetDeclaration(
                            asset_id="bench/out",
                            partitioning=partitions_pb2.PartitionsDefinition(
                                static=partitions_pb2.StaticPartitions(keys=keys)
                            ),
                        )
                    ],
                )
            )
        )
        enqueue_rate = asyncio.run(_enqueue_all(server.address, keys))
        cycle_rate = asyncio.run(_work_all(server.address, len(keys)))
    return [
        entry(
            "enqueue_run_50_clients_sqlite", enqueue_rate, "runs/s", 1500, higher_is_better=True, why=WHY_RPC
        ),
        entry(
            "claim_complete_4_workers_sqlite", cycle_rate, "runs/s", 500, higher_is_better=True, why=WHY_RPC
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
