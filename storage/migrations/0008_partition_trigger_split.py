"""Migration 8: the partition aggregates' update trigger skips work that cancels out.

Migration 3's update trigger moved a row out of and back into its MISSING bucket on every
status change, although a change between two non-MISSING statuses (IN_PROGRESS -> MATERIALIZED,
the step every run takes per key) leaves the bucket as it was. On SQLite the trigger becomes two,
one per aggregate, each firing only when its aggregate changes; on PostgreSQL the function skips
the unchanged aggregate. What the aggregates hold is unchanged, so existing rows need nothing.
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator

BUCKET_SIZE = 64

_SQLITE = [
    "DROP TRIGGER partition_state_update",
    """CREATE TRIGGER partition_state_update_status AFTER UPDATE OF status ON partition_state
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE partition_status_count SET count = count - 1 WHERE asset_id = OLD.asset_id AND status = OLD.status;
        INSERT INTO partition_status_count (asset_id, status, count) VALUES (NEW.asset_id, NEW.status, 1)
            ON CONFLICT (asset_id, status) DO UPDATE SET count = count + 1;
    END""",
    f"""CREATE TRIGGER partition_state_update_bucket AFTER UPDATE OF status, ordinal ON partition_state
        WHEN (OLD.status = 'MISSING') <> (NEW.status = 'MISSING') OR OLD.ordinal IS NOT NEW.ordinal BEGIN
        UPDATE partition_bucket SET touched = touched - 1
            WHERE asset_id = OLD.asset_id AND bucket = OLD.ordinal / {BUCKET_SIZE}
            AND OLD.ordinal IS NOT NULL AND OLD.ordinal >= 0 AND OLD.status <> 'MISSING';
        INSERT INTO partition_bucket (asset_id, bucket, touched)
            SELECT NEW.asset_id, NEW.ordinal / {BUCKET_SIZE}, 1
            WHERE NEW.ordinal IS NOT NULL AND NEW.ordinal >= 0 AND NEW.status <> 'MISSING'
            ON CONFLICT (asset_id, bucket) DO UPDATE SET touched = touched + 1;
    END""",
]

_POSTGRES = [
    f"""CREATE OR REPLACE FUNCTION partition_state_aggregates() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        old_bucket bigint;
        new_bucket bigint;
        status_changed boolean := TG_OP <> 'UPDATE';
    BEGIN
        -- OLD is only read for UPDATE and DELETE, NEW for UPDATE and INSERT (nested IFs: an
        -- expression's AND does not promise to skip the missing one).
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            IF OLD.ordinal IS NOT NULL AND OLD.ordinal >= 0 AND OLD.status <> 'MISSING' THEN
                old_bucket := OLD.ordinal / {BUCKET_SIZE};
            END IF;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            IF NEW.ordinal IS NOT NULL AND NEW.ordinal >= 0 AND NEW.status <> 'MISSING' THEN
                new_bucket := NEW.ordinal / {BUCKET_SIZE};
            END IF;
        END IF;
        IF TG_OP = 'UPDATE' THEN
            status_changed := OLD.status <> NEW.status;
        END IF;
        IF status_changed AND TG_OP <> 'INSERT' THEN
            UPDATE partition_status_count SET count = count - 1
                WHERE asset_id = OLD.asset_id AND status = OLD.status;
        END IF;
        IF status_changed AND TG_OP <> 'DELETE' THEN
            INSERT INTO partition_status_count (asset_id, status, count) VALUES (NEW.asset_id, NEW.status, 1)
                ON CONFLICT (asset_id, status) DO UPDATE SET count = partition_status_count.count + 1;
        END IF;
        IF TG_OP = 'UPDATE' AND old_bucket IS NOT DISTINCT FROM new_bucket THEN
            RETURN NULL;
        END IF;
        IF old_bucket IS NOT NULL THEN
            UPDATE partition_bucket SET touched = touched - 1
                WHERE asset_id = OLD.asset_id AND bucket = old_bucket;
        END IF;
        IF new_bucket IS NOT NULL THEN
            INSERT INTO partition_bucket (asset_id, bucket, touched) VALUES (NEW.asset_id, new_bucket, 1)
                ON CONFLICT (asset_id, bucket) DO UPDATE SET touched = partition_bucket.touched + 1;
        END IF;
        RETURN NULL;
    END $$""",
]


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    for statement in _POSTGRES if isinstance(db, pw.PostgresqlDatabase) else _SQLITE:
        db.execute_sql(statement)
