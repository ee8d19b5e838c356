"""`partita backfill WORKFLOW --from KEY --to KEY [--missing] [--watch]` and
`partita backfill ls|get|watch|retry|cancel`.

`--watch` follows the backfill with WatchBackfill and draws one progress bar for the keys
done (succeeded + failed + canceled) and one per key state, until the backfill ends; it
reconnects (with the last sequence seen) when the stream breaks. Exit code 0 when the
backfill completed, 1 when it ended with failures or was canceled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table

from cli.client import (
    CommandError,
    client_from,
    connection_options,
    enum_name,
    format_time,
    paged,
    wrap_rpc_errors,
)
from cli.runs import parse_pairs
from partita.v1 import asset_pb2, backfill_pb2, partitions_pb2, workflow_pb2

STATE_PREFIX = "BACKFILL_STATE_"
KEY_STATE_PREFIX = "BACKFILL_PARTITION_STATE_"
KEY_STATES = ("pending", "queued", "running", "succeeded", "failed", "canceled")
BACKFILL_STATES = ("running", "completed", "completed_with_failures", "canceling", "canceled")
TERMINAL = frozenset(
    {
        backfill_pb2.BACKFILL_STATE_COMPLETED,
        backfill_pb2.BACKFILL_STATE_COMPLETED_WITH_FAILURES,
        backfill_pb2.BACKFILL_STATE_CANCELED,
    }
)
BAR_STYLE = {
    "done": "bold",
    "pending": "dim",
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "canceled": "magenta",
}
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def state_name(state: int) -> str:
    return enum_name(backfill_pb2.BackfillState, state, STATE_PREFIX)


def counts_of(backfill: backfill_pb2.Backfill) -> dict[str, int]:
    c = backfill.counts
    return {name: int(getattr(c, name)) for name in ("total", *KEY_STATES)}


def done_of(counts: dict[str, int]) -> int:
    return counts["succeeded"] + counts["failed"] + counts["canceled"]


def describe_counts(counts: dict[str, int]) -> str:
    parts = [f"{counts[name]} {name}" for name in KEY_STATES if counts[name]]
    return ", ".join(parts) or "no keys"


def selection_text(selection: partitions_pb2.PartitionSelection) -> str:
    kind = selection.WhichOneof("kind")
    if kind == "range":
        return f"{selection.range.start_key} … {selection.range.end_key}"
    if kind == "keys":
        keys = list(selection.keys.partition_keys)
        return ", ".join(keys[:3]) + (f" … ({len(keys)} keys)" if len(keys) > 3 else "")
    return kind or ""


class BackfillProgress:
    """Progress bars of one backfill: `done`, then one per key state."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(bar_width=40),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            console=console,
            auto_refresh=console.is_terminal,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        for name in ("done", *KEY_STATES):
            style = BAR_STYLE[name]
            self.tasks[name] = self.progress.add_task(f"[{style}]{name}[/{style}]", total=None)

    def update(self, backfill: backfill_pb2.Backfill) -> None:
        counts = counts_of(backfill)
        total = counts["total"]
        values = {"done": done_of(counts), **{name: counts[name] for name in KEY_STATES}}
        for name, value in values.items():
            # An empty backfill is 0 of 0 — shown as complete.
            self.progress.update(self.tasks[name], completed=value if total else 1, total=total or 1)

    def __enter__(self) -> BackfillProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.refresh()
        self.progress.stop()


def follow(
    client: Any,
    backfill_id: str,
    on_update: Callable[[backfill_pb2.WatchBackfillResponse], None],
    *,
    reconnect_seconds: float = 1.0,
    max_reconnects: int = 30,
) -> backfill_pb2.Backfill:
    """Streams WatchBackfill until the backfill is terminal, resuming after broken streams.

    Returns the last backfill seen.
    """
    after = 0
    last: backfill_pb2.Backfill | None = None
    failures = 0
    while True:
        try:
            stream = client.backfills.WatchBackfill(
                backfill_pb2.WatchBackfillRequest(backfill_id=backfill_id, after_sequence=after)
            )
            for update in stream:
                failures = 0
                if update.HasField("event") and update.event.sequence > after:
                    after = update.event.sequence
                if update.HasField("backfill"):
                    last = update.backfill
                on_update(update)
        except grpc.RpcError as error:
            if error.code() not in RECONNECT_CODES or failures >= max_reconnects:
                raise
            failures += 1
            time.sleep(reconnect_seconds)
            continue
        if last is not None and last.state in TERMINAL:
            return last
        # The stream ended without a terminal state (server shutting down): read and resume.
        last = client.backfills.GetBackfill(
            backfill_pb2.GetBackfillRequest(backfill_id=backfill_id), timeout=30
        ).backfill
        if last.state in TERMINAL:
            return last
        time.sleep(reconnect_seconds)


def watch_with_progress(
    client: Any, backfill: backfill_pb2.Backfill, console: Console
) -> backfill_pb2.Backfill:
    with BackfillProgress(console) as bars:
        bars.update(backfill)
        if backfill.state in TERMINAL:
            return backfill

        def on_update(update: backfill_pb2.WatchBackfillResponse) -> None:
            if update.HasField("backfill"):
                bars.update(update.backfill)

        final = follow(client, backfill.id, on_update)
        bars.update(final)
    return final


def finish(console: Console, backfill: backfill_pb2.Backfill) -> None:
    counts = counts_of(backfill)
    console.print(
        f"backfill {backfill.id} {state_name(backfill.state)}: {describe_counts(counts)} (of {counts['total']})"
    )
    if backfill.state != backfill_pb2.BACKFILL_STATE_COMPLETED:
        raise click.exceptions.Exit(1)


def keys_in_range(client: Any, workflow: str, start: str, end: str) -> tuple[list[str], set[str]]:
    """The keys from `start` to `end` (definition order) of the workflow, and those of them
    without a materialization of every partitioned asset it produces."""
    definition = client.workflows.GetWorkflow(
        workflow_pb2.GetWorkflowRequest(slug=workflow), timeout=30
    ).workflow
    assets = [d.asset_id for d in definition.produces if d.HasField("partitioning")]
    if not assets:
        raise CommandError(f"workflow {workflow} is not partitioned: --from/--to need partition keys")
    in_range: list[str] = []
    missing: set[str] = set()
    for index, asset_id in enumerate(assets):
        inside = False

        def page(token: str, asset_id: str = asset_id) -> Any:
            return client.assets.ListPartitions(
                asset_pb2.ListPartitionsRequest(asset_id=asset_id, page_size=1000, page_token=token),
                timeout=60,
            )

        for summary in paged(page, "partitions"):
            key = summary.partition_key
            if key == start:
                inside = True
            if inside:
                if index == 0:
                    in_range.append(key)
                if not summary.HasField("latest_materialization"):
                    missing.add(key)
            if key == end and inside:
                break
        if index == 0:
            if not in_range or in_range[0] != start:
                raise CommandError(f"--from {start!r} is not a partition key of {asset_id}")
            if in_range[-1] != end:
                raise CommandError(f"--to {end!r} is not a partition key of {asset_id} at or after --from")
    return in_range, missing


class _DefaultToCreate(click.Group):
    """`partita backfill WORKFLOW ...` means `partita backfill create WORKFLOW ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@click.group("backfill", cls=_DefaultToCreate)
def backfill() -> None:
    """Run a workflow over many partition keys: `partita backfill WORKFLOW --from K --to K`."""


@backfill.command("create")
@click.argument("workflow")
@click.option("--from", "start", metavar="KEY", help="first key (inclusive)")
@click.option("--to", "end", metavar="KEY", help="last key (inclusive)")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="an explicit key (repeatable)")
@click.option("--all", "all_keys", is_flag=True, help="every key of the definition")
@click.option(
    "--missing", is_flag=True, help="only keys without a materialization (within --from/--to if given)"
)
@click.option(
    "--max-concurrent",
    default=0,
    metavar="N",
    help="at most N runs queued or running (0: server default, 16)",
)
@click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE", help="a parameter of every run (repeatable)"
)
@click.option(
    "--label", "labels", multiple=True, metavar="NAME=VALUE", help="a label of every run (repeatable)"
)
@click.option("--request-id", default="", help="makes the call idempotent")
@click.option("--watch", is_flag=True, help="follow it with progress bars until it ends")
@click.option("--json", "as_json", is_flag=True, help="print the created backfill as JSON")
@connection_options
@click.pass_context
@wrap_rpc_errors
def create(
    ctx: click.Context,
    workflow: str,
    start: str | None,
    end: str | None,
    keys: tuple[str, ...],
    all_keys: bool,
    missing: bool,
    max_concurrent: int,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    request_id: str,
    watch: bool,
    as_json: bool,
) -> None:
    """Create a backfill of WORKFLOW: a range (--from/--to), --key ..., --all or --missing."""
    client = client_from(ctx)
    console = Console(highlight=False)
    if (start is None) != (end is None):
        raise click.UsageError("--from and --to go together")
    chosen = sum(bool(x) for x in (start is not None, keys, all_keys))
    if chosen > 1:
        raise click.UsageError("choose one of --from/--to, --key, --all")
    if not chosen and not missing:
        raise click.UsageError("say which keys: --from KEY --to KEY, --key KEY ..., --all or --missing")
    if missing and (keys or all_keys):
        raise click.UsageError("--missing combines with --from/--to only")
    selection = partitions_pb2.PartitionSelection()
    if start is not None and end is not None:
        if missing:
            in_range, without = keys_in_range(client, workflow, start, end)
            chosen_keys = [k for k in in_range if k in without]
            if not chosen_keys:
                console.print(
                    f"nothing to backfill: the {len(in_range)} keys from {start} to {end} are all materialized"
                )
                return
            selection.keys.partition_keys.extend(chosen_keys)
        else:
            selection.range.start_key = start
            selection.range.end_key = end
    elif keys:
        selection.keys.partition_keys.extend(keys)
    elif all_keys:
        selection.all.SetInParent()
    else:
        selection.missing.SetInParent()
    request = backfill_pb2.CreateBackfillRequest(
        workflow_slug=workflow,
        selection=selection,
        max_concurrent_runs=max_concurrent,
        labels=parse_pairs(labels, "--label", json_values=False),
        request_id=request_id,
    )
    parameters = parse_pairs(params, "--param", json_values=True)
    if parameters:
        request.parameters.update(parameters)
    created = client.backfills.CreateBackfill(request, timeout=60).backfill
    if as_json and not watch:
        click.echo(json.dumps(json_format.MessageToDict(created, preserving_proto_field_name=True), indent=2))
        return
    console.print(
        f"backfill {created.id} of {escape(workflow)}: {escape(selection_text(created.selection))} "
        f"({created.counts.total} keys)"
    )
    if watch:
        finish(console, watch_with_progress(client, created, console))


@backfill.command("watch")
@click.argument("backfill_id")
@connection_options
@click.pass_context
@wrap_rpc_errors
def watch_backfill(ctx: click.Context, backfill_id: str) -> None:
    """Follow a backfill with progress bars until it ends."""
    client = client_from(ctx)
    console = Console(highlight=False)
    current = client.backfills.GetBackfill(
        backfill_pb2.GetBackfillRequest(backfill_id=backfill_id), timeout=30
    ).backfill
    console.print(
        f"backfill {current.id} of {escape(current.workflow_slug)}: {escape(selection_text(current.selection))}"
    )
    finish(console, watch_with_progress(client, current, console))


@backfill.command("ls")
@click.option("--workflow", default="", metavar="SLUG")
@click.option("--state", "states", multiple=True, type=click.Choice(BACKFILL_STATES, case_sensitive=False))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@connection_options
@click.pass_context
@wrap_rpc_errors
def backfill_ls(
    ctx: click.Context, workflow: str, states: tuple[str, ...], limit: int, as_json: bool
) -> None:
    """List backfills, newest first."""
    client = client_from(ctx)
    request = backfill_pb2.ListBackfillsRequest(
        workflow_slug=workflow,
        states=[backfill_pb2.BackfillState.Value(STATE_PREFIX + s.upper()) for s in states],
        page_size=min(limit, 1000) if limit else 1000,
    )
    found = list(client.backfills.ListBackfills(request, timeout=30).backfills)[: limit or None]
    if as_json:
        rows = [json_format.MessageToDict(b, preserving_proto_field_name=True) for b in found]
        click.echo(json.dumps({"backfills": rows}, indent=2))
        return
    console = Console(highlight=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("BACKFILL", "WORKFLOW", "KEYS", "STATE", "DONE", "COUNTS", "CREATED"):
        table.add_column(column)
    for item in found:
        counts = counts_of(item)
        table.add_row(
            item.id,
            escape(item.workflow_slug),
            escape(selection_text(item.selection)),
            state_name(item.state),
            f"{done_of(counts)}/{counts['total']}",
            describe_counts(counts),
            format_time(item.create_time, present=item.HasField("create_time")),
        )
    console.print(table)


@backfill.command("get")
@click.argument("backfill_id")
@click.option("--partitions", "show_keys", is_flag=True, help="list every key with its state")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(KEY_STATES, case_sensitive=False),
    help="with --partitions: only these key states",
)
@click.option("--json", "as_json", is_flag=True)
@connection_options
@click.pass_context
@wrap_rpc_errors
def backfill_get(
    ctx: click.Context, backfill_id: str, show_keys: bool, states: tuple[str, ...], as_json: bool
) -> None:
    """Show a backfill: state, counts, and (with --partitions) its keys."""
    client = client_from(ctx)
    found = client.backfills.GetBackfill(
        backfill_pb2.GetBackfillRequest(backfill_id=backfill_id), timeout=30
    ).backfill
    keys: list[backfill_pb2.BackfillPartition] = []
    if show_keys or states:

        def page(token: str) -> Any:
            return client.backfills.ListBackfillPartitions(
                backfill_pb2.ListBackfillPartitionsRequest(
                    backfill_id=backfill_id,
                    states=[
                        backfill_pb2.BackfillPartitionState.Value(KEY_STATE_PREFIX + s.upper())
                        for s in states
                    ],
                    page_size=1000,
                    page_token=token,
                ),
                timeout=60,
            )

        keys = list(paged(page, "partitions"))
    if as_json:
        data = json_format.MessageToDict(found, preserving_proto_field_name=True)
        if show_keys or states:
            data["partitions"] = [
                json_format.MessageToDict(k, preserving_proto_field_name=True) for k in keys
            ]
        click.echo(json.dumps(data, indent=2))
        return
    console = Console(highlight=False)
    counts = counts_of(found)
    console.print(
        f"backfill {found.id} of {escape(found.workflow_slug)}: {escape(selection_text(found.selection))}\n"
        f"state     {state_name(found.state)}\n"
        f"progress  {done_of(counts)}/{counts['total']} done — {describe_counts(counts)}\n"
        f"created   {format_time(found.create_time, present=found.HasField('create_time'))}"
        + (f"\nended     {format_time(found.end_time)}" if found.HasField("end_time") else "")
    )
    if keys:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("PARTITION", "STATE", "ATTEMPTS", "RUN", "LAST ERROR"):
            table.add_column(column)
        for key in keys:
            table.add_row(
                escape(key.partition_key),
                enum_name(backfill_pb2.BackfillPartitionState, key.state, KEY_STATE_PREFIX),
                str(key.attempts),
                key.run_id,
                escape(key.last_error),
            )
        console.print(table)


@backfill.command("retry")
@click.argument("backfill_id")
@click.option(
    "--key", "keys", multiple=True, metavar="KEY", help="only these failed or canceled keys (repeatable)"
)
@click.option("--watch", is_flag=True, help="follow it with progress bars until it ends")
@connection_options
@click.pass_context
@wrap_rpc_errors
def backfill_retry(ctx: click.Context, backfill_id: str, keys: tuple[str, ...], watch: bool) -> None:
    """Re-run the failed and canceled keys of a backfill (or only --key ones)."""
    client = client_from(ctx)
    console = Console(highlight=False)
    reopened = client.backfills.RetryBackfill(
        backfill_pb2.RetryBackfillRequest(backfill_id=backfill_id, partition_keys=list(keys)), timeout=60
    ).backfill
    console.print(
        f"backfill {reopened.id} {state_name(reopened.state)}: {describe_counts(counts_of(reopened))}"
    )
    if watch:
        finish(console, watch_with_progress(client, reopened, console))


@backfill.command("cancel")
@click.argument("backfill_id")
@connection_options
@click.pass_context
@wrap_rpc_errors
def backfill_cancel(ctx: click.Context, backfill_id: str) -> None:
    """Cancel a backfill: pending keys and queued runs at once, running runs asked to stop."""
    client = client_from(ctx)
    canceled = client.backfills.CancelBackfill(
        backfill_pb2.CancelBackfillRequest(backfill_id=backfill_id), timeout=30
    ).backfill
    click.echo(f"backfill {canceled.id} {state_name(canceled.state)}: {describe_counts(counts_of(canceled))}")
