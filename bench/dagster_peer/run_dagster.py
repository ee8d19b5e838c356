"""Dagster's side of `bench/dagster.py`: run ONLY by the throwaway venv's python, never imported.

    .bench-cache/dagster-venv/bin/python bench/dagster_peer/run_dagster.py --keys 10000

Measures, in process, on `DagsterInstance.local_temp` (a persistent instance in a temp
directory: SQLite run, event log and schedule storage, as `dagster dev` keeps them), the same
four pieces of work Partita's side does over gRPC, and prints one JSON object:

* record_materializations_s: KEYS partition materializations of an hourly asset through
  `instance.report_runless_asset_event(AssetMaterialization(...))`, the public call for
  materializations reported from outside a run (Dagster has no public batch form of it);
* latest_materialization_ms: median of 200 `instance.fetch_materializations(
  AssetRecordsFilter(asset_key, asset_partitions=[key]), limit=1)`, the public call that
  filters on a partition;
* partition_status_ms: median of 3 `instance.get_status_by_partition(asset_key, keys,
  partitions_def)` over all KEYS keys once the asset status cache is warm, and
  partition_status_cold_ms for the first call, which builds that cache from the event log;
* create_backfill_s: accepting a KEYS-key asset backfill as the webserver's
  launchPartitionBackfill does: `PartitionBackfill.from_asset_partitions` (internal, there is
  no public Python call) and `instance.add_backfill`, until it is stored as REQUESTED.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import dagster
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    DagsterInstance,
    Definitions,
    HourlyPartitionsDefinition,
    asset,
)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

START = datetime(2000, 1, 1)
KEY_FORMAT = "%Y-%m-%d-%H:%M"


def _median_ms(call: Callable[[], object], repeat: int) -> float:
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(keys_count: int) -> dict[str, object]:
    partitions_def = HourlyPartitionsDefinition(
        start_date=START.strftime(KEY_FORMAT),
        end_date=(START + timedelta(hours=keys_count)).strftime(KEY_FORMAT),
    )

    @asset(partitions_def=partitions_def)
    def out() -> None:
        return None

    asset_key = AssetKey("out")
    asset_graph = Definitions(assets=[out]).get_repository_def().asset_graph
    keys = partitions_def.get_partition_keys()
    assert len(keys) == keys_count, len(keys)

    with (
        tempfile.TemporaryDirectory(prefix="partita-bench-dagster-") as directory,
        DagsterInstance.local_temp(tempdir=directory) as instance,
    ):
        started = time.perf_counter()
        for key in keys:
            instance.report_runless_asset_event(AssetMaterialization(asset_key=asset_key, partition=key))
        record_s = time.perf_counter() - started

        probe = keys[keys_count // 2]

        def latest() -> None:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=asset_key, asset_partitions=[probe]), limit=1
            ).records
            assert records and records[0].partition_key == probe, records

        latest_ms = _median_ms(latest, repeat=200)

        def status() -> None:
            by_key = instance.get_status_by_partition(asset_key, keys, partitions_def)
            assert by_key is not None and len(by_key) == keys_count
            assert all(value is not None for value in by_key.values())

        started = time.perf_counter()
        status()
        status_cold_ms = (time.perf_counter() - started) * 1000
        status_ms = _median_ms(status, repeat=3)

        started = time.perf_counter()
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=asset_graph,
            partition_names=keys,
            asset_selection=[asset_key],
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=None,
        )
        instance.add_backfill(backfill)
        backfill_s = time.perf_counter() - started
        stored = instance.get_backfill(backfill.backfill_id)
        assert stored is not None and stored.status == BulkActionStatus.REQUESTED
        assert stored.asset_backfill_data is not None
        assert stored.asset_backfill_data.target_subset.num_partitions_and_non_partitioned_assets == (
            keys_count
        )

    return {
        "dagster_version": dagster.__version__,
        "keys": keys_count,
        "record_materializations_s": record_s,
        "latest_materialization_ms": latest_ms,
        "partition_status_ms": status_ms,
        "partition_status_cold_ms": status_cold_ms,
        "create_backfill_s": backfill_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    print(json.dumps(measure(parser.parse_args().keys)))


if __name__ == "__main__":
    main()
