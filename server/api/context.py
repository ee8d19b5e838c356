"""What every servicer is built with."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.clock import Clock
from storage.store import Store


@dataclass(frozen=True)
class Limits:
    """Server-side caps; the security issue makes them configurable."""

    default_page_size: int = 100
    max_page_size: int = 1000


@dataclass(frozen=True)
class ServiceContext:
    store: Store
    clock: Clock
    limits: Limits = field(default_factory=Limits)
