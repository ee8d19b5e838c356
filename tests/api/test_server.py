"""The server process as a client sees it: health, reflection, pending RPCs, shutdown."""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

# Importing the stubs registers every partita.v1 descriptor in the default pool.
from partita.v1 import (
    asset_pb2_grpc,
    backfill_pb2,
    backfill_pb2_grpc,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2_grpc,
)
from server.api.errors import ERROR_DOMAIN, error_details
from server.api.pending import PENDING_RPCS
from tests.harness import RunningServer, start_server

PARTITA_SERVICES = {
    "partita.v1.WorkflowService",
    "partita.v1.AssetService",
    "partita.v1.RunService",
    "partita.v1.WorkerService",
    "partita.v1.BackfillService",
}
STUB_MODULES = (asset_pb2_grpc, backfill_pb2_grpc, run_pb2_grpc, worker_pb2_grpc, workflow_pb2_grpc)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_serving_overall_and_per_service(server: RunningServer) -> None:
    health = server.stub(health_pb2_grpc.HealthStub)
    for service in ("", *sorted(PARTITA_SERVICES)):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="partita.v1.NoSuchService"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_describes_them(server: RunningServer) -> None:
    database = ProtoReflectionDescriptorDatabase(server.channel())
    services = set(database.get_services())
    assert services >= PARTITA_SERVICES
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services

    pool = descriptor_pool.DescriptorPool(database)
    run_service = pool.FindServiceByName("partita.v1.RunService")
    assert "EnqueueRun" in {method.name for method in run_service.methods}
    assert run_service.methods_by_name["WatchRuns"].server_streaming


def _pending_rpc(streaming: bool) -> tuple[str, str, str] | None:
    """A (service, method, capability) still pending, unary or server-streaming."""
    pool = descriptor_pool.Default()
    for service, methods in PENDING_RPCS.items():
        for method, capability in methods.items():
            descriptor = pool.FindServiceByName(service).methods_by_name[method]
            if descriptor.server_streaming == streaming and not descriptor.client_streaming:
                return service, method, capability
    return None


def _identity(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "server-streaming"])
def test_a_pending_rpc_answers_unimplemented_naming_its_capability(
    server: RunningServer, streaming: bool
) -> None:
    pending = _pending_rpc(streaming)
    if pending is None:
        pytest.skip("no pending RPC of this kind is left")
    service, method, capability = pending
    path = f"/{service}/{method}"
    channel = server.channel()
    with pytest.raises(grpc.RpcError) as caught:
        if streaming:
            call = channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
            list(call(b"", timeout=10))
        else:
            call = channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
            call(b"", timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert capability in error.details()
    info, bad_request = error_details(error)
    assert info is not None
    assert info.reason == "CAPABILITY_PENDING"
    assert info.domain == ERROR_DOMAIN
    assert info.metadata["capability"] == capability
    assert bad_request is None


def test_get_backfill_is_pending_until_backfills_land(
    backfill_stub: backfill_pb2_grpc.BackfillServiceStub,
) -> None:
    if "GetBackfill" not in PENDING_RPCS.get("partita.v1.BackfillService", {}):
        pytest.skip("GetBackfill is implemented")
    with pytest.raises(grpc.RpcError) as caught:
        backfill_stub.GetBackfill(backfill_pb2.GetBackfillRequest(backfill_id="b-1"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "backfills" in caught.value.details()
    info, _ = error_details(caught.value)
    assert info is not None and info.reason == "CAPABILITY_PENDING"


@pytest.fixture
def graceful_server(database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(database_url, "--shutdown-grace", "3", log_dir=tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        running.close_channels()


def test_sigterm_turns_health_not_serving_then_exits_cleanly(graceful_server: RunningServer) -> None:
    health = graceful_server.stub(health_pb2_grpc.HealthStub)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == SERVING

    sent = time.monotonic()
    graceful_server.send_signal(signal.SIGTERM)
    # The watcher learns NOT_SERVING while the server drains...
    assert next(watch).status == NOT_SERVING
    # ...and the stream, still open at the end of the 3 s grace, is ended by the server.
    with pytest.raises(grpc.RpcError) as caught:
        next(watch)
    assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert graceful_server.wait(timeout=30) == 0
    assert time.monotonic() - sent < 20
    stderr = graceful_server.stderr()
    assert "shutting down" in stderr and "SIGTERM" in stderr


def test_sigterm_drains_an_in_flight_stream(database_url: str, tmp_path: Path) -> None:
    """A call in flight at SIGTERM keeps working during the grace period and ends with OK."""
    running = start_server(database_url, "--shutdown-grace", "60", log_dir=tmp_path)
    try:
        reflection = running.stub(reflection_pb2_grpc.ServerReflectionStub)
        outbox: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()

        def request_stream() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            while (item := outbox.get()) is not None:
                yield item

        responses = reflection.ServerReflectionInfo(request_stream(), timeout=60)
        outbox.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        first = next(responses)
        assert {s.name for s in first.list_services_response.service} >= PARTITA_SERVICES

        running.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the server is now draining: new calls are refused, this one goes on
        assert running.process.poll() is None
        outbox.put(reflection_pb2.ServerReflectionRequest(file_containing_symbol="partita.v1.RunService"))
        second = next(responses)
        assert second.file_descriptor_response.file_descriptor_proto

        closed = time.monotonic()
        outbox.put(None)  # the client finishes its call: OK, not cancelled
        assert list(responses) == []
        assert responses.code() == grpc.StatusCode.OK
        # With the last call done the server exits at once, long before the 60 s grace.
        assert running.wait(timeout=30) == 0
        assert time.monotonic() - closed < 15
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        running.close_channels()


def test_sigterm_drains_an_in_flight_long_poll(database_url: str, tmp_path: Path) -> None:
    """A ClaimRun long poll in flight at SIGTERM runs to its end (empty, OK) before the exit."""
    running = start_server(database_url, "--shutdown-grace", "30", log_dir=tmp_path)
    try:
        worker = running.stub(worker_pb2_grpc.WorkerServiceStub)
        request = worker_pb2.ClaimRunRequest(worker_id="drain-test", wait=duration_pb2.Duration(seconds=4))
        future = worker.ClaimRun.future(request, timeout=30)
        time.sleep(1.0)
        assert not future.done()
        running.send_signal(signal.SIGTERM)
        response = future.result(timeout=30)  # raises if the call was cut off
        assert not response.HasField("run")
        assert running.wait(timeout=30) == 0
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        running.close_channels()
