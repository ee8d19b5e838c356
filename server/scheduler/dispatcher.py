"""The backfill dispatcher: turns PENDING keys of running backfills into queued runs.

One process dispatches at a time (architecture, "Leadership"):

- SQLite: the one server leads.
- PostgreSQL: the leader holds `pg_try_advisory_lock(DISPATCHER_LOCK)` on a dedicated
  autocommit connection. Others retry every `leader_retry` seconds; when the leader dies its
  connection drops, PostgreSQL releases the lock, and the next try takes over. The leader also
  LISTENs on that connection for `partita_events`, so commits on every replica wake it.

A pass reads the running backfills with pending keys and room under their cap, and for each
runs `dispatch_tx` (server/backfills.py) until it has no room or no pending key left. Passes
run when something may have changed — after every local commit that wrote an event of a
backfill (the store's commit listener: creations, cancels, retries, changes of its runs), on
NOTIFY from other replicas — and on a slow safety-net poll (retry backoffs, overlaps with runs
of no backfill). A deposed leader may finish one more pass: every write of it is
conditional (keys `WHERE state = 'PENDING'`, the counters on the backfill still RUNNING with
room), so it cannot dispatch a key twice or overfill a backfill.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from server import backfills
from server.logging import log_event
from storage import backfills as store
from storage.events import EVENTS_CHANNEL, Commit
from storage.models import micros

if TYPE_CHECKING:
    from server.api.context import ServiceContext

logger = logging.getLogger("partita.dispatcher")

# Session-level advisory lock key of the dispatcher's leadership ("partitad").
DISPATCHER_LOCK = 0x7061727469746164
# Runs one dispatch transaction queues at most.
DISPATCH_BATCH = 64
# A dispatch with room for more keys than this (ranged runs) is a large unit, committed by itself.
LARGE_DISPATCH_KEYS = 10_000
POLL_INTERVAL = 2.0
# Wake-ups closer together than this are served by one pass (a busy server commits far more
# often than keys free up; the delay this adds to a dispatch is at most this long).
COALESCE = 0.005
# A canceling backfill whose runs were not stopped (a crash between CancelBackfill's two
# transactions) is swept once it has not changed for this long.
SWEEP_AFTER = 5.0
LEADER_RETRY = 1.0
# A leader checks its lock connection this often (a dropped connection means the lock is gone).
LEADER_CHECK = 1.0


# The dispatcher running for each service context in this process: loops that must run only
# where the dispatcher leads (server/scheduler/schedule_loop.py) ask `leads(context)`.
_RUNNING: dict[int, BackfillDispatcher] = {}


def leads(context: ServiceContext) -> bool:
    """Whether this process leads for `context`: SQLite always; PostgreSQL while its running
    dispatcher holds the advisory lock."""
    if context.store.is_sqlite:
        return True
    dispatcher = _RUNNING.get(id(context))
    return dispatcher is not None and dispatcher.leader


def _work_to_do(now_us: int) -> tuple[list[tuple[int, int]], list[int]]:
    """One read: backfills with keys to dispatch and room, and canceling ones whose runs a crash
    left unstopped (CancelBackfill stops them itself; this sweep waits SWEEP_AFTER for it)."""
    return store.dispatchable(now_us), store.canceling_with_runs_to_stop(
        now_us - int(SWEEP_AFTER * 1_000_000)
    )


class BackfillDispatcher:
    def __init__(
        self,
        context: ServiceContext,
        *,
        poll_interval: float = POLL_INTERVAL,
        leader_retry: float = LEADER_RETRY,
    ) -> None:
        self.context = context
        self.poll_interval = poll_interval
        self.leader_retry = leader_retry
        self.wake = asyncio.Event()
        # SQLite has one server: it leads. PostgreSQL: the advisory lock decides.
        self.leader = context.store.is_sqlite
        self.passes = 0

    def _woken(self, commit: Commit) -> None:
        # Only a backfill's own events (its creation, cancel, retry, its runs' changes) can
        # give it work to dispatch or room for it; what waits on time, the poll finds.
        if commit.touches_backfill:
            self.wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        self.context.store.add_commit_listener(self._woken)
        _RUNNING[id(self.context)] = self
        helpers: list[asyncio.Task[None]] = []
        if not self.context.store.is_sqlite:
            helpers.append(asyncio.create_task(self._hold_leadership(stopping), name="dispatcher-leadership"))
        stop_waiter = asyncio.create_task(stopping.wait(), name="dispatcher-stop")
        failures = 0
        self.wake.set()
        try:
            while not stopping.is_set():
                woken = asyncio.create_task(self.wake.wait())
                await asyncio.wait(
                    (woken, stop_waiter), timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if stopping.is_set():
                    break
                if not self.leader:
                    self.wake.clear()
                    continue
                await asyncio.sleep(COALESCE)
                self.wake.clear()
                try:
                    await self.dispatch_pass(stopping)
                    failures = 0
                except Exception as error:
                    failures += 1
                    log_event(
                        logger, "dispatch pass failed; retrying", level=logging.WARNING, error=repr(error)
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), min(5.0, 0.05 * 2**failures))
        finally:
            if _RUNNING.get(id(self.context)) is self:
                del _RUNNING[id(self.context)]
            stop_waiter.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(stop_waiter, *helpers, return_exceptions=True)

    async def dispatch_pass(self, stopping: asyncio.Event | None = None) -> int:
        """Dispatches what fits now; returns how many keys moved."""
        self.passes += 1
        context = self.context
        moved = 0
        ready, canceling = await context.store.read(
            functools.partial(_work_to_do, micros(context.clock.now()))
        )
        for backfill_id in canceling:
            now = context.clock.now()
            await context.store.write(
                functools.partial(
                    backfills.cancel_runs_tx, catalog=context.catalog, backfill_id=backfill_id, now=now
                ),
                micros(now),
            )
        for backfill_id, free in ready:
            while stopping is None or not stopping.is_set():
                now = context.clock.now()
                try:
                    count = await context.store.write(
                        functools.partial(
                            backfills.dispatch_tx,
                            catalog=context.catalog,
                            backfill_id=backfill_id,
                            limit=DISPATCH_BATCH,
                            now=now,
                        ),
                        micros(now),
                        alone=free > LARGE_DISPATCH_KEYS,
                    )
                except backfills.DispatchConflict:
                    break
                moved += count
                if count:
                    context.work.notify(count)
                if count < DISPATCH_BATCH:
                    break  # no room or no key left; a later commit wakes the next pass
        return moved

    async def _hold_leadership(self, stopping: asyncio.Event) -> None:
        """PostgreSQL: try the advisory lock until it is ours, then hold it (and listen) until
        the connection drops or the server stops."""
        import psycopg

        failures = 0
        while not stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.context.store.url, autocommit=True
                ) as connection:
                    failures = 0
                    while not stopping.is_set():
                        cursor = await connection.execute(
                            "SELECT pg_try_advisory_lock(%s)", (DISPATCHER_LOCK,)
                        )
                        row = await cursor.fetchone()
                        if row is not None and row[0]:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), self.leader_retry)
                    else:
                        return
                    await connection.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.leader = True
                    self.wake.set()
                    log_event(logger, "backfill dispatcher leads")
                    while not stopping.is_set():
                        async for _ in connection.notifies(timeout=LEADER_CHECK):
                            self.wake.set()
                        await connection.execute("SELECT 1")  # raises once the connection is gone
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                log_event(
                    logger,
                    "dispatcher leadership connection failed",
                    level=logging.WARNING,
                    error=repr(error),
                )
            finally:
                if self.leader:
                    self.leader = False
                    log_event(logger, "backfill dispatcher stepped down")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), min(5.0, 0.1 * 2**failures))


async def run_backfill_dispatcher(context: ServiceContext, stopping: asyncio.Event) -> None:
    """Background task (server/app.py DEFAULT_BACKGROUND_TASKS)."""
    await BackfillDispatcher(context).run(stopping)
