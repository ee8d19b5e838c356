"""What every servicer is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from server.catalog import Catalog
from server.clock import Clock
from server.notify import WorkSignal
from server.streams import EventFollower
from storage.store import Store


@dataclass(frozen=True)
class Limits:
    """Server-side caps; the security issue makes them configurable."""

    default_page_size: int = 100
    max_page_size: int = 1000
    max_claim_wait: timedelta = timedelta(seconds=60)
    default_lease_duration: timedelta = timedelta(seconds=60)
    max_lease_duration: timedelta = timedelta(hours=1)
    max_report_materializations: int = 1000
    max_artifacts_per_asset: int = 1000


@dataclass(frozen=True)
class ServiceContext:
    store: Store
    clock: Clock
    limits: Limits = field(default_factory=Limits)
    catalog: Catalog = field(default_factory=Catalog)
    work: WorkSignal = field(default_factory=WorkSignal)
    events: EventFollower = field(default_factory=EventFollower)
