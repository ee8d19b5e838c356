"""The error mapper: every DomainError becomes its status with google.rpc details.

The unit tests build statuses directly; the interceptor tests run a real grpc.aio server in
process, with a small service whose handlers raise, behind the production interceptors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import peewee
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2

from server.api.errors import (
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    error_details,
    status_for,
    to_grpc_status,
)
from server.api.interceptors import server_interceptors
from server.domain import errors as domain
from server.metrics import MetricsRegistry

CASES: list[tuple[domain.DomainError, grpc.StatusCode]] = [
    (
        domain.InvalidArgument(
            "invalid request: partition_key: not in the spec",
            violations=[
                domain.FieldViolation("partition_key", "not in the spec"),
                domain.FieldViolation("workflow_slug", "must not be empty"),
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (domain.NotFound("workflow 'x' not found", metadata={"slug": "x"}), grpc.StatusCode.NOT_FOUND),
    (
        domain.AlreadyExists("a run is in flight", reason="RUN_IN_FLIGHT", metadata={"run_id": "r-1"}),
        grpc.StatusCode.ALREADY_EXISTS,
    ),
    (domain.FailedPrecondition("lease lapsed", reason="LEASE_EXPIRED"), grpc.StatusCode.FAILED_PRECONDITION),
    (
        domain.ResourceExhausted("too many keys", metadata={"max_keys": "10"}),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    (domain.OutOfRange("compacted", reason="SEQUENCE_COMPACTED"), grpc.StatusCode.OUT_OF_RANGE),
    (domain.Unimplemented("later", reason="CAPABILITY_PENDING"), grpc.StatusCode.UNIMPLEMENTED),
    (domain.Unavailable("try again"), grpc.StatusCode.UNAVAILABLE),
]
IDS = [type(error).__name__ for error, _ in CASES]


def _decode(
    status: grpc.Status,
) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    [(key, value)] = status.trailing_metadata
    assert key == STATUS_DETAILS_KEY
    rich = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    bad_request = None
    if len(rich.details) > 1:
        bad_request = error_details_pb2.BadRequest()
        assert rich.details[1].Unpack(bad_request)
    return rich, info, bad_request


@pytest.mark.parametrize(("error", "code"), CASES, ids=IDS)
def test_each_domain_error_becomes_its_status_with_error_info(
    error: domain.DomainError, code: grpc.StatusCode
) -> None:
    status = to_grpc_status(error)
    assert status.code == code
    assert status.details == error.message
    rich, info, bad_request = _decode(status)
    assert rich.code == code.value[0]
    assert rich.message == error.message
    assert info.domain == ERROR_DOMAIN
    assert info.reason == error.reason
    assert dict(info.metadata) == error.metadata
    if error.violations:
        assert bad_request is not None
        assert [(v.field, v.description) for v in bad_request.field_violations] == [
            (v.field, v.description) for v in error.violations
        ]
    else:
        assert bad_request is None


def test_default_reasons_name_the_class() -> None:
    _, info, _ = _decode(to_grpc_status(domain.NotFound("gone")))
    assert info.reason == "NOT_FOUND"
    _, info, bad_request = _decode(to_grpc_status(domain.InvalidArgument.for_field("page_size", "negative")))
    assert info.reason == "INVALID_ARGUMENT"
    assert bad_request is not None and bad_request.field_violations[0].field == "page_size"


def test_a_subclass_maps_like_its_parent() -> None:
    class LeaseMismatch(domain.FailedPrecondition):
        default_reason = "LEASE_MISMATCH"

    status = to_grpc_status(LeaseMismatch("wrong lease"))
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _decode(status)[1].reason == "LEASE_MISMATCH"


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (RuntimeError("password=hunter2 at /srv/db"), grpc.StatusCode.INTERNAL, "INTERNAL"),
        (domain.DomainError("base class: a bug"), grpc.StatusCode.INTERNAL, "INTERNAL"),
        (
            peewee.OperationalError("server closed the connection unexpectedly"),
            grpc.StatusCode.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        ),
        (
            peewee.InterfaceError("connection already closed"),
            grpc.StatusCode.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        ),
    ],
    ids=["unexpected", "bare-domain-error", "operational", "interface"],
)
def test_other_errors_do_not_leak_internals(error: Exception, code: grpc.StatusCode, reason: str) -> None:
    status = to_grpc_status(error)
    assert status.code == code
    assert str(error) not in status.details
    _, info, bad_request = _decode(status)
    assert info.reason == reason and info.domain == ERROR_DOMAIN
    assert bad_request is None
    assert status_for(error).message == status.details


# --- through a real server ------------------------------------------------------------------

SERVICE = "partita.test.Raising"
ERRORS: dict[str, Exception] = {
    **{type(error).__name__: error for error, _ in CASES},
    "RuntimeError": RuntimeError("secret internals: /etc/partita"),
    "OperationalError": peewee.OperationalError("could not connect to server"),
}
EXPECTED_CODES: dict[str, grpc.StatusCode] = {
    **{type(error).__name__: code for error, code in CASES},
    "RuntimeError": grpc.StatusCode.INTERNAL,
    "OperationalError": grpc.StatusCode.UNAVAILABLE,
}
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse
OK_RESPONSE = Response(status=health_pb2.HealthCheckResponse.SERVING)


async def _unary(request: Any, context: Any) -> Any:
    if request.service == "ok":
        return OK_RESPONSE
    raise ERRORS[request.service]


async def _stream(request: Any, context: Any) -> AsyncIterator[Any]:
    """An async-generator stream: two messages, then the error (mid-stream)."""
    yield OK_RESPONSE
    yield OK_RESPONSE
    if request.service != "ok":
        raise ERRORS[request.service]


async def _write_stream(request: Any, context: Any) -> None:
    """A reader/writer stream: one message through context.write, then the error."""
    await context.write(OK_RESPONSE)
    if request.service != "ok":
        raise ERRORS[request.service]


async def _aborting(request: Any, context: Any) -> Any:
    """A handler that aborts itself: the mapper must leave its status alone."""
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")


def _handlers() -> Any:
    def unary(fn: Callable[..., Awaitable[Any]]) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )

    def stream(fn: Callable[..., Any]) -> Any:
        return grpc.unary_stream_rpc_method_handler(
            fn, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": unary(_unary),
            "Stream": stream(_stream),
            "WriteStream": stream(_write_stream),
            "Abort": unary(_aborting),
        },
    )


async def _with_server(
    registry: MetricsRegistry, body: Callable[[grpc.aio.Channel], Awaitable[None]]
) -> None:
    server = grpc.aio.server(interceptors=server_interceptors(registry))
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(channel)
    finally:
        await server.stop(None)


def _method(channel: grpc.aio.Channel, name: str, streaming: bool) -> Any:
    factory = channel.unary_stream if streaming else channel.unary_unary
    return factory(
        f"/{SERVICE}/{name}",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )


def _assert_mapped(error: grpc.aio.AioRpcError, name: str) -> None:
    assert error.code() == EXPECTED_CODES[name], (name, error.code(), error.details())
    info, bad_request = error_details(error)
    assert info is not None and info.domain == ERROR_DOMAIN
    raised = ERRORS[name]
    if isinstance(raised, domain.DomainError):
        assert error.details() == raised.message
        assert info.reason == raised.reason
        assert dict(info.metadata) == raised.metadata
        assert (bad_request is not None) == bool(raised.violations)
    else:
        assert str(raised) not in error.details()
        assert bad_request is None


def test_the_interceptor_maps_errors_from_unary_and_streaming_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = MetricsRegistry()

    async def body(channel: grpc.aio.Channel) -> None:
        assert (await _method(channel, "Unary", False)(Request(service="ok"))).status == OK_RESPONSE.status
        for name in ERRORS:
            with pytest.raises(grpc.aio.AioRpcError) as unary_error:
                await _method(channel, "Unary", False)(Request(service=name))
            _assert_mapped(unary_error.value, name)

            received = []
            with pytest.raises(grpc.aio.AioRpcError) as stream_error:
                async for response in _method(channel, "Stream", True)(Request(service=name)):
                    received.append(response)
            assert len(received) == 2, "messages sent before the error still arrive"
            _assert_mapped(stream_error.value, name)

            received = []
            with pytest.raises(grpc.aio.AioRpcError) as write_error:
                async for response in _method(channel, "WriteStream", True)(Request(service=name)):
                    received.append(response)
            assert len(received) == 1
            _assert_mapped(write_error.value, name)

        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await _method(channel, "Abort", False)(Request())
        assert aborted.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_details(aborted.value) == (None, None)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(_with_server(registry, body))

    # Unexpected errors are logged with their traceback (and the secret stays in the log only).
    unexpected = [r for r in caplog.records if r.getMessage() == "request failed unexpectedly"]
    assert unexpected and all(r.exc_info for r in unexpected)
    assert any("secret internals" in str(r.exc_info[1]) for r in unexpected if r.exc_info)


def test_metrics_count_each_rpc_by_method_and_code() -> None:
    registry = MetricsRegistry()

    async def body(channel: grpc.aio.Channel) -> None:
        for _ in range(3):
            await _method(channel, "Unary", False)(Request(service="ok"))
        with pytest.raises(grpc.aio.AioRpcError):
            await _method(channel, "Unary", False)(Request(service="NotFound"))
        assert len([r async for r in _method(channel, "Stream", True)(Request(service="ok"))]) == 2
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in _method(channel, "Stream", True)(Request(service="OutOfRange")):
                pass
        with pytest.raises(grpc.aio.AioRpcError):
            await _method(channel, "Abort", False)(Request())

    asyncio.run(_with_server(registry, body))

    series = {(s.method, s.code): s for s in registry.snapshot()}
    assert set(series) == {
        (f"/{SERVICE}/Unary", "OK"),
        (f"/{SERVICE}/Unary", "NOT_FOUND"),
        (f"/{SERVICE}/Stream", "OK"),
        (f"/{SERVICE}/Stream", "OUT_OF_RANGE"),
        (f"/{SERVICE}/Abort", "PERMISSION_DENIED"),
    }
    ok = series[(f"/{SERVICE}/Unary", "OK")]
    assert ok.count == 3
    assert ok.sum_seconds > 0
    assert ok.buckets[-1][1] == 3  # cumulative: every call is under the largest bound
    assert [count for _, count in ok.buckets] == sorted(count for _, count in ok.buckets)
    assert series[(f"/{SERVICE}/Stream", "OUT_OF_RANGE")].count == 1


def test_metrics_histogram_buckets() -> None:
    registry = MetricsRegistry(buckets=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 2.0):
        registry.observe("/m", "OK", seconds)
    [stats] = registry.snapshot()
    assert stats.count == 4
    assert stats.sum_seconds == pytest.approx(2.65)
    assert stats.buckets == ((0.1, 2), (1.0, 3))
    with pytest.raises(ValueError):
        MetricsRegistry(buckets=(1.0, 0.5))
