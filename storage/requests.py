"""Request-id records: the first answer to a request, replayed for the same request id."""

from __future__ import annotations

import hashlib

import peewee as pw

from server.domain.errors import InvalidArgument
from storage import sql


def lock_request_id(db: pw.Database, method: str, request_id: str) -> None:
    """On PostgreSQL, serializes transactions that carry the same request id (SQLite has one writer)."""
    if isinstance(db, pw.PostgresqlDatabase):
        digest = hashlib.sha256(f"{method}\0{request_id}".encode()).digest()
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest[:8], "big", signed=True),))


def find_record(method: str, request_id: str) -> tuple[str, bytes] | None:
    """The (request hash, response) recorded under this request id, if any."""
    row = sql.execute(
        "SELECT request_hash, response FROM request_record WHERE method = %s AND request_id = %s",
        (method, request_id),
    ).fetchone()
    return (str(row[0]), bytes(row[1])) if row else None


def recorded_response(method: str, request_id: str, request_hash: str) -> bytes | None:
    """The first response to this request id, or None; a different request under it is an error."""
    record = find_record(method, request_id)
    if record is None:
        return None
    if record[0] != request_hash:
        raise InvalidArgument.for_field(
            "request_id",
            f"was already used for a different {method} request; use a new request_id",
            reason="REQUEST_ID_REUSED",
        )
    return record[1]


def record_response(
    method: str, request_id: str, request_hash: str, response: bytes, now_micros: int
) -> None:
    sql.execute(
        "INSERT INTO request_record (method, request_id, request_hash, response, create_time) "
        "VALUES (%s, %s, %s, %s, %s)",
        (method, request_id, request_hash, response, now_micros),
    )
