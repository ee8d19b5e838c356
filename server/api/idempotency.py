"""request_id handling shared by every creating RPC (AIP-155)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from server.api.context import ServiceContext
from server.domain.errors import InvalidArgument
from storage import requests
from storage.events import Outbox
from storage.models import micros

ResponseT = TypeVar("ResponseT", bound=Message)
MAX_REQUEST_ID_LENGTH = 128


def request_hash(request: Message) -> str:
    """Equal for requests that are the same but for their request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


async def once(
    context: ServiceContext,
    method: str,
    request: Message,
    response_type: type[ResponseT],
    operation: Callable[[Outbox], ResponseT],
) -> ResponseT:
    """Runs `operation` in a write transaction, at most once per request_id.

    Without a request_id it simply runs. With one, the first response is stored in the
    same transaction as the operation's writes and returned for every repeat.
    """
    request_id: str = getattr(request, "request_id", "")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.for_field("request_id", f"is longer than {MAX_REQUEST_ID_LENGTH} characters")
    now = micros(context.clock.now())
    if not request_id:
        return await context.store.write(operation, now)
    fingerprint = request_hash(request)
    store = context.store

    def run_once(outbox: Outbox) -> ResponseT:
        requests.lock_request_id(store.db, method, request_id)
        recorded = requests.recorded_response(method, request_id, fingerprint)
        if recorded is not None:
            return response_type.FromString(recorded)
        response = operation(outbox)
        requests.record_response(method, request_id, fingerprint, response.SerializeToString(), now)
        return response

    return await store.write(run_once, now)
