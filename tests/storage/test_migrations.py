"""Upgrading a version-1 (unpartitioned) database in place."""

from __future__ import annotations

from typing import Any

import peewee

from storage import migrations

T0 = 1_700_000_000_000_000  # microseconds


def sql(db: peewee.Database, query: str, *params: Any) -> list[tuple[Any, ...]]:
    if isinstance(db, peewee.SqliteDatabase):
        query = query.replace("%s", "?")
    cursor = db.execute_sql(query, params)
    return list(cursor.fetchall()) if cursor.description else []


def fill_version_1(db: peewee.Database) -> None:
    """A v1 database with three workflows whose assets end in each status, and some events."""
    for slug in ("daily-sales", "broken", "busy", "never-ran"):
        sql(
            db,
            "INSERT INTO workflow (slug, description, definition, create_time, update_time) "
            "VALUES (%s, %s, %s, %s, %s)",
            slug,
            f"{slug} workflow",
            f'{{"slug": "{slug}"}}',
            T0,
            T0,
        )
        sql(
            db,
            "INSERT INTO asset (asset_id, workflow_slug, description) VALUES (%s, %s, '')",
            f"{slug}/out",
            slug,
        )
    runs = [
        # (workflow, state, end_time)
        ("daily-sales", "FAILED", T0 + 10),
        ("daily-sales", "SUCCEEDED", T0 + 20),
        ("broken", "SUCCEEDED", T0 + 10),
        ("broken", "FAILED", T0 + 30),
        ("busy", "SUCCEEDED", T0 + 10),
        ("busy", "QUEUED", None),
        ("busy", "RUNNING", None),
        ("busy", "QUEUED", None),
    ]
    for index, (slug, state, end_time) in enumerate(runs, start=1):
        sql(
            db,
            "INSERT INTO run (workflow_slug, parameters, requested_parameters, state, attempt, max_attempts, "
            "trigger_kind, trigger_source_id, trigger_principal, labels, worker_id, lease_id, progress, "
            "progress_message, error_message, cancel_requested, create_time, end_time, update_time) VALUES "
            "(%s, %s, '{}', %s, 1, 3, 'MANUAL', '', 'alice', '{}', '', '', 0, '', '', %s, %s, %s, %s)",
            slug,
            f'{{"day": "2024-01-{index:02d}"}}',
            state,
            False,
            T0 + index,
            end_time,
            end_time or T0 + index,
        )
    for run_id, asset_id, created in (
        (2, "daily-sales/out", T0 + 20),
        (3, "broken/out", T0 + 10),
        (5, "busy/out", T0 + 10),
    ):
        sql(
            db,
            "INSERT INTO materialization (asset_id, run_id, artifacts, payload, create_time) "
            "VALUES (%s, %s, %s, '{}', %s)",
            asset_id,
            run_id,
            '[{"file_name": "out.csv", "storage_url": "s3://b/out.csv"}]',
            created,
        )
    for run_id in range(1, 9):
        sql(
            db,
            "INSERT INTO run_event (time, run_id, workflow_slug, type, state, attempt, progress, message, data) "
            "VALUES (%s, %s, 'daily-sales', 'QUEUED', 'QUEUED', 1, 0, '', '{}')",
            T0 + run_id,
            run_id,
        )


def test_fresh_database_reaches_the_latest_version(db: peewee.Database) -> None:
    assert migrations.current_version(db) == 0
    applied = migrations.migrate(db)
    assert applied[:2] == ["0001_unpartitioned", "0002_partitions"]
    assert len(applied) == migrations.LATEST_VERSION
    assert migrations.current_version(db) == migrations.LATEST_VERSION
    assert migrations.migrate(db) == []


def test_version_1_upgrades_in_place(db: peewee.Database) -> None:
    migrations.migrate(db, target=1)
    assert migrations.current_version(db) == 1
    fill_version_1(db)
    runs_before = sql(
        db, "SELECT id, workflow_slug, parameters, state, trigger_principal, create_time FROM run ORDER BY id"
    )

    migrations.migrate(db, target=2)

    assert migrations.current_version(db) == 2
    runs_after = sql(
        db, "SELECT id, workflow_slug, parameters, state, trigger_principal, create_time FROM run ORDER BY id"
    )
    assert runs_after == runs_before
    assert sql(db, "SELECT DISTINCT partition_key FROM run") == [("",)]
    assert sql(db, "SELECT COUNT(*) FROM run WHERE backfill_id IS NOT NULL") == [(0,)]
    assert sql(db, "SELECT id, asset_id, run_id, partition_key FROM materialization ORDER BY id") == [
        (1, "daily-sales/out", 2, ""),
        (2, "broken/out", 3, ""),
        (3, "busy/out", 5, ""),
    ]
    assert sql(db, "SELECT COUNT(*), MIN(partition_key), MAX(partition_key) FROM run_event") == [(8, "", "")]
    assert sql(db, "SELECT asset_id, partition_kind, partitioning FROM asset ORDER BY asset_id") == [
        ("broken/out", "", ""),
        ("busy/out", "", ""),
        ("daily-sales/out", "", ""),
        ("never-ran/out", "", ""),
    ]
    states = sql(
        db,
        "SELECT asset_id, partition_key, position, status, latest_run_id, in_flight_run_id, "
        "latest_materialization_id FROM partition_state ORDER BY asset_id",
    )
    assert states == [
        ("broken/out", "", 0, "FAILED", 4, None, 2),
        ("busy/out", "", 0, "IN_PROGRESS", 8, 8, 3),
        ("daily-sales/out", "", 0, "MATERIALIZED", 2, None, 1),
    ]


def test_in_flight_index_holds_after_upgrade(db: peewee.Database) -> None:
    migrations.migrate(db, target=1)
    fill_version_1(db)
    migrations.migrate(db)
    # The three in-flight v1 runs of `busy` survive; a new in-flight run of the slice is refused.
    assert sql(
        db, "SELECT COUNT(*) FROM run WHERE workflow_slug = 'busy' AND state IN ('QUEUED', 'RUNNING')"
    ) == [(3,)]
    insert = (
        "INSERT INTO run (workflow_slug, partition_key, dedupe_slot, parameters, requested_parameters, state, "
        "attempt, max_attempts, retry_policy, trigger_kind, trigger_source_id, trigger_principal, labels, "
        "worker_id, lease_id, progress, progress_message, error_message, cancel_requested, create_time, "
        "update_time) VALUES ('busy', '', 0, '{}', '{}', 'QUEUED', 1, 3, '', 'MANUAL', '', '', '{}', '', '', 0, "
        "'', '', FALSE, 1, 1) ON CONFLICT DO NOTHING"
    )
    with db.atomic():
        sql(db, insert)
    assert sql(db, "SELECT COUNT(*) FROM run WHERE workflow_slug = 'busy'") == [(4,)]
    with db.atomic():
        sql(db, insert.replace("'busy'", "'never-ran'"))
        sql(db, insert.replace("'busy'", "'never-ran'"))
    assert sql(db, "SELECT COUNT(*) FROM run WHERE workflow_slug = 'never-ran'") == [(1,)]


def aggregates_agree(db: peewee.Database) -> None:
    """The trigger-kept aggregates equal what the state rows say."""
    counted = sql(
        db, "SELECT asset_id, status, count FROM partition_status_count WHERE count > 0 ORDER BY 1, 2"
    )
    grouped = sql(db, "SELECT asset_id, status, COUNT(*) FROM partition_state GROUP BY 1, 2 ORDER BY 1, 2")
    assert counted == grouped
    buckets = sql(
        db, "SELECT asset_id, bucket, touched FROM partition_bucket WHERE touched > 0 ORDER BY 1, 2"
    )
    expected = sql(
        db,
        "SELECT asset_id, ordinal / 64, COUNT(*) FROM partition_state WHERE ordinal IS NOT NULL AND ordinal >= 0 "
        "AND status <> 'MISSING' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    assert buckets == expected


def test_version_2_upgrades_to_partition_aggregates(db: peewee.Database) -> None:
    migrations.migrate(db, target=1)
    fill_version_1(db)
    migrations.migrate(db, target=2)
    migrations.migrate(db, target=3)
    aggregates_agree(db)
    assert sql(db, "SELECT status, count FROM partition_status_count WHERE asset_id = 'busy/out'") == [
        ("IN_PROGRESS", 1)
    ]
    # The triggers follow inserts, status and ordinal changes, and deletes.
    insert = (
        "INSERT INTO partition_state (asset_id, partition_key, position, ordinal, status, update_time) "
        "VALUES ('daily-sales/out', %s, %s, %s, %s, 0)"
    )
    with db.atomic():
        for ordinal in range(130):
            sql(db, insert, f"k{ordinal}", ordinal, ordinal, "MATERIALIZED" if ordinal % 3 else "MISSING")
        sql(db, "UPDATE partition_state SET status = 'FAILED' WHERE partition_key IN ('k1', 'k3')")
        sql(db, "UPDATE partition_state SET ordinal = 200 WHERE partition_key = 'k2'")
        sql(db, "DELETE FROM partition_state WHERE partition_key IN ('k4', 'k5', 'k6')")
    aggregates_agree(db)
