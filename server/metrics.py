"""In-memory request metrics: a count and a latency histogram per (method, status code).

Labels are the full gRPC method name and the status code name only; never a partition key,
run id or anything else a client chooses (unbounded cardinality). Per-slice numbers come
from the event log and ListPartitions. An exporter (Prometheus, later) reads `snapshot()`.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

# Upper bounds in seconds; a final +Inf bucket is implied (it equals `count`).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


@dataclass(frozen=True)
class RequestStats:
    """One (method, code) series at snapshot time. `buckets` are cumulative counts per bound."""

    method: str
    code: str
    count: int
    sum_seconds: float
    buckets: tuple[tuple[float, int], ...]


@dataclass
class _Series:
    bucket_counts: list[int]
    count: int = 0
    sum_seconds: float = 0.0


@dataclass
class MetricsRegistry:
    """Thread-safe; `observe` is called once per finished RPC."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError("histogram buckets must be strictly increasing")

    def observe(self, method: str, code: str, seconds: float) -> None:
        index = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            series = self._series.get((method, code))
            if series is None:
                series = self._series[(method, code)] = _Series(bucket_counts=[0] * len(self.buckets))
            series.count += 1
            series.sum_seconds += seconds
            if index < len(self.buckets):
                series.bucket_counts[index] += 1

    def snapshot(self) -> list[RequestStats]:
        """Every series, sorted by (method, code), with cumulative bucket counts."""
        with self._lock:
            items = sorted(
                (key, series.count, series.sum_seconds, list(series.bucket_counts))
                for key, series in self._series.items()
            )
        stats = []
        for (method, code), count, total, counts in items:
            cumulative, running = [], 0
            for bound, n in zip(self.buckets, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            stats.append(RequestStats(method, code, count, total, tuple(cumulative)))
        return stats

    def get(self, method: str, code: str) -> RequestStats | None:
        for stats in self.snapshot():
            if stats.method == method and stats.code == code:
                return stats
        return None
