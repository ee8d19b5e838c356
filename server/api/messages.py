"""Stored rows → protobuf messages, shared by every servicer that returns them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from partita.v1 import asset_pb2, run_pb2
from server.api import convert
from storage.materializations import RecordedMaterialization
from storage.models import Materialization, Run, RunEvent


def run_message(row: Run) -> run_pb2.Run:
    run = run_pb2.Run(
        id=str(row.id),
        workflow_slug=row.workflow_slug,
        partition_key=row.partition_key,
        state=run_pb2.RunState.Value(f"RUN_STATE_{row.state}"),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        backfill_id=str(row.backfill_id) if row.backfill_id is not None else "",
        trigger=run_pb2.Trigger(
            kind=run_pb2.TriggerKind.Value(f"TRIGGER_KIND_{row.trigger_kind}"),
            source_id=row.trigger_source_id,
            principal=row.trigger_principal,
        ),
        labels=json.loads(row.labels or "{}"),
        worker_id=row.worker_id,
        progress=row.progress,
        progress_message=row.progress_message,
        error_message=row.error_message,
        cancel_requested=bool(row.cancel_requested),
        hold_reason=row.hold_reason,
    )
    if row.range_start_key:
        run.partition_range.start_key = row.range_start_key
        run.partition_range.end_key = row.range_end_key
    elif row.range_keys:
        run.partition_keys.extend(json.loads(row.range_keys))
    run.parameters.update(json.loads(row.parameters or "{}"))
    run.requested_parameters.update(json.loads(row.requested_parameters or "{}"))
    for name in ("next_attempt_time", "create_time", "start_time", "end_time", "lease_expire_time"):
        value = convert.timestamp(getattr(row, name))
        if value is not None:
            getattr(run, name).CopyFrom(value)
    return run


MaterializationRow = Materialization | RecordedMaterialization


def materialization_message(row: MaterializationRow) -> asset_pb2.Materialization:
    message = asset_pb2.Materialization(
        id=str(row.id),
        asset_id=row.asset_id,
        partition_key=row.partition_key,
        run_id=str(row.run_id) if row.run_id is not None else "",
        create_time=convert.timestamp(row.create_time),
    )
    for item in _stored_json(row.artifacts, "[]"):
        message.artifacts.append(json_format.ParseDict(item, asset_pb2.Artifact()))
    for item in _stored_json(row.inputs, "[]"):
        message.inputs.append(json_format.ParseDict(item, asset_pb2.MaterializationInput()))
    if payload := _stored_json(row.payload, "{}"):
        message.payload.update(payload)
    return message


def add_materializations(
    target: RepeatedCompositeFieldContainer[asset_pb2.Materialization], rows: Sequence[MaterializationRow]
) -> None:
    """Appends the rows' messages to a repeated field. Rows recorded together share everything
    but their id and key: each message is a copy of one built for what they share, with those
    two set (a ranged run's CompleteRun answers with thousands; building each was 3x slower)."""
    shared_by: dict[tuple[str, int | None, int, str, str, str], asset_pb2.Materialization] = {}
    for row in rows:
        shared = (row.asset_id, row.run_id, row.create_time, row.artifacts, row.payload, row.inputs)
        template = shared_by.get(shared)
        if template is None:
            template = shared_by[shared] = materialization_message(row)
            template.ClearField("id")
            template.ClearField("partition_key")
        message = target.add()
        message.CopyFrom(template)
        message.id = str(row.id)
        message.partition_key = row.partition_key


def _stored_json(text: str | None, empty: str) -> Any:
    """The JSON column's value; the common empty one without parsing (pages hold thousands)."""
    return json.loads(text) if text and text != empty else ()


def event_message(row: RunEvent) -> run_pb2.RunEvent:
    data = json.loads(row.data or "{}")
    event = run_pb2.RunEvent(
        sequence=row.sequence,
        run_id=str(row.run_id) if row.run_id is not None else "",
        workflow_slug=row.workflow_slug,
        partition_key=row.partition_key,
        backfill_id=str(row.backfill_id) if row.backfill_id is not None else "",
        type=run_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{row.type}"),
        state=run_pb2.RunState.Value(f"RUN_STATE_{row.state}")
        if row.state
        else run_pb2.RUN_STATE_UNSPECIFIED,
        attempt=row.attempt,
        progress=row.progress,
        message=row.message,
        asset_id=row.asset_id,
        materialization_ids=[str(i) for i in json.loads(row.materialization_ids or "[]")],
    )
    time = convert.timestamp(row.time)
    if time is not None:
        event.time.CopyFrom(time)
    next_attempt = convert.timestamp(data.get("next_attempt_time"))
    if next_attempt is not None:
        event.next_attempt_time.CopyFrom(next_attempt)
    return event
