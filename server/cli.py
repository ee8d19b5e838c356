"""The server-side commands of `partita` (the front end is cli/main.py, the client CLI).

partita serve [--listen HOST:PORT] [--database URL] ...   the server (same as python -m server)
partita migrate --database URL [--to N]                    upgrade a database's schema offline
partita schema-version --database URL                      print the schema version
partita backfill-keys --database URL --workflow SLUG --from-parameter NAME [--dry-run]
                                                           derive keys of historical runs

`python -m server.cli ...` is the same as `partita ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from server import __main__ as server_main
from server.backfill_keys import backfill_keys
from server.catalog import Catalog
from server.clock import SystemClock
from server.domain.errors import DomainError
from storage import migrations
from storage.database import connect
from storage.store import SchemaBehind, Store


def migrate_command(database: str, to: int | None = None) -> int:
    """`partita migrate`: applies pending migrations (up to `to`), prints what it did."""
    db = connect(database)
    with db.connection_context():
        before = migrations.current_version(db)
        applied = migrations.migrate(db, target=to)
        after = migrations.current_version(db)
    for name in applied:
        print(f"applied {name}")
    print(f"schema version {before} -> {after}")
    return 0


def schema_version_command(database: str) -> int:
    """`partita schema-version`: prints the database's schema version."""
    db = connect(database)
    with db.connection_context():
        version = migrations.current_version(db)
    print(f"{version} (this release needs {migrations.LATEST_VERSION})")
    return 0


def backfill_keys_command(database: str, workflow: str, from_parameter: str, dry_run: bool) -> int:
    """`partita backfill-keys`: derives partition keys of historical runs (offline)."""
    try:
        store = Store.open(database, migrate=False)
    except SchemaBehind as error:
        print(f"partita: {error}; run `partita migrate` first", file=sys.stderr)
        return 2
    try:
        with store.db.connection_context():
            report = backfill_keys(
                store.run_plain_transaction,
                Catalog(),
                workflow,
                from_parameter,
                SystemClock().now(),
                dry_run=dry_run,
            )
    except DomainError as error:
        print(f"partita: {error.message}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print("\n".join(report.lines()))
    return 0


def serve_command(arguments: Sequence[str]) -> int:
    """`partita serve ...`: the server, with the flags of `python -m server`."""
    return server_main.main(list(arguments))


def main(argv: Sequence[str] | None = None) -> int:
    """The `partita` command (its front end is the client CLI in cli/main.py)."""
    from cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
