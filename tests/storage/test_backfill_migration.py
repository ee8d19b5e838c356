"""Migration 4 (backfill counters, next trigger, indexes) on a version-3 database with backfills."""

from __future__ import annotations

import peewee

from storage import migrations
from tests.storage.test_migrations import sql

T0 = 1_700_000_000_000_000


def add_backfill(db: peewee.Database, states: list[str], state: str = "RUNNING") -> int:
    sql(
        db,
        "INSERT INTO backfill (workflow_slug, state, selection, parameters, max_concurrent_runs, retry_policy, "
        "labels, trigger_kind, trigger_source_id, trigger_principal, create_time, update_time) "
        "VALUES ('daily', %s, '{\"all\":{}}', '{}', 16, '', '{}', 'MANUAL', '', '', %s, %s)",
        state,
        T0,
        T0,
    )
    backfill_id = int(sql(db, "SELECT MAX(id) FROM backfill")[0][0])
    for ordinal, key_state in enumerate(states):
        sql(
            db,
            "INSERT INTO backfill_partition (backfill_id, ordinal, partition_key, state, attempts, last_error, "
            "update_time) VALUES (%s, %s, %s, %s, 0, '', %s)",
            backfill_id,
            ordinal,
            f"k{ordinal}",
            key_state,
            T0,
        )
    return backfill_id


def test_version_3_upgrades_to_backfill_counters(db: peewee.Database) -> None:
    migrations.migrate(db, target=3)
    assert migrations.current_version(db) == 3
    busy = add_backfill(db, ["SUCCEEDED", "SUCCEEDED", "FAILED", "PENDING", "QUEUED", "RUNNING", "CANCELED"])
    empty = add_backfill(db, [], state="COMPLETED")
    migrations.migrate(db, target=4)
    assert migrations.current_version(db) == 4
    columns = "total_count, pending_count, queued_count, running_count, succeeded_count, failed_count, canceled_count"
    assert sql(db, f"SELECT {columns} FROM backfill WHERE id = %s", busy) == [(7, 1, 1, 1, 2, 1, 1)]
    assert sql(db, f"SELECT {columns} FROM backfill WHERE id = %s", empty) == [(0, 0, 0, 0, 0, 0, 0)]
    assert sql(db, "SELECT DISTINCT next_trigger FROM backfill_partition") == [("BACKFILL",)]
    assert migrations.LATEST_VERSION >= 4
