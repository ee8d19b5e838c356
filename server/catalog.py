"""Workflow definitions as the server uses them: parsed once, cached by version.

Functions here run inside a store transaction (they read through the models); the cache
only saves re-parsing the stored definition while its `update_time` is unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import json_format

from partita.v1 import workflow_pb2
from server.api import convert
from server.domain.partitions import PartitionSpec
from server.domain.retry import RetryPolicy
from storage import sql, workflows
from storage.models import Workflow


@dataclass(frozen=True)
class WorkflowDefinition:
    slug: str
    message: workflow_pb2.Workflow
    spec: PartitionSpec | None
    produced_asset_ids: tuple[str, ...]
    partitioned_asset_ids: frozenset[str]
    retry_policy: RetryPolicy
    default_parameters: dict[str, Any]
    execution_timeout: timedelta | None
    max_concurrent_runs: int
    update_time: int
    # backfill_policy.max_keys_per_run: 1 = a run per key, 0 = no limit, n = up to n keys a run.
    max_keys_per_run: int = 1

    @property
    def partitioned(self) -> bool:
        return self.spec is not None

    @property
    def ranged(self) -> bool:
        """Whether runs may cover several keys; every run of such a workflow then claims its
        keys in `run_slice` while in flight, so ranged and single-key runs never overlap."""
        return self.max_keys_per_run != 1

    @property
    def reacts_to_upstream(self) -> bool:
        """Automated on upstream materializations, or its runs wait for upstream data."""
        return (
            self.message.automation.condition == workflow_pb2.AUTOMATION_CONDITION_ON_UPSTREAM_MATERIALIZED
            or self.message.upstream_policy == workflow_pb2.UPSTREAM_POLICY_WAIT
        )

    def key_of(self, asset_id: str, run_key: str) -> str:
        """The key at which a run for `run_key` writes `asset_id` ('' for unpartitioned assets)."""
        return run_key if asset_id in self.partitioned_asset_ids else ""


@dataclass(frozen=True)
class _Overview:
    """What only the whole workflow table answers: each asset's consumers, the ranged workflows,
    whether any workflow reacts to upstream materializations."""

    readers: dict[str, tuple[str, ...]]
    ranged: tuple[str, ...]
    reacting: bool


class Catalog:
    def __init__(self) -> None:
        self._cache: dict[str, WorkflowDefinition] = {}
        self._lock = threading.Lock()
        # Kept as of a (count, newest update_time) of the workflow table: every registration,
        # change or deletion moves one of the two.
        self._overview: _Overview | None = None
        self._overview_version: tuple[int, int] | None = None

    def workflow(self, slug: str) -> WorkflowDefinition | None:
        version = sql.scalar("SELECT update_time FROM workflow WHERE slug = %s", (slug,))
        if version is None:
            return None
        with self._lock:
            cached = self._cache.get(slug)
        if cached is not None and cached.update_time == version:
            return cached
        row = workflows.get_workflow(slug)
        if row is None:
            return None
        definition = _parse(row)
        with self._lock:
            self._cache[slug] = definition
        return definition

    def consumers_of(self, asset_id: str) -> list[WorkflowDefinition]:
        """The workflows that consume `asset_id`, by slug."""
        found = (self.workflow(slug) for slug in self._current_overview().readers.get(asset_id, ()))
        return [definition for definition in found if definition is not None]

    def ranged_workflows(self) -> tuple[str, ...]:
        """Slugs of the workflows whose runs may cover several keys."""
        return self._current_overview().ranged

    def any_reacting(self) -> bool:
        """Whether some workflow consumes an asset and is automated on or waits for its
        materializations (otherwise MATERIALIZED events need no reading by the lineage loop)."""
        return self._current_overview().reacting

    def _current_overview(self) -> _Overview:
        count, newest = sql.rows("SELECT count(*), coalesce(max(update_time), 0) FROM workflow")[0]
        version = (int(count), int(newest))
        with self._lock:
            if self._overview is not None and self._overview_version == version:
                return self._overview
        readers: dict[str, set[str]] = {}
        ranged = []
        reacting = False
        for (slug,) in sql.rows("SELECT slug FROM workflow ORDER BY slug"):
            definition = self.workflow(slug)
            if definition is None:
                continue
            for declared in definition.message.consumes:
                readers.setdefault(declared.asset_id, set()).add(slug)
            if definition.ranged:
                ranged.append(slug)
            reacting = reacting or (bool(definition.message.consumes) and definition.reacts_to_upstream)
        overview = _Overview(
            {asset: tuple(sorted(slugs)) for asset, slugs in readers.items()}, tuple(ranged), reacting
        )
        with self._lock:
            self._overview, self._overview_version = overview, version
        return overview

    def producer_of(self, asset_id: str) -> WorkflowDefinition | None:
        slug = sql.scalar("SELECT workflow_slug FROM asset WHERE asset_id = %s", (asset_id,))
        return self.workflow(slug) if slug is not None else None


def _parse(row: Workflow) -> WorkflowDefinition:
    message = workflow_pb2.Workflow()
    json_format.Parse(row.definition, message)
    spec = None
    for index, declaration in enumerate(message.produces):
        if declaration.HasField("partitioning"):
            spec = convert.partition_spec(
                declaration.partitioning, f"workflow.produces[{index}].partitioning"
            )
            break
    return WorkflowDefinition(
        slug=row.slug,
        message=message,
        spec=spec,
        produced_asset_ids=tuple(declaration.asset_id for declaration in message.produces),
        partitioned_asset_ids=frozenset(d.asset_id for d in message.produces if d.HasField("partitioning")),
        retry_policy=convert.retry_policy(message.retry_policy if message.HasField("retry_policy") else None),
        default_parameters=json_format.MessageToDict(message.default_parameters),
        execution_timeout=convert.duration_or_none(message, "execution_timeout"),
        max_concurrent_runs=message.max_concurrent_runs,
        update_time=row.update_time,
        max_keys_per_run=max_keys_per_run(message),
    )


def max_keys_per_run(message: workflow_pb2.Workflow) -> int:
    policy = message.backfill_policy
    return policy.max_keys_per_run if policy.HasField("max_keys_per_run") else 1
