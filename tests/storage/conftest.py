"""Fixtures of the storage tests: an open connection to the test's empty database."""

from __future__ import annotations

from collections.abc import Iterator

import peewee
import pytest

from storage.database import connect


@pytest.fixture
def db(database_url: str) -> Iterator[peewee.Database]:
    database = connect(database_url)
    database.connect()
    yield database
    database.close()
