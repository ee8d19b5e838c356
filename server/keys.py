"""Resolving a partition key of a workflow to the position it takes in each produced asset.

Runs inside a store transaction: dynamic keys are looked up (and, when the definition
allows it, registered on first use) in the same transaction as the run that uses them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from server.catalog import WorkflowDefinition
from server.domain.errors import InvalidArgument, ViolationCollector
from server.domain.partitions import DynamicSpec, StaticSpec, check_key_syntax
from storage import dynamic_partitions
from storage.models import Run, micros
from storage.partition_state import SlicePosition

UNPARTITIONED = SlicePosition(0, None)


def resolve_positions(
    definition: WorkflowDefinition,
    key: str,
    now: datetime,
    *,
    field: str = "partition_key",
    register: bool = True,
) -> dict[str, SlicePosition]:
    """Where `key` sits in each partitioned asset the workflow produces (unpartitioned workflow:
    every asset at key '', position 0). Raises InvalidArgument when the key does not belong."""
    if definition.spec is None:
        if key:
            raise InvalidArgument.for_field(
                field, f"must be empty: workflow {definition.slug!r} is not partitioned (got {key[:64]!r})"
            )
        return dict.fromkeys(definition.produced_asset_ids, UNPARTITIONED)
    if not key:
        raise InvalidArgument.for_field(
            field, f"is required: workflow {definition.slug!r} is partitioned ({_describe(definition)})"
        )
    spec = definition.spec
    if not isinstance(spec, DynamicSpec):
        if isinstance(spec, StaticSpec):
            position = ordinal = spec.validate_key(key, now, field)
        else:
            position, ordinal = spec.locate_key(key, now, field)
        return dict.fromkeys(definition.partitioned_asset_ids, SlicePosition(position, ordinal))
    check_key_syntax(key, field)
    positions = {}
    for asset_id in sorted(definition.partitioned_asset_ids):
        row = dynamic_partitions.registry_row(asset_id, key)
        if row is not None and row.delete_time is None:
            positions[asset_id] = SlicePosition(int(row.id), None)
            continue
        if row is not None:
            raise InvalidArgument.for_field(
                field,
                f"{key!r} was deleted from dynamic asset {asset_id!r}; only AddDynamicPartitions revives it",
                reason="PARTITION_KEY_DELETED",
            )
        if not register or not spec.accepts_on_first_use(key):
            expectation = (
                f"matching {spec.key_pattern!r}"
                if spec.key_pattern
                else "added with AddDynamicPartitions first"
            )
            raise InvalidArgument.for_field(
                field,
                f"{key!r} is not a registered key of dynamic asset {asset_id!r}; expected a key {expectation}",
            )
        if spec.max_keys:  # counting live keys is a query: only when there is a cap
            spec.check_capacity(dynamic_partitions.live_count(asset_id), 1, asset_id)
        positions[asset_id] = SlicePosition(dynamic_partitions.register(asset_id, key, micros(now)), None)
    return positions


def _describe(definition: WorkflowDefinition) -> str:
    spec = definition.spec
    if isinstance(spec, DynamicSpec):
        return "dynamic keys"
    return type(spec).__name__.removesuffix("Spec").lower().replace("timewindow", "time-window") + " keys"


@dataclass(frozen=True)
class Coverage:
    """The keys a run covers, in definition order, and where each sits in every asset whose
    per-partition state the run drives (`positions[asset_id][i]` is where `keys[i]` sits).

    A single-key run covers its one key (unpartitioned: ''); a ranged run covers a contiguous
    range of time-window or static keys (`start_key`..`end_key`) or a list of dynamic keys."""

    keys: tuple[str, ...]
    positions: Mapping[str, Sequence[SlicePosition]]
    start_key: str = ""
    end_key: str = ""
    ranged: bool = False

    def at(self, index: int) -> dict[str, SlicePosition]:
        return {asset_id: found[index] for asset_id, found in self.positions.items()}

    def head(self, count: int) -> Coverage:
        """The first `count` keys of a range, itself a range (from `start_key`)."""
        return Coverage(
            self.keys[:count],
            {asset_id: found[:count] for asset_id, found in self.positions.items()},
            start_key=self.keys[0],
            end_key=self.keys[count - 1],
            ranged=True,
        )


def single(
    definition: WorkflowDefinition,
    key: str,
    now: datetime,
    *,
    field: str = "partition_key",
    register: bool = True,
) -> Coverage:
    found = resolve_positions(definition, key, now, field=field, register=register)
    return Coverage((key,), {asset_id: (position,) for asset_id, position in found.items()})


# Ranges resolved lately, by (workflow, definition version, start, end): a ranged run's range is
# resolved when it is queued and again when it completes, a thousand keys formatted each time.
# A range valid once stays valid for the same definition (keys only ever appear).
RESOLVED_RANGES_KEPT = 256
_RESOLVED_RANGES: dict[tuple[str, int, str, str], Coverage] = {}


def resolve_range(
    definition: WorkflowDefinition,
    start_key: str,
    end_key: str,
    now: datetime,
    *,
    field: str,
    known_keys: Sequence[str] | None = None,
) -> Coverage:
    """The contiguous time-window or static keys start_key..end_key (`field` names the
    PartitionRange); INVALID_ARGUMENT naming each bad bound.

    `known_keys`: keys the caller holds from this definition version, distinct and in its order,
    from start_key to end_key (a backfill's plan). When they are as many as the range holds,
    they are its keys, and only their positions are computed (no key is formatted)."""
    spec = definition.spec
    start_field, end_field = f"{field}.start_key", f"{field}.end_key"
    if spec is None or isinstance(spec, DynamicSpec):
        raise InvalidArgument.for_field(
            field,
            f"workflow {definition.slug!r} has {_describe(definition) if spec else 'no partitions'}; "
            + ("give partition_keys instead" if spec else "omit the range"),
        )
    if not start_key or not end_key:
        collector = ViolationCollector()
        for key, name in ((start_key, start_field), (end_key, end_field)):
            if not key:
                collector.add(name, "is required")
        collector.raise_if_any("invalid key range")
    cache_key = (definition.slug, definition.update_time, start_key, end_key)
    if (resolved := _RESOLVED_RANGES.get(cache_key)) is not None:
        return resolved
    span = spec.index_range(start_key, end_key, now, start_field=start_field, end_field=end_field)
    given = tuple(known_keys) if known_keys is not None and len(known_keys) == len(span) else None
    starts: Iterable[int] = span  # static keys sit at their index
    if isinstance(spec, StaticSpec):
        keys = given or tuple(spec.keys_page(span.start, len(span), now))
    elif given is not None:
        keys, starts = given, spec.starts(span.start, len(span), now)
    else:
        paged = spec.starts_page(span.start, len(span), now)
        keys, starts = tuple(key for key, _ in paged), (start for _, start in paged)
    here = list(map(SlicePosition._make, zip(starts, span, strict=True)))
    resolved = Coverage(
        keys,
        dict.fromkeys(definition.partitioned_asset_ids, here),
        start_key=start_key,
        end_key=end_key,
        ranged=True,
    )
    if len(_RESOLVED_RANGES) >= RESOLVED_RANGES_KEPT:
        _RESOLVED_RANGES.clear()
    _RESOLVED_RANGES[cache_key] = resolved
    return resolved


def resolve_key_list(
    definition: WorkflowDefinition,
    partition_keys: Sequence[str],
    now: datetime,
    *,
    field: str,
    register: bool = True,
) -> Coverage:
    """Explicit dynamic keys as one ranged run, in registry order; INVALID_ARGUMENT naming every
    bad or repeated key (`field[i]`). Keys are registered on first use like single keys."""
    spec = definition.spec
    if not isinstance(spec, DynamicSpec):
        raise InvalidArgument.for_field(
            field,
            f"workflow {definition.slug!r} has {_describe(definition) if spec else 'no partitions'}; "
            + ("give partition_range instead" if spec else "omit the keys"),
        )
    collector = ViolationCollector()
    seen: dict[str, int] = {}
    found: list[tuple[str, dict[str, SlicePosition]]] = []
    for index, key in enumerate(partition_keys):
        first = seen.setdefault(key, index)
        if first != index:
            collector.add(f"{field}[{index}]", f"duplicate of {field}[{first}]")
            continue
        try:
            found.append(
                (key, resolve_positions(definition, key, now, field=f"{field}[{index}]", register=register))
            )
        except InvalidArgument as error:
            collector.extend(error)
    if not partition_keys:
        collector.add(field, "at least one key is required")
    collector.raise_if_any("invalid partition keys")
    first_asset = min(definition.partitioned_asset_ids)
    found.sort(key=lambda item: item[1][first_asset].position)
    return Coverage(
        tuple(key for key, _ in found),
        {asset_id: [where[asset_id] for _, where in found] for asset_id in definition.partitioned_asset_ids},
        ranged=True,
    )


def of_run(definition: WorkflowDefinition, run: Run, now: datetime) -> Coverage:
    """What an existing run covers (its keys as stored; positions under the definition now)."""
    if not run.range_keys:
        return single(definition, run.partition_key, now, register=False)
    if run.range_start_key:
        return resolve_range(definition, run.range_start_key, run.range_end_key, now, field="partition_range")
    return resolve_key_list(
        definition, json.loads(run.range_keys), now, field="partition_keys", register=False
    )


def covered_keys(run: Run) -> tuple[str, ...]:
    """The keys a run covers, from the run alone (no definition needed)."""
    return tuple(json.loads(run.range_keys)) if run.range_keys else (run.partition_key,)
