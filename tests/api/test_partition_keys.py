"""Partition keys through the real server: listing, dynamic registries, validation at enqueue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from partita.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.harness import RunningServer
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def register(
    stub: workflow_pb2_grpc.WorkflowServiceStub, slug: str, partitioning: partitions_pb2.PartitionsDefinition
) -> None:
    stub.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug=slug,
                produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)],
            )
        )
    )


def at(iso: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(iso)
    return stamp


def all_keys(stub: asset_pb2_grpc.AssetServiceStub, asset_id: str, **fields: object) -> tuple[list[str], int]:
    keys: list[str] = []
    token = ""
    total = -1
    while True:
        page = stub.ListPartitionKeys(
            asset_pb2.ListPartitionKeysRequest(asset_id=asset_id, page_token=token, **fields)  # type: ignore[arg-type]
        )
        keys.extend(page.partition_keys)
        total = page.total_size
        token = page.next_page_token
        if not token:
            return keys, total


def test_time_window_keys_as_of(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, asset_stub: asset_pb2_grpc.AssetServiceStub
) -> None:
    hourly_ny = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY,
            start="2024-11-03-00:00",
            timezone="America/New_York",
        )
    )
    register(workflow_stub, "hourly", hourly_ny)
    keys, total = all_keys(asset_stub, "hourly/out", as_of=at("2024-11-03T08:00:00Z"), page_size=2)
    # Midnight to 04:00 EDT→EST: the repeated 01:00 gets its offset suffix.
    assert keys == ["2024-11-03-00:00", "2024-11-03-01:00", "2024-11-03-01:00-0500", "2024-11-03-02:00"]
    assert total == 4


def test_static_keys_keep_definition_order(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, asset_stub: asset_pb2_grpc.AssetServiceStub
) -> None:
    register(
        workflow_stub,
        "regions",
        partitions_pb2.PartitionsDefinition(
            static=partitions_pb2.StaticPartitions(keys=["us", "eu", "apac"])
        ),
    )
    assert all_keys(asset_stub, "regions/out", page_size=1) == (["us", "eu", "apac"], 3)
    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="dupes",
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id="d",
                        partitioning=partitions_pb2.PartitionsDefinition(
                            static=partitions_pb2.StaticPartitions(keys=["a", "a", "x...y", " lead"])
                        ),
                    )
                ],
            )
        ),
        INVALID,
    )
    assert failure.fields == [
        "workflow.produces[0].partitioning.static.keys[1]",
        "workflow.produces[0].partitioning.static.keys[2]",
        "workflow.produces[0].partitioning.static.keys[3]",
    ]


def test_dynamic_keys_tombstones_and_revival(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
) -> None:
    dynamic = partitions_pb2.PartitionsDefinition(
        dynamic=partitions_pb2.DynamicPartitions(key_pattern=r"cust-\d+", max_keys=3, initial_keys=["cust-1"])
    )
    register(workflow_stub, "customers", dynamic)
    assert all_keys(asset_stub, "customers/out") == (["cust-1"], 1)
    added = asset_stub.AddDynamicPartitions(
        asset_pb2.AddDynamicPartitionsRequest(asset_id="customers/out", partition_keys=["cust-2", "cust-1"])
    )
    assert list(added.added_partition_keys) == ["cust-2"]
    # A key matching the pattern registers on first use, in the run's transaction.
    run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="customers", partition_key="cust-3"))
    assert all_keys(asset_stub, "customers/out")[0] == ["cust-1", "cust-2", "cust-3"]
    # The cap counts live keys.
    failure = expect_error(
        run_stub.EnqueueRun,
        run_pb2.EnqueueRunRequest(workflow_slug="customers", partition_key="cust-4"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert failure.reason == "DYNAMIC_KEY_LIMIT"
    expect_error(
        run_stub.EnqueueRun,
        run_pb2.EnqueueRunRequest(workflow_slug="customers", partition_key="other"),
        INVALID,
    )
    deleted = asset_stub.DeleteDynamicPartitions(
        asset_pb2.DeleteDynamicPartitionsRequest(asset_id="customers/out", partition_keys=["cust-2", "nope"])
    )
    assert list(deleted.deleted_partition_keys) == ["cust-2"]
    assert all_keys(asset_stub, "customers/out") == (["cust-1", "cust-3"], 2)
    # EnqueueRun never revives a tombstone; AddDynamicPartitions does, keeping its first-add position.
    failure = expect_error(
        run_stub.EnqueueRun,
        run_pb2.EnqueueRunRequest(workflow_slug="customers", partition_key="cust-2"),
        INVALID,
    )
    assert failure.reason == "PARTITION_KEY_DELETED"
    asset_stub.AddDynamicPartitions(
        asset_pb2.AddDynamicPartitionsRequest(asset_id="customers/out", partition_keys=["cust-2"])
    )
    assert all_keys(asset_stub, "customers/out")[0] == ["cust-1", "cust-2", "cust-3"]
    # All or nothing: one bad key rejects the whole call.
    failure = expect_error(
        asset_stub.AddDynamicPartitions,
        asset_pb2.AddDynamicPartitionsRequest(asset_id="customers/out", partition_keys=["cust-9", "bad key"]),
        INVALID,
    )
    assert failure.fields == ["partition_keys[1]"]
    assert all_keys(asset_stub, "customers/out")[1] == 3


def test_concurrent_adds_of_one_key_register_it_once(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    asset_stub: asset_pb2_grpc.AssetServiceStub,
    server: RunningServer,
) -> None:
    register(
        workflow_stub,
        "files",
        partitions_pb2.PartitionsDefinition(dynamic=partitions_pb2.DynamicPartitions()),
    )

    def add(_: int) -> None:
        stub = asset_pb2_grpc.AssetServiceStub(server.new_channel())
        stub.AddDynamicPartitions(
            asset_pb2.AddDynamicPartitionsRequest(asset_id="files/out", partition_keys=["a.csv"])
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(16)))
    assert all_keys(asset_stub, "files/out") == (["a.csv"], 1)


def test_dynamic_rpcs_on_other_assets(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, asset_stub: asset_pb2_grpc.AssetServiceStub
) -> None:
    register(
        workflow_stub,
        "regions",
        partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=["us"])),
    )
    expect_error(
        asset_stub.AddDynamicPartitions,
        asset_pb2.AddDynamicPartitionsRequest(asset_id="regions/out", partition_keys=["x"]),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    expect_error(
        asset_stub.ListPartitionKeys,
        asset_pb2.ListPartitionKeysRequest(asset_id="ghost/out"),
        grpc.StatusCode.NOT_FOUND,
    )
