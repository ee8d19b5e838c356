"""Migration 5: lineage between partitions, freshness reads, held runs and automation.

- `partition_lineage(asset_id, partition_key, position, ordinal, stale, marked_by,
  materialization_id, fanout_horizon, update_time)`: per downstream key, whether an upstream
  materialization newer than what it read marked it stale, and what it read of its all/last
  upstreams; `lineage_count(asset_id, stale_count)` counts the stale rows per asset.
- `asset_watermark(asset_id, materialization_id, create_time)`: each asset's newest
  materialization, the watermark all/last mappings compare against at read time.
- `run_input(run_id, asset_id, partition_key, materialization_id, ordinal)` and
  `run_lineage(run_id, key_horizon, fanout_horizon, input_count, missing, record_time)`: the
  upstream materializations current when a run was claimed.
- `run.hold_reason`: why a queued run is held (upstream policy WAIT); '' means claimable.
- `lineage_cursor(name, position)`, `automation_request(...)`, `automation_budget(...)`: the
  automation loop's place in the event log (seeded at the current head, so history does not
  trigger runs), its pending requests per (workflow, key) and its per-minute budgets.
- Index `partition_state (asset_id, latest_materialization_time)` for freshness counts.

Existing data: watermarks come from the materializations; every materialized key of an asset
whose workflow consumes something gets a lineage row that counts as having read what existed
when it was materialized (nothing is stale until upstream data changes after the upgrade).
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class PartitionLineage(Base):
        asset_id = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        position = pw.BigIntegerField()
        ordinal = pw.BigIntegerField(null=True)
        stale = pw.SmallIntegerField(default=0)
        marked_by = pw.BigIntegerField(default=0)
        materialization_id = pw.BigIntegerField(null=True)
        fanout_horizon = pw.BigIntegerField(null=True)
        update_time = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("asset_id", "partition_key")
            indexes = (
                (("asset_id", "stale", "position"), False),
                (("asset_id", "stale", "fanout_horizon"), False),
            )

    class LineageCount(Base):
        asset_id = pw.CharField(max_length=128, primary_key=True)
        stale_count = pw.BigIntegerField(default=0)

    class AssetWatermark(Base):
        asset_id = pw.CharField(max_length=128, primary_key=True)
        materialization_id = pw.BigIntegerField()
        create_time = pw.BigIntegerField()

    class RunInput(Base):
        run_id = pw.BigIntegerField()
        asset_id = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        materialization_id = pw.BigIntegerField()
        ordinal = pw.IntegerField()

        class Meta:
            primary_key = pw.CompositeKey("run_id", "asset_id", "partition_key")

    class RunLineage(Base):
        run_id = pw.BigIntegerField(primary_key=True)
        key_horizon = pw.BigIntegerField()
        fanout_horizon = pw.BigIntegerField()
        input_count = pw.BigIntegerField()
        missing = pw.TextField(default="")
        record_time = pw.BigIntegerField()

    class LineageCursor(Base):
        name = pw.CharField(max_length=64, primary_key=True)
        position = pw.BigIntegerField()

    class AutomationRequest(Base):
        workflow_slug = pw.CharField(max_length=128)
        partition_key = pw.CharField(max_length=255)
        materialization_id = pw.BigIntegerField()
        asset_id = pw.CharField(max_length=128)
        upstream_key = pw.CharField(max_length=255)
        create_time = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("workflow_slug", "partition_key")

    class AutomationBudget(Base):
        workflow_slug = pw.CharField(max_length=128, primary_key=True)
        window_start = pw.BigIntegerField()
        used = pw.IntegerField()

    db.create_tables(
        [
            PartitionLineage,
            LineageCount,
            AssetWatermark,
            RunInput,
            RunLineage,
            LineageCursor,
            AutomationRequest,
            AutomationBudget,
        ]
    )
    migrator.migrate(
        # A database-level default: run inserts elsewhere do not name the column.
        migrator.add_column(
            "run", "hold_reason", pw.TextField(default="", constraints=[pw.SQL("DEFAULT ''")])
        ),
        migrator.add_index("partition_state", ("asset_id", "latest_materialization_time"), False),
    )
    db.execute_sql("CREATE INDEX run_held ON run (workflow_slug, id) WHERE hold_reason <> ''")
    db.execute_sql(
        "INSERT INTO asset_watermark (asset_id, materialization_id, create_time) "
        "SELECT asset_id, MAX(id), MAX(create_time) FROM materialization GROUP BY asset_id"
    )
    db.execute_sql(
        "INSERT INTO lineage_cursor (name, position) "
        "SELECT 'automation', COALESCE(MAX(sequence), 0) FROM run_event"
    )
    db.execute_sql(
        "INSERT INTO lineage_cursor (name, position) SELECT 'holds', COALESCE(MAX(id), 0) FROM run"
    )
    db.execute_sql(
        "INSERT INTO partition_lineage (asset_id, partition_key, position, ordinal, stale, marked_by, "
        "materialization_id, fanout_horizon, update_time) "
        "SELECT s.asset_id, s.partition_key, s.position, s.ordinal, 0, 0, s.latest_materialization_id, "
        "s.latest_materialization_id, s.update_time FROM partition_state s "
        "JOIN asset a ON a.asset_id = s.asset_id JOIN workflow w ON w.slug = a.workflow_slug "
        "WHERE s.latest_materialization_id IS NOT NULL AND w.definition LIKE '%%\"consumes\"%%'"
    )
