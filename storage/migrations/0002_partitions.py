"""Migration 2: partitions.

Adds `partition_key` ('' for every existing row) to runs, materializations and events;
partition definitions on assets; the dynamic key registry; the per-partition state table
(derived here from the existing history); backfills; request-id records; and the partial
unique index that dedupes in-flight runs per (workflow, partition key).
Frozen: this file never changes once landed.
"""

from typing import Any

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.sqlite_ext import AutoIncrementField

IN_FLIGHT = ("QUEUED", "RUNNING")


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    def never_reused_id() -> pw.Field:
        if isinstance(db, pw.SqliteDatabase):
            return AutoIncrementField()
        return pw.BigAutoField()

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class DynamicPartition(Base):
        # `id` is the registry sequence: a key's position in definition (first-add) order.
        id = never_reused_id()
        asset_id = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        create_time = pw.BigIntegerField()
        delete_time = pw.BigIntegerField(null=True)

        class Meta:
            indexes = ((("asset_id", "partition_key"), True), (("asset_id", "id"), False))

    class PartitionState(Base):
        asset_id = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        # Window start (epoch seconds), static index or registry sequence: definition order.
        position = pw.BigIntegerField()
        status = pw.CharField(max_length=16)
        latest_run_id = pw.BigIntegerField(null=True)
        in_flight_run_id = pw.BigIntegerField(null=True)
        latest_materialization_id = pw.BigIntegerField(null=True)
        latest_materialization_time = pw.BigIntegerField(null=True)
        latest_failure_time = pw.BigIntegerField(null=True)
        update_time = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("asset_id", "partition_key")
            indexes = ((("asset_id", "position"), False), (("asset_id", "status", "position"), False))

    class Backfill(Base):
        id = never_reused_id()
        workflow_slug = pw.CharField(max_length=128, index=True)
        state = pw.CharField(max_length=32)
        selection = pw.TextField()
        parameters = pw.TextField(default="{}")
        max_concurrent_runs = pw.IntegerField()
        retry_policy = pw.TextField(default="")
        labels = pw.TextField(default="{}")
        trigger_kind = pw.CharField(max_length=16, default="MANUAL")
        trigger_source_id = pw.CharField(max_length=255, default="")
        trigger_principal = pw.CharField(max_length=255, default="")
        create_time = pw.BigIntegerField()
        end_time = pw.BigIntegerField(null=True)
        update_time = pw.BigIntegerField()

    class BackfillPartition(Base):
        backfill_id = pw.BigIntegerField()
        # Index of the key in the backfill's plan (key order).
        ordinal = pw.IntegerField()
        partition_key = pw.CharField(max_length=255)
        state = pw.CharField(max_length=16)
        attempts = pw.IntegerField(default=0)
        run_id = pw.BigIntegerField(null=True)
        last_error = pw.TextField(default="")
        update_time = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("backfill_id", "ordinal")
            indexes = (
                (("backfill_id", "partition_key"), True),
                (("backfill_id", "state", "ordinal"), False),
                (("run_id",), False),
            )

    class RequestRecord(Base):
        method = pw.CharField(max_length=64)
        request_id = pw.CharField(max_length=128)
        request_hash = pw.CharField(max_length=64)
        response = pw.BlobField()
        create_time = pw.BigIntegerField(index=True)

        class Meta:
            primary_key = pw.CompositeKey("method", "request_id")

    db.create_tables([DynamicPartition, PartitionState, Backfill, BackfillPartition, RequestRecord])

    key_column = pw.CharField(max_length=255, default="")
    migrator.migrate(
        migrator.add_column("run", "partition_key", key_column),
        migrator.add_column("run", "backfill_id", pw.BigIntegerField(null=True)),
        migrator.add_column("run", "dedupe_slot", pw.BigIntegerField(default=0)),
        migrator.add_column("run", "retry_policy", pw.TextField(default="")),
        migrator.add_column("workflow", "max_concurrent_runs", pw.IntegerField(default=0)),
        migrator.add_column("materialization", "partition_key", key_column),
        migrator.add_column("materialization", "inputs", pw.TextField(default="[]")),
        migrator.add_column("run_event", "partition_key", key_column),
        migrator.add_column("run_event", "backfill_id", pw.BigIntegerField(null=True)),
        migrator.add_column("run_event", "asset_id", pw.CharField(max_length=128, default="")),
        migrator.add_column("run_event", "materialization_ids", pw.TextField(default="[]")),
        migrator.add_column("asset", "partitioning", pw.TextField(default="")),
        migrator.add_column("asset", "partition_kind", pw.CharField(max_length=16, default="")),
        migrator.add_index("run", ("workflow_slug", "partition_key", "id"), False),
        migrator.add_index("run", ("backfill_id", "id"), False),
        # Claims take the oldest queued run: a scan of this index in id order.
        migrator.add_index("run", ("state", "id"), False),
        migrator.add_index("materialization", ("asset_id", "partition_key", "id"), False),
    )
    in_flight = ", ".join(f"'{state}'" for state in IN_FLIGHT)
    # Version 1 never deduped, so a workflow may have several runs in flight. The oldest keeps
    # slot 0 (the slot every new run takes); the others get their own id as slot so the index
    # can be built without canceling work anyone asked for.
    db.execute_sql(
        f"UPDATE run SET dedupe_slot = id WHERE state IN ({in_flight}) AND id NOT IN "
        f"(SELECT MIN(id) FROM run WHERE state IN ({in_flight}) GROUP BY workflow_slug)"
    )
    # The same partial index on both engines: inserts use ON CONFLICT DO NOTHING against it,
    # so two replicas can never both enqueue the same slice.
    db.execute_sql(
        "CREATE UNIQUE INDEX run_in_flight_slice ON run (workflow_slug, partition_key, dedupe_slot) "
        f"WHERE state IN ({in_flight})"
    )
    _derive_unpartitioned_state(db)


def _derive_unpartitioned_state(db: pw.Database) -> None:
    """One state row at key '' per asset with history, derived from runs and materializations."""
    assets = db.execute_sql("SELECT asset_id, workflow_slug FROM asset").fetchall()
    for asset_id, workflow_slug in assets:
        latest_run = _scalar(db, "SELECT MAX(id) FROM run WHERE workflow_slug = %s", workflow_slug)
        in_flight = _scalar(
            db,
            "SELECT MAX(id) FROM run WHERE workflow_slug = %s AND state IN ('QUEUED', 'RUNNING')",
            workflow_slug,
        )
        failure_time = _scalar(
            db,
            "SELECT MAX(COALESCE(end_time, update_time)) FROM run WHERE workflow_slug = %s AND state = 'FAILED'",
            workflow_slug,
        )
        row = db.execute_sql(
            _sql(
                db, "SELECT id, create_time FROM materialization WHERE asset_id = %s ORDER BY id DESC LIMIT 1"
            ),
            (asset_id,),
        ).fetchone()
        materialization_id, materialization_time = row if row else (None, None)
        if latest_run is None and materialization_id is None:
            continue
        if in_flight is not None:
            status = "IN_PROGRESS"
        elif failure_time is not None and (
            materialization_time is None or failure_time > materialization_time
        ):
            status = "FAILED"
        elif materialization_id is not None:
            status = "MATERIALIZED"
        else:
            status = "MISSING"
        now = max(t for t in (failure_time, materialization_time, 0) if t is not None)
        db.execute_sql(
            _sql(
                db,
                "INSERT INTO partition_state (asset_id, partition_key, position, status, latest_run_id, "
                "in_flight_run_id, latest_materialization_id, latest_materialization_time, "
                "latest_failure_time, update_time) VALUES (%s, '', 0, %s, %s, %s, %s, %s, %s, %s)",
            ),
            (
                asset_id,
                status,
                latest_run,
                in_flight,
                materialization_id,
                materialization_time,
                failure_time,
                now,
            ),
        )


def _sql(db: pw.Database, query: str) -> str:
    return query.replace("%s", "?") if isinstance(db, pw.SqliteDatabase) else query


def _scalar(db: pw.Database, query: str, *params: Any) -> Any:
    row = db.execute_sql(_sql(db, query), params).fetchone()
    return row[0] if row else None
