"""`partita partitions`, `partita run`, `partita runs ls|get|cancel|retry`."""

from __future__ import annotations

import json

from partita.v1 import run_pb2, run_pb2_grpc
from tests.cli.conftest import Cli, work
from tests.harness import RunningServer


def enqueue(cli: Cli, key: str, *extra: str) -> str:
    result = cli("run", "sales", "--partition", key, *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run ") and result.stdout.rstrip().endswith("QUEUED"), result.stdout
    return result.stdout.split()[1]


def test_partitions_are_range_compressed(cli: Cli, server: RunningServer, daily: str) -> None:
    for day in range(1, 11):
        enqueue(cli, f"2024-01-{day:02d}")
    enqueue(cli, "2024-02-15")
    work(server, failing=frozenset({"2024-01-05"}))
    enqueue(cli, "2024-03-31")  # stays queued: IN_PROGRESS

    view = cli("partitions", "sales/daily-csv")
    assert view.returncode == 0, view.stderr
    lines = [" ".join(line.split()) for line in view.stdout.splitlines()]
    assert "2024-01-01 … 2024-01-04 MATERIALIZED (4)" in lines
    assert "2024-01-05 FAILED (1)" in lines
    assert "2024-01-06 … 2024-01-10 MATERIALIZED (5)" in lines
    assert "2024-01-11 … 2024-02-14 MISSING (35)" in lines
    assert "2024-02-15 MATERIALIZED (1)" in lines
    assert "2024-02-16 … 2024-03-30 MISSING (44)" in lines
    assert "2024-03-31 IN_PROGRESS (1)" in lines
    assert "sales/daily-csv: 91 partitions — MATERIALIZED 10, FAILED 1, IN_PROGRESS 1, MISSING 79" in lines

    failed = cli("partitions", "sales/daily-csv", "--status", "failed", "--status", "in_progress")
    compact = [" ".join(line.split()) for line in failed.stdout.splitlines()]
    assert "2024-01-05 FAILED (1)" in compact and "2024-03-31 IN_PROGRESS (1)" in compact
    assert not any("MATERIALIZED (" in line for line in compact)

    as_json = json.loads(cli("partitions", "sales/daily-csv", "--json").stdout)
    assert as_json["total"] == 91
    assert as_json["status_counts"]["MATERIALIZED"] == 10
    assert as_json["ranges"][0] == {
        "start": "2024-01-01",
        "end": "2024-01-04",
        "status": "MATERIALIZED",
        "count": 4,
    }
    assert sum(r["count"] for r in as_json["ranges"]) == 91


def test_run_with_parameters_and_labels(cli: Cli, server: RunningServer, daily: str) -> None:
    run_id = enqueue(
        cli, "2024-01-15", "--param", "pages=3", "--param", "format=pdf", "--label", "team=finance"
    )
    run = server.stub(run_pb2_grpc.RunServiceStub).GetRun(run_pb2.GetRunRequest(run_id=run_id)).run
    assert run.parameters["pages"] == 3 and run.parameters["format"] == "pdf"
    assert dict(run.labels) == {"team": "finance"}

    again = cli("run", "sales", "--partition", "2024-01-15")
    assert again.returncode == 1
    assert "ALREADY_EXISTS" in again.stderr and "[RUN_IN_FLIGHT]" in again.stderr
    same = cli("run", "sales", "--partition", "2024-01-15", "--use-existing")
    assert same.stdout.split()[1] == run_id

    bad = cli("run", "sales", "--partition", "2024-02-30")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "partition_key" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_runs_ls_get_cancel_retry(cli: Cli, server: RunningServer, daily: str) -> None:
    first = enqueue(cli, "2024-01-01")
    second = enqueue(cli, "2024-01-02")

    listed = cli("runs", "ls", "--workflow", "sales")
    assert listed.returncode == 0, listed.stderr
    assert "2024-01-01" in listed.stdout and "2024-01-02" in listed.stdout and "QUEUED" in listed.stdout
    as_json = json.loads(cli("runs", "ls", "--partition", "2024-01-02", "--json").stdout)
    assert [r["id"] for r in as_json["runs"]] == [second]

    shown = cli("runs", "get", first)
    assert "2024-01-01" in shown.stdout and "QUEUED" in shown.stdout
    assert json.loads(cli("runs", "get", first, "--json").stdout)["partition_key"] == "2024-01-01"

    canceled = cli("runs", "cancel", first, "--reason", "wrong day")
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() == f"run {first} CANCELED"
    assert "CANCELED" in cli("runs", "ls", "--state", "canceled").stdout

    retried = cli("runs", "retry", first)
    assert retried.returncode == 0, retried.stderr
    assert f"(retry of run {first})" in retried.stdout and "2024-01-01 QUEUED" in retried.stdout

    missing = cli("runs", "get", "999999")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_unreachable_server_is_a_clear_error(cli: Cli) -> None:
    result = cli("runs", "ls", "--server", "127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot reach the Partita server at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
