"""Shared fixtures: a database per test (SQLite, and PostgreSQL when configured) and a real server.

- `database_url`: parametrized `sqlite` (a file in tmp_path) and `postgres` (a fresh database
  per test through PARTITA_TEST_POSTGRES_URL, dropped afterwards; skipped when unset).
- `server`: `python -m server` started as a subprocess on that database (tests/harness.py),
  stopped with SIGTERM at teardown, which must exit 0.
- `workflow_stub`, `asset_stub`, `run_stub`, `worker_stub`, `backfill_stub`: sync stubs on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from partita.v1 import asset_pb2_grpc, backfill_pb2_grpc, run_pb2_grpc, worker_pb2_grpc, workflow_pb2_grpc
from tests.harness import (
    POSTGRES_URL_ENV,
    RunningServer,
    create_postgres_database,
    drop_postgres_database,
    postgres_base_url,
    start_server,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for this test: `sqlite:///<tmp>/partita.db` or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'partita.db'}"
        return
    base_url = postgres_base_url()
    if base_url is None:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set")
    url = create_postgres_database(base_url)
    try:
        yield url
    finally:
        drop_postgres_database(base_url, url)


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A running `python -m server` on `database_url`; must shut down cleanly at teardown."""
    running = start_server(database_url, log_dir=tmp_path)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, f"server exited with {code}; stderr:\n{running.stderr()}"


@pytest.fixture
def workflow_stub(server: RunningServer) -> workflow_pb2_grpc.WorkflowServiceStub:
    return server.stub(workflow_pb2_grpc.WorkflowServiceStub)


@pytest.fixture
def asset_stub(server: RunningServer) -> asset_pb2_grpc.AssetServiceStub:
    return server.stub(asset_pb2_grpc.AssetServiceStub)


@pytest.fixture
def run_stub(server: RunningServer) -> run_pb2_grpc.RunServiceStub:
    return server.stub(run_pb2_grpc.RunServiceStub)


@pytest.fixture
def worker_stub(server: RunningServer) -> worker_pb2_grpc.WorkerServiceStub:
    return server.stub(worker_pb2_grpc.WorkerServiceStub)


@pytest.fixture
def backfill_stub(server: RunningServer) -> backfill_pb2_grpc.BackfillServiceStub:
    return server.stub(backfill_pb2_grpc.BackfillServiceStub)
