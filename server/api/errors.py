"""The one place where errors become gRPC statuses.

Servicers (and the domain and storage below them) just raise: a `DomainError` subclass
becomes its status code with a google.rpc.Status in `grpc-status-details-bin` carrying an
ErrorInfo (domain `partita.dev`, the error's reason and metadata) and, when the error names
bad fields, a BadRequest. A lost database connection becomes UNAVAILABLE. Anything else is a
bug: INTERNAL with a generic message, the traceback logged and never sent.

`ErrorMappingInterceptor` (server/api/interceptors.py) applies this to every RPC;
`error_details` decodes the details on the client side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import grpc
import peewee
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from server.domain import errors as domain
from server.logging import log_event

ERROR_DOMAIN = "partita.dev"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
INTERNAL_MESSAGE = "internal error; the server logged the details"
UNAVAILABLE_MESSAGE = "the database is unavailable; retry later"

STATUS_CODES: Mapping[type[domain.DomainError], grpc.StatusCode] = {
    domain.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    domain.NotFound: grpc.StatusCode.NOT_FOUND,
    domain.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    domain.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    domain.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    domain.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    domain.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    domain.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# peewee wraps the driver's errors; these two mean the connection is gone or unusable.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    peewee.OperationalError,
    peewee.InterfaceError,
)

logger = logging.getLogger("partita.api.errors")


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC code `error` maps to."""
    if isinstance(error, domain.DomainError):
        for cls in type(error).__mro__:
            code = STATUS_CODES.get(cls)
            if code is not None:
                return code
        return grpc.StatusCode.INTERNAL
    if isinstance(error, DATABASE_UNAVAILABLE_ERRORS):
        return grpc.StatusCode.RESOURCE_EXHAUSTED if storage_full(error) else grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def storage_full(error: BaseException) -> bool:
    """Whether a database error, or one it arose from (a failed COMMIT's rollback raises its
    own), says the disk is full: SQLite's SQLITE_FULL, PostgreSQL's 53100."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).lower()
        if getattr(seen, "sqlstate", None) == "53100" or "database or disk is full" in text:
            return True
        if "no space left on device" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    violations: tuple[domain.FieldViolation, ...] = (),
) -> status_pb2.Status:
    """A google.rpc.Status with an ErrorInfo and, when there are violations, a BadRequest."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=dict(metadata or {}))
    details = [_pack(info)]
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        details.append(_pack(bad_request))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def status_for(error: BaseException) -> status_pb2.Status:
    """The google.rpc.Status a client sees for `error` (no internals for unexpected errors)."""
    code = status_code_for(error)
    if isinstance(error, domain.DomainError) and code is not grpc.StatusCode.INTERNAL:
        return build_status(code, error.message, error.reason, error.metadata, error.violations)
    if code is grpc.StatusCode.UNAVAILABLE:
        return build_status(code, UNAVAILABLE_MESSAGE, "DATABASE_UNAVAILABLE")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return build_status(
            code, "the database's disk is full: nothing was written; free space and retry", "STORAGE_FULL"
        )
    return build_status(code, INTERNAL_MESSAGE, "INTERNAL")


def to_grpc_status(error: BaseException) -> grpc.Status:
    """`status_for(error)` as a grpc.Status (code, details, trailing metadata)."""
    return rpc_status.to_status(status_for(error))


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException, method: str
) -> NoReturn:
    """Ends the RPC with the status for `error`, logging it (with traceback unless deliberate)."""
    status = to_grpc_status(error)
    code: grpc.StatusCode = status.code
    if isinstance(error, domain.DomainError) and code is not grpc.StatusCode.INTERNAL:
        log_event(
            logger, "request failed", level=logging.DEBUG, method=method, code=code.name, reason=error.reason
        )
    else:
        log_event(
            logger,
            "request failed unexpectedly",
            level=logging.ERROR,
            exc_info=True,
            method=method,
            code=code.name,
            error_type=type(error).__name__,
        )
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def error_details(
    rpc_error: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    """Client side: the ErrorInfo and BadRequest carried by a failed call (sync or aio), if any."""
    trailing = rpc_error.trailing_metadata() if hasattr(rpc_error, "trailing_metadata") else None
    info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif bad_request is None and detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
    return info, bad_request
