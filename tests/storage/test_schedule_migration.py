"""Migration 6 (schedule state and ticks) on a database one version behind, with workflows whose
stored definitions have an enabled schedule, a disabled one, and none."""

from __future__ import annotations

import time

import peewee
import pytest

from partita.v1 import workflow_pb2
from server.api import convert
from storage import migrations
from tests.storage.test_migrations import sql

VERSION = 6
T0 = 1_700_000_000_000_000


def add_workflow(db: peewee.Database, slug: str, schedule: workflow_pb2.Schedule | None) -> None:
    workflow = workflow_pb2.Workflow(slug=slug, description='mentions "schedule": {"enabled": false}')
    if schedule is not None:
        workflow.schedule.CopyFrom(schedule)
    sql(
        db,
        "INSERT INTO workflow (slug, description, definition, max_concurrent_runs, create_time, update_time) "
        "VALUES (%s, '', %s, 0, %s, %s)",
        slug,
        convert.to_json(workflow),  # as RegisterWorkflow stores it
        T0,
        T0,
    )


def test_the_previous_version_upgrades_to_schedule_state(db: peewee.Database) -> None:
    migrations.migrate(db, target=VERSION - 1)  # migrations are numbered without gaps
    add_workflow(db, "nightly", workflow_pb2.Schedule(enabled=True, cron_schedule="0 3 * * *"))
    add_workflow(db, "paused", workflow_pb2.Schedule(enabled=False, cron_schedule="0 3 * * *"))
    add_workflow(db, "plain", None)
    before = int(time.time() * 1_000_000)
    migrations.migrate(db, target=VERSION)
    after = int(time.time() * 1_000_000)
    assert migrations.current_version(db) == VERSION
    rows = sql(
        db,
        "SELECT workflow_slug, enabled, cron_schedule, timezone, cursor_time, next_tick_time FROM schedule_state",
    )
    assert len(rows) == 1
    slug, enabled, cron, zone, cursor, next_tick = rows[0]
    # Due at once, so the loop fills in the cron; nothing from before the upgrade fires.
    assert (slug, bool(enabled), cron, zone) == ("nightly", True, "", "")
    assert before <= cursor <= after and next_tick == cursor
    assert sql(db, "SELECT COUNT(*) FROM schedule_tick") == [(0,)]
    sql(
        db,
        "INSERT INTO schedule_tick (workflow_slug, tick_time, outcome, reason, run_ids, evaluate_time) "
        "VALUES ('nightly', %s, 'FIRED', '', '[1]', %s)",
        T0,
        T0,
    )
    with pytest.raises(peewee.IntegrityError), db.atomic():
        sql(
            db,
            "INSERT INTO schedule_tick (workflow_slug, tick_time, outcome, reason, run_ids, evaluate_time) "
            "VALUES ('nightly', %s, 'FIRED', '', '[2]', %s)",
            T0,
            T0,
        )
