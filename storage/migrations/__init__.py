"""Versioned schema migrations, applied in order and recorded in `schema_version`.

Each `NNNN_name.py` file beside this one defines `up(migrator, db)`. A migration that has
landed is never edited; a schema change is a new numbered file with its upgrade test.
"""

from __future__ import annotations

from pathlib import Path

import peewee
from playhouse.migrations import Migration, Runner

DIRECTORY = Path(__file__).resolve().parent
HISTORY_TABLE = "schema_version"
LATEST_VERSION = max(m.idx for m in Migration.load_directory(str(DIRECTORY)))
# Held while migrating so several replicas starting at once apply each migration once.
POSTGRES_MIGRATION_LOCK = 0x7061727469746131


def _runner(db: peewee.Database) -> Runner:
    return Runner(db, directory=str(DIRECTORY), table_name=HISTORY_TABLE)


def current_version(db: peewee.Database) -> int:
    """The number of the newest migration applied; 0 for an empty database."""
    applied = [m.idx for m in _runner(db).status() if m.applied]
    return max(applied, default=0)


def migrate(db: peewee.Database, target: int | None = None) -> list[str]:
    """Applies pending migrations up to `target` (default: all); returns their names."""
    is_postgres = isinstance(db, peewee.PostgresqlDatabase)
    if is_postgres:
        db.execute_sql("SELECT pg_advisory_lock(%s)", (POSTGRES_MIGRATION_LOCK,))
    try:
        runner = _runner(db)
        target_name = None
        if target is not None:
            names = [m.name for m in runner.migrations() if m.idx == target]
            if not names:
                raise ValueError(f"no migration numbered {target}")
            target_name = names[0]
        return list(runner.up(target_name))
    finally:
        if is_postgres:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (POSTGRES_MIGRATION_LOCK,))
