"""Retention: applying each workflow's RetentionPolicy, in small batches.

Defaults, and why: 100 finished runs per key keep every retry chain and months of daily
reruns visible while bounding a million-key asset's history; 90 days of materializations
cover a quarter of audits and re-reads (the latest per key is kept forever, so reads never
break); tombstoned dynamic keys are compacted after 30 days, long enough to undo a mistaken
delete with AddDynamicPartitions. Per-partition state and each key's latest run and
materialization are never deleted.

    python -m server.retention --database URL [--dry-run]      (also: `partita gc`)

The server applies it in the background (`server/scheduler/retention.py`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from server.catalog import Catalog, WorkflowDefinition
from server.clock import SystemClock
from storage import retention, sql
from storage.events import Outbox
from storage.models import micros
from storage.store import SchemaBehind, Store

DEFAULT_KEEP_RUNS = 100
DEFAULT_KEEP_MATERIALIZATIONS = timedelta(days=90)
DEFAULT_COMPACT_TOMBSTONES = timedelta(days=30)
BATCH = 500

log = logging.getLogger("partita.retention")


@dataclass(frozen=True)
class Policy:
    keep_runs_per_partition: int = DEFAULT_KEEP_RUNS
    keep_materializations_for: timedelta = DEFAULT_KEEP_MATERIALIZATIONS
    compact_tombstones_after: timedelta = DEFAULT_COMPACT_TOMBSTONES


@dataclass
class Report:
    runs: dict[str, int] = field(default_factory=dict)
    materializations: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would delete" if dry_run else "deleted"
        result = []
        for slug in sorted(set(self.runs) | set(self.materializations) | set(self.tombstones)):
            result.append(
                f"{slug}: {verb} {self.runs.get(slug, 0)} runs, {self.materializations.get(slug, 0)} "
                f"materializations, {self.tombstones.get(slug, 0)} tombstoned dynamic keys"
            )
        return result or [f"nothing to delete ({verb.split()[-1]} nothing)"]


def policy_of(definition: WorkflowDefinition) -> Policy:
    message = definition.message.retention
    return Policy(
        keep_runs_per_partition=message.keep_runs_per_partition or DEFAULT_KEEP_RUNS,
        keep_materializations_for=message.keep_materializations_for.ToTimedelta()
        if message.HasField("keep_materializations_for")
        else DEFAULT_KEEP_MATERIALIZATIONS,
        compact_tombstones_after=message.compact_tombstones_after.ToTimedelta()
        if message.HasField("compact_tombstones_after")
        else DEFAULT_COMPACT_TOMBSTONES,
    )


def workflow_slugs() -> list[str]:
    return [str(row[0]) for row in sql.rows("SELECT slug FROM workflow ORDER BY slug")]


def list_workflow_slugs(run_in_transaction: Callable[[Callable[[], bool]], bool]) -> list[str]:
    found: list[str] = []

    def read() -> bool:
        found.extend(workflow_slugs())
        return False

    run_in_transaction(read)
    return found


def collect_batch(catalog: Catalog, slug: str, now: datetime, dry_run: bool, report: Report) -> bool:
    """One transaction's worth for one workflow; returns whether more may be left."""
    definition = catalog.workflow(slug)
    if definition is None:
        return False
    policy = policy_of(definition)
    assets = list(definition.produced_asset_ids)
    runs = retention.surplus_runs(slug, policy.keep_runs_per_partition, BATCH)
    materializations = retention.expired_materializations(
        assets, micros(now - policy.keep_materializations_for), BATCH
    )
    tombstones = retention.old_tombstones(assets, micros(now - policy.compact_tombstones_after), BATCH)
    report.runs[slug] = report.runs.get(slug, 0) + len(runs)
    report.materializations[slug] = report.materializations.get(slug, 0) + len(materializations)
    report.tombstones[slug] = report.tombstones.get(slug, 0) + len(tombstones)
    if dry_run:
        return False
    retention.delete_runs(runs)
    retention.delete_by_id("materialization", materializations)
    retention.delete_by_id("dynamic_partition", tombstones)
    return BATCH in (len(runs), len(materializations), len(tombstones))


def collect(
    run_in_transaction: Callable[[Callable[[], bool]], bool],
    catalog: Catalog,
    now: datetime,
    *,
    dry_run: bool,
    slugs: Sequence[str] | None = None,
) -> Report:
    """Applies (or, dry, counts) every workflow's policy, one small transaction per batch."""
    report = Report()
    for slug in slugs if slugs is not None else list_workflow_slugs(run_in_transaction):
        while run_in_transaction(functools.partial(collect_batch, catalog, slug, now, dry_run, report)):
            pass
    return report


def batch_in_write(outbox: Outbox, catalog: Catalog, slug: str, now: datetime) -> bool:
    """`collect_batch` as a unit of work for `Store.write` (retention writes no events)."""
    return collect_batch(catalog, slug, now, False, Report())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="partita gc", description="Apply the workflows' retention policies."
    )
    parser.add_argument("--database", default="sqlite:///partita.db", metavar="URL")
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    try:
        store = Store.open(args.database, migrate=False)
    except SchemaBehind as error:
        print(f"partita gc: {error}; run `partita migrate` first", file=sys.stderr)
        return 2
    try:
        with store.db.connection_context():
            report = collect(
                store.run_plain_transaction, Catalog(), SystemClock().now(), dry_run=args.dry_run
            )
    finally:
        store.close()
    print("\n".join(report.lines(args.dry_run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
