"""`partita backfill`: create (range, keys, --missing), --watch progress bars, ls/get/retry/cancel."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

from rich.console import Console

from cli.backfill import watch_with_progress
from cli.client import Client, ConnectionSettings
from partita.v1 import backfill_pb2, backfill_pb2_grpc, partitions_pb2
from tests.cli.conftest import Cli, cli_command, cli_env, work
from tests.harness import REPO_ROOT, RunningServer


def backfill_id(output: str) -> str:
    match = re.search(r"^backfill (\d+) of ", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def test_watch_draws_bars_that_end_at_100_percent(server: RunningServer, daily: str) -> None:
    """The progress bars, recorded by rich's console, end with every key done."""
    backfills = server.stub(backfill_pb2_grpc.BackfillServiceStub)
    created = backfills.CreateBackfill(
        backfill_pb2.CreateBackfillRequest(
            workflow_slug="sales",
            selection=partitions_pb2.PartitionSelection(
                range=partitions_pb2.PartitionRange(start_key="2024-01-01", end_key="2024-01-08")
            ),
            max_concurrent_runs=3,
        )
    ).backfill
    worker = threading.Thread(target=work, args=(server,), kwargs={"idle_seconds": 3})
    worker.start()
    console = Console(record=True, force_terminal=True, width=100, color_system=None)
    client = Client.connect(ConnectionSettings(server=server.address))
    try:
        final = watch_with_progress(client, created, console)
    finally:
        client.close()
        worker.join(timeout=60)
    assert final.state == backfill_pb2.BACKFILL_STATE_COMPLETED
    text = console.export_text()
    # The recording holds every frame, one after another (the cursor moves are dropped): the
    # last frame starts at the last "done" bar.
    last_frame = text[text.rindex("done ") :]
    assert re.search(r"^done\s+━+\s+8/8\s+100%", last_frame, re.MULTILINE), text
    assert re.search(r"succeeded\s+━+\s+8/8\s+100%", last_frame), text
    assert re.search(r"pending\s+0/8\s+0%", last_frame), text


def test_backfill_watch_from_the_command_line(server: RunningServer, daily: str, tmp_path: Path) -> None:
    """`partita backfill ... --watch` with the CLI worker: the bar ends at 100%, exit code 0."""
    worker = subprocess.Popen(
        cli_command("worker", "--workflow", "sales", "--exec", "true", "--concurrency", "2", "--wait", "2s"),
        cwd=REPO_ROOT,
        env=cli_env(server.address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = subprocess.run(
            cli_command(
                "backfill",
                "sales",
                "--from",
                "2024-02-01",
                "--to",
                "2024-02-10",
                "--watch",
                "--max-concurrent",
                "4",
            ),
            cwd=REPO_ROOT,
            env=cli_env(server.address),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        worker.terminate()
        _, worker_err = worker.communicate(timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^done\s.*10/10\s+100%", result.stdout, re.MULTILINE), result.stdout
    assert "COMPLETED: 10 succeeded (of 10)" in result.stdout
    assert worker.returncode == 0, worker_err


def test_missing_in_a_range_and_failures(cli: Cli, server: RunningServer, daily: str) -> None:
    first = cli("backfill", "sales", "--from", "2024-01-01", "--to", "2024-01-04")
    assert first.returncode == 0, first.stderr
    assert "2024-01-01 … 2024-01-04 (4 keys)" in first.stdout
    work(server, failing=frozenset({"2024-01-03"}))

    missing = cli(
        "backfill", "create", "sales", "--from", "2024-01-01", "--to", "2024-01-06", "--missing", "--json"
    )
    assert missing.returncode == 0, missing.stderr
    created = json.loads(missing.stdout)
    assert created["selection"]["keys"]["partition_keys"] == ["2024-01-03", "2024-01-05", "2024-01-06"]
    work(server)

    nothing = cli("backfill", "sales", "--from", "2024-01-01", "--to", "2024-01-02", "--missing")
    assert nothing.returncode == 0 and "nothing to backfill" in nothing.stdout

    identifier = backfill_id(first.stdout)
    shown = cli("backfill", "get", identifier, "--partitions", "--state", "failed")
    assert shown.returncode == 0, shown.stderr
    assert "COMPLETED_WITH_FAILURES" in shown.stdout and "3 succeeded, 1 failed" in shown.stdout
    assert re.search(r"2024-01-03\s+FAILED\s+1\s+\d+\s+boom", shown.stdout), shown.stdout

    watched = cli("backfill", "watch", identifier)
    assert watched.returncode == 1  # ended with failures
    assert "COMPLETED_WITH_FAILURES" in watched.stdout

    retried = cli("backfill", "retry", identifier)
    assert retried.returncode == 0, retried.stderr
    assert "RUNNING" in retried.stdout and "1 pending" in retried.stdout
    work(server)
    listed = cli("backfill", "ls", "--workflow", "sales")
    assert listed.returncode == 0
    assert re.search(
        rf"^{identifier}\s+sales\s+2024-01-01 … 2024-01-04\s+COMPLETED\s+4/4", listed.stdout, re.MULTILINE
    ), listed.stdout


def test_cancel_and_bad_selections(cli: Cli, server: RunningServer, daily: str) -> None:
    created = cli("backfill", "sales", "--all", "--max-concurrent", "1")
    assert created.returncode == 0, created.stderr
    identifier = backfill_id(created.stdout)
    canceled = cli("backfill", "cancel", identifier)
    assert canceled.returncode == 0, canceled.stderr
    assert f"backfill {identifier} CANCEL" in canceled.stdout

    assert cli("backfill", "sales").returncode == 2  # no keys named
    assert cli("backfill", "sales", "--from", "2024-01-01").returncode == 2
    bad = cli("backfill", "sales", "--from", "2024-01-01", "--to", "2024-13-01")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    unknown = cli("backfill", "nope", "--all")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
