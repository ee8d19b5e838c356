"""Authentication, authorization and per-principal limits, before any servicer code runs.

For every partita.v1 call (health and reflection pass untouched), in this order:
1. who: a bearer token (`authorization: Bearer <token>`), else a verified client
   certificate's subject (mTLS) — UNAUTHENTICATED when neither names a configured principal.
   With no tokens configured every caller is `anonymous` (admin-equivalent).
2. may it: the method's permission (server/auth.py `METHOD_PERMISSIONS`) against the role —
   PERMISSION_DENIED, before the servicer could answer NOT_FOUND.
3. rate: a token bucket per principal — RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
4. a request that does not parse (bad wire format, invalid UTF-8 in a string) — INVALID_ARGUMENT
   (reason MALFORMED_REQUEST) instead of gRPC's UNKNOWN; request limits and unknown enum values
   (server/limits.py `check_request`) — INVALID_ARGUMENT, reason LIMIT_EXCEEDED / UNKNOWN_ENUM_VALUE.
5. a worker limited to workflows: ClaimRun only for those (an empty `workflow_slugs` is
   narrowed to them); Heartbeat/CompleteRun/FailRun only for their runs — PERMISSION_DENIED.
6. streams: open WatchRuns/WatchBackfill per principal — RESOURCE_EXHAUSTED.
Then the principal is set in `server.auth.CURRENT_PRINCIPAL` for the handler and the logs.

It sits innermost in the chain (inside the error mapper), so domain errors raised here and
by the run lookup are mapped like the servicers' own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from server.api.context import ServiceContext
from server.api.errors import build_status
from server.api.interceptors import Behavior, WrappingInterceptor
from server.auth import (
    ANONYMOUS,
    CLAIM_METHOD,
    CURRENT_PRINCIPAL,
    LEAST_ROLE,
    RUN_SCOPED_WORKER_METHODS,
    Principal,
    TokenRegistry,
    is_open,
    required_permission,
)
from server.domain.errors import InvalidArgument
from server.limits import RateLimiter, StreamSlots, check_request
from server.logging import log_event
from storage import runs

logger = logging.getLogger("partita.auth")

BEARER = "bearer "


async def _abort(
    context: Any,
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> NoReturn:
    status = build_status(code, message, reason, metadata)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(retry_after * 1000 + 0.999)))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(packed)
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands for a request that failed to parse, so the call can fail with INVALID_ARGUMENT."""

    type_name: str
    error: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # DecodeError, and whatever a parser may raise on garbage
            owner = getattr(deserialize, "__self__", None)
            return UndecodableRequest(getattr(owner, "__name__", "request"), str(error)[:300])

    return parse


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class AuthInterceptor(WrappingInterceptor):
    def __init__(self, context: ServiceContext, registry: TokenRegistry | None = None) -> None:
        super().__init__()
        self.context = context
        self.registry = registry if registry is not None and registry.enabled else None
        limits = context.limits
        self.rate = RateLimiter(limits.rate_limit_per_second, limits.rate_limit_burst)
        self.streams = StreamSlots(limits.max_streams_per_principal)

    def _passes(self, method: str) -> bool:
        return is_open(method)

    def _deserializer(self, handler: Any) -> Any:
        return _tolerant(handler.request_deserializer)

    def _wrap_call(self, method: str, behavior: Behavior, *, stream: bool) -> Behavior:
        async def call(request: Any, context: Any) -> Any:
            principal = await self.admit(method, request, context)
            if not stream:
                return await behavior(request, context)
            await self._open_stream(principal, method, context)
            try:
                return await behavior(request, context)
            finally:
                self.streams.release(principal.name)

        return call

    def _wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            principal = await self.admit(method, request, context)
            await self._open_stream(principal, method, context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self.streams.release(principal.name)

        return stream

    async def _open_stream(self, principal: Principal, method: str, context: Any) -> None:
        if not self.streams.acquire(principal.name):
            cap = self.streams.cap
            await self._deny(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"principal {principal.name!r} already has {cap} open streams "
                f"(limit max_streams_per_principal); close one first",
                "LIMIT_EXCEEDED",
                principal,
                method,
                {"limit": "max_streams_per_principal", "max_streams_per_principal": str(cap)},
            )

    async def admit(self, method: str, request: Any, context: Any) -> Principal:
        """Authenticates and authorizes the call (aborting it otherwise); returns its principal."""
        principal = await self._authenticate(method, context)
        CURRENT_PRINCIPAL.set(principal)
        permission = required_permission(method, request)
        if permission is None:
            await self._deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not in the role table; nobody may call it",
                "PERMISSION_DENIED",
                principal,
                method,
            )
        if not principal.may(permission):
            needed = LEAST_ROLE[permission].value
            await self._deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"principal {principal.name!r} (role {principal.role.value}) may not call {method}: "
                f"it needs the {needed} role",
                "PERMISSION_DENIED",
                principal,
                method,
                {"role": principal.role.value, "required_role": needed},
            )
        if isinstance(request, UndecodableRequest):
            raise InvalidArgument(
                f"the request is not a valid {request.type_name} message: {request.error}",
                reason="MALFORMED_REQUEST",
            )
        retry_after = self.rate.acquire(principal.name)
        if retry_after > 0:
            await self._deny(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"principal {principal.name!r} exceeded {self.rate.rate:g} requests/s "
                f"(limit rate_limit_per_second); retry in {retry_after:.3f} s",
                "LIMIT_EXCEEDED",
                principal,
                method,
                {"limit": "rate_limit_per_second", "rate_limit_per_second": f"{self.rate.rate:g}"},
                retry_after=retry_after,
            )
        check_request(request, self.context.limits)
        if principal.workflows is not None:
            await self._check_workflows(principal, method, request, context)
        return principal

    async def _authenticate(self, method: str, context: Any) -> Principal:
        registry = self.registry
        if registry is None:
            return ANONYMOUS
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = _text(value)
                break
        if header is not None:
            if header[: len(BEARER)].lower() != BEARER or not header[len(BEARER) :].strip():
                await self._unauthenticated(
                    context, method, "the authorization header is not `Bearer <token>`"
                )
            principal = registry.authenticate_token(header[len(BEARER) :].strip())
            if principal is None:
                await self._unauthenticated(context, method, "the bearer token is not valid")
            return principal
        auth = context.auth_context() or {}
        subjects = auth.get("x509_subject") or []
        names = auth.get("x509_common_name") or []
        if subjects or names:
            subject = _text(subjects[0]) if subjects else ""
            common_name = _text(names[0]) if names else ""
            principal = registry.authenticate_subject(subject, common_name)
            if principal is None:
                await self._unauthenticated(
                    context, method, f"the client certificate {subject or common_name!r} is not configured"
                )
            return principal
        await self._unauthenticated(context, method, "send `authorization: Bearer <token>` metadata")

    async def _unauthenticated(self, context: Any, method: str, why: str) -> NoReturn:
        log_event(
            logger, "call unauthenticated", level=logging.WARNING, method=method, peer=context.peer(), why=why
        )
        await _abort(context, grpc.StatusCode.UNAUTHENTICATED, f"unauthenticated: {why}", "UNAUTHENTICATED")

    async def _deny(
        self,
        context: Any,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        principal: Principal,
        method: str,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> NoReturn:
        log_event(
            logger,
            "call refused",
            level=logging.WARNING,
            method=method,
            code=code.name,
            reason=reason,
            why=message,
        )
        await _abort(
            context, code, message, reason, {"principal": principal.name, **(metadata or {})}, retry_after
        )

    async def _check_workflows(self, principal: Principal, method: str, request: Any, context: Any) -> None:
        allowed = principal.workflows or frozenset()
        if method == CLAIM_METHOD:
            outside = [slug for slug in request.workflow_slugs if slug not in allowed]
            if outside:
                await self._deny(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"principal {principal.name!r} may only claim runs of {', '.join(sorted(allowed))}; "
                    f"not {', '.join(outside)}",
                    "WORKFLOW_NOT_ALLOWED",
                    principal,
                    method,
                    {"workflow_slug": outside[0][:128]},
                )
            if not request.workflow_slugs:
                request.workflow_slugs.extend(sorted(allowed))
            return
        if method not in RUN_SCOPED_WORKER_METHODS:
            return
        run_id: str = request.run_id
        if not (run_id.isascii() and run_id.isdigit()) or len(run_id) > 19 or int(run_id) >= 2**63:
            return  # the servicer answers INVALID_ARGUMENT; there is no run to protect
        run = await self.context.store.read(lambda: runs.get_run(int(run_id)))
        if run is None or run.workflow_slug not in allowed:
            await self._deny(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"principal {principal.name!r} may only act on runs of {', '.join(sorted(allowed))}",
                "WORKFLOW_NOT_ALLOWED",
                principal,
                method,
                {"run_id": run_id},
            )
