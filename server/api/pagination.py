"""Page sizes and opaque page tokens (AIP-158).

A token is URL-safe base64 of JSON holding the position to resume from and a hash of
the query it belongs to, so a token replayed against another query is rejected.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from server.api.context import Limits
from server.domain.errors import InvalidArgument


def page_size(requested: int, limits: Limits) -> int:
    if requested < 0:
        raise InvalidArgument.for_field("page_size", f"must not be negative (got {requested})")
    if requested == 0:
        return limits.default_page_size
    return min(requested, limits.max_page_size)


def query_fingerprint(request: Message, *ignored_fields: str) -> str:
    """A hash of the request without its paging fields: what a token is tied to."""
    query = type(request)()
    query.CopyFrom(request)
    for name in ("page_size", "page_token", *ignored_fields):
        query.ClearField(name)
    return hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True)
class PageToken:
    position: dict[str, Any]

    def encode(self, fingerprint: str) -> str:
        raw = json.dumps({"q": fingerprint, "p": self.position}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> dict[str, Any] | None:
    """The position a token resumes from; None for an empty token."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        if not isinstance(decoded, dict) or not isinstance(decoded.get("p"), dict):
            raise ValueError("not a page token")
    except ValueError as error:  # binascii.Error and JSONDecodeError are ValueErrors
        raise InvalidArgument.for_field(
            "page_token", "is not a token this server issued", reason="INVALID_PAGE_TOKEN"
        ) from error
    if decoded.get("q") != fingerprint:
        raise InvalidArgument.for_field(
            "page_token",
            "belongs to a different query; repeat the first request's filters or start without a token",
            reason="INVALID_PAGE_TOKEN",
        )
    position: dict[str, Any] = decoded["p"]
    return position
