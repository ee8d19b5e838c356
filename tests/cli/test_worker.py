"""`partita worker --exec CMD`: artifacts, failures, cancellation, concurrency, argv vs sh -c."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from partita.v1 import asset_pb2, asset_pb2_grpc, run_pb2, run_pb2_grpc
from tests.cli.conftest import Cli, cli_command, cli_env, write
from tests.harness import REPO_ROOT, RunningServer

SCRIPT = """\
import json, os, sys
from pathlib import Path
key, pages, out = sys.argv[1], sys.argv[2], sys.argv[3]
Path(out, "data.csv").write_text("a,b\\n1,2\\n")
Path(out, "nested").mkdir(exist_ok=True)
Path(out, "nested", "extra.json").write_text("{}")
listed = Path(os.environ["PARTITA_OUTPUT_DIR"]).parent / f"{key}.txt"
listed.write_text("hello " * int(pages))
print("working", flush=True)
print("PROGRESS 0.5 half way", flush=True)
print(f"ARTIFACT {listed}")
print('PAYLOAD {"rows": 1, "run": "%s"}' % os.environ["PARTITA_RUN_ID"])
"""


def run_of(server: RunningServer, run_id: str) -> run_pb2.Run:
    return server.stub(run_pb2_grpc.RunServiceStub).GetRun(run_pb2.GetRunRequest(run_id=run_id)).run


def enqueue(cli: Cli, key: str, *extra: str) -> str:
    result = cli("run", "sales", "--partition", key, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def worker(cli: Cli, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = cli("worker", "--workflow", "sales", "--wait", "1s", "--exit-when-idle", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def test_success_reports_artifacts_and_payload(
    cli: Cli, server: RunningServer, daily: str, tmp_path: Path
) -> None:
    script = write(tmp_path / "job.py", SCRIPT)
    run_id = enqueue(cli, "2024-01-15", "--param", "pages=3")
    result = worker(
        cli,
        "--exec",
        f"{sys.executable} {script} {{partition_key}} {{param.pages}} {{output_dir}}",
        "--output-dir",
        str(tmp_path / "out" / "{partition_key}"),
    )
    assert f"run {run_id} sales 2024-01-15 succeeded" in result.stderr
    assert "(3 artifacts)" in result.stderr
    assert f"run {run_id} | working" in result.stderr  # other stdout lines are echoed
    assert run_of(server, run_id).state == run_pb2.RUN_STATE_SUCCEEDED

    latest = (
        server.stub(asset_pb2_grpc.AssetServiceStub)
        .GetLatestMaterialization(
            asset_pb2.GetLatestMaterializationRequest(asset_id="sales/daily-csv", partition_key="2024-01-15")
        )
        .materialization
    )
    artifacts = {a.file_name: a for a in latest.artifacts}
    assert set(artifacts) == {"2024-01-15.txt", "data.csv", "nested/extra.json"}
    listed = artifacts["2024-01-15.txt"]
    assert listed.storage_url == (tmp_path / "out" / "2024-01-15.txt").resolve().as_uri()
    assert listed.size_bytes == len("hello " * 3) and listed.content_type == "text/plain"
    assert artifacts["data.csv"].content_type == "text/csv" and artifacts["data.csv"].size_bytes == 8
    assert artifacts["data.csv"].storage_url.startswith("file:///")
    assert latest.payload["rows"] == 1 and latest.payload["run"] == run_id


def test_failure_reports_exit_status_and_stderr_tail(cli: Cli, server: RunningServer, daily: str) -> None:
    run_id = enqueue(cli, "2024-01-16")
    command = "for i in 1 2 3; do echo line $i >&2; done; echo 'cannot read input' >&2; exit 3"
    result = worker(cli, "--exec", command, "--shell")
    assert "failed (the command exited with status 3" in result.stderr
    run = run_of(server, run_id)
    assert run.state == run_pb2.RUN_STATE_FAILED  # the fixture's workflow has no retries
    assert run.error_message.startswith("the command exited with status 3; stderr:")
    assert run.error_message.rstrip().endswith("line 3\ncannot read input")


def test_a_missing_parameter_fails_the_run_for_good(cli: Cli, server: RunningServer, daily: str) -> None:
    run_id = enqueue(cli, "2024-01-17")
    worker(cli, "--exec", "echo {param.nope}")
    run = run_of(server, run_id)
    assert run.state == run_pb2.RUN_STATE_FAILED
    assert "the run has no parameter 'nope'" in run.error_message


def test_argv_without_a_shell_keeps_values_whole(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = '[workflows.sales.assets."sales/by-city"]\npartitions = { static = ["new york", "it\'s; rm -rf x"] }\n'
    assert cli("apply", "-f", str(write(tmp_path / "c.toml", config))).returncode == 0
    first = enqueue(cli, "new york", "--param", "note=$HOME and `x`")
    second = enqueue(cli, "it's; rm -rf x")
    record = tmp_path / "argv.jsonl"
    dump = f"import json, sys; open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')"
    worker(
        cli,
        "--exec",
        f"{sys.executable} -c {json.dumps(dump)} {{partition_key}} {{param[note]}}",
        "--max-runs",
        "1",
    )
    worker(cli, "--shell", "--exec", f"{sys.executable} -c {json.dumps(dump)} {{partition_key}} {{run_id}}")
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[0] == ["new york", "$HOME and `x`"]
    assert lines[1] == ["it's; rm -rf x", second]
    assert run_of(server, first).state == run_of(server, second).state == run_pb2.RUN_STATE_SUCCEEDED


def test_cancel_stops_the_command(cli: Cli, server: RunningServer, daily: str, tmp_path: Path) -> None:
    run_id = enqueue(cli, "2024-01-18")
    marker = tmp_path / "still-running"
    process = subprocess.Popen(
        cli_command(
            "worker",
            "--workflow",
            "sales",
            "--heartbeat",
            "0.3s",
            "--wait",
            "1s",
            "--exit-when-idle",
            "--shell",
            "--exec",
            f"sleep 30; touch {marker}",
        ),
        cwd=REPO_ROOT,
        env=cli_env(server.address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while run_of(server, run_id).state != run_pb2.RUN_STATE_RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        assert cli("runs", "cancel", run_id).returncode == 0
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - started < 15
    assert process.returncode == 0, stderr
    assert "cancel requested; stopping the command" in stderr
    assert run_of(server, run_id).state == run_pb2.RUN_STATE_CANCELED
    assert not marker.exists()


def test_concurrency_runs_commands_side_by_side(cli: Cli, server: RunningServer, daily: str) -> None:
    ids = [enqueue(cli, f"2024-02-0{day}") for day in (1, 2, 3)]
    worker(cli, "--exec", "sleep 1.5", "--concurrency", "3", "--quiet")
    runs = [run_of(server, run_id) for run_id in ids]
    assert all(r.state == run_pb2.RUN_STATE_SUCCEEDED for r in runs)
    latest_start = max(r.start_time.ToDatetime() for r in runs)
    earliest_end = min(r.end_time.ToDatetime() for r in runs)
    assert latest_start < earliest_end  # all three ran at the same time


def test_sigterm_hands_the_run_back(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = '[workflows.sales]\nretry_policy = { max_attempts = 3, initial_backoff = "1s" }\n[workflows.sales.assets."a/b"]\npartitions = { static = ["x"] }\n'
    assert cli("apply", "-f", str(write(tmp_path / "c.toml", config))).returncode == 0
    run_id = enqueue(cli, "x")
    process = subprocess.Popen(
        cli_command("worker", "--workflow", "sales", "--exec", "sleep 30", "--kill-grace", "1s"),
        cwd=REPO_ROOT,
        env=cli_env(server.address),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while run_of(server, run_id).state != run_pb2.RUN_STATE_RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    run = run_of(server, run_id)
    assert run.state == run_pb2.RUN_STATE_QUEUED and run.attempt == 2, stderr
    assert run.error_message.startswith("the worker stopped before the command"), run.error_message
