"""WatchRuns: one follower of the event log per process, a ring buffer, and the subscriptions.

The event log is the only source of data (architecture: "Storage", "Many watchers"):

- `EventFollower` reads `sequence > last seen` from the log, in batches, whenever it is woken
  while some stream watches — by the store's commit listener after a local write, by `NOTIFY
  partita_events` from other replicas on PostgreSQL (a dedicated psycopg connection), and by a
  slow poll as a safety net — and appends the rows, already turned into `WatchRunsResponse`
  messages, to a bounded ring buffer that holds every event in (`base`, `head`].
- A subscription (`EventFollower.watch`) keeps a cursor: the log position it has fully
  scanned. While its cursor is older than the buffer's `base` (a replay, or a watcher that fell
  behind while its client was slow) it reads the database in batches, filtered in SQL;
  otherwise it walks the buffer. Replay and live are the same loop over the same rows, so a
  reconnect with the last sequence seen resumes exactly: nothing skipped, nothing twice.
- Nothing a watcher does blocks the follower, the writers or other watchers: a watcher pulls
  from the shared buffer at its own pace, so its only backlog is gRPC's per-stream send window
  (bounded by HTTP/2 flow control). A stream whose send has been stuck for `stall_timeout`
  seconds (its client stopped reading) is ended with RESOURCE_EXHAUSTED naming the last
  sequence handed to it (ErrorInfo metadata `last_sequence`); the status reaches the client
  right after the messages already in flight.
- An idle stream gets a BOOKMARK event (only `type` and `sequence` set) every
  `bookmark_interval` seconds: the position it has fully scanned.
- At shutdown `close()` ends every stream with UNAVAILABLE so clients reconnect elsewhere.

Settings come from the environment (see `WatchSettings.from_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from partita.v1 import run_pb2
from server.api.messages import event_message
from server.domain.errors import (
    DomainError,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
    ViolationCollector,
)
from server.domain.names import slug_violation
from server.domain.partitions.keys import key_syntax_problem, quote_key
from server.logging import log_event
from storage import events
from storage.events import EventFilter, Outbox, covered_keys
from storage.models import RunEvent, micros

if TYPE_CHECKING:
    from server.api.context import ServiceContext
    from storage.store import Store

logger = logging.getLogger("partita.streams")

# Environment variables (all optional) and their defaults.
ENV_BUFFER_EVENTS = "PARTITA_WATCH_BUFFER_EVENTS"  # ring buffer size, events (10000)
ENV_BATCH_SIZE = "PARTITA_WATCH_BATCH_SIZE"  # rows per database read (1000)
ENV_POLL_SECONDS = "PARTITA_WATCH_POLL_SECONDS"  # safety-net poll of the log (1.0)
ENV_BOOKMARK_SECONDS = "PARTITA_WATCH_BOOKMARK_SECONDS"  # idle time before a BOOKMARK (10)
ENV_STALL_SECONDS = "PARTITA_WATCH_STALL_SECONDS"  # a send stuck this long ends the stream (30)
ENV_RETENTION_DAYS = "PARTITA_EVENT_RETENTION_DAYS"  # prune events older than this; 0 = never (7)
ENV_RETENTION_MAX = "PARTITA_EVENT_RETENTION_MAX"  # keep at most this many events; 0 = no cap (0)
ENV_PRUNE_SECONDS = "PARTITA_EVENT_PRUNE_SECONDS"  # pause between pruning passes (60)
ENV_PRUNE_BATCH = "PARTITA_EVENT_PRUNE_BATCH"  # rows deleted per transaction (1000)

MAX_WATCH_PARTITION_KEYS = 1_000
MAX_ID_DIGITS = 19

# Seconds after close() before streams still stuck in a send are ended out of band.
CLOSE_SEND_WAIT = 1.0
SHUTDOWN_MESSAGE = "the server is shutting down; reconnect (to another replica) with the last sequence seen"
STALL_MESSAGE = "the stream's client stopped reading; reconnect with the last sequence seen"


def _env_number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not value >= minimum:
        raise ValueError(f"{name}={text!r} must be >= {minimum:g}")
    return value


@dataclass(frozen=True)
class WatchSettings:
    """Tuning of the follower, the streams and the log's retention."""

    buffer_events: int = 10_000
    batch_size: int = 1_000
    poll_interval: float = 1.0
    # Least time between two reads of the log: under a stream of small commits one read takes
    # several of them, at the cost of at most this much delivery latency.
    read_gap: float = 0.005
    bookmark_interval: float = 10.0
    stall_timeout: float = 30.0
    # Retention: events older than `retention` (None: kept forever) and events beyond the newest
    # `retention_max` (None: no cap) are pruned every `prune_interval` seconds, `prune_batch` rows
    # per transaction.
    retention: timedelta | None = timedelta(days=7)
    retention_max: int | None = None
    prune_interval: float = 60.0
    prune_batch: int = 1_000

    @property
    def prunes(self) -> bool:
        return self.retention is not None or self.retention_max is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WatchSettings:
        """Defaults overridden by the PARTITA_WATCH_* / PARTITA_EVENT_* variables; raises
        ValueError naming a variable that does not hold a usable number."""
        env = os.environ if environ is None else environ
        days = _env_number(env, ENV_RETENTION_DAYS, 7.0, 0.0)
        keep = int(_env_number(env, ENV_RETENTION_MAX, 0, 0))
        return cls(
            buffer_events=int(_env_number(env, ENV_BUFFER_EVENTS, cls.buffer_events, 1)),
            batch_size=int(_env_number(env, ENV_BATCH_SIZE, cls.batch_size, 1)),
            poll_interval=_env_number(env, ENV_POLL_SECONDS, cls.poll_interval, 0.01),
            bookmark_interval=_env_number(env, ENV_BOOKMARK_SECONDS, cls.bookmark_interval, 0.01),
            stall_timeout=_env_number(env, ENV_STALL_SECONDS, cls.stall_timeout, 0.01),
            retention=timedelta(days=days) if days > 0 else None,
            retention_max=keep if keep > 0 else None,
            prune_interval=_env_number(env, ENV_PRUNE_SECONDS, cls.prune_interval, 0.01),
            prune_batch=int(_env_number(env, ENV_PRUNE_BATCH, cls.prune_batch, 1)),
        )


class BufferedEvent:
    """One log row as the buffer keeps it: what filters look at, and the message to send (built
    on the reader thread)."""

    __slots__ = (
        "backfill_id",
        "covered_keys",
        "partition_key",
        "response",
        "run_id",
        "sequence",
        "workflow_slug",
    )

    def __init__(self, row: RunEvent | Any) -> None:
        """From a RunEvent, or a row with its attribute names (`events.scan_events`)."""
        self.sequence: int = row.sequence
        self.workflow_slug: str = row.workflow_slug
        self.partition_key: str = row.partition_key
        self.backfill_id: int | None = row.backfill_id
        self.run_id: int | None = row.run_id
        # The keys of the ranged run the event is about (empty for other events).
        self.covered_keys: tuple[str, ...] = tuple(covered_keys(row.partition_key, row.data))
        self.response = run_pb2.WatchRunsResponse(event=event_message(row))

    def matches(self, event_filter: EventFilter) -> bool:
        return event_filter.matches(
            self.workflow_slug, self.partition_key, self.backfill_id, self.run_id, self.covered_keys
        )


def watch_request(request: run_pb2.WatchRunsRequest) -> tuple[EventFilter, int]:
    """The filter and cursor of a WatchRunsRequest; INVALID_ARGUMENT naming every bad field."""
    problems = ViolationCollector()
    if request.workflow_slug and (violation := slug_violation(request.workflow_slug, "workflow_slug")):
        problems.add(violation.field, violation.description)
    if len(request.partition_keys) > MAX_WATCH_PARTITION_KEYS:
        problems.add(
            "partition_keys",
            f"has {len(request.partition_keys)} keys; at most {MAX_WATCH_PARTITION_KEYS} are allowed",
        )
    else:
        for index, key in enumerate(request.partition_keys):
            # "" is allowed: it matches the events of unpartitioned runs.
            if key and (problem := key_syntax_problem(key)):
                problems.add(f"partition_keys[{index}]", f"partition key {quote_key(key)} {problem}")
    ids: dict[str, int | None] = {}
    for name in ("backfill_id", "run_id"):
        value: str = getattr(request, name)
        ids[name] = None
        if value:
            if value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS:
                ids[name] = int(value)
            else:
                problems.add(name, f"{value[:64]!r} is not a valid id")
    if request.after_sequence < 0:
        problems.add("after_sequence", f"must be >= 0 (got {request.after_sequence})")
    problems.raise_if_any("invalid WatchRuns request")
    event_filter = EventFilter(
        workflow_slug=request.workflow_slug,
        partition_keys=frozenset(request.partition_keys),
        backfill_id=ids["backfill_id"],
        run_id=ids["run_id"],
    )
    return event_filter, request.after_sequence


def compacted(after_sequence: int, oldest: int) -> OutOfRange:
    return OutOfRange(
        f"sequence {after_sequence} is older than the retained log, which starts at sequence "
        f"{oldest}; list the current state and watch from its head_sequence",
        reason="SEQUENCE_COMPACTED",
        metadata={"oldest_sequence": str(oldest), "after_sequence": str(after_sequence)},
    )


# What wakes a waiting stream besides the ticker: a batch with its run, backfill or workflow.
WakeKey = tuple[str, object]


def _wake_key(event_filter: EventFilter) -> WakeKey | None:
    if event_filter.run_id is not None:
        return ("run", event_filter.run_id)
    if event_filter.backfill_id is not None:
        return ("backfill", event_filter.backfill_id)
    if event_filter.workflow_slug:
        return ("workflow", event_filter.workflow_slug)
    return None


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def bookmark(sequence: int) -> run_pb2.WatchRunsResponse:
    return run_pb2.WatchRunsResponse(
        event=run_pb2.RunEvent(type=run_pb2.RUN_EVENT_TYPE_BOOKMARK, sequence=sequence)
    )


@dataclass(frozen=True)
class _Page:
    events: list[BufferedEvent]
    scanned: int
    oldest: int
    head: int


def _read_page(after_sequence: int, event_filter: EventFilter, limit: int) -> _Page:
    """On a reader thread: one filtered batch of the log after `after_sequence`."""
    scan = events.scan_events(after_sequence, event_filter, limit)
    return _Page([BufferedEvent(row) for row in scan.rows], scan.scanned, scan.oldest, scan.head)


def _read_new(after_sequence: int, limit: int) -> list[BufferedEvent]:
    """On a reader thread: the next batch of the whole log for the follower."""
    return [BufferedEvent(row) for row in events.event_rows_after(after_sequence, limit)]


# Ends a stream from outside its handler (the handler may be stuck sending): the servicer
# passes one that aborts the RPC with the status for the error.
Interrupt = Callable[[DomainError], Awaitable[object]]


@dataclass(eq=False)
class _Subscription:
    interrupt: Interrupt | None
    # The last sequence handed to gRPC (events and bookmarks); gRPC sends it before any status.
    handed: int = 0
    # monotonic() when the handler started sending a message that gRPC has not taken yet; 0 when idle.
    sending_since: float = 0.0
    interrupted: bool = False
    _task: asyncio.Task[object] | None = field(default=None, repr=False)

    def interrupt_with(self, error: DomainError) -> None:
        """Ends the stream out of band (its handler is stuck in a send); once."""
        if self.interrupted or self.interrupt is None:
            return
        self.interrupted = True
        self._task = asyncio.get_running_loop().create_task(_swallow(self.interrupt(error)))

    def sending(self, sequence: int) -> None:
        """The handler hands gRPC a message (an event or a bookmark) up to `sequence`."""
        self.handed = sequence
        self.sending_since = time.monotonic()

    async def sent(self) -> bool:
        """gRPC took the message. True when the stream was interrupted meanwhile: the handler
        must return, and only once the interrupt's status has landed (returning before it
        would end the RPC with OK)."""
        self.sending_since = 0.0
        if self.interrupted and self._task is not None:
            await self._task
        return self.interrupted


async def _swallow(awaitable: Awaitable[object]) -> None:
    with contextlib.suppress(BaseException):
        await awaitable


class EventFollower:
    """The per-process reader of the event log and its ring buffer; serves every WatchRuns.

    Create it anywhere; `run(store, stopping)` (the `run_event_follower` background task) does
    the reading, while anyone watches. Streams opened before the follower started (or while
    nobody watched) read the database until it has.
    """

    def __init__(self, settings: WatchSettings | None = None) -> None:
        self.settings = settings if settings is not None else WatchSettings.from_env()
        self._capacity = self.settings.buffer_events
        self._ring: list[BufferedEvent | None] = [None] * self._capacity
        self._count = 0  # events ever appended; the ring holds indexes [count - capacity, count)
        self._base: int | None = None  # the buffer holds every event in (base, head]; None: not started
        self._head = 0
        # Streams waiting for new events: those that want every batch, and those woken only by
        # batches holding their run, backfill or workflow (see `_wake_key`). A ticker wakes them
        # all every `tick` seconds so idle ones can send bookmarks.
        self._waiting: list[asyncio.Future[None]] = []
        self._waiting_for: dict[WakeKey, list[asyncio.Future[None]]] = {}
        self.tick = max(0.01, min(2.5, self.settings.bookmark_interval / 4))
        self._wake = asyncio.Event()
        self._closed = False
        self._subscriptions: set[_Subscription] = set()
        self._attached: Store | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The newest sequence the follower has read (0 before it started)."""
        return self._head

    @property
    def base(self) -> int | None:
        """The buffer holds every event after this sequence (None while the follower is not
        following: before it started, and while nobody watches)."""
        return self._base

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)

    @property
    def buffered(self) -> int:
        """Events held in memory (none while the follower is not following)."""
        return 0 if self._base is None else min(self._count, self._capacity)

    @property
    def closed(self) -> bool:
        return self._closed

    def wake(self, head_sequence: int | None = None) -> None:
        """Something may have been appended to the log (up to `head_sequence`, when known)."""
        if self._subscriptions and (head_sequence is None or head_sequence > self._head):
            self._wake.set()

    def attach(self, store: Store) -> None:
        """Wakes the follower after each local commit that wrote events (once per store)."""
        if self._attached is not store:
            self._attached = store
            store.add_commit_listener(lambda commit: self.wake(commit.head_sequence))

    def close(self) -> None:
        """Ends every stream with UNAVAILABLE (they reconnect elsewhere) and stops the follower.
        New streams are refused the same way."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._notify_all()
        # A stream in the middle of a send notices the close once gRPC takes the message and
        # ends itself; one whose client stopped reading never would, so those still sending a
        # moment later are ended out of band. Not at once: ending a send that was about to
        # complete out of band left gRPC waiting for its handler until the shutdown grace ran out.
        asyncio.get_running_loop().call_later(CLOSE_SEND_WAIT, self._end_stuck_sends)

    def _end_stuck_sends(self) -> None:
        for subscription in list(self._subscriptions):
            if subscription.sending_since:
                subscription.interrupt_with(self._shutdown_error())

    def _shutdown_error(self) -> Unavailable:
        return Unavailable(SHUTDOWN_MESSAGE, reason="SERVER_SHUTTING_DOWN")

    def _notify_all(self) -> None:
        waiting, self._waiting = self._waiting, []
        keyed, self._waiting_for = self._waiting_for, {}
        _resolve(waiting)
        for futures in keyed.values():
            _resolve(futures)

    def _notify_batch(self, batch: list[BufferedEvent]) -> None:
        """Wakes the streams that may want something in `batch`."""
        waiting, self._waiting = self._waiting, []
        _resolve(waiting)
        if self._waiting_for:
            keys: set[WakeKey] = set()
            for item in batch:
                keys.add(("workflow", item.workflow_slug))
                if item.run_id is not None:
                    keys.add(("run", item.run_id))
                if item.backfill_id is not None:
                    keys.add(("backfill", item.backfill_id))
            for key in keys:
                futures = self._waiting_for.pop(key, None)
                if futures:
                    _resolve(futures)

    def _waiter(self, key: WakeKey | None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key is None:
            self._waiting.append(future)
        else:
            self._waiting_for.setdefault(key, []).append(future)
        return future

    async def _ticker(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.tick)
            self._notify_all()

    def _append(self, batch: list[BufferedEvent]) -> None:
        capacity = self._capacity
        for item in batch:
            if item.sequence <= self._head:
                continue
            slot = self._count % capacity
            if self._count >= capacity:
                evicted = self._ring[slot]
                assert evicted is not None
                self._base = evicted.sequence
            self._ring[slot] = item
            self._count += 1
            self._head = item.sequence

    def _index_after(self, cursor: int) -> int:
        """The ring index of the first buffered event after `cursor` (which is >= base)."""
        if cursor >= self._head:
            return self._count
        low, high = max(0, self._count - self._capacity), self._count
        while low < high:
            middle = (low + high) // 2
            item = self._ring[middle % self._capacity]
            assert item is not None
            if item.sequence > cursor:
                high = middle
            else:
                low = middle + 1
        return low

    # --- the follower loop -------------------------------------------------------------------

    async def run(self, store: Store, stopping: asyncio.Event) -> None:
        """Follows the log until `stopping` is set or `close()` is called."""
        self.attach(store)
        helpers = [
            asyncio.create_task(self._close_when(stopping), name="watch-stop"),
            asyncio.create_task(self._watchdog(), name="watch-watchdog"),
            asyncio.create_task(self._ticker(), name="watch-ticker"),
        ]
        try:
            if not store.is_sqlite:
                helpers.append(asyncio.create_task(self._listen(store.url), name="watch-listen"))
            failures = 0
            while not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
                self._wake.clear()
                if self._closed:
                    break
                if not self._subscriptions:
                    if self._base is not None:
                        self._stop_following()
                    continue
                try:
                    if self._base is None:
                        await self._start(store)
                    await self._catch_up(store)
                    failures = 0
                    await asyncio.sleep(self.settings.read_gap)
                except Exception as error:
                    failures += 1
                    log_event(logger, "event follower read failed", level=logging.WARNING, error=repr(error))
                    await asyncio.sleep(min(5.0, 0.05 * 2**failures))
        finally:
            self.close()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _close_when(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self.close()

    def _stop_following(self) -> None:
        """Nobody watches: forget the buffer and read nothing (on a busy server reading every
        event cost several percent of the process) until a stream subscribes and wakes the
        follower, which then starts again at the log's head. Streams read the database until
        it has, as they do before the follower's first start."""
        self._base = None
        self._count = 0
        self._ring = [None] * self._capacity

    async def _start(self, store: Store) -> None:
        failures = 0
        while not self._closed:
            try:
                head = await store.read(events.head_sequence)
            except Exception as error:
                failures += 1
                log_event(logger, "event follower cannot start", level=logging.WARNING, error=repr(error))
                await asyncio.sleep(min(5.0, 0.05 * 2**failures))
                continue
            self._base = self._head = head
            self._notify_all()
            return

    async def _catch_up(self, store: Store) -> None:
        limit = self.settings.batch_size
        while not self._closed:
            batch = await store.read(functools.partial(_read_new, self._head, limit))
            if batch:
                self._append(batch)
                self._notify_batch(batch)
            if len(batch) < limit:
                return

    async def _listen(self, url: str) -> None:
        """PostgreSQL: LISTEN on a dedicated connection; a notification only wakes the follower."""
        import psycopg

        failures = 0
        while not self._closed:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {events.EVENTS_CHANNEL}")
                    failures = 0
                    self.wake()  # whatever was committed while not listening
                    while not self._closed:
                        async for notify in connection.notifies(timeout=1.0):
                            try:
                                self.wake(int(notify.payload))
                            except ValueError:
                                self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                log_event(
                    logger, "event listener lost its connection", level=logging.WARNING, error=repr(error)
                )
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def _watchdog(self) -> None:
        """Ends streams whose send has been stuck for `stall_timeout` seconds."""
        timeout = self.settings.stall_timeout
        period = min(1.0, timeout / 4)
        while not self._closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            for subscription in list(self._subscriptions):
                since = subscription.sending_since
                if since and now - since >= timeout and not subscription.interrupted:
                    log_event(
                        logger,
                        "watch stream stalled; ending it",
                        level=logging.INFO,
                        last_sequence=subscription.handed,
                        stalled_seconds=round(now - since, 3),
                    )
                    subscription.interrupt_with(
                        ResourceExhausted(
                            f"{STALL_MESSAGE} (no progress for {timeout:g} s; last sequence {subscription.handed})",
                            reason="WATCH_STREAM_STALLED",
                            metadata={"last_sequence": str(subscription.handed)},
                        )
                    )

    # --- subscriptions -----------------------------------------------------------------------

    async def watch(
        self,
        store: Store,
        event_filter: EventFilter,
        after_sequence: int,
        interrupt: Interrupt | None = None,
    ) -> AsyncIterator[run_pb2.WatchRunsResponse]:
        """Every event matching `event_filter` after `after_sequence`, in order, then the live
        ones, with BOOKMARKs when idle. Raises OutOfRange when the cursor was pruned from the
        log, Unavailable at shutdown. `interrupt` ends the RPC out of band (stalls, shutdown)."""
        if self._closed:
            raise self._shutdown_error()
        subscription = _Subscription(interrupt, handed=after_sequence)
        self._subscriptions.add(subscription)
        self._wake.set()  # the follower may be stopped (no one watched)
        bookmark_interval = self.settings.bookmark_interval
        limit = self.settings.batch_size
        last_sent = time.monotonic()
        try:
            # The retained log is what the database holds (the buffer may still have events
            # pruned since): check the cursor against it, and start a replay from 0 at its oldest.
            oldest = await store.read(events.oldest_sequence)
            if after_sequence > 0 and oldest > after_sequence + 1:
                raise compacted(after_sequence, oldest)
            cursor = max(after_sequence, oldest - 1)
            wake_key = _wake_key(event_filter)
            while True:
                if self._closed:
                    raise self._shutdown_error()
                base = self._base
                if base is None or cursor < base:
                    # Replay, or fell behind the buffer: read the database, filtered, in batches.
                    page = await store.read(functools.partial(_read_page, cursor, event_filter, limit))
                    if cursor > 0 and page.oldest > cursor + 1:
                        # Pruned while this stream was behind.
                        raise compacted(cursor, page.oldest)
                    for item in page.events:
                        if self._closed:
                            raise self._shutdown_error()
                        subscription.sending(item.sequence)
                        yield item.response
                        if await subscription.sent():
                            return
                        cursor = item.sequence
                        last_sent = time.monotonic()
                    cursor = max(cursor, page.scanned)
                    if time.monotonic() - last_sent >= bookmark_interval:
                        subscription.sending(cursor)
                        yield bookmark(cursor)
                        if await subscription.sent():
                            return
                        last_sent = time.monotonic()
                    if cursor >= page.head and (self._base is None or cursor > self._head):
                        # The follower has not started, or has not yet read what the database
                        # showed us: wait for it (or for the next poll).
                        waiter = self._waiter(None)
                        await asyncio.wait((waiter,), timeout=self.settings.poll_interval)
                        if not waiter.done():
                            waiter.cancel()
                            with contextlib.suppress(ValueError):
                                self._waiting.remove(waiter)
                    continue
                # Live: walk the buffer from the cursor.
                index = self._index_after(cursor)
                capacity = self._capacity
                while index < self._count:
                    if index < self._count - capacity:
                        break  # evicted while we were sending: continue from the database
                    live = self._ring[index % capacity]
                    assert live is not None
                    index += 1
                    if live.matches(event_filter):
                        if self._closed:
                            raise self._shutdown_error()
                        subscription.sending(live.sequence)
                        yield live.response
                        if await subscription.sent():
                            return
                        last_sent = time.monotonic()
                    cursor = live.sequence
                else:
                    cursor = max(cursor, self._head)
                    if time.monotonic() - last_sent >= bookmark_interval:
                        subscription.sending(cursor)
                        yield bookmark(cursor)
                        if await subscription.sent():
                            return
                        last_sent = time.monotonic()
                    elif not self._closed:
                        # Woken by a batch that may match, by the ticker, or at close.
                        await self._waiter(wake_key)
        finally:
            self._subscriptions.discard(subscription)


# --- background tasks (server/app.py DEFAULT_BACKGROUND_TASKS) -------------------------------


async def run_event_follower(context: ServiceContext, stopping: asyncio.Event) -> None:
    """The process's one reader of the event log (feeds every WatchRuns stream)."""
    await context.events.run(context.store, stopping)


async def run_event_pruner(context: ServiceContext, stopping: asyncio.Event) -> None:
    """Deletes events past the retention (age and/or count) in small batches; never touches
    per-partition state. Every replica may run it: the deletes are idempotent."""
    settings = context.events.settings
    if not settings.prunes:
        return
    batch = settings.prune_batch

    def prune_batch(cutoff: int | None) -> Callable[[Outbox], int]:
        def prune(outbox: Outbox) -> int:
            return events.prune_events(
                older_than_micros=cutoff, keep_last=settings.retention_max, limit=batch
            )

        return prune

    while not stopping.is_set():
        try:
            while not stopping.is_set():
                now = context.clock.now()
                cutoff = micros(now - settings.retention) if settings.retention is not None else None
                deleted = await context.store.write(prune_batch(cutoff), micros(now))
                if deleted:
                    log_event(logger, "pruned events", level=logging.DEBUG, deleted=deleted)
                if deleted < batch:
                    break
                await asyncio.sleep(0.01)  # let other writers in between batches
        except Exception as error:
            log_event(logger, "event pruning failed; retrying", level=logging.WARNING, error=repr(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.prune_interval)
