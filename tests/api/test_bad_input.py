"""Malformed requests across every RPC, table-driven, on SQLite and PostgreSQL.

Each case names the RPC, the request (a message, or raw wire bytes for what protobuf refuses
to build: invalid UTF-8, corrupt framing), the caller's role, and the codes it may answer.
None may be UNKNOWN or INTERNAL, each leaves every table of the database exactly as it was,
and the server stays SERVING.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from partita.v1 import (
    asset_pb2,
    backfill_pb2,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.api.pagination import PageToken
from tests.api.test_auth import Identity, bearer, identities, invoke, partita_methods, write_token_file
from tests.harness import (
    POSTGRES_URL_ENV,
    RunningServer,
    create_postgres_database,
    drop_postgres_database,
    postgres_base_url,
    start_server,
)

C = grpc.StatusCode
INVALID = {C.INVALID_ARGUMENT}
PENDING_OR = {C.UNIMPLEMENTED}  # backfill RPCs answer UNIMPLEMENTED until their capability lands
FORBIDDEN = {C.UNKNOWN, C.INTERNAL}
UNDEFINED_ENUM: Any = 77  # proto3 enums are open: the value parses, and must be refused


# --- wire helpers --------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (string, bytes, message) on the wire, whatever its content."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def with_raw(message: Message, field_number: int, payload: bytes) -> bytes:
    """`message` serialized, plus a raw length-delimited field (the last occurrence wins)."""
    return message.SerializeToString() + length_delimited(field_number, payload)


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


# --- the database, whole -------------------------------------------------------------------------


def dump_database(url: str) -> dict[str, list[str]]:
    """Every row of every table, as sorted reprs, read with the engine's own driver."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            return {
                table: sorted(map(repr, connection.execute(f'SELECT * FROM "{table}"'))) for table in tables
            }
        finally:
            connection.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        tables = [
            row[0]
            for row in pg.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        return {table: sorted(map(repr, pg.execute(f'SELECT * FROM "{table}"'))) for table in tables}


def health_status(running: RunningServer) -> int:
    health = running.stub(health_pb2_grpc.HealthStub)
    return int(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)


# --- the seeded server ---------------------------------------------------------------------------


@dataclass
class Seeded:
    server: RunningServer
    people: dict[str, Identity]
    running_run: str  # a wf-y run, claimed by the unlimited worker
    lease_id: str
    queued_run: str  # a wf-x run, queued


def _workflow(
    slug: str, partitioning: partitions_pb2.PartitionsDefinition | None = None
) -> workflow_pb2.Workflow:
    return workflow_pb2.Workflow(
        slug=slug, produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)]
    )


STATIC = partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=["a", "b", "c"]))
DYNAMIC = partitions_pb2.PartitionsDefinition(dynamic=partitions_pb2.DynamicPartitions(initial_keys=["d1"]))
DAILY = partitions_pb2.PartitionsDefinition(
    time_window=partitions_pb2.TimeWindowPartitions(
        schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01", end="2024-02-01"
    )
)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    directory = tmp_path_factory.mktemp("bad-input")
    base_url = None
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'partita.db'}"
    else:
        base_url = postgres_base_url()
        if base_url is None:
            pytest.skip(f"{POSTGRES_URL_ENV} is not set")
        url = create_postgres_database(base_url)
    people = identities()
    token_file = write_token_file(directory / "tokens.toml", list(people.values()))
    running = start_server(url, "--token-file", str(token_file), log_dir=directory)
    try:
        admin = bearer(people["admin"].token)
        workflows = running.stub(workflow_pb2_grpc.WorkflowServiceStub)
        for workflow in (
            _workflow("wf-x", STATIC),
            _workflow("wf-y", STATIC),
            _workflow("dyn", DYNAMIC),
            _workflow("daily", DAILY),
            _workflow("plain"),
        ):
            workflows.RegisterWorkflow(
                workflow_pb2.RegisterWorkflowRequest(workflow=workflow), metadata=admin
            )
        runs = running.stub(run_pb2_grpc.RunServiceStub)
        worker = running.stub(worker_pb2_grpc.WorkerServiceStub)
        run_y = runs.EnqueueRun(
            run_pb2.EnqueueRunRequest(workflow_slug="wf-y", partition_key="a"), metadata=admin
        )
        claimed = worker.ClaimRun(
            worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=["wf-y"], lease_duration=seconds(3600)),
            metadata=bearer(people["worker"].token),
        )
        assert claimed.run.id == run_y.run.id
        run_x = runs.EnqueueRun(
            run_pb2.EnqueueRunRequest(workflow_slug="wf-x", partition_key="b"), metadata=admin
        )
        yield Seeded(running, people, claimed.run.id, claimed.lease_id, run_x.run.id)
    finally:
        code = running.stop()
        if base_url is not None:
            drop_postgres_database(base_url, url)
    assert code == 0, running.stderr()


# --- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    method: str  # Service/Method
    request: Callable[[Seeded], Message | bytes] | Message | bytes
    codes: set[grpc.StatusCode]
    role: str = "admin"

    def build(self, seeded: Seeded) -> Message | bytes:
        return self.request(seeded) if callable(self.request) else self.request


def register(workflow: workflow_pb2.Workflow, **fields: Any) -> workflow_pb2.RegisterWorkflowRequest:
    return workflow_pb2.RegisterWorkflowRequest(workflow=workflow, **fields)


def window(**fields: Any) -> workflow_pb2.Workflow:
    return _workflow(
        "bad-window",
        partitions_pb2.PartitionsDefinition(time_window=partitions_pb2.TimeWindowPartitions(**fields)),
    )


DAILY_FIELDS: dict[str, Any] = {"schedule_type": partitions_pb2.SCHEDULE_TYPE_DAILY, "start": "2024-01-01"}
FOREIGN_TOKEN = PageToken({"after": "x"}).encode("0" * 16)

CASES: list[Case] = [
    # WorkflowService
    Case(
        "register: empty request",
        "WorkflowService/RegisterWorkflow",
        workflow_pb2.RegisterWorkflowRequest(),
        INVALID,
    ),
    Case(
        "register: 129-character slug",
        "WorkflowService/RegisterWorkflow",
        register(_workflow("a" * 129)),
        INVALID,
    ),
    Case(
        "register: control char in slug",
        "WorkflowService/RegisterWorkflow",
        register(_workflow("a\x01b")),
        INVALID,
    ),
    Case(
        "register: invalid UTF-8 slug",
        "WorkflowService/RegisterWorkflow",
        length_delimited(1, length_delimited(1, b"wf-\xff\xfe")),
        INVALID,
    ),
    Case(
        "register: bad cron",
        "WorkflowService/RegisterWorkflow",
        register(window(cron_schedule="every tuesday", start="2024-01-01")),
        INVALID,
    ),
    Case(
        "register: cron with 7 fields",
        "WorkflowService/RegisterWorkflow",
        register(window(cron_schedule="0 0 * * * * *", start="2024-01-01")),
        INVALID,
    ),
    Case(
        "register: unknown timezone",
        "WorkflowService/RegisterWorkflow",
        register(window(**DAILY_FIELDS, timezone="Mars/Olympus_Mons")),
        INVALID,
    ),
    Case(
        "register: fmt that does not round-trip",
        "WorkflowService/RegisterWorkflow",
        register(
            window(schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2024-01-01", fmt="%Y-%m-%d")
        ),
        INVALID,
    ),
    Case(
        "register: start not in fmt",
        "WorkflowService/RegisterWorkflow",
        register(window(schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="yesterday-ish")),
        INVALID,
    ),
    Case(
        "register: end before start",
        "WorkflowService/RegisterWorkflow",
        register(window(**DAILY_FIELDS, end="2023-01-01")),
        INVALID,
    ),
    Case(
        "register: day_offset 31 for monthly",
        "WorkflowService/RegisterWorkflow",
        register(
            window(schedule_type=partitions_pb2.SCHEDULE_TYPE_MONTHLY, start="2024-01-01", day_offset=31)
        ),
        INVALID,
    ),
    Case(
        "register: negative minute_offset",
        "WorkflowService/RegisterWorkflow",
        register(window(**DAILY_FIELDS, minute_offset=-5)),
        INVALID,
    ),
    Case(
        "register: unknown schedule_type enum",
        "WorkflowService/RegisterWorkflow",
        register(window(schedule_type=UNDEFINED_ENUM, start="2024-01-01")),
        INVALID,
    ),
    Case(
        "register: duplicate static keys",
        "WorkflowService/RegisterWorkflow",
        register(
            _workflow(
                "dupes",
                partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=["a", "a"])),
            )
        ),
        INVALID,
    ),
    Case(
        "register: static key with a tab",
        "WorkflowService/RegisterWorkflow",
        register(
            _workflow(
                "tabs",
                partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=["a\tb"])),
            )
        ),
        INVALID,
    ),
    Case(
        "register: negative dynamic max_keys",
        "WorkflowService/RegisterWorkflow",
        register(
            _workflow(
                "dyn2",
                partitions_pb2.PartitionsDefinition(dynamic=partitions_pb2.DynamicPartitions(max_keys=-1)),
            )
        ),
        INVALID,
    ),
    Case(
        "register: consumes its own asset (cycle)",
        "WorkflowService/RegisterWorkflow",
        register(
            workflow_pb2.Workflow(
                slug="loop",
                produces=[workflow_pb2.AssetDeclaration(asset_id="loop/out")],
                consumes=[workflow_pb2.AssetDependency(asset_id="loop/out")],
            )
        ),
        INVALID,
    ),
    Case(
        "register: negative max_concurrent_runs",
        "WorkflowService/RegisterWorkflow",
        register(workflow_pb2.Workflow(slug="neg", max_concurrent_runs=-3)),
        INVALID,
    ),
    Case(
        "register: negative retry backoff",
        "WorkflowService/RegisterWorkflow",
        register(
            workflow_pb2.Workflow(
                slug="retry",
                retry_policy=workflow_pb2.RetryPolicy(max_attempts=3, initial_backoff=Duration(seconds=-10)),
            )
        ),
        INVALID,
    ),
    Case(
        "register: asset produced twice",
        "WorkflowService/RegisterWorkflow",
        register(
            workflow_pb2.Workflow(
                slug="twice",
                produces=[
                    workflow_pb2.AssetDeclaration(asset_id="t/o"),
                    workflow_pb2.AssetDeclaration(asset_id="t/o"),
                ],
            )
        ),
        INVALID,
    ),
    Case(
        "register: another workflow's asset",
        "WorkflowService/RegisterWorkflow",
        register(
            workflow_pb2.Workflow(slug="thief", produces=[workflow_pb2.AssetDeclaration(asset_id="wf-x/out")])
        ),
        {C.ALREADY_EXISTS},
    ),
    Case(
        "get workflow: empty slug", "WorkflowService/GetWorkflow", workflow_pb2.GetWorkflowRequest(), INVALID
    ),
    Case(
        "get workflow: NUL in slug",
        "WorkflowService/GetWorkflow",
        workflow_pb2.GetWorkflowRequest(slug="\x00"),
        INVALID,
    ),
    Case(
        "get workflow: invalid UTF-8",
        "WorkflowService/GetWorkflow",
        length_delimited(1, b"\xc3\x28"),
        INVALID,
    ),
    Case(
        "list workflows: negative page_size",
        "WorkflowService/ListWorkflows",
        workflow_pb2.ListWorkflowsRequest(page_size=-1),
        INVALID,
    ),
    Case(
        "list workflows: garbage page token",
        "WorkflowService/ListWorkflows",
        workflow_pb2.ListWorkflowsRequest(page_token="%%%not-base64%%%"),
        INVALID,
    ),
    Case(
        "list workflows: another query's token",
        "WorkflowService/ListWorkflows",
        workflow_pb2.ListWorkflowsRequest(page_token=FOREIGN_TOKEN),
        INVALID,
    ),
    Case(
        "schedule ticks: bad slug",
        "WorkflowService/ListScheduleTicks",
        workflow_pb2.ListScheduleTicksRequest(workflow_slug="NOT A SLUG", page_size=-4),
        INVALID | PENDING_OR,
    ),
    # AssetService
    Case(
        "get asset: uppercase id",
        "AssetService/GetAsset",
        asset_pb2.GetAssetRequest(asset_id="Wf-X/Out"),
        INVALID,
    ),
    Case("get asset: empty id", "AssetService/GetAsset", asset_pb2.GetAssetRequest(), INVALID),
    Case(
        "get asset: as_of with negative nanos",
        "AssetService/GetAsset",
        asset_pb2.GetAssetRequest(asset_id="wf-x/out", as_of=Timestamp(seconds=0, nanos=-1)),
        INVALID,
    ),
    Case(
        "partition keys: as_of past year 9999",
        "AssetService/ListPartitionKeys",
        asset_pb2.ListPartitionKeysRequest(asset_id="daily/out", as_of=Timestamp(seconds=253_402_300_800)),
        INVALID,
    ),
    Case(
        "list assets: negative page_size",
        "AssetService/ListAssets",
        asset_pb2.ListAssetsRequest(page_size=-100),
        INVALID,
    ),
    Case(
        "list assets: token that is JSON but no token",
        "AssetService/ListAssets",
        asset_pb2.ListAssetsRequest(page_token="eyJhIjogMX0"),
        INVALID,
    ),
    Case(
        "partition keys: negative page_size",
        "AssetService/ListPartitionKeys",
        asset_pb2.ListPartitionKeysRequest(asset_id="daily/out", page_size=-1),
        INVALID,
    ),
    Case(
        "partition keys: token of another asset",
        "AssetService/ListPartitionKeys",
        lambda s: asset_pb2.ListPartitionKeysRequest(asset_id="daily/out", page_token=FOREIGN_TOKEN),
        INVALID,
    ),
    Case(
        "add dynamic: duplicate keys",
        "AssetService/AddDynamicPartitions",
        asset_pb2.AddDynamicPartitionsRequest(asset_id="dyn/out", partition_keys=["n1", "n1"]),
        INVALID,
    ),
    Case(
        "add dynamic: control character",
        "AssetService/AddDynamicPartitions",
        asset_pb2.AddDynamicPartitionsRequest(asset_id="dyn/out", partition_keys=["bell\x07"]),
        INVALID,
    ),
    Case(
        "add dynamic: 256-character key",
        "AssetService/AddDynamicPartitions",
        asset_pb2.AddDynamicPartitionsRequest(asset_id="dyn/out", partition_keys=["k" * 256]),
        INVALID,
    ),
    Case(
        "add dynamic: no keys",
        "AssetService/AddDynamicPartitions",
        asset_pb2.AddDynamicPartitionsRequest(asset_id="dyn/out"),
        INVALID,
    ),
    Case(
        "add dynamic: invalid UTF-8 key",
        "AssetService/AddDynamicPartitions",
        with_raw(asset_pb2.AddDynamicPartitionsRequest(asset_id="dyn/out"), 2, b"\xed\xa0\x80"),
        INVALID,
    ),
    Case(
        "add dynamic: static asset",
        "AssetService/AddDynamicPartitions",
        asset_pb2.AddDynamicPartitionsRequest(asset_id="wf-x/out", partition_keys=["z"]),
        {C.FAILED_PRECONDITION},
    ),
    Case(
        "delete dynamic: key with ...",
        "AssetService/DeleteDynamicPartitions",
        asset_pb2.DeleteDynamicPartitionsRequest(asset_id="dyn/out", partition_keys=["a...b"]),
        INVALID,
    ),
    Case(
        "list partitions: unknown status enum",
        "AssetService/ListPartitions",
        asset_pb2.ListPartitionsRequest(asset_id="wf-x/out", statuses=[UNDEFINED_ENUM]),
        INVALID,
    ),
    Case(
        "get partition: leading space key",
        "AssetService/GetPartition",
        asset_pb2.GetPartitionRequest(asset_id="wf-x/out", partition_key=" a"),
        INVALID | PENDING_OR,
    ),
    Case(
        "upstream: bad asset id",
        "AssetService/GetUpstreamPartitions",
        asset_pb2.GetUpstreamPartitionsRequest(asset_id="../etc/passwd", page_size=-1),
        INVALID | PENDING_OR,
    ),
    Case(
        "downstream: bad asset id",
        "AssetService/GetDownstreamPartitions",
        asset_pb2.GetDownstreamPartitionsRequest(asset_id="", page_size=-1),
        INVALID | PENDING_OR,
    ),
    Case(
        "latest materialization: trailing space key",
        "AssetService/GetLatestMaterialization",
        asset_pb2.GetLatestMaterializationRequest(asset_id="wf-x/out", partition_key="a "),
        INVALID,
    ),
    Case(
        "materializations: garbage token",
        "AssetService/ListMaterializations",
        asset_pb2.ListMaterializationsRequest(asset_id="wf-x/out", page_token="!!"),
        INVALID,
    ),
    Case(
        "report: negative size_bytes",
        "AssetService/ReportMaterializations",
        asset_pb2.ReportMaterializationsRequest(
            materializations=[
                asset_pb2.ResultAsset(
                    asset_id="plain/out", artifacts=[asset_pb2.Artifact(file_name="f", size_bytes=-1)]
                )
            ]
        ),
        INVALID,
    ),
    Case(
        "report: key outside the spec",
        "AssetService/ReportMaterializations",
        asset_pb2.ReportMaterializationsRequest(
            materializations=[asset_pb2.ResultAsset(asset_id="wf-x/out", partition_key="zzz")]
        ),
        INVALID,
    ),
    Case(
        "report: same slice twice",
        "AssetService/ReportMaterializations",
        asset_pb2.ReportMaterializationsRequest(
            materializations=[
                asset_pb2.ResultAsset(asset_id="wf-x/out", partition_key="a"),
                asset_pb2.ResultAsset(asset_id="wf-x/out", partition_key="a"),
            ]
        ),
        INVALID,
    ),
    Case(
        "report: second item bad, all-or-nothing",
        "AssetService/ReportMaterializations",
        asset_pb2.ReportMaterializationsRequest(
            materializations=[
                asset_pb2.ResultAsset(asset_id="plain/out"),
                asset_pb2.ResultAsset(asset_id="ghost/out"),
            ]
        ),
        {C.NOT_FOUND},
    ),
    # RunService
    Case(
        "enqueue: key not in the static list",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="wf-x", partition_key="nope"),
        INVALID,
    ),
    Case(
        "enqueue: invalid UTF-8 key",
        "RunService/EnqueueRun",
        with_raw(run_pb2.EnqueueRunRequest(workflow_slug="wf-x"), 2, b"\x80abc"),
        INVALID,
    ),
    Case(
        "enqueue: unknown on_conflict enum",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="wf-x", partition_key="c", on_conflict=UNDEFINED_ENUM),
        INVALID,
    ),
    Case(
        "enqueue: 65 labels",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="plain", labels={f"l{i}": "v" for i in range(65)}),
        INVALID,
    ),
    Case(
        "enqueue: 300-character label value",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="plain", labels={"k": "v" * 300}),
        INVALID,
    ),
    Case(
        "enqueue: key past the daily end",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="daily", partition_key="2030-01-01"),
        INVALID,
    ),
    Case(
        "enqueue: unpartitioned with a key",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="plain", partition_key="x"),
        INVALID,
    ),
    Case(
        "enqueue: the in-flight slice again",
        "RunService/EnqueueRun",
        run_pb2.EnqueueRunRequest(workflow_slug="wf-x", partition_key="b"),
        {C.ALREADY_EXISTS},
    ),
    Case("enqueue: corrupt wire format", "RunService/EnqueueRun", b"\xff\xff\xff\xff", INVALID),
    Case("enqueue: truncated field", "RunService/EnqueueRun", b"\x0a\x10wf-x", INVALID),
    Case("get run: letters", "RunService/GetRun", run_pb2.GetRunRequest(run_id="abc"), INVALID),
    Case("get run: negative", "RunService/GetRun", run_pb2.GetRunRequest(run_id="-1"), INVALID),
    Case("get run: 40 digits", "RunService/GetRun", run_pb2.GetRunRequest(run_id="9" * 40), INVALID),
    Case("get run: past int64", "RunService/GetRun", run_pb2.GetRunRequest(run_id="9" * 19), INVALID),
    Case("get run: superscript digit", "RunService/GetRun", run_pb2.GetRunRequest(run_id="\u00b2"), INVALID),
    Case(
        "list runs: NUL in a label filter",
        "RunService/ListRuns",
        run_pb2.ListRunsRequest(labels={"team": "a\x00b"}),
        INVALID,
    ),
    Case(
        "list runs: unknown state",
        "RunService/ListRuns",
        run_pb2.ListRunsRequest(states=[UNDEFINED_ENUM]),
        INVALID,
    ),
    Case(
        "list runs: token of another query",
        "RunService/ListRuns",
        run_pb2.ListRunsRequest(workflow_slug="wf-x", page_token=FOREIGN_TOKEN),
        INVALID,
    ),
    Case(
        "list runs: bad backfill id",
        "RunService/ListRuns",
        run_pb2.ListRunsRequest(backfill_id="b-1"),
        INVALID,
    ),
    Case(
        "cancel run: unknown",
        "RunService/CancelRun",
        run_pb2.CancelRunRequest(run_id="424242"),
        {C.NOT_FOUND},
    ),
    Case(
        "retry run: still running",
        "RunService/RetryRun",
        lambda s: run_pb2.RetryRunRequest(run_id=s.running_run),
        {C.FAILED_PRECONDITION},
    ),
    Case(
        "watch runs: negative cursor",
        "RunService/WatchRuns",
        run_pb2.WatchRunsRequest(after_sequence=-5),
        INVALID,
    ),
    Case(
        "watch runs: bad run id and key",
        "RunService/WatchRuns",
        run_pb2.WatchRunsRequest(run_id="x", partition_keys=["\x00"]),
        INVALID,
    ),
    Case("watch runs: corrupt wire format", "RunService/WatchRuns", b"\x08", INVALID),
    # WorkerService
    Case(
        "claim: no worker id", "WorkerService/ClaimRun", worker_pb2.ClaimRunRequest(), INVALID, role="worker"
    ),
    Case(
        "claim: negative wait",
        "WorkerService/ClaimRun",
        worker_pb2.ClaimRunRequest(worker_id="w", wait=Duration(seconds=-1)),
        INVALID,
        role="worker",
    ),
    Case(
        "claim: lease under a second",
        "WorkerService/ClaimRun",
        worker_pb2.ClaimRunRequest(worker_id="w", lease_duration=Duration(nanos=500_000_000)),
        INVALID,
        role="worker",
    ),
    Case(
        "claim: bad slug",
        "WorkerService/ClaimRun",
        worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=["Bad Slug!"]),
        INVALID,
        role="worker",
    ),
    Case(
        "claim: 300-character worker id",
        "WorkerService/ClaimRun",
        worker_pb2.ClaimRunRequest(worker_id="w" * 300),
        INVALID,
        role="worker",
    ),
    Case(
        "heartbeat: wrong lease",
        "WorkerService/Heartbeat",
        lambda s: worker_pb2.HeartbeatRequest(run_id=s.running_run, lease_id="not-the-lease"),
        {C.FAILED_PRECONDITION},
        role="worker",
    ),
    Case(
        "heartbeat: progress 1.5",
        "WorkerService/Heartbeat",
        lambda s: worker_pb2.HeartbeatRequest(run_id=s.running_run, lease_id=s.lease_id, progress=1.5),
        INVALID,
        role="worker",
    ),
    Case(
        "heartbeat: progress NaN",
        "WorkerService/Heartbeat",
        lambda s: worker_pb2.HeartbeatRequest(
            run_id=s.running_run, lease_id=s.lease_id, progress=float("nan")
        ),
        INVALID,
        role="worker",
    ),
    Case(
        "heartbeat: queued run",
        "WorkerService/Heartbeat",
        lambda s: worker_pb2.HeartbeatRequest(run_id=s.queued_run, lease_id="x"),
        {C.FAILED_PRECONDITION},
        role="worker",
    ),
    Case(
        "complete: wrong lease",
        "WorkerService/CompleteRun",
        lambda s: worker_pb2.CompleteRunRequest(run_id=s.running_run, lease_id="nope"),
        {C.FAILED_PRECONDITION},
        role="worker",
    ),
    Case(
        "complete: asset the workflow does not produce",
        "WorkerService/CompleteRun",
        lambda s: worker_pb2.CompleteRunRequest(
            run_id=s.running_run, lease_id=s.lease_id, assets=[asset_pb2.ResultAsset(asset_id="plain/out")]
        ),
        INVALID,
        role="worker",
    ),
    Case(
        "complete: artifact without a name",
        "WorkerService/CompleteRun",
        lambda s: worker_pb2.CompleteRunRequest(
            run_id=s.running_run,
            lease_id=s.lease_id,
            assets=[asset_pb2.ResultAsset(asset_id="wf-y/out", artifacts=[asset_pb2.Artifact(size_bytes=3)])],
        ),
        INVALID,
        role="worker",
    ),
    Case(
        "complete: invalid UTF-8 lease id",
        "WorkerService/CompleteRun",
        lambda s: with_raw(worker_pb2.CompleteRunRequest(run_id=s.running_run), 2, b"\xff"),
        INVALID,
        role="worker",
    ),
    Case(
        "fail: unknown run",
        "WorkerService/FailRun",
        worker_pb2.FailRunRequest(run_id="31337", lease_id="x"),
        {C.NOT_FOUND},
        role="worker",
    ),
    Case(
        "fail: empty run id",
        "WorkerService/FailRun",
        worker_pb2.FailRunRequest(lease_id="x", error_message="e" * 20_000),
        INVALID,
        role="worker",
    ),
    # Another principal's workflows: a worker limited to wf-x
    Case(
        "limited worker: claims wf-y",
        "WorkerService/ClaimRun",
        worker_pb2.ClaimRunRequest(worker_id="wx", workflow_slugs=["wf-y"]),
        {C.PERMISSION_DENIED},
        role="limited",
    ),
    Case(
        "limited worker: heartbeats a wf-y run",
        "WorkerService/Heartbeat",
        lambda s: worker_pb2.HeartbeatRequest(run_id=s.running_run, lease_id=s.lease_id),
        {C.PERMISSION_DENIED},
        role="limited",
    ),
    Case(
        "limited worker: completes a wf-y run",
        "WorkerService/CompleteRun",
        lambda s: worker_pb2.CompleteRunRequest(run_id=s.running_run, lease_id=s.lease_id),
        {C.PERMISSION_DENIED},
        role="limited",
    ),
    Case(
        "limited worker: fails a wf-y run",
        "WorkerService/FailRun",
        lambda s: worker_pb2.FailRunRequest(run_id=s.running_run, lease_id=s.lease_id),
        {C.PERMISSION_DENIED},
        role="limited",
    ),
    Case(
        "reader: cancels a run",
        "RunService/CancelRun",
        lambda s: run_pb2.CancelRunRequest(run_id=s.running_run),
        {C.PERMISSION_DENIED},
        role="reader",
    ),
    # BackfillService
    Case(
        "create backfill: range end before start",
        "BackfillService/CreateBackfill",
        backfill_pb2.CreateBackfillRequest(
            workflow_slug="daily",
            selection=partitions_pb2.PartitionSelection(
                range=partitions_pb2.PartitionRange(start_key="2024-01-20", end_key="2024-01-02")
            ),
        ),
        INVALID | PENDING_OR,
    ),
    Case(
        "create backfill: negative max_concurrent_runs",
        "BackfillService/CreateBackfill",
        backfill_pb2.CreateBackfillRequest(
            workflow_slug="wf-x",
            selection=partitions_pb2.PartitionSelection(all=partitions_pb2.PartitionSelection.All()),
            max_concurrent_runs=-1,
        ),
        INVALID | PENDING_OR,
    ),
    Case(
        "get backfill: not an id",
        "BackfillService/GetBackfill",
        backfill_pb2.GetBackfillRequest(backfill_id="';DROP TABLE run;--"),
        INVALID | PENDING_OR,
    ),
    Case(
        "list backfills: unknown state",
        "BackfillService/ListBackfills",
        backfill_pb2.ListBackfillsRequest(states=[UNDEFINED_ENUM]),
        INVALID,
    ),
    Case(
        "backfill partitions: unknown state",
        "BackfillService/ListBackfillPartitions",
        backfill_pb2.ListBackfillPartitionsRequest(backfill_id="1", states=[UNDEFINED_ENUM]),
        INVALID,
    ),
    Case(
        "cancel backfill: empty id",
        "BackfillService/CancelBackfill",
        backfill_pb2.CancelBackfillRequest(),
        INVALID | PENDING_OR,
    ),
    Case(
        "retry backfill: negative id",
        "BackfillService/RetryBackfill",
        backfill_pb2.RetryBackfillRequest(backfill_id="-3", partition_keys=["\x1b[31m"]),
        INVALID | PENDING_OR,
    ),
    Case(
        "watch backfill: negative cursor",
        "BackfillService/WatchBackfill",
        backfill_pb2.WatchBackfillRequest(backfill_id="x", after_sequence=-1),
        INVALID | PENDING_OR,
    ),
]


def test_the_suite_is_big_and_covers_every_rpc() -> None:
    assert len(CASES) >= 40
    covered = {f"/partita.v1.{case.method}" for case in CASES}
    assert covered == set(partita_methods()), sorted(set(partita_methods()) - covered)
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_malformed_request(seeded: Seeded, case: Case) -> None:
    path = f"/partita.v1.{case.method}"
    streaming = partita_methods()[path].server_streaming
    before = dump_database(seeded.server.database_url)
    outcome = invoke(
        seeded.server.channel(),
        path,
        case.build(seeded),
        seeded.people[case.role].token,
        streaming=streaming,
        timeout=5,
    )
    assert outcome.code not in FORBIDDEN, outcome
    assert outcome.code in case.codes, outcome
    assert outcome.reason, "every error carries an ErrorInfo"
    assert dump_database(seeded.server.database_url) == before
    assert health_status(seeded.server) == health_pb2.HealthCheckResponse.SERVING
