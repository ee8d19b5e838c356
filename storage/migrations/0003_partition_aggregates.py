"""Migration 3: aggregates that keep partition reads independent of the number of keys.

- `partition_state.ordinal`: the key's index in its definition's key order (time windows and
  static lists; NULL for dynamic keys and for rows whose key left the definition).
- `partition_status_count(asset_id, status, count)`: rows per status per asset.
- `partition_bucket(asset_id, bucket, touched)`: per run of 64 ordinals, how many keys have
  a row whose status is not MISSING; a bucket short of its key count holds a MISSING key, so
  MISSING pages find gaps without reading every materialized row.
Triggers keep both aggregates in the transaction of every state change, on both engines.
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator

BUCKET_SIZE = 64

# Applied per changed row: the aggregates lose the OLD row and gain the NEW one.
_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER partition_state_insert AFTER INSERT ON partition_state BEGIN
        INSERT INTO partition_status_count (asset_id, status, count) VALUES (NEW.asset_id, NEW.status, 1)
            ON CONFLICT (asset_id, status) DO UPDATE SET count = count + 1;
        INSERT INTO partition_bucket (asset_id, bucket, touched)
            SELECT NEW.asset_id, NEW.ordinal / {BUCKET_SIZE}, 1
            WHERE NEW.ordinal IS NOT NULL AND NEW.ordinal >= 0 AND NEW.status <> 'MISSING'
            ON CONFLICT (asset_id, bucket) DO UPDATE SET touched = touched + 1;
    END""",
    f"""CREATE TRIGGER partition_state_delete AFTER DELETE ON partition_state BEGIN
        UPDATE partition_status_count SET count = count - 1 WHERE asset_id = OLD.asset_id AND status = OLD.status;
        UPDATE partition_bucket SET touched = touched - 1
            WHERE asset_id = OLD.asset_id AND bucket = OLD.ordinal / {BUCKET_SIZE}
            AND OLD.ordinal IS NOT NULL AND OLD.ordinal >= 0 AND OLD.status <> 'MISSING';
    END""",
    f"""CREATE TRIGGER partition_state_update AFTER UPDATE OF status, ordinal ON partition_state
        WHEN OLD.status <> NEW.status OR OLD.ordinal IS NOT NEW.ordinal BEGIN
        UPDATE partition_status_count SET count = count - 1 WHERE asset_id = OLD.asset_id AND status = OLD.status;
        INSERT INTO partition_status_count (asset_id, status, count) VALUES (NEW.asset_id, NEW.status, 1)
            ON CONFLICT (asset_id, status) DO UPDATE SET count = count + 1;
        UPDATE partition_bucket SET touched = touched - 1
            WHERE asset_id = OLD.asset_id AND bucket = OLD.ordinal / {BUCKET_SIZE}
            AND OLD.ordinal IS NOT NULL AND OLD.ordinal >= 0 AND OLD.status <> 'MISSING';
        INSERT INTO partition_bucket (asset_id, bucket, touched)
            SELECT NEW.asset_id, NEW.ordinal / {BUCKET_SIZE}, 1
            WHERE NEW.ordinal IS NOT NULL AND NEW.ordinal >= 0 AND NEW.status <> 'MISSING'
            ON CONFLICT (asset_id, bucket) DO UPDATE SET touched = touched + 1;
    END""",
]

_POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION partition_state_aggregates() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE partition_status_count SET count = count - 1
                WHERE asset_id = OLD.asset_id AND status = OLD.status;
            IF OLD.ordinal IS NOT NULL AND OLD.ordinal >= 0 AND OLD.status <> 'MISSING' THEN
                UPDATE partition_bucket SET touched = touched - 1
                    WHERE asset_id = OLD.asset_id AND bucket = OLD.ordinal / {BUCKET_SIZE};
            END IF;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            INSERT INTO partition_status_count (asset_id, status, count) VALUES (NEW.asset_id, NEW.status, 1)
                ON CONFLICT (asset_id, status) DO UPDATE SET count = partition_status_count.count + 1;
            IF NEW.ordinal IS NOT NULL AND NEW.ordinal >= 0 AND NEW.status <> 'MISSING' THEN
                INSERT INTO partition_bucket (asset_id, bucket, touched)
                    VALUES (NEW.asset_id, NEW.ordinal / {BUCKET_SIZE}, 1)
                    ON CONFLICT (asset_id, bucket) DO UPDATE SET touched = partition_bucket.touched + 1;
            END IF;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER partition_state_insert_delete AFTER INSERT OR DELETE ON partition_state
        FOR EACH ROW EXECUTE FUNCTION partition_state_aggregates()""",
    """CREATE TRIGGER partition_state_update AFTER UPDATE OF status, ordinal ON partition_state
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.ordinal IS DISTINCT FROM NEW.ordinal)
        EXECUTE FUNCTION partition_state_aggregates()""",
]


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class PartitionStatusCount(Base):
        asset_id = pw.CharField(max_length=128)
        status = pw.CharField(max_length=16)
        count = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("asset_id", "status")

    class PartitionBucket(Base):
        asset_id = pw.CharField(max_length=128)
        bucket = pw.BigIntegerField()
        touched = pw.IntegerField()

        class Meta:
            primary_key = pw.CompositeKey("asset_id", "bucket")

    db.create_tables([PartitionStatusCount, PartitionBucket])
    migrator.migrate(
        migrator.add_column("partition_state", "ordinal", pw.BigIntegerField(null=True)),
        migrator.add_index("partition_state", ("asset_id", "ordinal"), False),
    )
    # Rows so far are unpartitioned slices (key ''), which have no ordinal.
    db.execute_sql(
        "INSERT INTO partition_status_count (asset_id, status, count) "
        "SELECT asset_id, status, COUNT(*) FROM partition_state GROUP BY asset_id, status"
    )
    for statement in _POSTGRES_TRIGGERS if isinstance(db, pw.PostgresqlDatabase) else _SQLITE_TRIGGERS:
        db.execute_sql(statement)
