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
    """Server-side caps, configurable with --limits FILE.toml and --limit NAME=VALUE."""

    default_page_size: int = 100
    max_page_size: int = 1000
    max_claim_wait: timedelta = timedelta(seconds=60)
    default_lease_duration: timedelta = timedelta(seconds=60)
    max_lease_duration: timedelta = timedelta(hours=1)
    max_report_materializations: int = 1000
    max_artifacts_per_asset: int = 1000
    # Security limits (server/limits.py, docs/security.md); 0 turns a rate or stream cap off.
    max_message_bytes: int = 16 * 1024 * 1024
    max_payload_bytes: int = 1024 * 1024
    max_keys_per_request: int = 10_000
    max_streams_per_principal: int = 1000
    rate_limit_per_second: float = 10_000.0
    rate_limit_burst: int = 20_000


@dataclass(frozen=True)
class ServiceContext:
    store: Store
    clock: Clock
    limits: Limits = field(default_factory=Limits)
    catalog: Catalog = field(default_factory=Catalog)
    work: WorkSignal = field(default_factory=WorkSignal)
    events: EventFollower = field(default_factory=EventFollower)
