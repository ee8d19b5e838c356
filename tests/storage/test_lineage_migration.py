"""Migration 5 (lineage) on a filled version-4 database."""

from __future__ import annotations

import peewee

from storage import migrations
from tests.storage.test_migrations import fill_version_1, sql


def test_version_4_upgrades_to_lineage(db: peewee.Database) -> None:
    migrations.migrate(db, target=1)
    fill_version_1(db)
    migrations.migrate(db, target=4)
    # "broken" reads daily-sales/out; its materialized slice gets a lineage row, the others none.
    sql(
        db,
        "UPDATE workflow SET definition = %s WHERE slug = 'broken'",
        '{"slug": "broken", "consumes": [{"asset_id": "daily-sales/out"}]}',
    )
    runs_before = sql(db, "SELECT id, state, workflow_slug FROM run ORDER BY id")
    head = sql(db, "SELECT MAX(sequence) FROM run_event")[0][0]

    migrations.migrate(db, target=5)

    assert migrations.current_version(db) == 5
    assert sql(db, "SELECT id, state, workflow_slug FROM run ORDER BY id") == runs_before
    assert sql(db, "SELECT DISTINCT hold_reason FROM run") == [("",)]
    assert sql(db, "SELECT asset_id, materialization_id FROM asset_watermark ORDER BY asset_id") == [
        ("broken/out", 2),
        ("busy/out", 3),
        ("daily-sales/out", 1),
    ]
    assert sql(db, "SELECT name, position FROM lineage_cursor ORDER BY name") == [
        ("automation", head),
        ("holds", runs_before[-1][0]),
    ]
    assert sql(
        db,
        "SELECT asset_id, partition_key, stale, materialization_id, fanout_horizon FROM partition_lineage",
    ) == [("broken/out", "", 0, 2, 2)]
    # Inserts that do not name the new column get the empty hold reason.
    sql(
        db,
        "INSERT INTO run (workflow_slug, partition_key, dedupe_slot, parameters, requested_parameters, state, attempt, "
        "max_attempts, retry_policy, trigger_kind, trigger_source_id, trigger_principal, labels, worker_id, lease_id, progress, "
        "progress_message, error_message, cancel_requested, create_time, update_time) VALUES "
        "('busy', 'k', 0, '{}', '{}', 'FAILED', 1, 3, '', 'MANUAL', '', '', '{}', '', '', 0, '', '', %s, 1, 1)",
        False,
    )
    assert sql(db, "SELECT hold_reason FROM run WHERE partition_key = 'k'") == [("",)]
