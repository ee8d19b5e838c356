"""The schedule loop: evaluates due schedule ticks (server/schedules.py) where the backfill
dispatcher leads.

Leadership is the dispatcher's (server/scheduler/dispatcher.py `leads`): SQLite's one server,
or on PostgreSQL the replica holding the dispatcher's advisory lock — one process evaluates
schedules at a time. A deposed leader may finish one more evaluation; it cannot fire a tick
twice: the evaluation locks the schedule's state row and each tick is a unique row written with
the runs or backfill it creates.

"Now" is the service context's clock. The loop sleeps until the earliest next tick of any
enabled schedule, at most `max_sleep` (1 s), so a registration, a leadership change or a test
clock that jumps is noticed within a second; it never spins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from server import schedules
from server.logging import log_event
from server.scheduler.dispatcher import leads
from storage import schedules as store
from storage.models import micros

if TYPE_CHECKING:
    from server.api.context import ServiceContext

logger = logging.getLogger("partita.schedules")

MAX_SLEEP = 1.0
MIN_SLEEP = 0.01
# Schedules evaluated per pass at most (the soonest due first); the next pass follows at once.
PASS_LIMIT = 100


class ScheduleLoop:
    def __init__(self, context: ServiceContext, *, max_sleep: float = MAX_SLEEP) -> None:
        self.context = context
        self.max_sleep = max_sleep
        self.leading = False
        self.passes = 0

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            delay = self.max_sleep
            if leads(self.context):
                if not self.leading:
                    self.leading = True
                    log_event(logger, "schedule loop leads")
                try:
                    delay = await self.evaluate_due()
                    failures = 0
                except Exception as error:
                    failures += 1
                    delay = min(5.0, 0.05 * 2**failures)
                    log_event(
                        logger, "schedule pass failed; retrying", level=logging.WARNING, error=repr(error)
                    )
            elif self.leading:
                self.leading = False
                log_event(logger, "schedule loop stepped down")
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)

    async def evaluate_due(self) -> float:
        """Evaluates every schedule due now; returns how long to sleep before the next pass."""
        self.passes += 1
        context = self.context
        now = context.clock.now()
        now_us = micros(now)
        due = await context.store.read(functools.partial(store.due_workflows, now_us, PASS_LIMIT))
        failed = False
        for slug in due:
            try:
                result = await context.store.write(
                    functools.partial(
                        schedules.evaluate_tx, catalog=context.catalog, workflow_slug=slug, now=now
                    ),
                    now_us,
                )
            except Exception as error:  # one schedule's failure must not stall the others
                failed = True
                log_event(
                    logger,
                    "schedule evaluation failed; retrying",
                    level=logging.WARNING,
                    workflow_slug=slug,
                    error=repr(error),
                )
                continue
            if result.runs:
                context.work.notify(result.runs)
        if len(due) >= PASS_LIMIT and not failed:
            return 0.0
        if failed:
            return self.max_sleep
        earliest = await context.store.read(store.earliest_next_tick)
        if earliest is None:
            return self.max_sleep
        wait = (earliest - micros(context.clock.now())) / 1_000_000
        return min(max(wait, MIN_SLEEP), self.max_sleep)


async def run_schedule_loop(context: ServiceContext, stopping: asyncio.Event) -> None:
    """Background task (server/app.py DEFAULT_BACKGROUND_TASKS)."""
    await ScheduleLoop(context).run(stopping)
