"""`make bench`: runs every benchmark module and prints one JSON document.

Each module under `bench/` exposes `run() -> list[dict]` with entries
`{"name", "value", "unit", "goal", "goal_met"}`. The document names the machine the figures
come from; this kind of machine is small and noisy, so compare ratios within one run.
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

MODULES = ("partitions", "runs", "partition_reads", "watch")


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
    print(json.dumps({"machine": machine(), "benchmarks": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
