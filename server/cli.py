"""The `partita` command.

partita serve [--listen HOST:PORT] [--database URL] ...   the server (same as python -m server)
partita migrate --database URL [--to N]                    upgrade a database's schema offline
partita schema-version --database URL                      print the schema version
partita backfill-keys --database URL --workflow SLUG --from-parameter NAME [--dry-run]
                                                           derive keys of historical runs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server import __main__ as server_main
from server.app import DEFAULT_DATABASE
from server.backfill_keys import backfill_keys
from server.catalog import Catalog
from server.clock import SystemClock
from server.domain.errors import DomainError
from storage import migrations
from storage.database import connect
from storage.store import SchemaBehind, Store


def _migrate(args: argparse.Namespace) -> int:
    db = connect(args.database)
    with db.connection_context():
        before = migrations.current_version(db)
        applied = migrations.migrate(db, target=args.to)
        after = migrations.current_version(db)
    for name in applied:
        print(f"applied {name}")
    print(f"schema version {before} -> {after}")
    return 0


def _schema_version(args: argparse.Namespace) -> int:
    db = connect(args.database)
    with db.connection_context():
        version = migrations.current_version(db)
    print(f"{version} (this release needs {migrations.LATEST_VERSION})")
    return 0


def _backfill_keys(args: argparse.Namespace) -> int:
    try:
        store = Store.open(args.database, migrate=False)
    except SchemaBehind as error:
        print(f"partita: {error}; run `partita migrate` first", file=sys.stderr)
        return 2
    try:
        with store.db.connection_context():
            report = backfill_keys(
                store.run_plain_transaction,
                Catalog(),
                args.workflow,
                args.from_parameter,
                SystemClock().now(),
                dry_run=args.dry_run,
            )
    except DomainError as error:
        print(f"partita: {error.message}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print("\n".join(report.lines()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        return server_main.main(arguments[1:])
    parser = argparse.ArgumentParser(prog="partita", description="Partita control plane tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server (see `partita serve --help`)")
    migrate = commands.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--database", default=DEFAULT_DATABASE, metavar="URL")
    migrate.add_argument("--to", type=int, default=None, metavar="N", help="stop after migration N")
    version = commands.add_parser("schema-version", help="print the database's schema version")
    version.add_argument("--database", default=DEFAULT_DATABASE, metavar="URL")
    derive = commands.add_parser(
        "backfill-keys", help="derive partition keys of historical runs from a run parameter (offline)"
    )
    derive.add_argument("--database", default=DEFAULT_DATABASE, metavar="URL")
    derive.add_argument("--workflow", required=True, metavar="SLUG")
    derive.add_argument("--from-parameter", required=True, metavar="NAME")
    derive.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    args = parser.parse_args(arguments)
    try:
        if args.command == "migrate":
            return _migrate(args)
        if args.command == "backfill-keys":
            return _backfill_keys(args)
        return _schema_version(args)
    except ValueError as error:
        print(f"partita: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
