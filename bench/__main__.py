"""`make bench`: runs every benchmark module and prints one JSON document.

Each module under `bench/` exposes `run() -> list[dict]` with entries
`{"name", "value", "unit", "goal", "goal_met"}` (goal and goal_met null for figures given
for context: the load a benchmark applied, a capacity no goal names, a ratio to a peer). The document names the machine the figures
come from; this kind of machine is small and noisy, so compare ratios within one run.
A full run (no module named) also writes `bench/results.json` and the table `bench/REPORT.md`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODULES = ("partitions", "runs", "partition_reads", "watch", "backfills", "ranged", "lineage", "dagster")
HERE = Path(__file__).resolve().parent


def machine() -> dict[str, object]:
    memory_kib = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            memory_kib = int(meminfo.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(selected: list[str]) -> int:
    results: dict[str, object] = {}
    failed = False
    for name in selected or MODULES:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            results[name] = {"results": module.run(), "seconds": round(time.perf_counter() - started, 1)}
        except ModuleNotFoundError as error:
            if error.name != f"bench.{name}":
                raise
            results[name] = {"skipped": "module not present"}
        except Exception:
            failed = True
            results[name] = {"error": traceback.format_exc()}
    document = {"machine": machine(), "benchmarks": results}
    print(json.dumps(document, indent=2))
    if not selected:
        (HERE / "results.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        (HERE / "REPORT.md").write_text(report(document), encoding="utf-8")
    return 1 if failed else 0


def report(document: dict[str, Any]) -> str:
    """A Markdown table of every figure with its goal."""
    machine_facts = document["machine"]
    lines = [
        "# Benchmark report",
        "",
        f"Machine: {machine_facts['platform']}, {machine_facts['cpu_count']} cores, "
        f"{machine_facts['memory_gib']} GiB, Python {machine_facts['python']}; run {machine_facts['date']}.",
        "Figures from one `make bench` run on a small, shared machine: compare ratios within a run.",
        "",
        "| benchmark | figure | value | unit | goal | met |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    notes: list[str] = []
    for module, outcome in document["benchmarks"].items():
        if "results" not in outcome:
            reason = "skipped" if "skipped" in outcome else "failed (see results.json)"
            lines.append(f"| {module} | — | — | — | — | {reason} |")
            continue
        for item in outcome["results"]:
            value, unit = item["value"], item["unit"]
            goal = "" if item["goal"] is None else item["goal"]  # e.g. a ratio to a peer has none
            if item.get("peer"):  # a side-by-side figure: the peer's version
                unit = f"{unit} ({item['peer']})"
            if "skipped" in item:
                reason = " ".join(str(item["skipped"]).split()).replace("|", "/")
                value, met = "—", f"skipped: {reason}"
            elif item["goal"] is None:
                met = ""
            else:
                met = "yes" if item["goal_met"] else "**no**"
            lines.append(f"| {module} | {item['name']} | {value} | {unit} | {goal} | {met} |")
            if item.get("why") and not item.get("goal_met"):
                notes.append(f"- `{item['name']}`: {item['why']}")
    if notes:
        lines += ["", "## What bounds the figures missed or given for context", "", *notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
