"""Migration 6: schedules.

- `schedule_state(workflow_slug, enabled, cron_schedule, timezone, cursor_time, next_tick_time,
  update_time)`: per workflow with a schedule, the effective cron and timezone it fires on,
  the cursor (every tick at or before `cursor_time` has been evaluated) and the first tick
  after the cursor (NULL while disabled). Index `(next_tick_time)`: the due schedules.
- `schedule_tick(id, workflow_slug, tick_time, outcome, reason, run_ids, backfill_id,
  evaluate_time)`: one row per evaluated tick, unique per (workflow_slug, tick_time) — written
  in the transaction that creates the tick's runs or backfill, so a tick never fires twice.

Existing data: a workflow whose stored definition has an enabled schedule gets a state row
with its cursor at the upgrade (no tick before the upgrade fires) and `next_tick_time` at the
cursor, so the schedule loop fills in its cron and timezone on its first pass.
Frozen: this file never changes once landed.
"""

import time

import peewee as pw
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class ScheduleState(Base):
        workflow_slug = pw.CharField(max_length=128, primary_key=True)
        enabled = pw.BooleanField(default=False)
        cron_schedule = pw.CharField(max_length=255, default="")
        timezone = pw.CharField(max_length=64, default="")
        cursor_time = pw.BigIntegerField()
        next_tick_time = pw.BigIntegerField(null=True, index=True)
        update_time = pw.BigIntegerField()

    class ScheduleTick(Base):
        id = pw.BigAutoField()
        workflow_slug = pw.CharField(max_length=128)
        tick_time = pw.BigIntegerField()
        outcome = pw.CharField(max_length=16)
        reason = pw.TextField(default="")
        run_ids = pw.TextField(default="[]")
        backfill_id = pw.BigIntegerField(null=True)
        evaluate_time = pw.BigIntegerField()

        class Meta:
            indexes = ((("workflow_slug", "tick_time"), True),)

    db.create_tables([ScheduleState, ScheduleTick])
    now = int(time.time() * 1_000_000)
    mark = db.param
    db.execute_sql(
        "INSERT INTO schedule_state (workflow_slug, enabled, cron_schedule, timezone, cursor_time, "
        f"next_tick_time, update_time) SELECT slug, {mark}, '', '', {mark}, {mark}, {mark} "
        f"FROM workflow WHERE definition LIKE {mark}",
        (True, now, now, now, '%"schedule": {"enabled": true%'),
    )
