"""`partita partitions ASSET [--status S ...] [--json]`: an asset's partitions, range-compressed.

Consecutive keys (in definition order) with the same status are one line:

    2024-01-01 … 2024-03-31  MATERIALIZED  (91)
    2024-04-01               FAILED        (1)

`--status` keeps the ranges of those statuses (the ranges stay those of the whole key list, so
a range is always a run of adjacent keys). `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.client import client_from, connection_options, enum_name, paged, wrap_rpc_errors
from partita.v1 import asset_pb2

STATUS_PREFIX = "PARTITION_STATUS_"
STATUS_NAMES = ("missing", "materialized", "failed", "in_progress")
STATUS_STYLE = {"MATERIALIZED": "green", "FAILED": "red", "IN_PROGRESS": "yellow", "MISSING": "dim"}
PAGE_SIZE = 1000


@dataclass
class Range:
    start: str
    end: str
    status: str
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "status": self.status, "count": self.count}


def compress(partitions: list[tuple[str, str]]) -> list[Range]:
    """(key, status) pairs in definition order → runs of equal status."""
    ranges: list[Range] = []
    for key, status in partitions:
        if ranges and ranges[-1].status == status:
            ranges[-1].end = key
            ranges[-1].count += 1
        else:
            ranges.append(Range(key, key, status, 1))
    return ranges


def status_value(name: str) -> int:
    return int(asset_pb2.PartitionStatus.Value(STATUS_PREFIX + name.upper().replace("-", "_")))


@click.command("partitions")
@click.argument("asset_id", metavar="ASSET")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUS_NAMES, case_sensitive=False),
    help="only ranges with this status (repeatable)",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@connection_options
@click.pass_context
@wrap_rpc_errors
def partitions(ctx: click.Context, asset_id: str, statuses: tuple[str, ...], as_json: bool) -> None:
    """Show the status of every partition of ASSET, as ranges of equal status."""
    client = client_from(ctx)
    counts: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    first: list[asset_pb2.ListPartitionsResponse] = []

    def page(token: str) -> asset_pb2.ListPartitionsResponse:
        response = client.assets.ListPartitions(
            asset_pb2.ListPartitionsRequest(asset_id=asset_id, page_size=PAGE_SIZE, page_token=token),
            timeout=60,
        )
        if not first:
            first.append(response)
        return response

    for summary in paged(page, "partitions"):
        pairs.append(
            (summary.partition_key, enum_name(asset_pb2.PartitionStatus, summary.status, STATUS_PREFIX))
        )
    if first:
        for count in first[0].status_counts:
            counts[enum_name(asset_pb2.PartitionStatus, count.status, STATUS_PREFIX)] = int(count.count)
    wanted = {name.upper() for name in statuses}
    ranges = [r for r in compress(pairs) if not wanted or r.status in wanted]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "asset_id": asset_id,
                    "total": len(pairs),
                    "status_counts": counts,
                    "ranges": [r.as_dict() for r in ranges],
                },
                indent=2,
            )
        )
        return
    console = Console(highlight=False)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("PARTITIONS")
    table.add_column("STATUS")
    table.add_column("COUNT", justify="right")
    for item in ranges:
        keys = item.start if item.count == 1 else f"{item.start} … {item.end}"
        style = STATUS_STYLE.get(item.status, "")
        table.add_row(
            escape(keys), f"[{style}]{item.status}[/{style}]" if style else item.status, f"({item.count})"
        )
    if pairs and pairs[0][0] == "" and len(pairs) == 1:
        console.print(f"{escape(asset_id)} is unpartitioned: {pairs[0][1]}")
        return
    console.print(table)
    summary = ", ".join(
        f"{name} {counts[name]}"
        for name in ("MATERIALIZED", "FAILED", "IN_PROGRESS", "MISSING")
        if counts.get(name)
    )
    console.print(f"{escape(asset_id)}: {len(pairs)} partitions" + (f" — {summary}" if summary else ""))
