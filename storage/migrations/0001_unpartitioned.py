"""Migration 1: the unpartitioned layout.

Workflows and the assets they produce are keyed by slug and asset id only; runs,
materializations and the event log know nothing of partitions. Models here are frozen
copies, independent of `storage.models`: this file never changes once landed.
Times are integer microseconds since the Unix epoch (UTC) on both engines.
"""

from typing import Any

import peewee as pw
from playhouse.sqlite_ext import AutoIncrementField


def up(migrator: Any, db: pw.Database) -> None:
    def never_reused_id() -> pw.Field:
        # SQLite reuses the largest rowid after it is deleted unless AUTOINCREMENT is asked for;
        # ids and event sequences must only ever rise.
        if isinstance(db, pw.SqliteDatabase):
            return AutoIncrementField()
        return pw.BigAutoField()

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Workflow(Base):
        slug = pw.CharField(max_length=128, primary_key=True)
        description = pw.TextField(default="")
        definition = pw.TextField()
        create_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()

    class Asset(Base):
        asset_id = pw.CharField(max_length=128, primary_key=True)
        workflow_slug = pw.CharField(max_length=128, index=True)
        description = pw.TextField(default="")

    class Run(Base):
        id = never_reused_id()
        workflow_slug = pw.CharField(max_length=128)
        parameters = pw.TextField(default="{}")
        requested_parameters = pw.TextField(default="{}")
        state = pw.CharField(max_length=16)
        attempt = pw.IntegerField(default=0)
        max_attempts = pw.IntegerField(default=3)
        next_attempt_time = pw.BigIntegerField(null=True)
        trigger_kind = pw.CharField(max_length=16, default="MANUAL")
        trigger_source_id = pw.CharField(max_length=255, default="")
        trigger_principal = pw.CharField(max_length=255, default="")
        labels = pw.TextField(default="{}")
        worker_id = pw.CharField(max_length=255, default="")
        lease_id = pw.CharField(max_length=64, default="")
        lease_expire_time = pw.BigIntegerField(null=True)
        progress = pw.DoubleField(default=0.0)
        progress_message = pw.TextField(default="")
        error_message = pw.TextField(default="")
        cancel_requested = pw.BooleanField(default=False)
        create_time = pw.BigIntegerField()
        start_time = pw.BigIntegerField(null=True)
        end_time = pw.BigIntegerField(null=True)
        update_time = pw.BigIntegerField()

        class Meta:
            indexes = ((("workflow_slug", "id"), False), (("state", "next_attempt_time", "id"), False))

    class Materialization(Base):
        id = never_reused_id()
        asset_id = pw.CharField(max_length=128)
        run_id = pw.BigIntegerField(null=True, index=True)
        artifacts = pw.TextField(default="[]")
        payload = pw.TextField(default="{}")
        create_time = pw.BigIntegerField()

        class Meta:
            indexes = ((("asset_id", "id"), False),)

    class RunEvent(Base):
        sequence = never_reused_id()
        time = pw.BigIntegerField()
        run_id = pw.BigIntegerField(null=True, index=True)
        workflow_slug = pw.CharField(max_length=128, default="")
        type = pw.CharField(max_length=24)
        state = pw.CharField(max_length=16, default="")
        attempt = pw.IntegerField(default=0)
        progress = pw.DoubleField(default=0.0)
        message = pw.TextField(default="")
        data = pw.TextField(default="{}")

    db.create_tables([Workflow, Asset, Run, Materialization, RunEvent])
