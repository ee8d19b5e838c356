"""Server-side commands: `partita serve`, `migrate`, `schema-version`, `backfill-keys`, `gc`.

They work on the database directly (or run the server) and need no `--server`; the
implementations are in server/cli.py, imported only when one of these commands runs.
"""

from __future__ import annotations

import click

# server.app.DEFAULT_DATABASE (tests/cli/test_admin.py keeps the two equal).
DEFAULT_DATABASE = "sqlite:///partita.db"


def _done(code: int) -> None:
    if code:
        raise click.exceptions.Exit(code)


def _usage_error(error: ValueError) -> click.exceptions.Exit:
    click.echo(f"partita: {error}", err=True)
    return click.exceptions.Exit(2)


@click.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def serve(arguments: tuple[str, ...]) -> None:
    """Run the gRPC server (the flags of `python -m server`; see `partita serve --help`)."""
    from server.cli import serve_command

    _done(serve_command(arguments))


@click.command("migrate")
@click.option("--database", default=DEFAULT_DATABASE, metavar="URL", show_default=True)
@click.option("--to", type=int, default=None, metavar="N", help="stop after migration N")
def migrate(database: str, to: int | None) -> None:
    """Apply pending schema migrations (offline)."""
    from server.cli import migrate_command

    try:
        _done(migrate_command(database, to))
    except ValueError as error:
        raise _usage_error(error) from None


@click.command("schema-version")
@click.option("--database", default=DEFAULT_DATABASE, metavar="URL", show_default=True)
def schema_version(database: str) -> None:
    """Print the database's schema version."""
    from server.cli import schema_version_command

    try:
        _done(schema_version_command(database))
    except ValueError as error:
        raise _usage_error(error) from None


@click.command("backfill-keys")
@click.option("--database", default=DEFAULT_DATABASE, metavar="URL", show_default=True)
@click.option("--workflow", required=True, metavar="SLUG")
@click.option("--from-parameter", required=True, metavar="NAME")
@click.option("--dry-run", is_flag=True, help="report what would change, change nothing")
def backfill_keys(database: str, workflow: str, from_parameter: str, dry_run: bool) -> None:
    """Derive partition keys of historical runs from a run parameter (offline)."""
    from server.cli import backfill_keys_command

    try:
        _done(backfill_keys_command(database, workflow, from_parameter, dry_run))
    except ValueError as error:
        raise _usage_error(error) from None


@click.command("gc")
@click.option("--database", default=DEFAULT_DATABASE, metavar="URL", show_default=True)
@click.option("--dry-run", is_flag=True, help="count what retention would delete, delete nothing")
def gc(database: str, dry_run: bool) -> None:
    """Apply every workflow's retention policy now (offline; the server also does it in the background)."""
    from server.retention import main as retention_main

    try:
        _done(retention_main(["--database", database, *(["--dry-run"] if dry_run else [])]))
    except ValueError as error:
        raise _usage_error(error) from None


COMMANDS = (serve, migrate, schema_version, backfill_keys, gc)
