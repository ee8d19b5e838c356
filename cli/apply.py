"""`partita apply -f partita.toml [--dry-run]`: declare workflows from a TOML file.

For each workflow of the file it reads the server's definition (GetWorkflow), prints what
would change (`+` new, `-` gone, `~` changed, per field), and — unless `--dry-run` —
registers the changed ones, producers before consumers. Workflows the server has but the
file does not are left alone (there is no delete). Errors, the file's own or the server's
field violations, point at the file and line: `partita.toml:12: ...`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape

from cli.client import CommandError, bad_request_fields, client_from, connection_options, describe_rpc_error
from cli.config import Config, ConfigError, Problem, WorkflowConfig, apply_order, load_config
from partita.v1 import workflow_pb2

OUTPUT_ONLY = ("create_time", "update_time")


def flatten(message: workflow_pb2.Workflow) -> dict[str, str]:
    """`path -> JSON value` of every set field; produces and consumes are keyed by asset id."""
    copy = workflow_pb2.Workflow()
    copy.CopyFrom(message)
    for name in OUTPUT_ONLY:
        copy.ClearField(name)  # type: ignore[arg-type]
    data = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    data.pop("slug", None)
    flat: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else key)
        elif (
            isinstance(value, list) and value and all(isinstance(v, dict) and "asset_id" in v for v in value)
        ):
            for item in value:
                rest = {k: v for k, v in item.items() if k != "asset_id"}
                key = f"{path}[{item['asset_id']}]"
                if rest:
                    walk(rest, key)
                else:
                    flat[key] = "{}"
        else:
            flat[path] = json.dumps(value, ensure_ascii=False, sort_keys=True)

    walk(data, "")
    return flat


@dataclass
class Change:
    config: WorkflowConfig
    current: workflow_pb2.Workflow | None
    lines: list[tuple[str, str, str]]  # (sign, path, text)

    @property
    def kind(self) -> str:
        if self.current is None:
            return "create"
        return "update" if self.lines else "unchanged"


def diff(config: WorkflowConfig, current: workflow_pb2.Workflow | None) -> Change:
    desired = flatten(config.workflow)
    if current is None:
        return Change(config, None, [("+", path, value) for path, value in desired.items()])
    existing = flatten(current)
    lines: list[tuple[str, str, str]] = []
    for path in sorted(set(desired) | set(existing), key=lambda p: (p.split(".")[0], p)):
        old, new = existing.get(path), desired.get(path)
        if old == new:
            continue
        if old is None:
            lines.append(("+", path, str(new)))
        elif new is None:
            lines.append(("-", path, old))
        else:
            lines.append(("~", path, f"{old} -> {new}"))
    return Change(config, current, lines)


def read_current(client: Any, slug: str) -> workflow_pb2.Workflow | None:
    try:
        return client.workflows.GetWorkflow(workflow_pb2.GetWorkflowRequest(slug=slug), timeout=30).workflow
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def show(console: Console, change: Change) -> None:
    slug = escape(change.config.slug)
    if change.kind == "create":
        console.print(f"[green]+ workflow {slug}[/green] (new)")
    elif change.kind == "update":
        console.print(f"[yellow]~ workflow {slug}[/yellow]")
    else:
        console.print(f"  workflow {slug} (unchanged)")
        return
    colors = {"+": "green", "-": "red", "~": "yellow"}
    for sign, path, text in change.lines:
        color = colors[sign]
        console.print(f"    [{color}]{sign} {escape(path)}: {escape(text)}[/{color}]", soft_wrap=True)


def server_problems(config: Config, workflow: WorkflowConfig, error: grpc.RpcError) -> ConfigError | None:
    """A server's field violations as problems at the lines they came from (None without any)."""
    fields = bad_request_fields(error)
    if not fields:
        return None
    problems = [Problem(workflow.origin_of(name), f"{description} ({name})") for name, description in fields]
    return config.error(problems)


@click.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="the TOML file")
@click.option("--dry-run", is_flag=True, help="show what would change, change nothing")
@click.option(
    "--allow-partitioning-change",
    is_flag=True,
    help="allow changing the partitioning of assets that have runs (needs the admin role)",
)
@connection_options
@click.pass_context
def apply(ctx: click.Context, path: str, dry_run: bool, allow_partitioning_change: bool) -> None:
    """Declare workflows, assets, partitions and dependencies from a TOML file (docs/cli.md)."""
    try:
        config = load_config(path)
    except ConfigError as error:
        for line in error.lines():
            click.echo(f"partita: {line}", err=True)
        raise click.exceptions.Exit(1) from None
    console = Console(highlight=False, soft_wrap=True)
    client = client_from(ctx)
    try:
        changes = [diff(c, read_current(client, c.slug)) for c in apply_order(config.workflows)]
    except grpc.RpcError as error:
        raise CommandError(describe_rpc_error(error, client.address)) from None
    for change in changes:
        show(console, change)
    pending = [c for c in changes if c.kind != "unchanged"]
    created = sum(1 for c in pending if c.kind == "create")
    summary = (
        f"{created} to create, {len(pending) - created} to update, {len(changes) - len(pending)} unchanged"
    )
    if dry_run:
        console.print(f"dry run: {summary}; nothing applied")
        return
    for change in pending:
        request = workflow_pb2.RegisterWorkflowRequest(
            workflow=change.config.workflow, allow_partitioning_change=allow_partitioning_change
        )
        try:
            client.workflows.RegisterWorkflow(request, timeout=30)
        except grpc.RpcError as error:
            located = server_problems(config, change.config, error)
            table_line = config.line_of(change.config.path)
            where = f"{config.file}:{table_line}" if table_line else config.file
            message = describe_rpc_error(error, client.address)
            click.echo(f"partita: {where}: workflow {change.config.slug}: {message}", err=True)
            if located is not None:
                for problem in located.lines():
                    click.echo(f"partita: {problem}", err=True)
            raise click.exceptions.Exit(1) from None
        console.print(f"applied workflow {escape(change.config.slug)}")
    console.print(f"done: {summary.replace('to create', 'created').replace('to update', 'updated')}")
    sys.stdout.flush()
