"""Per-partition status reads: pages of partitions and counts per status.

Keys never touched are MISSING without a row per key. Time-window and static definitions
compute keys from the definition and read state rows by position, so a page costs a page's
worth of work; counts come from an index scan of state rows, and MISSING is the rest of the
definition. Runs inside a store read transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.catalog import WorkflowDefinition
from server.domain.partitions import DynamicSpec, PartitionSpec, StaticSpec, TimeWindowSpec
from storage import partition_state
from storage.models import PartitionState

MISSING = "MISSING"
STATUSES = ("MISSING", "MATERIALIZED", "FAILED", "IN_PROGRESS")
# A page walk reads this many keys at a time.
WALK_CHUNK = 512


@dataclass
class PartitionPage:
    entries: list[tuple[str, PartitionState | None]]
    counts: dict[str, int]
    next_cursor: dict[str, Any] | None
    total_matching: int = 0
    windows: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)


def status_of(state: PartitionState | None) -> str:
    return state.status if state is not None else MISSING


def _asset_spec(definition: WorkflowDefinition, asset_id: str) -> PartitionSpec | None:
    return definition.spec if asset_id in definition.partitioned_asset_ids else None


def _position_at(spec: TimeWindowSpec | StaticSpec, index: int) -> int:
    if isinstance(spec, StaticSpec):
        return index
    return spec.position(spec.key_for_index(index))


def status_counts(definition: WorkflowDefinition, asset_id: str, as_of: datetime) -> dict[str, int]:
    """Partitions per status over every key of the definition as of `as_of`: the trigger-kept
    counters, less the rows of keys outside the definition's range then (usually none)."""
    spec = _asset_spec(definition, asset_id)
    counts = dict.fromkeys(STATUSES, 0)
    if spec is None:
        row = partition_state.rows_for_keys(asset_id, [""]).get("")
        counts[status_of(row)] += 1
        return counts
    if isinstance(spec, DynamicSpec):
        found, _ = partition_state.dynamic_status_counts(asset_id)
        counts.update(found)
        return counts
    total = spec.count(as_of)
    if total == 0:
        return counts
    kept = partition_state.status_counts(asset_id)
    outside = partition_state.status_counts_outside(
        asset_id, _position_at(spec, 0), _position_at(spec, total - 1)
    )
    for status in STATUSES:
        if status != MISSING:
            counts[status] = kept.get(status, 0) - outside.get(status, 0)
    counts[MISSING] = total - sum(counts[s] for s in STATUSES if s != MISSING)
    return counts


def list_partitions(
    definition: WorkflowDefinition,
    asset_id: str,
    statuses: Collection[str],
    as_of: datetime,
    cursor: dict[str, Any],
    limit: int,
) -> PartitionPage:
    """A page of (key, state row) in definition order, keeping only `statuses` (empty: all)."""
    wanted = set(statuses) or set(STATUSES)
    counts = status_counts(definition, asset_id, as_of)
    total = sum(counts[s] for s in wanted)
    spec = _asset_spec(definition, asset_id)
    if spec is None:
        row = partition_state.rows_for_keys(asset_id, [""]).get("")
        entries = [("", row)] if status_of(row) in wanted else []
        return PartitionPage(entries, counts, None, total)
    if isinstance(spec, DynamicSpec):
        after = int(cursor.get("after", 0))
        found = partition_state.dynamic_page(asset_id, after, sorted(wanted) if statuses else None, limit + 1)
        following = {"after": found[limit - 1][0]} if len(found) > limit else None
        return PartitionPage([(key, state) for _, key, state in found[:limit]], counts, following, total)
    key_count = spec.count(as_of)
    if MISSING not in wanted:
        return _page_from_rows(spec, asset_id, wanted, key_count, cursor, limit, counts, total)
    return _page_by_walking(spec, asset_id, wanted, key_count, as_of, cursor, limit, counts, total)


def _page_from_rows(
    spec: TimeWindowSpec | StaticSpec,
    asset_id: str,
    wanted: set[str],
    key_count: int,
    cursor: dict[str, Any],
    limit: int,
    counts: dict[str, int],
    total: int,
) -> PartitionPage:
    """Only statuses that need a row: an index range scan of state rows."""
    if key_count == 0:
        return PartitionPage([], counts, None, total)
    low = _position_at(spec, 0)
    high = _position_at(spec, key_count - 1)
    if "after_position" in cursor:
        low = int(cursor["after_position"]) + 1
    rows = partition_state.rows_between(asset_id, low, high, sorted(wanted), limit + 1)
    following = {"after_position": rows[limit - 1].position} if len(rows) > limit else None
    return PartitionPage([(row.partition_key, row) for row in rows[:limit]], counts, following, total)


def _page_by_walking(
    spec: TimeWindowSpec | StaticSpec,
    asset_id: str,
    wanted: set[str],
    key_count: int,
    as_of: datetime,
    cursor: dict[str, Any],
    limit: int,
    counts: dict[str, int],
    total: int,
) -> PartitionPage:
    """MISSING keys wanted: walk the definition's keys in chunks, joining their state rows; when
    only MISSING keys are wanted, visit only the buckets of ordinals that hold one."""
    index = int(cursor.get("index", 0))
    if wanted == {MISSING}:
        return _missing_page(spec, asset_id, key_count, as_of, index, limit, counts, total)
    entries: list[tuple[str, PartitionState | None]] = []
    next_index: int | None = None
    windows: dict[str, tuple[datetime, datetime]] = {}
    while index < key_count and next_index is None:
        size = min(WALK_CHUNK, key_count - index)
        if isinstance(spec, TimeWindowSpec):
            chunk = []
            for key, window in spec.windows_page(index, size, as_of):
                chunk.append(key)
                windows[key] = (window.start, window.end)
        else:
            chunk = spec.keys_page(index, size, as_of)
        rows = partition_state.rows_for_keys(asset_id, chunk)
        for offset, key in enumerate(chunk):
            state = rows.get(key)
            if status_of(state) not in wanted:
                continue
            if len(entries) == limit:
                next_index = index + offset
                break
            entries.append((key, state))
        index += len(chunk)
    following = {"index": next_index} if next_index is not None else None
    return PartitionPage(entries, counts, following, total, windows)


def _missing_page(
    spec: TimeWindowSpec | StaticSpec,
    asset_id: str,
    key_count: int,
    as_of: datetime,
    index: int,
    limit: int,
    counts: dict[str, int],
    total: int,
) -> PartitionPage:
    missing = partition_state.missing_ordinals(asset_id, index, key_count, limit)
    page = missing[:limit]
    keys = [
        spec.key_for_index(ordinal) if isinstance(spec, TimeWindowSpec) else spec.key_list[ordinal]
        for ordinal in page
    ]
    rows = partition_state.rows_for_keys(asset_id, keys)
    following = {"index": missing[limit]} if len(missing) > limit else None
    return PartitionPage([(key, rows.get(key)) for key in keys], counts, following, total)
