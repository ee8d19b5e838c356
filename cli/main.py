"""The `partita` command: a gRPC client of the server, plus the server-side commands.

    partita apply -f partita.toml [--dry-run]        declare workflows, assets, partitions
    partita partitions ASSET [--status S] [--json]   range-compressed partition statuses
    partita run WORKFLOW --partition KEY             enqueue one run
    partita runs ls|get|cancel|retry                 runs
    partita backfill WORKFLOW --from K --to K        a backfill (--watch: progress bars)
    partita backfill ls|get|watch|retry|cancel       backfills
    partita watch [WORKFLOW]                         tail run events (resumable with --after)
    partita discover ASSET --exec CMD                add discovered dynamic partitions
    partita worker --workflow SLUG --exec CMD        a generic worker running a command per run
    partita serve|migrate|schema-version|backfill-keys|gc   the server and offline database tools

Exit codes: 0 success, 1 a failed call or command (`partita: ...` on stderr), 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from cli import admin
from cli.apply import apply
from cli.backfill import backfill
from cli.client import connection_options
from cli.discover import discover
from cli.partitions import partitions
from cli.runs import run, runs
from cli.watch import watch
from cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@connection_options
def partita() -> None:
    """Partita: a control plane for partitioned workflow assets.

    Client commands talk gRPC to --server (env PARTITA_SERVER, default 127.0.0.1:50051);
    see docs/cli.md.
    """


for command in (apply, partitions, run, runs, backfill, watch, discover, worker, *admin.COMMANDS):
    partita.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `partita` with `argv` (default: sys.argv[1:]) and returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns an Exit's code instead of raising it.
        result = partita.main(args=arguments, prog_name="partita", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return int(error.exit_code)
    except click.exceptions.Abort:
        click.echo("partita: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("partita: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
