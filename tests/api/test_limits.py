"""Each configurable limit, through the real server: set low with --limits / --limit, then hit.

Rejections carry ErrorInfo reason LIMIT_EXCEEDED with metadata `limit=<name>` (the message
size cap is enforced by gRPC itself: RESOURCE_EXHAUSTED without details). Caps that clamp by
contract (page size, claim wait, lease duration) are checked to clamp.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.rpc import error_details_pb2, status_pb2

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
from server.api.context import Limits
from server.api.errors import STATUS_DETAILS_KEY
from server.limits import RateLimiter, StreamSlots, check_request, load_limits
from tests.api.test_auth import Identity, bearer, write_token_file
from tests.harness import RunningServer, run_server_to_exit, start_server
from tests.rpc import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

LIMITS_TOML = """
[limits]
max_message_bytes = 65536
max_payload_bytes = 1024
max_keys_per_request = 5
max_artifacts_per_asset = 2
max_report_materializations = 2
default_page_size = 2
max_page_size = 3
max_claim_wait = 1.5
max_lease_duration = 5
default_lease_duration = 5
"""


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


def big_struct(size: int) -> Struct:
    value = Struct()
    value.update({"blob": "x" * size})
    return value


def assert_limit(failure: object, limit: str, field: str | None = None) -> None:
    assert failure.reason == "LIMIT_EXCEEDED", failure  # type: ignore[attr-defined]
    assert failure.info.metadata["limit"] == limit, failure  # type: ignore[attr-defined]
    assert limit in failure.message  # type: ignore[attr-defined]
    if field is not None:
        assert failure.fields == [field], failure  # type: ignore[attr-defined]


@pytest.fixture
def limited(database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    limits_file = tmp_path / "limits.toml"
    limits_file.write_text(LIMITS_TOML, encoding="utf-8")
    running = start_server(database_url, "--limits", str(limits_file), log_dir=tmp_path)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.stderr()


def _register(stub: workflow_pb2_grpc.WorkflowServiceStub, slug: str, **fields: object) -> None:
    workflow = workflow_pb2.Workflow(
        slug=slug,
        produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out")],
        **fields,  # type: ignore[arg-type]
    )
    stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=workflow))


def test_payload_and_parameter_sizes(limited: RunningServer) -> None:
    workflows = limited.stub(workflow_pb2_grpc.WorkflowServiceStub)
    runs = limited.stub(run_pb2_grpc.RunServiceStub)
    assets = limited.stub(asset_pb2_grpc.AssetServiceStub)
    worker = limited.stub(worker_pb2_grpc.WorkerServiceStub)
    _register(workflows, "plain")
    failure = expect_error(
        workflows.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(slug="fat", default_parameters=big_struct(2000))
        ),
        INVALID,
    )
    assert_limit(failure, "max_payload_bytes", "workflow.default_parameters")
    failure = expect_error(
        runs.EnqueueRun,
        run_pb2.EnqueueRunRequest(workflow_slug="plain", parameters=big_struct(2000)),
        INVALID,
    )
    assert_limit(failure, "max_payload_bytes", "parameters")
    failure = expect_error(
        assets.ReportMaterializations,
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="plain/out", payload=big_struct(2000))]
        ),
        INVALID,
    )
    assert_limit(failure, "max_payload_bytes", "materializations[0].payload")
    # Just under the limit passes.
    run = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="plain", parameters=big_struct(900))).run
    claimed = worker.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w"))
    assert claimed.run.id == run.id
    failure = expect_error(
        worker.CompleteRun,
        worker_pb2.CompleteRunRequest(
            run_id=run.id,
            lease_id=claimed.lease_id,
            assets=[asset_pb2.ResultAsset(asset_id="plain/out", payload=big_struct(5000))],
        ),
        INVALID,
    )
    assert_limit(failure, "max_payload_bytes", "assets[0].payload")
    assert runs.GetRun(run_pb2.GetRunRequest(run_id=run.id)).run.state == run_pb2.RUN_STATE_RUNNING


def test_keys_artifacts_and_materializations_per_request(limited: RunningServer) -> None:
    workflows = limited.stub(workflow_pb2_grpc.WorkflowServiceStub)
    assets = limited.stub(asset_pb2_grpc.AssetServiceStub)
    worker = limited.stub(worker_pb2_grpc.WorkerServiceStub)
    six = [f"k{i}" for i in range(6)]
    failure = expect_error(
        workflows.RegisterWorkflow,
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="many",
                produces=[
                    workflow_pb2.AssetDeclaration(
                        asset_id="many/out",
                        partitioning=partitions_pb2.PartitionsDefinition(
                            static=partitions_pb2.StaticPartitions(keys=six)
                        ),
                    )
                ],
            )
        ),
        INVALID,
    )
    assert_limit(failure, "max_keys_per_request", "workflow.produces[0].partitioning.static.keys")
    failure = expect_error(
        assets.AddDynamicPartitions,
        asset_pb2.AddDynamicPartitionsRequest(asset_id="any/thing", partition_keys=six),
        INVALID,
    )
    assert_limit(failure, "max_keys_per_request", "partition_keys")
    failure = expect_error(
        worker.ClaimRun, worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=six), INVALID
    )
    assert_limit(failure, "max_keys_per_request", "workflow_slugs")
    _register(workflows, "plain")
    artifacts = [asset_pb2.Artifact(file_name=f"f{i}") for i in range(3)]
    failure = expect_error(
        assets.ReportMaterializations,
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="plain/out", artifacts=artifacts)]
        ),
        INVALID,
    )
    assert_limit(failure, "max_artifacts_per_asset", "materializations[0].artifacts")
    failure = expect_error(
        assets.ReportMaterializations,
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="plain/out") for _ in range(3)]
        ),
        INVALID,
    )
    assert_limit(failure, "max_report_materializations", "materializations")
    recorded = assets.ReportMaterializations(
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="plain/out", artifacts=artifacts[:2])]
        )
    )
    assert len(recorded.materializations) == 1


def test_message_size_page_size_claim_wait_and_lease_caps(limited: RunningServer) -> None:
    workflows = limited.stub(workflow_pb2_grpc.WorkflowServiceStub)
    runs = limited.stub(run_pb2_grpc.RunServiceStub)
    worker = limited.stub(worker_pb2_grpc.WorkerServiceStub)
    with pytest.raises(grpc.RpcError) as caught:
        runs.ListRuns(run_pb2.ListRunsRequest(page_token="x" * 70_000), timeout=10)
    assert caught.value.code() == EXHAUSTED
    for index in range(4):
        _register(workflows, f"wf{index}")
    assert len(workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest()).workflows) == 2
    page = workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest(page_size=500))
    assert len(page.workflows) == 3 and page.next_page_token

    started = time.monotonic()
    empty = worker.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", wait=seconds(30)), timeout=40)
    assert not empty.HasField("run")
    assert time.monotonic() - started < 6
    run = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="wf0")).run
    claimed = worker.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", lease_duration=seconds(3600)))
    assert claimed.run.id == run.id
    lease = claimed.lease_expire_time.ToDatetime() - claimed.run.start_time.ToDatetime()
    assert lease <= timedelta(seconds=5.5), lease


def _retry_delay(error: grpc.RpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


@pytest.fixture
def tokens_server(tmp_path: Path) -> Iterator[tuple[RunningServer, dict[str, Identity]]]:
    people = {name: Identity(name, "reader", f"{name}-token-0123456789") for name in ("a", "b", "c")}
    people["ops"] = Identity("ops", "operator", "ops-token-0123456789")
    token_file = write_token_file(tmp_path / "tokens.toml", list(people.values()))
    running = start_server(
        f"sqlite:///{tmp_path / 'p.db'}",
        "--token-file",
        str(token_file),
        "--limit",
        "max_streams_per_principal=2",
        "--limit",
        "rate_limit_per_second=4",
        "--limit",
        "rate_limit_burst=10",
        log_dir=tmp_path,
    )
    try:
        yield running, people
    finally:
        code = running.stop()
    assert code == 0, running.stderr()


def test_rate_limit_per_principal_with_retry_info(
    tokens_server: tuple[RunningServer, dict[str, Identity]],
) -> None:
    running, people = tokens_server
    stub = running.stub(run_pb2_grpc.RunServiceStub)
    request = run_pb2.ListRunsRequest()
    refused: grpc.RpcError | None = None
    for _ in range(30):
        try:
            stub.ListRuns(request, metadata=bearer(people["b"].token), timeout=5)
        except grpc.RpcError as error:
            refused = error
            break
    assert refused is not None, "the burst of 10 never ran out"
    assert refused.code() == EXHAUSTED  # type: ignore[attr-defined]
    delay = _retry_delay(refused)
    assert delay is not None and 0 < delay <= 1.0, delay
    failure = expect_error(stub.ListRuns, request, EXHAUSTED, metadata=bearer(people["b"].token))
    assert_limit(failure, "rate_limit_per_second")
    # Another principal has its own bucket; the first gets tokens back over time.
    stub.ListRuns(request, metadata=bearer(people["c"].token), timeout=5)
    time.sleep(0.6)
    stub.ListRuns(request, metadata=bearer(people["b"].token), timeout=5)


def test_open_streams_per_principal(tokens_server: tuple[RunningServer, dict[str, Identity]]) -> None:
    running, people = tokens_server
    workflows = running.stub(workflow_pb2_grpc.WorkflowServiceStub)
    runs = running.stub(run_pb2_grpc.RunServiceStub)
    ops = bearer(people["ops"].token)
    workflows.RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(slug="w", produces=[workflow_pb2.AssetDeclaration(asset_id="w/o")])
        ),
        metadata=ops,
    )
    runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="w"), metadata=ops)

    def watch(who: str) -> grpc.Call:
        return runs.WatchRuns(run_pb2.WatchRunsRequest(), metadata=bearer(people[who].token), timeout=30)  # type: ignore[no-any-return]

    first, second = watch("a"), watch("a")
    assert next(first).event.type == run_pb2.RUN_EVENT_TYPE_QUEUED
    assert next(second).event.type == run_pb2.RUN_EVENT_TYPE_QUEUED
    third = watch("a")
    with pytest.raises(grpc.RpcError) as caught:
        next(third)
    assert caught.value.code() == EXHAUSTED
    assert "max_streams_per_principal" in (caught.value.details() or "")
    other = watch("c")
    assert next(other).event.type == run_pb2.RUN_EVENT_TYPE_QUEUED
    other.cancel()
    first.cancel()
    deadline = time.monotonic() + 5
    while True:
        again = watch("a")
        try:
            assert next(again).event.type == run_pb2.RUN_EVENT_TYPE_QUEUED
            break
        except grpc.RpcError as error:
            assert error.code() == EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)
    again.cancel()
    second.cancel()


def test_bad_limits_are_usage_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    for args, hint in [
        (("--limit", "max_nothing=3"), "unknown limit"),
        (("--limit", "max_page_size=-1"), ">= 0"),
        (("--limit", "max_page_size"), "NAME=VALUE"),
        (("--limit", "max_keys_per_request=1.5"), "whole number"),
        (("--limits", str(tmp_path / "missing.toml")), "cannot read"),
    ]:
        result = run_server_to_exit(url, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert hint in result.stderr, (args, result.stderr)


def test_limit_loading_and_helpers(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text("max_claim_wait = 2.5\nrate_limit_per_second = 0\nmax_page_size = 50\n", encoding="utf-8")
    limits = load_limits(str(path), ["max_page_size=20", "default_page_size=10"])
    assert limits.max_claim_wait == timedelta(seconds=2.5)
    assert limits.rate_limit_per_second == 0.0
    assert (limits.max_page_size, limits.default_page_size) == (20, 10)
    assert load_limits() == Limits()
    with pytest.raises(ValueError, match="default_page_size"):
        load_limits(None, ["default_page_size=2000"])

    clock = [0.0]
    limiter = RateLimiter(2.0, 3, monotonic=lambda: clock[0])
    assert [limiter.acquire("p") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("p") == pytest.approx(0.5)
    assert limiter.acquire("q") == 0.0
    clock[0] = 0.5
    assert limiter.acquire("p") == 0.0
    assert RateLimiter(0, 0).acquire("p") == 0.0

    slots = StreamSlots(1)
    assert slots.acquire("p") and not slots.acquire("p") and slots.acquire("q")
    slots.release("p")
    assert slots.acquire("p") and slots.open("p") == 1

    small = Limits(max_payload_bytes=10, max_keys_per_request=2)
    check_request(
        run_pb2.EnqueueRunRequest(labels={str(i): "v" for i in range(5)}), small
    )  # maps are not keys
    with pytest.raises(Exception, match="max_keys_per_request"):
        check_request(run_pb2.WatchRunsRequest(partition_keys=["a", "b", "c"]), small)
