"""WorkflowService through the real server."""

from __future__ import annotations

import grpc
import pytest

from partita.v1 import partitions_pb2, run_pb2, run_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def daily(start: str = "2024-01-01") -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start=start
        )
    )


def workflow(
    slug: str = "sales", *asset_ids: str, partitioning: partitions_pb2.PartitionsDefinition | None = None
) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        slug=slug,
        description="daily sales",
        produces=[
            workflow_pb2.AssetDeclaration(asset_id=asset_id, partitioning=partitioning)
            for asset_id in (asset_ids or (f"{slug}/csv",))
        ],
    )


def register(
    stub: workflow_pb2_grpc.WorkflowServiceStub, wf: workflow_pb2.Workflow, **kwargs: object
) -> workflow_pb2.Workflow:
    return stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=wf, **kwargs)).workflow  # type: ignore[arg-type]


def test_register_get_and_replace(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    created = register(workflow_stub, workflow("sales", "sales/csv", partitioning=daily()))
    assert created.slug == "sales"
    assert created.produces[0].partitioning.time_window.schedule_type == partitions_pb2.SCHEDULE_TYPE_DAILY
    assert created.create_time.seconds > 0

    fetched = workflow_stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(slug="sales")).workflow
    assert fetched == created

    replacement = workflow("sales", "sales/csv", partitioning=daily("2023-06-01"))
    replacement.description = "moved start"
    replaced = register(workflow_stub, replacement)
    assert replaced.description == "moved start"
    assert replaced.create_time == created.create_time
    assert replaced.produces[0].partitioning.time_window.start == "2023-06-01"


def test_get_unknown_workflow_is_not_found(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    failure = expect_error(
        workflow_stub.GetWorkflow, workflow_pb2.GetWorkflowRequest(slug="nope"), grpc.StatusCode.NOT_FOUND
    )
    assert "nope" in failure.message


@pytest.mark.parametrize(
    ("slug", "field"),
    [
        ("", "workflow.slug"),
        ("x" * 10_000, "workflow.slug"),
        ("bad\x00slug", "workflow.slug"),
        ("Upper", "workflow.slug"),
        ("-leading", "workflow.slug"),
    ],
)
def test_bad_slugs_are_invalid_argument(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, slug: str, field: str
) -> None:
    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow(slug, "a")),
        INVALID,
    )
    assert field in failure.fields


def test_duplicate_and_bad_asset_ids(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow("wf", "a", "a", "B/x", "ns//x")),
        INVALID,
    )
    assert failure.fields == [
        "workflow.produces[1].asset_id",
        "workflow.produces[2].asset_id",
        "workflow.produces[3].asset_id",
    ]
    # Nothing was written.
    expect_error(
        workflow_stub.GetWorkflow, workflow_pb2.GetWorkflowRequest(slug="wf"), grpc.StatusCode.NOT_FOUND
    )


def test_partitioned_assets_must_share_one_definition(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
) -> None:
    wf = workflow("wf", "a", "b", partitioning=daily())
    wf.produces[1].partitioning.CopyFrom(daily("2023-01-01"))
    failure = expect_error(
        workflow_stub.RegisterWorkflow, workflow_pb2.RegisterWorkflowRequest(workflow=wf), INVALID
    )
    assert failure.fields == ["workflow.produces[1].partitioning"]


def test_bad_partition_spec_names_its_field(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    spec = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            cron_schedule="not a cron", start="2024-01-01", timezone="Mars/Base"
        )
    )
    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow("wf", "a", partitioning=spec)),
        INVALID,
    )
    assert "workflow.produces[0].partitioning.time_window.cron_schedule" in failure.fields
    assert "workflow.produces[0].partitioning.time_window.timezone" in failure.fields


def test_an_asset_has_one_producer(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    register(workflow_stub, workflow("first", "shared/asset"))
    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow("second", "shared/asset")),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert failure.reason == "ASSET_ALREADY_PRODUCED"
    assert failure.info is not None and failure.info.metadata["workflow_slug"] == "first"


def test_list_workflows_pages_by_slug(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    for slug in ("c", "a", "e", "b", "d"):
        register(workflow_stub, workflow(slug, f"{slug}/out"))
    seen: list[str] = []
    token = ""
    while True:
        page = workflow_stub.ListWorkflows(workflow_pb2.ListWorkflowsRequest(page_size=2, page_token=token))
        assert page.total_size == 5
        seen.extend(w.slug for w in page.workflows)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["a", "b", "c", "d", "e"]
    expect_error(workflow_stub.ListWorkflows, workflow_pb2.ListWorkflowsRequest(page_size=-1), INVALID)
    failure = expect_error(
        workflow_stub.ListWorkflows, workflow_pb2.ListWorkflowsRequest(page_token="garbage!"), INVALID
    )
    assert failure.fields == ["page_token"]


def test_request_id_replays_and_rejects_reuse(workflow_stub: workflow_pb2_grpc.WorkflowServiceStub) -> None:
    request = workflow_pb2.RegisterWorkflowRequest(workflow=workflow("wf", "a"), request_id="req-1")
    first = workflow_stub.RegisterWorkflow(request).workflow
    again = workflow_stub.RegisterWorkflow(request).workflow
    assert again == first
    changed = workflow_pb2.RegisterWorkflowRequest(workflow=workflow("wf", "b"), request_id="req-1")
    failure = expect_error(workflow_stub.RegisterWorkflow, changed, INVALID)
    assert failure.reason == "REQUEST_ID_REUSED"


def test_partitioning_changes_need_permission_once_runs_exist(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub, run_stub: run_pb2_grpc.RunServiceStub
) -> None:
    register(workflow_stub, workflow("sales", "sales/csv", partitioning=daily()))
    hourly = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2024-01-01-00:00"
        )
    )
    # No runs yet: any change is free.
    register(workflow_stub, workflow("sales", "sales/csv", partitioning=hourly))
    register(workflow_stub, workflow("sales", "sales/csv", partitioning=daily()))
    run_stub.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="sales", partition_key="2024-01-02"))

    failure = expect_error(
        workflow_stub.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow("sales", "sales/csv", partitioning=hourly)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert failure.reason == "PARTITIONING_CHANGE"
    # Moving the start and setting an end are free.
    moved = daily("2023-01-01")
    moved.time_window.end = "2025-01-01"
    register(workflow_stub, workflow("sales", "sales/csv", partitioning=moved))
    changed = register(
        workflow_stub, workflow("sales", "sales/csv", partitioning=hourly), allow_partitioning_change=True
    )
    assert changed.produces[0].partitioning.time_window.schedule_type == partitions_pb2.SCHEDULE_TYPE_HOURLY
