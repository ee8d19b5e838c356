"""The backfill dispatcher wakes on commits that wrote a backfill's events, not on every commit.

On a busy server most commits are runs of no backfill; a dispatch pass after each of them cost
a few percent of the process. This runs the real dispatcher loop on a real SQLite store (on
PostgreSQL every replica's commit wakes it through NOTIFY, whatever it wrote).
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

from server.api.context import ServiceContext
from server.clock import SystemClock
from server.scheduler.dispatcher import BackfillDispatcher
from storage.events import NewEvent, Outbox
from storage.models import micros
from storage.store import Store


def _append(event: NewEvent, outbox: Outbox) -> None:
    outbox.add(event)


async def _passes_after(dispatcher: BackfillDispatcher, store: Store, events: list[NewEvent]) -> int:
    for event in events:
        await store.write(functools.partial(_append, event), micros(SystemClock().now()))
    await asyncio.sleep(0.3)  # far beyond the dispatcher's coalescing delay
    return dispatcher.passes


def test_only_commits_with_backfill_events_wake_the_dispatcher(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'partita.db'}")
    dispatcher = BackfillDispatcher(ServiceContext(store=store, clock=SystemClock()), poll_interval=60)

    async def scenario() -> None:
        stopping = asyncio.Event()
        loop = asyncio.create_task(dispatcher.run(stopping))
        started = time.monotonic()
        while dispatcher.passes < 1:  # the pass every start makes
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.01)
        try:
            unrelated = [NewEvent(type="QUEUED", workflow_slug="plain", run_id=index) for index in range(20)]
            assert await _passes_after(dispatcher, store, unrelated) == 1
            created = NewEvent(type="QUEUED", workflow_slug="plain", backfill_id=7)
            assert await _passes_after(dispatcher, store, [created]) == 2
        finally:
            stopping.set()
            await loop

    try:
        asyncio.run(scenario())
    finally:
        store.close()
