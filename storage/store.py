"""The store: the database plus the threads that do its work off the event loop.

Peewee is synchronous. The asyncio server hands each unit of database work — one
synchronous function, no `await` inside — to a small thread pool. SQLite gets one
writer thread (it allows one writer at a time anyway, and `BEGIN IMMEDIATE` avoids
lock upgrades that deadlock) and a few readers; PostgreSQL gets a pool for both.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import peewee

from storage import migrations
from storage.database import connect, is_sqlite_url
from storage.events import Outbox
from storage.models import bind_models

T = TypeVar("T")


class SchemaBehind(Exception):
    """The database needs migrations and the server was told not to run them."""


class Store:
    def __init__(self, url: str, *, read_threads: int = 4, write_threads: int | None = None) -> None:
        self.url = url
        self.db: peewee.Database = connect(url)
        bind_models(self.db)
        self.is_sqlite = is_sqlite_url(url)
        writers = write_threads if write_threads is not None else (1 if self.is_sqlite else 4)
        self._readers = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="db-read")
        self._writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="db-write")
        self._listeners: list[Callable[[int], None]] = []

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Opens the database and brings its schema up to date (or refuses, when `migrate` is false)."""
        store = cls(url)
        with store.db.connection_context():
            version = migrations.current_version(store.db)
            if version < migrations.LATEST_VERSION:
                if not migrate:
                    store.close()
                    raise SchemaBehind(
                        f"the database schema is at version {version}, this server needs "
                        f"{migrations.LATEST_VERSION}; start without --no-migrate to upgrade it"
                    )
                migrations.migrate(store.db)
        return store

    def transaction(self) -> peewee._transaction:
        """A write transaction; on SQLite it takes the write lock at BEGIN."""
        if self.is_sqlite:
            return self.db.atomic("IMMEDIATE")
        return self.db.atomic()

    def run_plain_transaction(self, fn: Callable[[], T]) -> T:
        """Runs `fn` in one write transaction on the calling thread (offline tools)."""
        with self.transaction():
            return fn()

    def run_write(self, fn: Callable[[Outbox], T], now_micros: int) -> tuple[T, list[int]]:
        """Runs `fn` in one write transaction on the calling thread; the events it adds to
        its outbox are appended last, in the same transaction. Returns the result and the
        committed event sequences."""
        with self.transaction():
            outbox = Outbox()
            result = fn(outbox)
            outbox.flush(self.db, now_micros)
        return result, outbox.sequences

    async def write(self, fn: Callable[[Outbox], T], now_micros: int) -> T:
        """Runs `fn` in one write transaction on a writer thread, then wakes the listeners
        of the events it committed."""
        result, sequences = await self._submit(
            self._writers, functools.partial(self.run_write, fn, now_micros)
        )
        if sequences:
            for listener in list(self._listeners):
                listener(sequences[-1])
        return result

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """`listener(head_sequence)` runs on the event loop after each write that committed events."""
        self._listeners.append(listener)

    async def read(self, fn: Callable[[], T]) -> T:
        """Runs `fn` in one read transaction (one snapshot) on a reader thread."""
        return await self._submit(self._readers, functools.partial(self._run_read, fn))

    def _run_read(self, fn: Callable[[], T]) -> T:
        with self.db.atomic():
            return fn()

    async def _submit(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(pool, functools.partial(context.run, fn))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writers.shutdown(wait=True)
        self.db.close()
