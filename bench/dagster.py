"""Partita side by side with Dagster on the same work (`python -m bench dagster`).

Dagster is installed in a venv of its own, `.bench-cache/dagster-venv` (gitignored, reused
while it holds a matching version), and runs only there: `bench/dagster_peer/run_dagster.py`
measures it in process on a `DagsterInstance.local_temp` (SQLite in a temp directory) and
prints JSON; nothing in this project imports Dagster. Partita's side is the real gRPC server
on SQLite, with the calls the other benchmarks use. On one hourly asset of 10,000 keys:

* record_10k_materializations: Partita ReportMaterializations, 1,000 per call; Dagster
  `report_runless_asset_event`, one per call (it has no public batch form);
* latest_materialization: median GetLatestMaterialization of one key; Dagster
  `fetch_materializations` filtered on that partition, limit 1 (median of 200 each);
* partition_status_10k: every ListPartitions page (1,000 per page) of the 10,000 keys; Dagster
  `get_status_by_partition` of the 10,000 keys with its status cache warm (median of 3 each);
* create_backfill_10k: CreateBackfill of the 10,000-key range until it answers; Dagster
  `PartitionBackfill.from_asset_partitions` + `add_backfill` (what launchPartitionBackfill does).

Entries: `dagster_ratio.<work>` = Dagster's time / Partita's time ("x faster": above 1 means
Partita is faster), plus the raw `partita.<work>` and `dagster.<work>` figures. When Dagster
cannot be installed or run (no network, a timeout), the Dagster and ratio entries are
reported as skipped with the reason and the rest of `make bench` goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bench.backfills import create_range_backfill
from bench.common import sqlite_server
from bench.partition_reads import _median_ms, _register, count_all_pages, report_in_batches
from partita.v1 import asset_pb2, asset_pb2_grpc, partitions_pb2

KEYS = 10_000
START = datetime(2000, 1, 1, tzinfo=UTC)
KEY_FORMAT = "%Y-%m-%d-%H:%M"
REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("PARTITA_BENCH_CACHE", REPO_ROOT / ".bench-cache")) / "dagster-venv"
PEER_SCRIPT = Path(__file__).resolve().parent / "dagster_peer" / "run_dagster.py"
# The series the issue names first, then any 1.x should PyPI no longer serve it.
REQUIREMENTS = ("dagster==1.13.*", "dagster>=1,<2")
INSTALL_TIMEOUT = 900.0
RUN_TIMEOUT = 600.0

# (work, Partita's key in partita_side(), Dagster's key in run_dagster.py's JSON, unit, Dagster's
# figure times this is in `unit`)
WORK = (
    ("record_10k_materializations", "record_materializations_s", "record_materializations_s", "s", 1),
    ("latest_materialization", "latest_materialization_ms", "latest_materialization_ms", "ms", 1),
    ("partition_status_10k", "partition_status_ms", "partition_status_ms", "ms", 1),
    ("create_backfill_10k", "create_backfill_ms", "create_backfill_s", "ms", 1000),
)


class PeerUnavailable(Exception):
    """Dagster could not be installed or run; the message says why."""


def _figure(name: str, value: float, unit: str, peer: str | None = None, why: str = "") -> dict[str, object]:
    """An entry without a goal; `peer` names the Dagster version a Dagster figure comes from."""
    figure: dict[str, object] = {"name": name, "value": round(value, 3), "unit": unit, "goal": None}
    figure["goal_met"] = None
    if peer is not None:
        figure["peer"] = peer
    if why:
        figure["why"] = why
    return figure


# What the two sides of a comparison do differently, where that shapes the ratio.
DIFFERENCES = {
    "record_10k_materializations": "Partita takes 1,000 per ReportMaterializations call; Dagster has "
    "no public batch call, so it records one event per call (compare Partita's one-per-call figure "
    "from 50 clients in partition_reads)",
    "partition_status_10k": "Partita's figure is ten gRPC pages that carry each key's latest run and "
    "materialization; Dagster's is an in-process read of its cached partition-status record",
    "create_backfill_10k": "Partita writes a row per key (per-key states, attempts, errors); Dagster "
    "stores the range compactly",
}


def _skipped(name: str, unit: str, reason: str) -> dict[str, object]:
    return {"name": name, "value": None, "unit": unit, "goal": None, "goal_met": None, "skipped": reason}


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _installed_version() -> str | None:
    if not _venv_python().exists():
        return None
    probe = subprocess.run(
        [str(_venv_python()), "-c", "import dagster; print(dagster.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_dagster() -> str:
    """The Dagster version in the bench venv, installing it there first when needed."""
    version = _installed_version()
    if version is not None and version.startswith("1."):
        return version
    if not _venv_python().exists():
        created = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if created.returncode != 0:
            raise PeerUnavailable(f"could not create {VENV}: {created.stderr.strip()[-500:]}")
    errors = []
    for requirement in REQUIREMENTS:
        try:
            installed = subprocess.run(
                [
                    str(_venv_python()),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    requirement,
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"pip install {requirement!r} timed out after {INSTALL_TIMEOUT:.0f} s")
            continue
        if installed.returncode == 0:
            version = _installed_version()
            if version is not None:
                return version
        errors.append(f"pip install {requirement!r} failed: {installed.stderr.strip()[-300:]}")
    raise PeerUnavailable("; ".join(errors))


def dagster_side(keys: int = KEYS) -> dict[str, Any]:
    """Runs run_dagster.py in the bench venv; its JSON figures."""
    version = ensure_dagster()
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    for inherited in ("DAGSTER_HOME", "PYTHONPATH"):  # the peer sees neither an instance nor our packages
        env.pop(inherited, None)
    try:
        ran = subprocess.run(
            [str(_venv_python()), str(PEER_SCRIPT), "--keys", str(keys)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            env=env,
            cwd=PEER_SCRIPT.parent,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"Dagster {version} did not finish within {RUN_TIMEOUT:.0f} s") from None
    if ran.returncode != 0:
        raise PeerUnavailable(f"Dagster {version} failed: {ran.stderr.strip()[-500:]}")
    figures: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    return figures


def partita_side(keys: int = KEYS) -> dict[str, float]:
    """The same four pieces of work through the real gRPC server on SQLite."""
    names = [(START + timedelta(hours=i)).strftime(KEY_FORMAT) for i in range(keys)]
    end = (START + timedelta(hours=keys)).strftime(KEY_FORMAT)
    hourly = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start=names[0], end=end
        )
    )
    as_of = Timestamp()
    as_of.FromDatetime(START + timedelta(hours=keys))
    with sqlite_server() as server:
        channel = server.channel()
        assets = asset_pb2_grpc.AssetServiceStub(channel)
        _register(channel, "peer", hourly)

        started = time.perf_counter()
        report_in_batches(assets, "peer/out", names)
        record_s = time.perf_counter() - started

        latest = asset_pb2.GetLatestMaterializationRequest(
            asset_id="peer/out", partition_key=names[keys // 2]
        )
        latest_ms = _median_ms(lambda: assets.GetLatestMaterialization(latest), repeat=200)

        def status() -> None:
            seen = count_all_pages(assets, "peer/out", as_of)
            assert seen == keys, seen

        status_ms = _median_ms(status, repeat=3)
        backfill_ms = create_range_backfill(channel, "peer", names[0], names[-1], keys) * 1000
    return {
        "record_materializations_s": record_s,
        "latest_materialization_ms": latest_ms,
        "partition_status_ms": status_ms,
        "create_backfill_ms": backfill_ms,
    }


def run() -> list[dict[str, object]]:
    # Dagster first, on its own: the two sides never compete for this machine's cores.
    try:
        dagster: dict[str, Any] | None = dagster_side()
        reason = ""
    except PeerUnavailable as error:
        dagster, reason = None, str(error)
    partita = partita_side()
    peer = f"Dagster {dagster['dagster_version']}" if dagster is not None else None
    results: list[dict[str, object]] = []
    for work, partita_key, dagster_key, unit, scale in WORK:
        mine = partita[partita_key]
        if dagster is None:
            results.append(_skipped(f"dagster_ratio.{work}", "x faster", reason))
            results.append(_figure(f"partita.{work}", mine, unit))
            results.append(_skipped(f"dagster.{work}", unit, reason))
            continue
        theirs = float(dagster[dagster_key]) * scale
        results.append(
            _figure(f"dagster_ratio.{work}", theirs / mine, "x faster", peer, DIFFERENCES.get(work, ""))
        )
        results.append(_figure(f"partita.{work}", mine, unit))
        results.append(_figure(f"dagster.{work}", theirs, unit, peer))
    if dagster is not None:
        cold = float(dagster["partition_status_cold_ms"])
        results.append(_figure("dagster.partition_status_10k_cold_cache", cold, "ms", peer))
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
