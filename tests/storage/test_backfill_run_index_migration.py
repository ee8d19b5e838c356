"""Migration 9 (the index of backfill keys by run skips keys without a run) on a database one
version behind: existing keys keep their runs, and the lookup by run still finds them."""

from __future__ import annotations

import peewee

from storage import migrations
from tests.storage.test_migrations import sql

VERSION = 9
INSERT = (
    "INSERT INTO backfill_partition (backfill_id, ordinal, partition_key, state, attempts, run_id, last_error, "
    "update_time, next_trigger) VALUES (1, %s, %s, %s, 0, %s, '', 0, 'BACKFILL')"
)


def index_definition(db: peewee.Database) -> str:
    if isinstance(db, peewee.PostgresqlDatabase):
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'backfill_partition_run_id'"
    else:
        query = "SELECT sql FROM sqlite_master WHERE name = 'backfill_partition_run_id'"
    return str(sql(db, query)[0][0])


def test_the_previous_version_upgrades_to_a_partial_run_index(db: peewee.Database) -> None:
    migrations.migrate(db, target=VERSION - 1)  # migrations are numbered without gaps
    with db.atomic():
        sql(db, INSERT, 0, "a", "SUCCEEDED", 7)
        sql(db, INSERT, 1, "b", "RUNNING", 8)
        sql(db, INSERT, 2, "c", "PENDING", None)
    assert "WHERE" not in index_definition(db).upper()
    assert migrations.migrate(db, target=VERSION) == ["0009_backfill_run_index"]
    assert "RUN_ID IS NOT NULL" in index_definition(db).upper()
    assert sql(db, "SELECT partition_key FROM backfill_partition WHERE run_id = %s", 8) == [("b",)]
    assert sql(db, "SELECT COUNT(*) FROM backfill_partition WHERE run_id IS NULL") == [(1,)]
