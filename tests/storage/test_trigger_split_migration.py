"""Migration 8 (the aggregates' update trigger skips changes that cancel out) on a database one
version behind: the aggregates still equal what the state rows say, through every kind of
change (the speed-up itself is measured by `make bench`, not here)."""

from __future__ import annotations

import random

import peewee

from storage import migrations
from tests.storage.test_migrations import aggregates_agree, sql

VERSION = 8
STATUSES = ("MISSING", "IN_PROGRESS", "MATERIALIZED", "FAILED")
INSERT = (
    "INSERT INTO partition_state (asset_id, partition_key, position, ordinal, status, update_time) "
    "VALUES (%s, %s, %s, %s, %s, 0)"
)


def test_the_previous_version_upgrades_to_split_triggers(db: peewee.Database) -> None:
    migrations.migrate(db, target=VERSION - 1)  # migrations are numbered without gaps
    with db.atomic():
        for ordinal in range(100):
            sql(db, INSERT, "a/out", f"k{ordinal}", ordinal, ordinal, STATUSES[ordinal % 4])
    assert migrations.migrate(db, target=VERSION) == ["0008_partition_trigger_split"]
    aggregates_agree(db)

    # Every kind of change, at random: the aggregates follow.
    rng = random.Random(8)
    with db.atomic():
        for step in range(400):
            key = f"k{rng.randrange(140)}"
            choice = rng.randrange(5)
            if choice == 0:
                sql(db, "DELETE FROM partition_state WHERE asset_id = 'a/out' AND partition_key = %s", key)
            elif choice == 1:
                moved_to: int | None = rng.choice([None, -1, rng.randrange(300)])
                sql(
                    db,
                    "UPDATE partition_state SET ordinal = %s WHERE asset_id = 'a/out' AND partition_key = %s",
                    moved_to,
                    key,
                )
            else:
                status = rng.choice(STATUSES)
                ordinal = rng.randrange(300)
                sql(
                    db,
                    INSERT + " ON CONFLICT (asset_id, partition_key) DO UPDATE SET status = excluded.status",
                    "a/out",
                    key,
                    step,
                    ordinal,
                    status,
                )
    aggregates_agree(db)
