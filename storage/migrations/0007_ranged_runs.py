"""Migration 7: ranged runs (one run over several partition keys).

- `run.range_start_key`, `run.range_end_key`: the inclusive key range of a ranged run over
  time-window or static keys ('' otherwise); `run.range_keys`: every key a ranged run covers,
  in definition order (a JSON list, '' for single-key runs); `run.claims_slices`: whether the
  run holds rows in `run_slice` while it is in flight.
- `run_slice(workflow_slug, partition_key, run_id)`: the in-flight claim of each key covered by
  a run of a workflow with a ranged backfill policy, primary key (workflow_slug, partition_key),
  so two in-flight runs of one workflow can never overlap; index `(run_id)` to release them.
- `backfill.keys_per_run`: how many keys of the backfill one run covers at most (the workflow's
  backfill policy when it was created); `max_concurrent_runs` times it caps its in-flight keys.

Existing data: every run is a single-key run (columns take their defaults), no run holds
slices, so `run_slice` starts empty, and every backfill runs one key per run.
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class RunSlice(Base):
        workflow_slug = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        run_id = pw.BigIntegerField(index=True)

        class Meta:
            primary_key = pw.CompositeKey("workflow_slug", "partition_key")

    # Defaults in the schema too, so statements that name only the older columns keep working.
    empty: list[pw.Node] = [pw.SQL("DEFAULT ''")]
    migrate(
        migrator.add_column(
            "run", "range_start_key", pw.CharField(max_length=255, default="", constraints=empty)
        ),
        migrator.add_column(
            "run", "range_end_key", pw.CharField(max_length=255, default="", constraints=empty)
        ),
        migrator.add_column("run", "range_keys", pw.TextField(default="", constraints=empty)),
        migrator.add_column(
            "run", "claims_slices", pw.BooleanField(default=False, constraints=[pw.SQL("DEFAULT FALSE")])
        ),
        migrator.add_column(
            "backfill", "keys_per_run", pw.BigIntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
        ),
    )
    db.create_tables([RunSlice])
