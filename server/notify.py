"""In-process wake-ups. They carry no data: woken code reads the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class WorkSignal:
    """Wakes long-polling claimers, one per unit of new work (not all of them at once)."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self, timeout: float) -> bool:
        """True when woken, False when `timeout` seconds passed first."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def notify(self, count: int = 1) -> None:
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1
