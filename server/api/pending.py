"""RPCs whose capability has not landed yet answer UNIMPLEMENTED, naming that capability.

Each entry names the capability (the open issue) that will implement the RPC. When a
capability lands, its RPCs leave this table and get real servicer methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from server.domain.errors import Unimplemented

PENDING_RPCS: dict[str, dict[str, str]] = {}

S = TypeVar("S")


def _pending_method(service: str, method: str, capability: str) -> Callable[..., Any]:
    async def unimplemented(self: object, request: object, context: object) -> Any:
        raise Unimplemented(
            f"{service}/{method} is not implemented yet: it arrives with the {capability} capability",
            reason="CAPABILITY_PENDING",
            metadata={"capability": capability},
        )

    unimplemented.__name__ = method
    return unimplemented


def with_pending_rpcs(service: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: every pending RPC of `service` the class does not define answers UNIMPLEMENTED."""

    def decorate(cls: type[S]) -> type[S]:
        for method, capability in PENDING_RPCS.get(service, {}).items():
            if method not in cls.__dict__:
                setattr(cls, method, _pending_method(service, method, capability))
        return cls

    return decorate
