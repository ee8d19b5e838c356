"""The lease reaper: attempts whose lease lapsed or whose execution timeout passed fail
(retryably), so their runs retry or end. Every write is conditional on the run still
running under that lease, so replicas reaping at once cannot double-fail an attempt."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from server import lifecycle
from server.api.context import ServiceContext
from storage.models import micros

log = logging.getLogger("partita.reaper")

REAP_INTERVAL = 1.0


async def run_reaper(
    context: ServiceContext, stopping: asyncio.Event, interval: float = REAP_INTERVAL
) -> None:
    while not stopping.is_set():
        try:
            now = context.clock.now()
            ended = await context.store.write(
                functools.partial(lifecycle.reap_tx, catalog=context.catalog, now=now), micros(now)
            )
            if ended:
                context.work.notify(ended)
        except Exception:
            log.exception("lease reaper pass failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
