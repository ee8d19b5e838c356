"""Opens the database a URL names: an embedded SQLite file or a PostgreSQL server."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import peewee

# WAL lets readers run beside the one writer; NORMAL sync is durable across process
# crashes (only an OS crash may lose the last commits), which is the usual trade for WAL.
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    "cache_size": -64_000,
    "temp_store": "memory",
}


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite:")


def connect(url: str) -> peewee.Database:
    """Returns an unopened peewee database for `sqlite:///path.db` or `postgresql://user@host:port/db`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
        path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"database URL {url!r}: expected sqlite:///path/to/file.db")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=10)
    if parsed.scheme in ("postgres", "postgresql"):
        database = parsed.path.lstrip("/")
        if not database:
            raise ValueError(f"database URL {url!r}: expected postgresql://user@host:port/database")
        params: dict[str, Any] = {"prefer_psycopg3": True}
        if parsed.hostname:
            params["host"] = parsed.hostname
        if parsed.port:
            params["port"] = parsed.port
        if parsed.username:
            params["user"] = unquote(parsed.username)
        if parsed.password:
            params["password"] = unquote(parsed.password)
        return peewee.PostgresqlDatabase(database, **params)
    raise ValueError(f"database URL {url!r}: the scheme must be sqlite or postgresql")
