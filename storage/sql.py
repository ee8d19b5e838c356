"""Raw SQL shared by both engines, written once with `%s` placeholders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peewee as pw

from storage.models import database_proxy


def _database() -> pw.Database:
    db = database_proxy.obj
    assert db is not None, "models are not bound to a database"
    return db


def is_postgres() -> bool:
    return isinstance(_database(), pw.PostgresqlDatabase)


def execute(query: str, params: Sequence[Any] = ()) -> Any:
    """Runs `query` (placeholders `%s`) and returns the cursor."""
    db = _database()
    if isinstance(db, pw.SqliteDatabase):
        query = query.replace("%s", "?")
    return db.execute_sql(query, tuple(params))


def rows(query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return list(execute(query, params).fetchall())


def scalar(query: str, params: Sequence[Any] = ()) -> Any:
    row = execute(query, params).fetchone()
    return row[0] if row else None
