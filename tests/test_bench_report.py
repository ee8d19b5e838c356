"""The benchmark report's table, and the Dagster peer kept out of the project (no server, no
database: `make bench` itself is not run here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench import dagster
from bench.__main__ import report
from tests.harness import REPO_ROOT

MACHINE = {"platform": "Linux", "cpu_count": 2, "memory_gib": 24, "python": "3.11", "date": "today"}


def test_report_shows_goals_ratios_and_skipped_figures() -> None:
    document = {
        "machine": MACHINE,
        "benchmarks": {
            "runs": {
                "results": [
                    {
                        "name": "enqueue",
                        "value": 2.5,
                        "unit": "ms",
                        "goal": 5,
                        "goal_met": True,
                        "why": "hidden",
                    },
                    {
                        "name": "claim",
                        "value": 9,
                        "unit": "ms",
                        "goal": 5,
                        "goal_met": False,
                        "why": "the GIL",
                    },
                ]
            },
            "dagster": {
                "results": [
                    dagster._figure(
                        "dagster_ratio.latest_materialization", 1.8, "x faster", "Dagster 1.13.29"
                    ),
                    dagster._figure("partita.latest_materialization", 1.1, "ms"),
                    dagster._skipped("dagster_ratio.create_backfill_10k", "x faster", "no network"),
                ]
            },
            "watch": {"skipped": "module not present"},
        },
    }
    rows = report(document).splitlines()
    assert "| runs | enqueue | 2.5 | ms | 5 | yes |" in rows
    assert (
        "| dagster | dagster_ratio.latest_materialization | 1.8 | x faster (Dagster 1.13.29) |  |  |" in rows
    )
    assert "| dagster | partita.latest_materialization | 1.1 | ms |  |  |" in rows
    assert "| dagster | dagster_ratio.create_backfill_10k | — | x faster |  | skipped: no network |" in rows
    assert "| watch | — | — | — | — | skipped |" in rows
    # What bounds a missed figure follows the table; a met figure's note does not.
    assert rows[-1] == "- `claim`: the GIL" and not any("hidden" in row for row in rows)


def test_nothing_in_the_project_imports_dagster() -> None:
    peer = REPO_ROOT / "bench" / "dagster_peer"
    importers = []
    # tools/make_dagster_fixtures.py is a script for such a venv too, and no package imports it.
    for package in ("server", "storage", "cli", "tests", "bench"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            if peer in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                if any(name == "dagster" or name.startswith("dagster.") for name in names):
                    importers.append(str(Path(path).relative_to(REPO_ROOT)))
    assert importers == []
    assert not (peer / "__init__.py").exists()  # a script for the peer's venv, not a package


def test_dagster_figures_are_skipped_with_the_reason_when_it_cannot_be_had(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable() -> str:
        raise dagster.PeerUnavailable("pip install 'dagster==1.13.*' failed: no network")

    partita = {
        "record_materializations_s": 1.0,
        "latest_materialization_ms": 1.0,
        "partition_status_ms": 300.0,
        "create_backfill_ms": 40.0,
    }
    monkeypatch.setattr(dagster, "ensure_dagster", unavailable)
    monkeypatch.setattr(dagster, "partita_side", lambda: partita)
    results = dagster.run()
    ratios = [item for item in results if str(item["name"]).startswith("dagster_ratio.")]
    assert len(ratios) == 4
    assert all(item["skipped"] == "pip install 'dagster==1.13.*' failed: no network" for item in ratios)
    assert {
        "name": "partita.create_backfill_10k",
        "value": 40.0,
        "unit": "ms",
        "goal": None,
        "goal_met": None,
    } in (results)
