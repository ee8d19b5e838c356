"""`partita watch`: tails run events; resumable with --after; prints the last sequence on exit."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from tests.cli.conftest import Cli, cli_command, cli_env, work
from tests.harness import REPO_ROOT, RunningServer


def last_sequence(stderr: str) -> int:
    match = re.search(r"last sequence (\d+) \(resume with --after \1\)", stderr)
    assert match, stderr
    return int(match.group(1))


def test_watch_counts_and_resumes(cli: Cli, server: RunningServer, daily: str) -> None:
    for key in ("2024-01-01", "2024-01-02"):
        assert cli("run", "sales", "--partition", key).returncode == 0
    work(server)  # each run: QUEUED, STARTED, SUCCEEDED, MATERIALIZED

    first = cli("watch", "sales", "--count", "3")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 3
    assert "QUEUED" in lines[0] and "sales" in lines[0] and "2024-01-01" in lines[0]
    after = last_sequence(first.stderr)
    assert after == int(lines[-1].split()[0])

    rest = cli("watch", "sales", "--after", str(after), "--idle-timeout", "2", "--json")
    assert rest.returncode == 0, rest.stderr
    events = [json.loads(line) for line in rest.stdout.splitlines()]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences and min(sequences) > after and sequences == sorted(sequences)
    assert {e["type"] for e in events} >= {"RUN_EVENT_TYPE_SUCCEEDED"}
    assert all(e.get("partition_key") in ("2024-01-01", "2024-01-02") for e in events)
    assert last_sequence(rest.stderr) == sequences[-1]

    only = cli("watch", "sales", "--partition", "2024-01-02", "--idle-timeout", "2")
    assert only.stdout and all("2024-01-02" in line for line in only.stdout.splitlines())

    now = cli("watch", "--from-now", "--idle-timeout", "1")
    assert now.returncode == 0 and now.stdout == ""
    assert last_sequence(now.stderr) >= sequences[-1]


def test_ctrl_c_prints_the_last_sequence(server: RunningServer, cli: Cli, daily: str) -> None:
    watcher = subprocess.Popen(
        cli_command("watch", "sales"),
        cwd=REPO_ROOT,
        env=cli_env(server.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert cli("run", "sales", "--partition", "2024-01-05").returncode == 0
        assert watcher.stdout is not None
        line = watcher.stdout.readline()  # the live QUEUED event
        assert "QUEUED" in line and "2024-01-05" in line
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert last_sequence(stderr) == int(line.split()[0])
