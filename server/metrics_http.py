"""Prometheus metrics over HTTP: `python -m server --metrics-listen HOST:PORT`, then GET /metrics.

A small asyncio HTTP server on the server's event loop. Each scrape reads the database once (one
read snapshot, on a reader thread) and renders, with prometheus-client's text format:

- `partita_rpc_duration_seconds{method, code}` — histogram of every finished RPC (from the
  in-process MetricsRegistry the interceptors fill);
- `partita_runs{workflow, state}` — runs per workflow and state;
- `partita_queue_depth{workflow}` — queued runs whose (next) attempt is due, i.e. claimable
  now unless a concurrency cap or an upstream hold stops them;
  `partita_queue_oldest_age_seconds{workflow}` — how long the oldest of them has waited;
- `partita_claim_latency_seconds{workflow}` — gauge histogram of the time from enqueue to
  first claim, over runs first claimed in the last 15 minutes;
- `partita_backfills{workflow, state}` — backfills per state;
  `partita_backfill_partitions{workflow, state}` — keys of the unfinished backfills (RUNNING,
  CANCELING) per key state, i.e. their progress;
- `partita_watch_streams` — open WatchRuns / WatchBackfill streams of this process;
  `partita_watch_buffered_events` — events its log follower holds in memory for them (0 while
  nobody watches: the follower then reads nothing);
- `partita_database_up` — 0 when the last scrape could not read the database (the RPC
  metrics are still served), plus the process collector's `process_*` metrics.

Labels are workflow slugs, states, methods and codes only — never a partition key or a run id
(unbounded cardinality). The endpoint has no authentication: bind it to an address only your
monitoring can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from server.clock import Clock
from server.logging import log_event
from server.metrics import MetricsRegistry
from server.streams import EventFollower
from storage import sql
from storage.models import micros
from storage.store import Store

logger = logging.getLogger("partita.metrics")

CLAIM_LATENCY_WINDOW_SECONDS = 15 * 60
CLAIM_LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
RUN_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")
KEY_STATES = ("pending", "queued", "running", "succeeded", "failed", "canceled")
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0
SCRAPE_TIMEOUT = 10.0


@dataclass
class DatabaseGauges:
    """What one scrape read from the database."""

    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    queue_depth: dict[str, int] = field(default_factory=dict)
    queue_oldest_age: dict[str, float] = field(default_factory=dict)
    claim_latencies: dict[str, list[float]] = field(default_factory=dict)
    backfills: dict[tuple[str, str], int] = field(default_factory=dict)
    backfill_partitions: dict[tuple[str, str], int] = field(default_factory=dict)


def read_gauges(now_us: int) -> DatabaseGauges:
    """Reads every database gauge; call inside one read transaction."""
    gauges = DatabaseGauges()
    for slug, state, count in sql.rows(
        "SELECT workflow_slug, state, COUNT(*) FROM run GROUP BY workflow_slug, state"
    ):
        gauges.runs[(str(slug), str(state))] = int(count)
    for slug, count, oldest in sql.rows(
        "SELECT workflow_slug, COUNT(*), MIN(COALESCE(next_attempt_time, create_time)) FROM run "
        "WHERE state = 'QUEUED' AND (next_attempt_time IS NULL OR next_attempt_time <= %s) GROUP BY workflow_slug",
        (now_us,),
    ):
        gauges.queue_depth[str(slug)] = int(count)
        gauges.queue_oldest_age[str(slug)] = max(0.0, (now_us - int(oldest)) / 1e6)
    for slug, waited in sql.rows(
        "SELECT workflow_slug, start_time - create_time FROM run "
        "WHERE start_time IS NOT NULL AND start_time >= %s AND attempt <= 1",
        (now_us - CLAIM_LATENCY_WINDOW_SECONDS * 1_000_000,),
    ):
        gauges.claim_latencies.setdefault(str(slug), []).append(max(0.0, int(waited) / 1e6))
    for row in sql.rows(
        "SELECT workflow_slug, state, COUNT(*), SUM(pending_count), SUM(queued_count), SUM(running_count), "
        "SUM(succeeded_count), SUM(failed_count), SUM(canceled_count) FROM backfill GROUP BY workflow_slug, state"
    ):
        slug, state, count, *per_key = row
        gauges.backfills[(str(slug), str(state))] = int(count)
        if state in ("RUNNING", "CANCELING"):
            for name, value in zip(KEY_STATES, per_key, strict=True):
                key = (str(slug), name)
                gauges.backfill_partitions[key] = gauges.backfill_partitions.get(key, 0) + int(value or 0)
    return gauges


class PartitaCollector(Collector):  # type: ignore[misc]
    """RPC histograms from the registry, the watch streams, and one scrape's database gauges."""

    def __init__(
        self, metrics: MetricsRegistry, gauges: DatabaseGauges | None, events: EventFollower
    ) -> None:
        self.metrics = metrics
        self.gauges = gauges
        self.events = events

    def collect(self) -> Iterator[Metric]:
        rpc = HistogramMetricFamily(
            "partita_rpc_duration_seconds",
            "Latency of finished RPCs by full method name and status code.",
            labels=("method", "code"),
        )
        for stats in self.metrics.snapshot():
            buckets = [(_bound(bound), float(count)) for bound, count in stats.buckets]
            buckets.append(("+Inf", float(stats.count)))
            rpc.add_metric((stats.method, stats.code), buckets, stats.sum_seconds)
        yield rpc
        yield GaugeMetricFamily(
            "partita_watch_streams", "Open watch streams of this process.", value=self.events.watchers
        )
        yield GaugeMetricFamily(
            "partita_watch_buffered_events",
            "Events the log follower holds in memory for the watch streams.",
            value=self.events.buffered,
        )
        up = GaugeMetricFamily("partita_database_up", "1 when this scrape could read the database.")
        up.add_metric((), 1.0 if self.gauges is not None else 0.0)
        yield up
        if self.gauges is None:
            return
        yield from self._database(self.gauges)

    def _database(self, gauges: DatabaseGauges) -> Iterator[Metric]:
        runs = GaugeMetricFamily("partita_runs", "Runs by workflow and state.", labels=("workflow", "state"))
        by_workflow: dict[str, dict[str, int]] = defaultdict(dict)
        for (slug, state), count in gauges.runs.items():
            by_workflow[slug][state] = count
        for slug in sorted(by_workflow):
            for state in RUN_STATES:  # every state, so a series drops to 0 instead of vanishing
                runs.add_metric((slug, state), float(by_workflow[slug].get(state, 0)))
        yield runs
        depth = GaugeMetricFamily(
            "partita_queue_depth",
            "Queued runs whose attempt is due (claimable unless capped or held).",
            labels=("workflow",),
        )
        age = GaugeMetricFamily(
            "partita_queue_oldest_age_seconds",
            "How long the oldest due queued run has waited.",
            labels=("workflow",),
        )
        for slug in sorted(set(by_workflow) | set(gauges.queue_depth)):
            depth.add_metric((slug,), float(gauges.queue_depth.get(slug, 0)))
            age.add_metric((slug,), gauges.queue_oldest_age.get(slug, 0.0))
        yield depth
        yield age
        latency = GaugeHistogramMetricFamily(
            "partita_claim_latency_seconds",
            f"Time from enqueue to first claim of the runs first claimed in the last {CLAIM_LATENCY_WINDOW_SECONDS // 60} minutes.",
            labels=("workflow",),
        )
        for slug in sorted(gauges.claim_latencies):
            values = gauges.claim_latencies[slug]
            buckets = [(_bound(b), float(sum(1 for v in values if v <= b))) for b in CLAIM_LATENCY_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            latency.add_metric((slug,), buckets, sum(values))
        yield latency
        backfills = GaugeMetricFamily(
            "partita_backfills", "Backfills by workflow and state.", labels=("workflow", "state")
        )
        for (slug, state), count in sorted(gauges.backfills.items()):
            backfills.add_metric((slug, state), float(count))
        yield backfills
        keys = GaugeMetricFamily(
            "partita_backfill_partitions",
            "Keys of unfinished backfills (RUNNING, CANCELING) by key state: their progress.",
            labels=("workflow", "state"),
        )
        for (slug, state), count in sorted(gauges.backfill_partitions.items()):
            keys.add_metric((slug, state), float(count))
        yield keys


def _bound(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{float(value):.1f}"


def render(metrics: MetricsRegistry, gauges: DatabaseGauges | None, events: EventFollower) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PartitaCollector(metrics, gauges, events))
    ProcessCollector(registry=registry)
    return bytes(generate_latest(registry))


class MetricsServer:
    """Serves GET /metrics (and / with a pointer) until `close()`."""

    def __init__(self, store: Store, metrics: MetricsRegistry, clock: Clock, events: EventFollower) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.events = events
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host.strip("[]"), port)
        sockets = self.server.sockets or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def scrape(self) -> bytes:
        now_us = micros(self.clock.now())
        try:
            gauges: DatabaseGauges | None = await asyncio.wait_for(
                self.store.read(lambda: read_gauges(now_us)), SCRAPE_TIMEOUT
            )
        except Exception as error:  # the RPC metrics are still worth serving
            log_event(
                logger, "metrics scrape could not read the database", level=logging.WARNING, error=repr(error)
            )
            gauges = None
        return render(self.metrics, gauges, self.events)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            elif path == "/metrics":
                body = await self.scrape()
                await _respond(writer, 200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST)
            elif path == "/":
                await _respond(writer, 200, b"Partita metrics: GET /metrics\n", "text/plain; charset=utf-8")
            else:
                await _respond(writer, 404, b"not found; try /metrics\n", "text/plain; charset=utf-8")
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    headers = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(headers.encode("latin-1") + body)
    await writer.drain()


async def start_metrics_server(
    address: str, store: Store, metrics: MetricsRegistry, clock: Clock, events: EventFollower
) -> MetricsServer:
    """Binds HOST:PORT (port 0 picks one; `.port` says which) and serves until closed."""
    host, _, port = address.rpartition(":")
    server = MetricsServer(store, metrics, clock, events)
    await server.start(host, int(port))
    return server
