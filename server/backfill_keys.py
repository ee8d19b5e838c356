"""`partita backfill-keys`: derive partition keys of historical runs from a run parameter.

Runs and materializations recorded before a workflow was partitioned have partition key ''.
For each such run whose parameter NAME holds a valid key of the workflow's current
definition, this moves the run, its materializations of the workflow's partitioned assets,
and their per-partition state from '' to that key — a batch per transaction, so an
interruption loses nothing and a second pass finds only what is left. Runs whose parameter
is absent or not a valid key stay '' and are reported with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from server.catalog import Catalog, WorkflowDefinition
from server.domain.errors import DomainError, InvalidArgument
from server.keys import resolve_positions
from storage import partition_state, runs, sql
from storage.models import Run

BATCH_SIZE = 500


@dataclass
class BackfillKeysReport:
    workflow_slug: str
    parameter: str
    dry_run: bool
    runs_changed: int = 0
    materializations_changed: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    left_empty: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        verb = "would move" if self.dry_run else "moved"
        result = [
            f"{verb} {self.runs_changed} runs and {self.materializations_changed} materializations of workflow "
            f"{self.workflow_slug!r} to {len(self.keys)} partition keys derived from parameter {self.parameter!r}"
        ]
        for reason, count in sorted(self.left_empty.items()):
            result.append(f"left {count} runs with key '': {reason}")
        return result


def _derived_key(run: Run, parameter: str, definition: WorkflowDefinition, now: datetime) -> tuple[str, str]:
    """(key, '') when the run's parameter is a valid key, else ('', why not)."""
    parameters = json.loads(run.parameters or "{}")
    if parameter not in parameters:
        return "", f"no parameter {parameter!r}"
    value = parameters[parameter]
    if not isinstance(value, str):
        return "", f"parameter {parameter!r} is not a string"
    try:
        resolve_positions(definition, value, now, register=False)
    except (InvalidArgument, DomainError):
        return "", f"parameter {parameter!r} is not a valid key of the current definition"
    return value, ""


def backfill_keys(
    run_in_transaction: Callable[[Callable[[], bool]], bool],
    catalog: Catalog,
    workflow_slug: str,
    parameter: str,
    now: datetime,
    *,
    dry_run: bool,
    batch_size: int = BATCH_SIZE,
) -> BackfillKeysReport:
    """Processes the workflow's '' runs in id order, one transaction per batch."""
    report = BackfillKeysReport(workflow_slug, parameter, dry_run)
    after_id = 0

    def batch() -> bool:
        nonlocal after_id
        definition = catalog.workflow(workflow_slug)
        if definition is None:
            raise InvalidArgument.for_field("--workflow", f"workflow {workflow_slug!r} does not exist")
        if definition.spec is None:
            raise InvalidArgument.for_field("--workflow", f"workflow {workflow_slug!r} is not partitioned")
        found = list(
            Run.select()
            .where(
                (Run.workflow_slug == workflow_slug)
                & (Run.partition_key == "")
                & (Run.range_keys == "")  # ranged runs have key '' too, but keys of their own
                & (Run.id > after_id)
            )
            .order_by(Run.id)
            .limit(batch_size)
        )
        if not found:
            return False
        after_id = found[-1].id
        touched: set[str] = set()
        for run in found:
            key, why_not = _derived_key(run, parameter, definition, now)
            if not key:
                report.left_empty[why_not] += 1
                continue
            report.runs_changed += 1
            report.keys[key] += 1
            moved = _count_materializations(run.id, definition)
            report.materializations_changed += moved
            if not dry_run:
                _move_run(run, key, definition)
                touched.add(key)
        if not dry_run and touched:
            positions = {key: resolve_positions(definition, key, now, register=False) for key in touched}
            for asset_id in sorted(definition.partitioned_asset_ids):
                partition_state.rebuild_slice(
                    asset_id, "", partition_state.SlicePosition(partition_state.DETACHED_POSITION, None)
                )
                for key, by_asset in positions.items():
                    partition_state.rebuild_slice(asset_id, key, by_asset[asset_id])
        return True

    while run_in_transaction(batch):
        pass
    return report


def _count_materializations(run_id: int, definition: WorkflowDefinition) -> int:
    assets = sorted(definition.partitioned_asset_ids)
    placeholders = sql.placeholders(assets)
    return int(
        sql.scalar(
            f"SELECT COUNT(*) FROM materialization WHERE run_id = %s AND partition_key = '' "
            f"AND asset_id IN ({placeholders})",
            (run_id, *assets),
        )
    )


def _move_run(run: Run, key: str, definition: WorkflowDefinition) -> None:
    if run.state in runs.IN_FLIGHT and runs.in_flight_run(run.workflow_slug, key) is not None:
        # Another run of the slice is in flight: keep this legacy one out of the dedupe slot.
        sql.execute("UPDATE run SET dedupe_slot = id WHERE id = %s", (run.id,))
    sql.execute("UPDATE run SET partition_key = %s WHERE id = %s", (key, run.id))
    assets = sorted(definition.partitioned_asset_ids)
    placeholders = sql.placeholders(assets)
    sql.execute(
        f"UPDATE materialization SET partition_key = %s WHERE run_id = %s AND partition_key = '' "
        f"AND asset_id IN ({placeholders})",
        (key, run.id, *assets),
    )
    sql.execute(
        "UPDATE run_event SET partition_key = %s WHERE run_id = %s AND partition_key = ''",
        (key, run.id),
    )
