"""Migration 4: what backfills need beyond the tables of migration 2.

- `backfill.<state>_count` (total, pending, queued, running, succeeded, failed, canceled): keys
  per state, kept by the transaction of every key transition, so counts, the dispatcher's
  capacity check and "is every key decided" are one row read, never a scan of the plan.
- `backfill_partition.next_trigger`: the trigger kind of the key's next run (BACKFILL, or
  RETRY once RetryBackfill reopened it).
- Indexes: `backfill (state, id)` (the dispatcher's scan of running backfills) and
  `run_event (backfill_id, sequence)` (a backfill's newest event; WatchBackfill reads).
Counters of existing backfills are derived from their plans.
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator

KEY_STATES = ("pending", "queued", "running", "succeeded", "failed", "canceled")


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    counters = ("total", *KEY_STATES)
    migrator.migrate(
        *(
            migrator.add_column("backfill", f"{name}_count", pw.BigIntegerField(default=0))
            for name in counters
        ),
        migrator.add_column(
            "backfill_partition", "next_trigger", pw.CharField(max_length=16, default="BACKFILL")
        ),
        migrator.add_index("backfill", ("state", "id"), False),
        migrator.add_index("run_event", ("backfill_id", "sequence"), False),
    )
    derived = ", ".join(
        f"{name}_count = (SELECT COUNT(*) FROM backfill_partition p "
        f"WHERE p.backfill_id = backfill.id AND p.state = '{name.upper()}')"
        for name in KEY_STATES
    )
    db.execute_sql(
        "UPDATE backfill SET total_count = (SELECT COUNT(*) FROM backfill_partition p "
        f"WHERE p.backfill_id = backfill.id), {derived}"
    )
