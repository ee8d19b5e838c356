"""The `partita` CLI run as a subprocess against a real server (tests/conftest.py `server`).

result = cli("runs", "ls")                     # PARTITA_SERVER points at the test server
assert result.returncode == 0, result.stderr
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, RunningServer

Cli = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(address: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PARTITA_SERVER": address, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "120"}
    env.pop("PARTITA_TOKEN", None)
    return {**env, **(extra or {})}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_cli(
    address: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args),
        cwd=cwd or REPO_ROOT,
        env=cli_env(address, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def cli(server: RunningServer) -> Cli:
    def call(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return run_cli(server.address, *args, **kwargs)  # type: ignore[arg-type]

    return call


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


DAILY_CONFIG = """\
[workflows.sales]
retry_policy = { max_attempts = 1 }

[workflows.sales.assets."sales/daily-csv"]
partitions = { daily = { start = "2024-01-01", end = "2024-04-01" } }
"""


@pytest.fixture
def daily(cli: Cli, tmp_path: Path) -> str:
    """Registers workflow `sales` (asset sales/daily-csv, 2024-01-01 … 2024-03-31, no retries)."""
    result = cli("apply", "-f", str(write(tmp_path / "daily.toml", DAILY_CONFIG)))
    assert result.returncode == 0, result.stderr
    return "sales"


def work(server: RunningServer, *, failing: frozenset[str] = frozenset(), idle_seconds: int = 1) -> list[str]:
    """Claims and finishes runs until a claim comes back empty; returns the keys handled."""
    from google.protobuf.duration_pb2 import Duration

    from partita.v1 import worker_pb2, worker_pb2_grpc

    workers = server.stub(worker_pb2_grpc.WorkerServiceStub)
    handled: list[str] = []
    while True:
        claim = workers.ClaimRun(
            worker_pb2.ClaimRunRequest(worker_id="test", wait=Duration(seconds=idle_seconds)),
            timeout=idle_seconds + 10,
        )
        if not claim.HasField("run"):
            return handled
        key = claim.run.partition_key
        if key in failing:
            workers.FailRun(
                worker_pb2.FailRunRequest(
                    run_id=claim.run.id, lease_id=claim.lease_id, error_message="boom", retryable=False
                )
            )
        else:
            workers.CompleteRun(worker_pb2.CompleteRunRequest(run_id=claim.run.id, lease_id=claim.lease_id))
        handled.append(key)
