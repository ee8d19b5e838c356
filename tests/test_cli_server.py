"""`python -m server`: flags, startup failures, restarts, and its log lines."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.logging import configure_logging, log_event
from tests.harness import RunningServer, run_server_to_exit, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING


def _check(running: RunningServer) -> int:
    health = running.stub(health_pb2_grpc.HealthStub)
    status: int = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    return status


def test_port_zero_prints_the_bound_port_once(database_url: str, tmp_path: Path) -> None:
    running = start_server(database_url, listen="127.0.0.1:0", log_dir=tmp_path)
    try:
        host, _, port = running.address.rpartition(":")
        assert host == "127.0.0.1"
        assert port.isdigit() and int(port) > 0
        assert _check(running) == SERVING
    finally:
        assert running.stop() == 0, running.stderr()
    assert running.stdout() == f"listening on {running.address}\n"


def test_no_migrate_refuses_a_database_that_is_behind(database_url: str) -> None:
    result = run_server_to_exit(database_url, "--no-migrate")
    assert result.returncode == 2, result.stderr
    assert "listening on" not in result.stdout
    assert "schema" in result.stderr and "--no-migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_restart_and_no_migrate_on_an_up_to_date_database(database_url: str, tmp_path: Path) -> None:
    first = start_server(database_url, log_dir=tmp_path)  # migrates
    assert _check(first) == SERVING
    assert first.stop() == 0, first.stderr()

    again = start_server(database_url, "--no-migrate", log_dir=tmp_path)
    try:
        assert _check(again) == SERVING
    finally:
        assert again.stop() == 0, again.stderr()


def test_two_servers_share_one_database(database_url: str, tmp_path: Path) -> None:
    one = start_server(database_url, log_dir=tmp_path)
    two = start_server(database_url, log_dir=tmp_path)
    try:
        assert one.address != two.address
        assert _check(one) == SERVING
        assert _check(two) == SERVING
    finally:
        codes = (one.stop(), two.stop())
    assert codes == (0, 0), one.stderr() + two.stderr()


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://root@localhost/partita", "sqlite://", "postgresql://postgres@127.0.0.1:5432"],
)
def test_an_unusable_database_url_is_refused_clearly(url: str) -> None:
    result = run_server_to_exit(url)
    assert result.returncode == 2, result.stderr
    assert "--database" in result.stderr and "database URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


def test_an_unreachable_database_fails_to_start(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_server_to_exit(f"postgresql://postgres@127.0.0.1:{port}/nothing")
    assert result.returncode == 1, result.stderr
    assert "cannot open database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_fails_to_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'partita.db'}"
    running = start_server(url, log_dir=tmp_path)
    try:
        result = run_server_to_exit(url, listen=running.address)
        assert result.returncode == 1, result.stderr
        assert f"cannot listen on {running.address}" in result.stderr
        assert _check(running) == SERVING
    finally:
        assert running.stop() == 0, running.stderr()


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:http", ":50051", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_a_usage_error(listen: str, tmp_path: Path) -> None:
    result = run_server_to_exit(f"sqlite:///{tmp_path / 'partita.db'}", listen=listen)
    assert result.returncode == 2
    assert "--listen" in result.stderr


def test_logs_are_json_lines_with_one_line_per_rpc_at_debug(tmp_path: Path) -> None:
    running = start_server(f"sqlite:///{tmp_path / 'partita.db'}", "--log-level", "debug", log_dir=tmp_path)
    try:
        assert _check(running) == SERVING
        health = running.stub(health_pb2_grpc.HealthStub)
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    finally:
        assert running.stop() == 0, running.stderr()
    entries = [json.loads(line) for line in running.stderr().splitlines() if line.strip()]
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    rpcs = [entry for entry in entries if entry["message"] == "rpc finished"]
    codes = {(entry["method"], entry["code"]) for entry in rpcs}
    assert ("/grpc.health.v1.Health/Check", "OK") in codes
    assert ("/grpc.health.v1.Health/Check", "NOT_FOUND") in codes
    assert all(isinstance(entry["duration_ms"], int | float) for entry in rpcs)
    assert any(entry["message"] == "server started" for entry in entries)


def test_info_level_does_not_log_each_rpc(tmp_path: Path) -> None:
    running = start_server(f"sqlite:///{tmp_path / 'partita.db'}", log_dir=tmp_path)
    try:
        assert _check(running) == SERVING
    finally:
        assert running.stop() == 0, running.stderr()
    messages = [json.loads(line)["message"] for line in running.stderr().splitlines() if line.strip()]
    assert "server started" in messages and "rpc finished" not in messages


def test_log_event_writes_one_json_object_with_its_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging("DEBUG", stream=stream)
    try:
        logger = logging.getLogger("partita.test")
        log_event(logger, "run claimed", run_id="r-1", attempt=2, partition_key="2024-01-01", name="clash")
        log_event(logger, "hidden", level=logging.DEBUG - 1)
        try:
            raise ValueError("boom")
        except ValueError:
            log_event(logger, "failed", level=logging.ERROR, exc_info=True, workflow_slug="daily")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (
        first["message"] == "run claimed" and first["level"] == "INFO" and first["logger"] == "partita.test"
    )
    assert (first["run_id"], first["attempt"], first["partition_key"]) == ("r-1", 2, "2024-01-01")
    assert first["field_name"] == "clash"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and second["workflow_slug"] == "daily"
    assert "ValueError: boom" in second["exception"]
