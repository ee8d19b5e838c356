"""Helpers shared by the benchmarks: a real server subprocess on a temp database, entries."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.harness import RunningServer, start_server


def entry(
    name: str, value: float, unit: str, goal: float | None, higher_is_better: bool = False
) -> dict[str, object]:
    """One figure; `goal` None marks a figure reported for context (a load applied, a capacity)."""
    met = None if goal is None else value >= goal if higher_is_better else value <= goal
    return {"name": name, "value": round(value, 3), "unit": unit, "goal": goal, "goal_met": met}


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
