"""Conversions between protobuf messages and domain values, shared by the servicers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from partita.v1 import partitions_pb2, workflow_pb2
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.partitions import DynamicSpec, PartitionSpec, StaticSpec, TimeWindowSpec
from server.domain.retry import RetryPolicy, resolve_retry_policy


def prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    """The same error with every field path moved under `prefix`."""
    violations = [FieldViolation(f"{prefix}.{v.field}", v.description) for v in error.violations]
    message = f"{prefix}.{error.message}" if error.violations else error.message
    return InvalidArgument(message, reason=error.reason, metadata=error.metadata, violations=violations)


def partition_spec(definition: partitions_pb2.PartitionsDefinition, field: str) -> PartitionSpec | None:
    """The domain spec of a PartitionsDefinition; None when no kind is set (unpartitioned)."""
    kind = definition.WhichOneof("kind")
    try:
        if kind == "time_window":
            window = definition.time_window
            schedule_type = ""
            if window.schedule_type:
                schedule_type = partitions_pb2.ScheduleType.Name(window.schedule_type).removeprefix(
                    "SCHEDULE_TYPE_"
                )
            return TimeWindowSpec.create(
                cron_schedule=window.cron_schedule,
                schedule_type=schedule_type,
                minute_offset=window.minute_offset,
                hour_offset=window.hour_offset,
                day_offset=window.day_offset if window.HasField("day_offset") else None,
                start=window.start,
                end=window.end,
                fmt=window.fmt,
                timezone=window.timezone,
                end_offset=window.end_offset,
            )
        if kind == "static":
            return StaticSpec.create(list(definition.static.keys))
        if kind == "dynamic":
            dynamic = definition.dynamic
            return DynamicSpec.create(
                key_pattern=dynamic.key_pattern,
                max_keys=dynamic.max_keys,
                initial_keys=list(dynamic.initial_keys),
            )
    except InvalidArgument as error:
        raise prefixed(error, field) from error
    return None


def duration_or_none(message: Message, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    value: Duration = getattr(message, name)
    return value.ToTimedelta()


def retry_policy(policy: workflow_pb2.RetryPolicy | None) -> RetryPolicy:
    if policy is None:
        return RetryPolicy()
    return resolve_retry_policy(
        policy.max_attempts,
        duration_or_none(policy, "initial_backoff"),
        policy.backoff_coefficient,
        duration_or_none(policy, "maximum_backoff"),
    )


def timestamp(micros: int | None) -> Timestamp | None:
    if micros is None:
        return None
    # Straight from the integer: Timestamp.FromDatetime costs microseconds on hot responses.
    seconds, fraction = divmod(micros, 1_000_000)
    return Timestamp(seconds=seconds, nanos=fraction * 1_000)


def instant(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def to_json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def from_json(text: str, message: Message) -> Message:
    return json_format.Parse(text, message)


# One encoder for every call: json.dumps with options builds a new one each time.
_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def dumps(value: Any) -> str:
    return _COMPACT.encode(value)


EnumValue = TypeVar("EnumValue", bound=int)


class ProtoEnum(Protocol[EnumValue]):
    """A generated enum as its module exposes it (`run_pb2.RunState`)."""

    def Name(self, number: EnumValue) -> str: ...

    def values(self) -> list[EnumValue]: ...


def enum_filter(values: Iterable[EnumValue], enum: ProtoEnum[EnumValue], field: str, what: str) -> list[str]:
    """The names, without the enum's prefix, of a repeated enum filter (`RUN_STATE_QUEUED` ->
    `QUEUED`); INVALID_ARGUMENT naming the first UNSPECIFIED or unknown value."""
    unspecified = enum.values()[0]  # every enum of the contract starts with its *_UNSPECIFIED zero
    prefix = enum.Name(unspecified).removesuffix("UNSPECIFIED")
    names = []
    for index, value in enumerate(values):
        if value == unspecified or value not in enum.values():
            shown = enum.Name(value) if value == unspecified else str(value)
            raise InvalidArgument.for_field(f"{field}[{index}]", f"{shown} is not a {what}")
        names.append(enum.Name(value).removeprefix(prefix))
    return names
