"""`partita watch [WORKFLOW] [--partition KEY ...] [--after SEQ]`: tail run events.

Prints one line per event (`--json`: one JSON object per line) and follows new ones. On exit
(Ctrl-C, `--count`, `--idle-timeout`, or the end of the stream) it prints the last sequence
it saw on stderr — `last sequence 42 (resume with --after 42)` — so a later
`partita watch --after 42` continues exactly there: every later event once, in order. A
broken stream (server restart, UNAVAILABLE) is resumed the same way automatically.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import click
import grpc
from google.protobuf import json_format

from cli.client import client_from, connection_options, enum_name, wrap_rpc_errors
from partita.v1 import run_pb2

EVENT_PREFIX = "RUN_EVENT_TYPE_"
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
_END = object()


def event_line(event: run_pb2.RunEvent) -> str:
    kind = enum_name(run_pb2.RunEventType, event.type, EVENT_PREFIX)
    stamp = event.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if event.HasField("time") else ""
    parts = [f"{event.sequence:>6}", stamp, f"{kind:<15}", event.workflow_slug]
    parts.append(event.partition_key or "-")
    if event.run_id:
        parts.append(f"run {event.run_id}")
    if event.asset_id:
        parts.append(event.asset_id)
    if event.attempt:
        parts.append(f"attempt {event.attempt}")
    if event.type == run_pb2.RUN_EVENT_TYPE_PROGRESS:
        parts.append(f"{event.progress:.0%}")
    if event.message:
        parts.append(event.message)
    return "  ".join(parts)


class _Reader(threading.Thread):
    """Reads a stream into a queue so the main thread can wait with a timeout and cancel."""

    def __init__(self, stream: Any, items: queue.Queue[Any]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.items = items

    def run(self) -> None:
        try:
            for response in self.stream:
                self.items.put(response)
        except grpc.RpcError as error:
            self.items.put(error)
        self.items.put(_END)


@click.command("watch")
@click.argument("workflow", required=False, default="")
@click.option(
    "--partition", "partition_keys", multiple=True, metavar="KEY", help="only these keys (repeatable)"
)
@click.option("--backfill", "backfill_id", default="", metavar="ID", help="only this backfill's runs")
@click.option("--run", "run_id", default="", metavar="ID", help="only this run")
@click.option(
    "--after",
    "after",
    default=0,
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="start after this sequence (0: every retained event)",
)
@click.option("--from-now", is_flag=True, help="only events after now (instead of every retained one)")
@click.option("--count", default=0, type=click.IntRange(min=0), metavar="N", help="stop after N events")
@click.option(
    "--idle-timeout", default=0.0, type=float, metavar="SECONDS", help="stop when no event came for this long"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event")
@connection_options
@click.pass_context
@wrap_rpc_errors
def watch(
    ctx: click.Context,
    workflow: str,
    partition_keys: tuple[str, ...],
    backfill_id: str,
    run_id: str,
    after: int,
    from_now: bool,
    count: int,
    idle_timeout: float,
    as_json: bool,
) -> None:
    """Tail run events (of WORKFLOW, or all), resumable with --after SEQ."""
    client = client_from(ctx)
    if from_now and after:
        raise click.UsageError("--from-now and --after exclude each other")
    if from_now:
        after = int(client.runs.ListRuns(run_pb2.ListRunsRequest(page_size=1), timeout=30).head_sequence)
    last = after
    seen = 0
    reconnects = 0
    try:
        while True:
            stream = client.runs.WatchRuns(
                run_pb2.WatchRunsRequest(
                    workflow_slug=workflow,
                    partition_keys=list(partition_keys),
                    backfill_id=backfill_id,
                    run_id=run_id,
                    after_sequence=last,
                )
            )
            items: queue.Queue[Any] = queue.Queue()
            _Reader(stream, items).start()
            ended = False
            try:
                while True:
                    try:
                        item = items.get(timeout=idle_timeout if idle_timeout > 0 else None)
                    except queue.Empty:
                        return
                    if item is _END:
                        ended = True
                        break
                    if isinstance(item, grpc.RpcError):
                        if item.code() in RECONNECT_CODES and reconnects < 30:
                            reconnects += 1
                            time.sleep(1.0)
                            break
                        raise item
                    reconnects = 0
                    event = item.event
                    last = max(last, event.sequence)
                    if event.type == run_pb2.RUN_EVENT_TYPE_BOOKMARK:
                        continue
                    if as_json:
                        click.echo(
                            json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True))
                        )
                    else:
                        click.echo(event_line(event))
                    seen += 1
                    if count and seen >= count:
                        return
            finally:
                stream.cancel()
            if ended:
                return
    except KeyboardInterrupt:
        pass
    finally:
        click.echo(f"last sequence {last} (resume with --after {last})", err=True)
