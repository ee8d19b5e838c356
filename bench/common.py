"""Helpers shared by the benchmarks: a real server subprocess on a temp database, entries."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness import RunningServer, start_server

# What bounds the per-RPC figures on this machine (profiled with py-spy --gil).
WHY_RPC = (
    "bound by grpc.aio's per-call handling on the server's event loop (about half of the loop "
    "thread's time in profiles) and the GIL, which keeps one server process to about one core"
)


def entry(
    name: str,
    value: float,
    unit: str,
    goal: float | None,
    higher_is_better: bool = False,
    *,
    why: str = "",
) -> dict[str, object]:
    """One figure; `goal` None marks a figure reported for context (a load applied, a capacity).
    `why` says what bounds the figure; the report prints it when the goal is missed or absent."""
    met = None if goal is None else value >= goal if higher_is_better else value <= goal
    found: dict[str, object] = {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "goal": goal,
        "goal_met": met,
    }
    if why:
        found["why"] = why
    return found


@contextlib.contextmanager
def sqlite_server(*extra_args: str) -> Iterator[RunningServer]:
    with tempfile.TemporaryDirectory(prefix="partita-bench-") as directory:
        server = start_server(
            f"sqlite:///{Path(directory) / 'bench.db'}",
            "--log-level",
            "WARNING",
            *extra_args,
            log_dir=Path(directory),
        )
        try:
            yield server
        finally:
            server.stop()
