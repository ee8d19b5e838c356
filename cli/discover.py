"""`partita discover ASSET --exec CMD [--every 10m] [--prune] [--once]`: dynamic partitions
from an external system.

Each pass asks a *source* for the asset's current keys, adds the new ones
(AddDynamicPartitions) and, with `--prune`, tombstones the keys that vanished
(DeleteDynamicPartitions), then reports what changed. A source is either

- a command (`--exec CMD`, run with `sh -c`) that prints one key per line on stdout (blank
  lines and lines starting with `#` are skipped; a non-zero exit skips the pass), or
- a Python callable (`--source NAME`) registered under the entry-point group
  `partita.discovery`, or named `module:function`; it is called with the asset id and returns
  an iterable of keys.

From Python: `discover_once(client, asset_id, source, prune=...)` with any callable.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

import click
import grpc

from cli.client import DURATION, CommandError, client_from, connection_options, describe_rpc_error, paged
from partita.v1 import asset_pb2

ENTRY_POINT_GROUP = "partita.discovery"
CHUNK = 1000
Source = Callable[[str], Iterable[str]]


class SourceFailed(Exception):
    pass


@dataclass
class PassReport:
    asset_id: str
    discovered: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # unusable keys the source printed
    warning: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "asset_id": self.asset_id,
            "discovered": self.discovered,
            "added": self.added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            **({"warning": self.warning} if self.warning else {}),
        }

    def line(self) -> str:
        def listing(keys: list[str]) -> str:
            shown = ", ".join(keys[:5])
            return f" ({shown}{', …' if len(keys) > 5 else ''})" if keys else ""

        text = (
            f"{self.asset_id}: {len(self.added)} added{listing(self.added)}, "
            f"{len(self.removed)} removed{listing(self.removed)}, {self.unchanged} unchanged"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unusable{listing(self.skipped)}"
        if self.warning:
            text += f"; {self.warning}"
        return text


def key_problem(key: str) -> str | None:
    """Why a key cannot be a partition key (the contract's rules), or None."""
    if not key or len(key) > 255:
        return "must be 1-255 characters"
    if key != key.strip():
        return "leading or trailing space"
    if "..." in key:
        return "contains ..."
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "control character"
    return None


def command_source(command: str, timeout: float | None = None) -> Source:
    """A source running `sh -c command`; stdout lines are keys."""

    def run(asset_id: str) -> list[str]:
        try:
            done = subprocess.run(
                ["sh", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=_env(asset_id),
            )
        except subprocess.TimeoutExpired as error:
            raise SourceFailed(f"`{command}` timed out after {timeout:g} s") from error
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-5:]
            raise SourceFailed(
                f"`{command}` exited with status {done.returncode}"
                + (": " + " | ".join(tail) if tail else "")
            )
        return [
            line.strip()
            for line in done.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

    return run


def _env(asset_id: str) -> dict[str, str]:
    import os

    return {**os.environ, "PARTITA_ASSET_ID": asset_id}


def load_source(name: str) -> Source:
    """An entry point of group `partita.discovery` named `name`, or `module:function`."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            loaded = entry.load()
            if not callable(loaded):
                raise CommandError(f"entry point {name} ({entry.value}) is not callable")
            return loaded  # type: ignore[no-any-return]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise CommandError(f"cannot import {module_name}: {error}") from error
        function = getattr(module, attribute, None)
        if not callable(function):
            raise CommandError(f"{name} is not a callable")
        return function  # type: ignore[no-any-return]
    known = sorted(e.name for e in entry_points(group=ENTRY_POINT_GROUP))
    raise CommandError(
        f"no discovery source {name!r}: not an entry point of group {ENTRY_POINT_GROUP} "
        f"(known: {', '.join(known) or 'none'}) nor module:function"
    )


def live_keys(client: Any, asset_id: str) -> list[str]:
    def page(token: str) -> Any:
        return client.assets.ListPartitionKeys(
            asset_pb2.ListPartitionKeysRequest(asset_id=asset_id, page_size=1000, page_token=token),
            timeout=60,
        )

    return list(paged(page, "partition_keys"))


def discover_once(client: Any, asset_id: str, source: Source, *, prune: bool = False) -> PassReport:
    """One pass: ask `source`, add new keys, optionally tombstone vanished ones."""
    try:
        raw = [str(k) for k in source(asset_id)]
    except SourceFailed:
        raise
    except Exception as error:
        raise SourceFailed(f"the discovery source failed: {error!r}") from error
    discovered: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for key in raw:
        if key in seen:
            continue
        seen.add(key)
        (skipped if key_problem(key) else discovered).append(key)
    current = live_keys(client, asset_id)
    existing = set(current)
    new = [k for k in discovered if k not in existing]
    report = PassReport(asset_id, len(discovered), skipped=skipped)
    for start in range(0, len(new), CHUNK):
        response = client.assets.AddDynamicPartitions(
            asset_pb2.AddDynamicPartitionsRequest(
                asset_id=asset_id, partition_keys=new[start : start + CHUNK]
            ),
            timeout=60,
        )
        report.added.extend(response.added_partition_keys)
    wanted = set(discovered)
    vanished = [k for k in current if k not in wanted]
    if prune and vanished:
        if not discovered:
            report.warning = f"the source returned no keys: not pruning all {len(vanished)}"
        else:
            for start in range(0, len(vanished), CHUNK):
                response = client.assets.DeleteDynamicPartitions(
                    asset_pb2.DeleteDynamicPartitionsRequest(
                        asset_id=asset_id, partition_keys=vanished[start : start + CHUNK]
                    ),
                    timeout=60,
                )
                report.removed.extend(response.deleted_partition_keys)
    report.unchanged = len([k for k in discovered if k in existing])
    return report


@click.command("discover")
@click.argument("asset_id", metavar="ASSET")
@click.option(
    "--exec", "command", metavar="CMD", help="a shell command printing the current keys, one per line"
)
@click.option(
    "--source",
    "source_name",
    metavar="NAME",
    help=f"a callable: entry point of group {ENTRY_POINT_GROUP}, or module:function",
)
@click.option(
    "--every", "every", type=DURATION, default="10m", show_default=True, help="pause between passes"
)
@click.option("--once", is_flag=True, help="one pass, then exit")
@click.option("--prune", is_flag=True, help="tombstone keys the source no longer lists")
@click.option(
    "--timeout", "command_timeout", type=DURATION, default=None, help="kill a command running longer"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per pass")
@connection_options
@click.pass_context
def discover(
    ctx: click.Context,
    asset_id: str,
    command: str | None,
    source_name: str | None,
    every: float,
    once: bool,
    prune: bool,
    command_timeout: float | None,
    as_json: bool,
) -> None:
    """Keep a dynamic ASSET's keys in line with an external system."""
    if bool(command) == bool(source_name):
        raise click.UsageError("give exactly one of --exec CMD and --source NAME")
    source = command_source(command, command_timeout) if command else load_source(str(source_name))
    client = client_from(ctx)
    failures = 0
    while True:
        try:
            report = discover_once(client, asset_id, source, prune=prune)
        except SourceFailed as error:
            failures += 1
            click.echo(f"partita: discover {asset_id}: {error}; nothing changed", err=True)
            if once:
                raise click.exceptions.Exit(1) from None
        except grpc.RpcError as error:
            failures += 1
            click.echo(f"partita: discover {asset_id}: {describe_rpc_error(error, client.address)}", err=True)
            if once or error.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ):
                raise click.exceptions.Exit(1) from None
        else:
            failures = 0
            click.echo(json.dumps(report.as_dict()) if as_json else report.line())
            if once:
                return
        time.sleep(every)
