"""Migration 9: the index of backfill keys by run holds only keys that have a run.

A plan's keys start without a run (`run_id` NULL) and most of a large plan waits so: indexing
their NULLs made every plan insert and every key's first move pay for an index entry no query
reads (the queries ask for one run's keys). The partial index answers the same queries.
Frozen: this file never changes once landed.
"""

import peewee as pw
from playhouse.migrate import SchemaMigrator


def up(migrator: SchemaMigrator, db: pw.Database) -> None:
    db.execute_sql("DROP INDEX backfill_partition_run_id")
    db.execute_sql(
        "CREATE INDEX backfill_partition_run_id ON backfill_partition (run_id) WHERE run_id IS NOT NULL"
    )
