"""`python -m server --metrics-listen HOST:PORT`: Prometheus text at /metrics, read at scrape time."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client.parser import text_string_to_metric_families

from partita.v1 import (
    backfill_pb2,
    backfill_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.harness import RunningServer, run_server_to_exit, start_server

ALLOWED_LABELS = {"method", "code", "workflow", "state", "le"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def metrics_server(database_url: str, tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    address = f"127.0.0.1:{free_port()}"
    running = start_server(database_url, "--metrics-listen", address, log_dir=tmp_path)
    try:
        yield running, f"http://{address}"
    finally:
        assert running.stop() == 0, running.stderr()


def scrape(base: str) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(family.name, []).append((dict(sample.labels), sample.value, sample.name))
    return families


def value(
    families: dict[str, list[tuple[dict[str, str], float, str]]], name: str, sample: str, **labels: str
) -> float:
    for found_labels, number, sample_name in families.get(name, []):
        if sample_name == sample and all(found_labels.get(k) == v for k, v in labels.items()):
            return number
    raise AssertionError(f"no {sample}{labels} in {name}: {families.get(name)}")


def test_metrics_exposition(metrics_server: tuple[RunningServer, str]) -> None:
    running, base = metrics_server
    daily = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01", end="2024-02-01"
        )
    )
    running.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="sales",
                produces=[workflow_pb2.AssetDeclaration(asset_id="sales/daily", partitioning=daily)],
            )
        )
    )
    runs = running.stub(run_pb2_grpc.RunServiceStub)
    for key in ("2024-01-01", "2024-01-02"):
        runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="sales", partition_key=key))
    with pytest.raises(grpc.RpcError):
        runs.GetRun(run_pb2.GetRunRequest(run_id="424242"))
    claim = running.stub(worker_pb2_grpc.WorkerServiceStub).ClaimRun(
        worker_pb2.ClaimRunRequest(worker_id="w", wait=Duration(seconds=1)), timeout=10
    )
    assert claim.HasField("run")
    running.stub(backfill_pb2_grpc.BackfillServiceStub).CreateBackfill(
        backfill_pb2.CreateBackfillRequest(
            workflow_slug="sales",
            selection=partitions_pb2.PartitionSelection(
                range=partitions_pb2.PartitionRange(start_key="2024-01-10", end_key="2024-01-14")
            ),
            max_concurrent_runs=1,
        )
    )

    families = scrape(base)
    rpc = "partita_rpc_duration_seconds"
    enqueue = value(families, rpc, f"{rpc}_count", method="/partita.v1.RunService/EnqueueRun", code="OK")
    assert enqueue >= 2
    assert value(families, rpc, f"{rpc}_count", method="/partita.v1.RunService/GetRun", code="NOT_FOUND") == 1
    assert (
        value(
            families, rpc, f"{rpc}_bucket", method="/partita.v1.RunService/EnqueueRun", code="OK", le="+Inf"
        )
        == enqueue
    )
    assert value(families, "partita_database_up", "partita_database_up") == 1
    assert value(families, "partita_runs", "partita_runs", workflow="sales", state="RUNNING") == 1
    assert value(families, "partita_runs", "partita_runs", workflow="sales", state="SUCCEEDED") == 0
    queued = value(families, "partita_runs", "partita_runs", workflow="sales", state="QUEUED")
    assert queued >= 1  # 2024-01-02, plus the backfill's first run once dispatched
    assert value(families, "partita_queue_depth", "partita_queue_depth", workflow="sales") == queued
    assert (
        value(
            families, "partita_queue_oldest_age_seconds", "partita_queue_oldest_age_seconds", workflow="sales"
        )
        >= 0
    )
    latency = "partita_claim_latency_seconds"
    assert value(families, latency, f"{latency}_bucket", workflow="sales", le="+Inf") == 1
    assert value(families, "partita_backfills", "partita_backfills", workflow="sales", state="RUNNING") == 1
    total = sum(
        number
        for labels, number, _ in families["partita_backfill_partitions"]
        if labels.get("workflow") == "sales"
    )
    assert total == 5
    assert "process_cpu_seconds" in families or "process_cpu_seconds_total" in families
    for name, samples in families.items():
        for labels, _, _ in samples:
            assert set(labels) <= ALLOWED_LABELS, (name, labels)  # never a partition key or run id


def _watch_gauges(base: str) -> tuple[float, float]:
    families = scrape(base)
    return (
        value(families, "partita_watch_streams", "partita_watch_streams"),
        value(families, "partita_watch_buffered_events", "partita_watch_buffered_events"),
    )


def test_watch_gauges_and_no_buffering_while_nobody_watches(
    metrics_server: tuple[RunningServer, str],
) -> None:
    running, base = metrics_server
    running.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
        workflow_pb2.RegisterWorkflowRequest(workflow=workflow_pb2.Workflow(slug="nightly"))
    )
    runs = running.stub(run_pb2_grpc.RunServiceStub)
    first = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="nightly")).run
    assert _watch_gauges(base) == (0, 0)  # the follower read nothing for nobody

    stream = runs.WatchRuns(run_pb2.WatchRunsRequest(workflow_slug="nightly"))
    try:
        assert next(stream).event.run_id == first.id  # replayed from the database
        runs.CancelRun(run_pb2.CancelRunRequest(run_id=first.id))
        second = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="nightly")).run
        seen = [next(stream).event for _ in range(2)]
        assert [(event.run_id, event.type) for event in seen] == [
            (first.id, run_pb2.RUN_EVENT_TYPE_CANCELED),
            (second.id, run_pb2.RUN_EVENT_TYPE_QUEUED),
        ]
        streams, buffered = _watch_gauges(base)
        assert streams == 1 and buffered >= 2
    finally:
        stream.cancel()
    deadline = time.monotonic() + 15
    while _watch_gauges(base) != (0, 0):  # the follower lets go within its poll interval
        assert time.monotonic() < deadline, _watch_gauges(base)
        time.sleep(0.1)


def test_other_paths(metrics_server: tuple[RunningServer, str]) -> None:
    _, base = metrics_server
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nope", timeout=10)
    assert missing.value.code == 404
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        assert b"/metrics" in response.read()


def test_a_taken_metrics_port_stops_the_server(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server_to_exit(database_url, "--metrics-listen", f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert "--metrics-listen" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout
