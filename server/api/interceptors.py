"""Server interceptors: error mapping, and request metrics with one log line per RPC.

Order matters: `server_interceptors()` puts the metrics interceptor outside the error mapper,
so metrics and logs see the status the client gets. Both wrap unary-unary and
unary-stream handlers, whether a stream handler is an async generator or a coroutine using
`context.write`; other handler kinds (and sync handlers) pass through unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.api.errors import abort_with_error
from server.logging import log_event
from server.metrics import MetricsRegistry

Behavior = Callable[[Any, Any], Any]
Continuation = Callable[[Any], Awaitable[Any]]

logger = logging.getLogger("partita.api.requests")


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rewraps async unary-unary and unary-stream handlers with `_wrap_call` / `_wrap_stream`.

    The wrapped handler is built once per method and reused while the inner handler is the
    same object: building it per call cost a noticeable share of each RPC."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Continuation, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_handler(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(self, method: str, handler: Any) -> Any:
        if handler is None or handler.request_streaming or self._passes(method):
            return handler
        if not handler.response_streaming:
            behavior = handler.unary_unary
            if not inspect.iscoroutinefunction(behavior):
                return handler
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_call(method, behavior, stream=False),
                request_deserializer=self._deserializer(handler),
                response_serializer=handler.response_serializer,
            )
        behavior = handler.unary_stream
        if inspect.isasyncgenfunction(behavior):
            wrapped: Behavior = self._wrap_stream(method, behavior)
        elif inspect.iscoroutinefunction(behavior):
            # A reader/writer stream handler: a coroutine that calls context.write().
            wrapped = self._wrap_call(method, behavior, stream=True)
        else:
            return handler
        return grpc.unary_stream_rpc_method_handler(
            wrapped,
            request_deserializer=self._deserializer(handler),
            response_serializer=handler.response_serializer,
        )

    def _passes(self, method: str) -> bool:
        """Whether `method` goes through unwrapped."""
        return False

    def _deserializer(self, handler: Any) -> Any:
        return handler.request_deserializer

    def _wrap_call(self, method: str, behavior: Behavior, *, stream: bool) -> Behavior:
        raise NotImplementedError

    def _wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError


class ErrorMappingInterceptor(WrappingInterceptor):
    """Turns anything a servicer raises into a status (see server/api/errors.py)."""

    def _wrap_call(self, method: str, behavior: Behavior, *, stream: bool) -> Behavior:
        async def call(request: Any, context: Any) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort_with_error(context, error, method)

        return call

    def _wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort_with_error(context, error, method)

        return stream


def _final_code(context: Any) -> str:
    """The name of the status code the RPC ended with (OK when the handler set none)."""
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    # Some grpc versions keep the raw integer in the context.
    for candidate in grpc.StatusCode:
        if candidate.value[0] == code:
            return str(candidate.name)
    return "UNKNOWN"


class MetricsInterceptor(WrappingInterceptor):
    """Counts every finished RPC and its latency by (method, code), and logs it at DEBUG."""

    def __init__(self, registry: MetricsRegistry) -> None:
        super().__init__()
        self.registry = registry

    def _finish(self, method: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.registry.observe(method, code, elapsed)
        log_event(
            logger,
            "rpc finished",
            level=logging.DEBUG,
            method=method,
            code=code,
            duration_ms=round(elapsed * 1000, 3),
        )

    def _wrap_call(self, method: str, behavior: Behavior, *, stream: bool) -> Behavior:
        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN.name
            try:
                result = await behavior(request, context)
                code = _final_code(context)
                return result
            except grpc.aio.AbortError:
                code = _final_code(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                self._finish(method, code, started)

        return call

    def _wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN.name
            try:
                async for response in behavior(request, context):
                    yield response
                code = _final_code(context)
            except grpc.aio.AbortError:
                code = _final_code(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                self._finish(method, code, started)

        return stream


def server_interceptors(registry: MetricsRegistry) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor chain, outermost first."""
    return [MetricsInterceptor(registry), ErrorMappingInterceptor()]
