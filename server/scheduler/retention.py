"""The retention loop: applies every workflow's RetentionPolicy now and then, one small write
transaction per batch, so it never holds the writer for long."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from datetime import timedelta

from server.api.context import ServiceContext
from server.retention import batch_in_write, workflow_slugs
from storage.models import micros

log = logging.getLogger("partita.retention")

INTERVAL = timedelta(seconds=float(os.environ.get("PARTITA_RETENTION_INTERVAL_SECONDS", "600")))


async def run_retention(context: ServiceContext, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), INTERVAL.total_seconds())
        if stopping.is_set():
            return
        try:
            now = context.clock.now()
            for slug in await context.store.read(workflow_slugs):
                more = True
                while more and not stopping.is_set():
                    more = await context.store.write(
                        functools.partial(batch_in_write, catalog=context.catalog, slug=slug, now=now),
                        micros(now),
                    )
        except Exception:
            log.exception("retention pass failed; the next one comes in %s", INTERVAL)
