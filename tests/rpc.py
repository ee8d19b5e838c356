"""Small helpers for calling the real server in tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2

from server.api.errors import error_details


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None
    bad_request: error_details_pb2.BadRequest | None

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.bad_request.field_violations] if self.bad_request else []

    @property
    def reason(self) -> str:
        return self.info.reason if self.info else ""


def expect_error(call: Callable[..., Any], request: Any, code: grpc.StatusCode, **kwargs: Any) -> RpcFailure:
    """Calls and asserts it fails with `code`; every error must carry an ErrorInfo of partita.dev."""
    try:
        call(request, **kwargs)
    except grpc.RpcError as error:
        failure = RpcFailure(error.code(), error.details() or "", *error_details(error))
    else:
        raise AssertionError(f"expected {code.name}, the call succeeded")
    assert failure.code == code, f"expected {code.name}, got {failure.code.name}: {failure.message}"
    assert failure.info is not None and failure.info.domain == "partita.dev", failure
    return failure
