"""Migration 7 (ranged runs) on a database one version behind: existing runs stay single-key
runs, backfills run one key per run, and the in-flight key claims start empty and hold."""

from __future__ import annotations

import peewee

from storage import migrations
from tests.storage.test_migrations import sql

VERSION = 7
T0 = 1_700_000_000_000_000


RUN_INSERT = (
    "INSERT INTO run (workflow_slug, partition_key, dedupe_slot, parameters, requested_parameters, state, "
    "attempt, max_attempts, retry_policy, trigger_kind, trigger_source_id, trigger_principal, labels, "
    "worker_id, lease_id, progress, progress_message, error_message, cancel_requested, create_time, "
    "update_time) VALUES ('daily', %s, 0, '{}', '{}', %s, 1, 3, '', 'MANUAL', '', '', '{}', '', '', 0, "
    "'', '', FALSE, %s, %s)"
)


def test_the_previous_version_upgrades_to_ranged_runs(db: peewee.Database) -> None:
    migrations.migrate(db, target=VERSION - 1)  # migrations are numbered without gaps
    with db.atomic():
        sql(db, RUN_INSERT, "2024-01-01", "SUCCEEDED", T0, T0)
        sql(db, RUN_INSERT, "2024-01-02", "QUEUED", T0, T0)
        sql(
            db,
            "INSERT INTO backfill (workflow_slug, state, selection, parameters, max_concurrent_runs, retry_policy, "
            "labels, trigger_kind, trigger_source_id, trigger_principal, create_time, update_time, total_count, "
            "pending_count, queued_count, running_count, succeeded_count, failed_count, canceled_count) VALUES "
            "('daily', 'RUNNING', '{}', '{}', 16, '', '{}', 'MANUAL', '', '', %s, %s, 2, 2, 0, 0, 0, 0, 0)",
            T0,
            T0,
        )
    assert migrations.migrate(db, target=VERSION) == ["0007_ranged_runs"]
    assert sql(
        db,
        "SELECT partition_key, range_start_key, range_end_key, range_keys, claims_slices FROM run ORDER BY id",
    ) == [("2024-01-01", "", "", "", False), ("2024-01-02", "", "", "", False)]
    assert sql(db, "SELECT keys_per_run FROM backfill") == [(1,)]
    assert sql(db, "SELECT COUNT(*) FROM run_slice") == [(0,)]
    # A key is claimed by one in-flight run at a time, and statements that name only the older
    # columns keep working (schema defaults).
    with db.atomic():
        sql(db, RUN_INSERT, "2024-01-03", "QUEUED", T0, T0)
        sql(db, "INSERT INTO run_slice (workflow_slug, partition_key, run_id) VALUES ('daily', 'a', 3)")
        sql(
            db,
            "INSERT INTO run_slice (workflow_slug, partition_key, run_id) VALUES ('daily', 'a', 4), "
            "('daily', 'b', 4) ON CONFLICT (workflow_slug, partition_key) DO NOTHING",
        )
    assert sql(db, "SELECT partition_key, run_id FROM run_slice ORDER BY 1") == [("a", 3), ("b", 4)]
