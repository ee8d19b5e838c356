"""`partita backfill-keys` on an upgraded version-1 database: dry run, real run, second run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import peewee

from partita.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from storage import migrations
from storage.database import connect
from tests.harness import start_server
from tests.storage.test_migrations import fill_version_1, sql


def backfill_keys(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "backfill-keys",
            "--database",
            url,
            "--workflow",
            "daily-sales",
            "--from-parameter",
            "day",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_backfill_keys_on_an_upgraded_database(database_url: str, tmp_path: Path) -> None:
    db: peewee.Database = connect(database_url)
    with db.connection_context():
        migrations.migrate(db, target=1)
        fill_version_1(db)
        # A third run whose parameter is not a key, and one without the parameter.
        sql(
            db,
            "INSERT INTO run (workflow_slug, parameters, requested_parameters, state, attempt, max_attempts, "
            "trigger_kind, trigger_source_id, trigger_principal, labels, worker_id, lease_id, progress, "
            "progress_message, error_message, cancel_requested, create_time, end_time, update_time) VALUES "
            "('daily-sales', %s, '{}', 'SUCCEEDED', 1, 3, 'MANUAL', '', '', '{}', '', '', 0, '', '', FALSE, 1, 2, 2)",
            '{"day": "yesterday"}',
        )
        sql(
            db,
            "INSERT INTO run (workflow_slug, parameters, requested_parameters, state, attempt, max_attempts, "
            "trigger_kind, trigger_source_id, trigger_principal, labels, worker_id, lease_id, progress, "
            "progress_message, error_message, cancel_requested, create_time, end_time, update_time) VALUES "
            "('daily-sales', '{}', '{}', 'SUCCEEDED', 1, 3, 'MANUAL', '', '', '{}', '', '', 0, '', '', FALSE, 1, 2, 2)",
        )

    server = start_server(database_url, log_dir=tmp_path)  # migrates to the latest version
    try:
        daily = partitions_pb2.PartitionsDefinition(
            time_window=partitions_pb2.TimeWindowPartitions(
                schedule_type=partitions_pb2.SCHEDULE_TYPE_DAILY, start="2024-01-01"
            )
        )
        server.stub(workflow_pb2_grpc.WorkflowServiceStub).RegisterWorkflow(
            workflow_pb2.RegisterWorkflowRequest(
                workflow=workflow_pb2.Workflow(
                    slug="daily-sales",
                    produces=[workflow_pb2.AssetDeclaration(asset_id="daily-sales/out", partitioning=daily)],
                    backfill_policy=workflow_pb2.BackfillPolicy(max_keys_per_run=7),
                ),
                allow_partitioning_change=True,
            )
        )
        # A ranged run in flight over a key the script moves a materialization to, and the next.
        ranged = server.stub(run_pb2_grpc.RunServiceStub).EnqueueRun(
            run_pb2.EnqueueRunRequest(
                workflow_slug="daily-sales",
                partition_range=partitions_pb2.PartitionRange(start_key="2024-01-02", end_key="2024-01-03"),
            )
        )
        assert ranged.run.id == "11"
    finally:
        assert server.stop() == 0

    dry = backfill_keys(database_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would move 2 runs and 1 materializations" in dry.stdout
    assert "left 1 runs with key '': no parameter 'day'" in dry.stdout
    assert (
        "left 1 runs with key '': parameter 'day' is not a valid key of the current definition" in dry.stdout
    )
    with db.connection_context():
        assert sql(
            db, "SELECT COUNT(*) FROM run WHERE workflow_slug = 'daily-sales' AND partition_key <> ''"
        ) == [(0,)]

    real = backfill_keys(database_url)
    assert real.returncode == 0, real.stderr
    assert "moved 2 runs and 1 materializations" in real.stdout
    with db.connection_context():
        assert sql(
            db, "SELECT id, partition_key FROM run WHERE workflow_slug = 'daily-sales' ORDER BY id"
        ) == [
            (1, "2024-01-01"),
            (2, "2024-01-02"),
            (9, ""),
            (10, ""),
            (11, ""),
        ]
        assert sql(db, "SELECT partition_key FROM materialization WHERE run_id = 2") == [("2024-01-02",)]
        states = sql(
            db,
            "SELECT partition_key, status, latest_run_id, latest_materialization_id IS NOT NULL "
            "FROM partition_state WHERE asset_id = 'daily-sales/out' ORDER BY partition_key",
        )
    # The ranged run still covers 2024-01-02 after the old materialization moved there.
    assert [(key, status, run, bool(materialized)) for key, status, run, materialized in states] == [
        ("", "MISSING", 10, False),
        ("2024-01-01", "FAILED", 1, False),
        ("2024-01-02", "IN_PROGRESS", 11, True),
        ("2024-01-03", "IN_PROGRESS", 11, False),
    ]

    again = backfill_keys(database_url)
    assert again.returncode == 0 and "moved 0 runs and 0 materializations" in again.stdout

    server = start_server(database_url, log_dir=tmp_path)
    try:
        latest = server.stub(asset_pb2_grpc.AssetServiceStub).GetLatestMaterialization(
            asset_pb2.GetLatestMaterializationRequest(asset_id="daily-sales/out", partition_key="2024-01-02")
        )
        assert latest.materialization.run_id == "2"
    finally:
        assert server.stop() == 0
