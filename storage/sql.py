"""Raw SQL shared by both engines, written once with `%s` placeholders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, TypeVar

import peewee as pw

from storage.models import database_proxy

T = TypeVar("T")


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


# Rows per multi-row VALUES statement: few enough that every row's parameters stay far below
# SQLite's 32,766 bound parameters, many enough that the statement count is no cost.
VALUES_CHUNK = 1000


def values_chunks(
    row_template: str, param_rows: Sequence[Sequence[Any]], chunk: int = VALUES_CHUNK
) -> Iterator[tuple[str, list[Any]]]:
    """Bulk writes as multi-row VALUES statements: per chunk of `param_rows`, the text
    `row_template, row_template, …` (one per row) and the rows' parameters flattened.

    One statement a chunk, never a driver call per row: SQLite's driver releases the GIL
    around every row it steps, and under a busy event loop each re-take of the GIL can wait
    for the loop thread's switch interval, which made per-row executemany several times slower
    than the rows themselves."""
    for part in chunks(param_rows, chunk):
        yield ", ".join([row_template] * len(part)), list(chain.from_iterable(part))


# Values per IN (...) list or rows per chunked statement, far below every engine's bound on
# parameters.
IN_CHUNK = 500


def json_elements(json_list: str) -> str:
    """A FROM item `element` whose rows' `value` are the strings of the JSON list `json_list`
    (an SQL expression; '' reads as an empty list)."""
    listed = f"COALESCE(NULLIF({json_list}, ''), '[]')"
    if is_postgres():
        return f"json_array_elements_text(CAST({listed} AS json)) AS element(value)"
    return f"json_each({listed}) AS element"


def placeholders(values: Sequence[Any]) -> str:
    """`%s, %s, …`, one per value (an IN list)."""
    return ", ".join(["%s"] * len(values))


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_all_ids(
    insert: str, row_template: str, param_rows: Sequence[Sequence[Any]], id_column: str
) -> list[int]:
    """Inserts the rows (`insert` is `INSERT INTO t (columns) VALUES`) in multi-row statements
    and returns their ids in the order given.

    SQLite gives one statement's rows consecutive rowids (each the table's largest plus one,
    with one writer), so the last one names them all without a row-by-row RETURNING fetch (for
    tables without triggers, which would move it). PostgreSQL returns them: a statement takes
    its sequence values in VALUES order."""
    ids: list[int] = []
    for values, params in values_chunks(row_template, param_rows):
        statement = f"{insert} {values}"
        if is_postgres():
            ids += sorted(int(row[0]) for row in rows(f"{statement} RETURNING {id_column}", params))
            continue
        chunk_rows = min(len(param_rows) - len(ids), VALUES_CHUNK)
        last = int(execute(statement, params).lastrowid)
        ids += range(last - chunk_rows + 1, last + 1)
    return ids


def rows(query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return list(execute(query, params).fetchall())


def scalar(query: str, params: Sequence[Any] = ()) -> Any:
    row = execute(query, params).fetchone()
    return row[0] if row else None


# Per model: (column names, field names), in declaration order.
_NAMES: dict[type[pw.Model], tuple[tuple[str, ...], tuple[str, ...]]] = {}

M = TypeVar("M", bound=pw.Model)


def _names(model: type[pw.Model]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    found = _NAMES.get(model)
    if found is None:
        fields = model._meta.sorted_fields
        found = (tuple(field.column_name for field in fields), tuple(field.name for field in fields))
        _NAMES[model] = found
    return found


def columns(model: type[pw.Model]) -> tuple[str, ...]:
    """The model's column names in declaration order."""
    return _names(model)[0]


def column_list(model: type[pw.Model]) -> str:
    return ", ".join(columns(model))


def to_model(model: type[M], row: Sequence[Any]) -> M:
    """A model instance over a row in `columns(model)` order, built the way peewee builds the
    rows it reads (no defaults, nothing dirty) but without its per-field setattr: on pages of
    thousands of rows that was a third of the read."""
    instance = model.__new__(model)
    vars(instance).update(
        {"__data__": dict(zip(_names(model)[1], row, strict=True)), "_dirty": set(), "__rel__": {}}
    )
    return instance


def select_models(model: type[M], condition: str, params: Sequence[Any] = (), suffix: str = "") -> list[M]:
    """Rows of `model`'s table WHERE `condition`, as model instances, without peewee's query
    builder: on hot paths it costs a large multiple of the query itself."""
    table = model._meta.table_name
    found = execute(f"SELECT {column_list(model)} FROM {table} WHERE {condition} {suffix}", params).fetchall()
    return [to_model(model, row) for row in found]


def returning_models(model: type[M], statement: str, params: Sequence[Any] = ()) -> list[M]:
    """Runs an INSERT/UPDATE … and returns the affected rows (RETURNING every column)."""
    found = execute(f"{statement} RETURNING {column_list(model)}", params).fetchall()
    return [to_model(model, row) for row in found]
