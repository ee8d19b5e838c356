"""The store: the database plus the threads that do its work off the event loop.

Peewee is synchronous. The asyncio server hands each unit of database work — one
synchronous function, no `await` inside — to a small thread pool. SQLite gets one
writer thread (it allows one writer at a time anyway, and `BEGIN IMMEDIATE` avoids
lock upgrades that deadlock) and a few readers; PostgreSQL gets a pool for both.

On SQLite the writer commits groups: the units of work waiting when it is free run in one
transaction, each inside its own savepoint when there are several (a unit that fails rolls back
alone), and one COMMIT makes them all durable before any caller hears back. A unit its caller
knows to be large (a ranged run's completion, a dispatch of many keys) runs in a transaction of
its own, without a savepoint: under one, SQLite keeps the original of every page the unit
changes in an in-memory journal and walks that journal at the end of each statement, so a
million-key CompleteRun took 67 s instead of 21.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import peewee

from storage import migrations
from storage.database import connect, is_sqlite_url
from storage.events import Commit, Outbox
from storage.models import bind_models

T = TypeVar("T")


class SchemaBehind(Exception):
    """The database needs migrations and the server was told not to run them."""


# Units of work one SQLite commit may carry.
MAX_GROUP = 64


@dataclass
class _PendingWrite:
    fn: Callable[[Outbox], Any]
    now_micros: int
    context: contextvars.Context
    future: asyncio.Future[tuple[Any, Commit | None]]
    loop: asyncio.AbstractEventLoop
    alone: bool


class Store:
    def __init__(self, url: str, *, read_threads: int = 4, write_threads: int | None = None) -> None:
        self.url = url
        self.db: peewee.Database = connect(url)
        bind_models(self.db)
        self.is_sqlite = is_sqlite_url(url)
        writers = write_threads if write_threads is not None else (1 if self.is_sqlite else 4)
        self._readers = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="db-read")
        self._writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="db-write")
        self._listeners: list[Callable[[Commit], None]] = []
        self._pending: deque[_PendingWrite] = deque()
        self._pending_lock = threading.Lock()
        self._draining = False

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Opens the database and brings its schema up to date (or refuses, when `migrate` is false)."""
        store = cls(url)
        with store.db.connection_context():
            version = migrations.current_version(store.db)
            behind = version < migrations.LATEST_VERSION
            if behind and migrate:
                migrations.migrate(store.db)
        if behind and not migrate:
            store.close()
            raise SchemaBehind(
                f"the database schema is at version {version}, this server needs "
                f"{migrations.LATEST_VERSION}; start without --no-migrate to upgrade it"
            )
        return store

    def transaction(self) -> Any:
        """A write transaction; on SQLite it takes the write lock at BEGIN."""
        if self.is_sqlite:
            return self.db.atomic("IMMEDIATE")
        return self.db.atomic()

    def run_plain_transaction(self, fn: Callable[[], T]) -> T:
        """Runs `fn` in one write transaction on the calling thread (offline tools)."""
        with self.transaction():
            return fn()

    def run_write(self, fn: Callable[[Outbox], T], now_micros: int) -> tuple[T, Commit | None]:
        """Runs `fn` in one write transaction on the calling thread; the events it adds to
        its outbox are appended last, in the same transaction. Returns the result and what it
        appended (None: no event)."""
        with self.transaction():
            return self._unit(fn, now_micros)

    def _unit(self, fn: Callable[[Outbox], T], now_micros: int) -> tuple[T, Commit | None]:
        """`fn` with an outbox whose events are appended after it, in the caller's transaction."""
        outbox = Outbox()
        result = fn(outbox)
        outbox.flush(self.db, now_micros)
        return result, outbox.committed

    async def write(self, fn: Callable[[Outbox], T], now_micros: int, *, alone: bool = False) -> T:
        """Runs `fn` in one write transaction on a writer thread, then wakes the listeners
        of the events it committed. `alone`: a large unit, which SQLite commits by itself."""
        if self.is_sqlite:
            result, committed = await self._write_in_group(fn, now_micros, alone)
        else:
            result, committed = await self._submit(
                self._writers, functools.partial(self.run_write, fn, now_micros)
            )
        if committed is not None:
            for listener in list(self._listeners):
                listener(committed)
        return result

    async def _write_in_group(
        self, fn: Callable[[Outbox], T], now_micros: int, alone: bool
    ) -> tuple[T, Commit | None]:
        loop = asyncio.get_running_loop()
        pending = _PendingWrite(fn, now_micros, contextvars.copy_context(), loop.create_future(), loop, alone)
        with self._pending_lock:
            self._pending.append(pending)
            start = not self._draining
            self._draining = True
        if start:
            self._writers.submit(self._drain)
        result: tuple[T, Commit | None] = await pending.future
        return result

    def _drain(self) -> None:
        """Writer thread: commits waiting units of work in groups until none are left."""
        while True:
            with self._pending_lock:
                group = self._next_group()
                if not group:
                    self._draining = False
                    return
            outcomes: list[tuple[_PendingWrite, Any, BaseException | None]] = []
            try:
                with self.transaction():
                    if len(group) == 1:  # its failure rolls the transaction back
                        outcomes.append((group[0], self._run_unit(group[0]), None))
                    else:
                        for pending in group:
                            try:
                                with self.db.atomic():  # a savepoint: a failing unit rolls back alone
                                    value = self._run_unit(pending)
                                outcomes.append((pending, value, None))
                            except Exception as error:
                                outcomes.append((pending, None, error))
            except Exception as failure:  # the unit alone or the COMMIT failed: nothing holds
                outcomes = [(pending, None, failure) for pending in group]
                if isinstance(failure, peewee.OperationalError | peewee.InterfaceError):
                    self._drop_connection()
            for pending, value, problem in outcomes:
                pending.loop.call_soon_threadsafe(_settle, pending.future, value, problem)

    def _next_group(self) -> list[_PendingWrite]:
        """The waiting units the next transaction commits, in order: up to MAX_GROUP, a unit
        marked `alone` by itself."""
        group: list[_PendingWrite] = []
        while self._pending and len(group) < MAX_GROUP:
            if self._pending[0].alone and group:
                break
            group.append(self._pending.popleft())
            if group[0].alone:
                break
        return group

    def _run_unit(self, pending: _PendingWrite) -> tuple[Any, Commit | None]:
        return pending.context.run(self._unit, pending.fn, pending.now_micros)

    def add_commit_listener(self, listener: Callable[[Commit], None]) -> None:
        """`listener(commit)` runs on the event loop after each write that committed events."""
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
        return await loop.run_in_executor(pool, functools.partial(context.run, self._reconnecting, fn))

    def _reconnecting(self, fn: Callable[[], T]) -> T:
        """Runs `fn`; when the connection broke under it (a database restart, a dropped socket),
        this thread's connection is dropped so its next unit of work connects afresh. The
        error itself propagates: the caller sees UNAVAILABLE and nothing was committed."""
        try:
            return fn()
        except (peewee.OperationalError, peewee.InterfaceError):
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        try:
            self.db.close()
        except Exception:  # the broken connection may refuse even to close
            self.db._state.reset()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writers.shutdown(wait=True)
        self.db.close()


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
