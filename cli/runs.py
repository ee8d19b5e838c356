"""`partita run WORKFLOW --partition KEY [--param k=v ...]` and `partita runs ls|get|cancel|retry`."""

from __future__ import annotations

import json
from typing import Any

import click
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.client import client_from, connection_options, enum_name, format_time, wrap_rpc_errors
from partita.v1 import run_pb2

STATE_PREFIX = "RUN_STATE_"
STATES = ("queued", "running", "succeeded", "failed", "canceled")
STATE_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "RUNNING": "yellow",
    "QUEUED": "cyan",
    "CANCELED": "dim",
}


def parse_value(text: str) -> Any:
    """A `--param` value: JSON when it parses as JSON (numbers, true, [..], {..}), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: tuple[str, ...], option: str, *, json_values: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint=option)
        result[name] = parse_value(value) if json_values else value
    return result


def state_name(state: int) -> str:
    return enum_name(run_pb2.RunState, state, STATE_PREFIX)


def styled_state(state: int) -> str:
    name = state_name(state)
    style = STATE_STYLE.get(name)
    return f"[{style}]{name}[/{style}]" if style else name


def run_dict(run: run_pb2.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run, preserving_proto_field_name=True)


def print_run(console: Console, run: run_pb2.Run) -> None:
    rows = [
        ("run", run.id),
        ("workflow", run.workflow_slug),
        ("partition", run.partition_key or "(unpartitioned)"),
        ("state", styled_state(run.state)),
        ("attempt", f"{run.attempt} of {run.max_attempts}" if run.max_attempts else str(run.attempt)),
        ("trigger", enum_name(run_pb2.TriggerKind, run.trigger.kind, "TRIGGER_KIND_")),
    ]
    if run.backfill_id:
        rows.append(("backfill", run.backfill_id))
    if run.parameters.fields:
        rows.append(("parameters", json.dumps(json_format.MessageToDict(run.parameters), sort_keys=True)))
    if run.labels:
        rows.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(run.labels.items()))))
    if run.worker_id:
        rows.append(("worker", run.worker_id))
    if run.progress or run.progress_message:
        rows.append(("progress", f"{run.progress:.0%} {run.progress_message}".strip()))
    if run.hold_reason:
        rows.append(("held", run.hold_reason))
    if run.cancel_requested:
        rows.append(("cancel", "requested"))
    rows.append(("created", format_time(run.create_time, present=run.HasField("create_time"))))
    if run.HasField("start_time"):
        rows.append(("started", format_time(run.start_time)))
    if run.HasField("end_time"):
        rows.append(("ended", format_time(run.end_time)))
    if run.HasField("next_attempt_time"):
        rows.append(("next attempt", format_time(run.next_attempt_time)))
    if run.error_message:
        rows.append(("error", escape(run.error_message)))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value if name in ("state", "error") else escape(str(value)))
    console.print(table)


@click.command("run")
@click.argument("workflow")
@click.option(
    "--partition",
    "partition_key",
    default="",
    metavar="KEY",
    help="the partition key (none for an unpartitioned workflow)",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="a run parameter; VALUE is JSON when it parses as JSON (repeatable)",
)
@click.option("--label", "labels", multiple=True, metavar="NAME=VALUE", help="a label (repeatable)")
@click.option("--request-id", default="", help="makes the call idempotent")
@click.option(
    "--use-existing", is_flag=True, help="return the run already in flight for the key instead of failing"
)
@click.option("--json", "as_json", is_flag=True, help="print the run as JSON")
@connection_options
@click.pass_context
@wrap_rpc_errors
def run(
    ctx: click.Context,
    workflow: str,
    partition_key: str,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    request_id: str,
    use_existing: bool,
    as_json: bool,
) -> None:
    """Enqueue a run of WORKFLOW for one partition key."""
    request = run_pb2.EnqueueRunRequest(
        workflow_slug=workflow,
        partition_key=partition_key,
        labels=parse_pairs(labels, "--label", json_values=False),
        request_id=request_id,
        on_conflict=run_pb2.CONFLICT_POLICY_USE_EXISTING
        if use_existing
        else run_pb2.CONFLICT_POLICY_UNSPECIFIED,
    )
    parameters = parse_pairs(params, "--param", json_values=True)
    if parameters:
        request.parameters.update(parameters)
    created = client_from(ctx).runs.EnqueueRun(request, timeout=30).run
    if as_json:
        click.echo(json.dumps(run_dict(created), indent=2))
        return
    key = f" {created.partition_key}" if created.partition_key else ""
    click.echo(f"run {created.id} {created.workflow_slug}{key} {state_name(created.state)}")


@click.group("runs")
def runs() -> None:
    """List, inspect, cancel and retry runs."""


@runs.command("ls")
@click.option("--workflow", default="", metavar="SLUG")
@click.option("--partition", "partition_key", default="", metavar="KEY")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES, case_sensitive=False), help="repeatable"
)
@click.option("--backfill", "backfill_id", default="", metavar="ID")
@click.option("--label", "labels", multiple=True, metavar="NAME=VALUE")
@click.option("--limit", default=50, show_default=True, help="at most this many runs (0: all)")
@click.option("--json", "as_json", is_flag=True, help="print JSON (one object with `runs`)")
@connection_options
@click.pass_context
@wrap_rpc_errors
def runs_ls(
    ctx: click.Context,
    workflow: str,
    partition_key: str,
    states: tuple[str, ...],
    backfill_id: str,
    labels: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first (filters combine)."""
    client = client_from(ctx)
    found: list[run_pb2.Run] = []
    total = 0
    token = ""
    while True:
        page_size = min(1000, limit - len(found)) if limit else 1000
        response = client.runs.ListRuns(
            run_pb2.ListRunsRequest(
                workflow_slug=workflow,
                partition_key=partition_key,
                states=[run_pb2.RunState.Value(STATE_PREFIX + s.upper()) for s in states],
                backfill_id=backfill_id,
                labels=parse_pairs(labels, "--label", json_values=False),
                page_size=page_size,
                page_token=token,
            ),
            timeout=60,
        )
        total = int(response.total_size)
        found.extend(response.runs)
        token = response.next_page_token
        if not token or (limit and len(found) >= limit):
            break
    if as_json:
        click.echo(json.dumps({"runs": [run_dict(r) for r in found], "total_size": total}, indent=2))
        return
    console = Console(highlight=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN", "WORKFLOW", "PARTITION", "STATE", "ATTEMPT", "WORKER", "CREATED", "ERROR"):
        table.add_column(column, overflow="fold" if column == "ERROR" else "ellipsis")
    for item in found:
        table.add_row(
            item.id,
            escape(item.workflow_slug),
            escape(item.partition_key),
            styled_state(item.state),
            str(item.attempt),
            escape(item.worker_id),
            format_time(item.create_time, present=item.HasField("create_time")),
            escape(item.error_message.splitlines()[-1][:60] if item.error_message else ""),
        )
    console.print(table)
    if total > len(found):
        console.print(f"({len(found)} of {total} runs; --limit 0 for all)")


@runs.command("get")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@connection_options
@click.pass_context
@wrap_rpc_errors
def runs_get(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run."""
    found = client_from(ctx).runs.GetRun(run_pb2.GetRunRequest(run_id=run_id), timeout=30).run
    if as_json:
        click.echo(json.dumps(run_dict(found), indent=2))
        return
    print_run(Console(highlight=False), found)


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="", help="recorded with the cancellation")
@connection_options
@click.pass_context
@wrap_rpc_errors
def runs_cancel(ctx: click.Context, run_id: str, reason: str) -> None:
    """Cancel a run (a running one is asked to stop; its worker acknowledges)."""
    found = (
        client_from(ctx)
        .runs.CancelRun(run_pb2.CancelRunRequest(run_id=run_id, reason=reason), timeout=30)
        .run
    )
    note = " (cancel requested; the worker stops it)" if found.state == run_pb2.RUN_STATE_RUNNING else ""
    click.echo(f"run {found.id} {state_name(found.state)}{note}")


@runs.command("retry")
@click.argument("run_id")
@click.option("--request-id", default="")
@connection_options
@click.pass_context
@wrap_rpc_errors
def runs_retry(ctx: click.Context, run_id: str, request_id: str) -> None:
    """Enqueue a new run with the same key and parameters as a finished one."""
    found = (
        client_from(ctx)
        .runs.RetryRun(run_pb2.RetryRunRequest(run_id=run_id, request_id=request_id), timeout=30)
        .run
    )
    key = f" {found.partition_key}" if found.partition_key else ""
    click.echo(f"run {found.id} {found.workflow_slug}{key} {state_name(found.state)} (retry of run {run_id})")
