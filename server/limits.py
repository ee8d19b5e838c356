"""Request limits that need state or a look at the whole request, and loading `Limits`.

- `RateLimiter`: a token bucket per principal (RESOURCE_EXHAUSTED with RetryInfo when empty).
- `StreamSlots`: open WatchRuns/WatchBackfill streams per principal.
- `check_request(request, limits)`: sizes of every google.protobuf.Struct in a request
  (parameters, payloads), keys per request (every repeated string field), artifacts per
  asset and materializations per ReportMaterializations call — INVALID_ARGUMENT with ErrorInfo
  reason `LIMIT_EXCEEDED`, metadata `limit=<name>`, and a BadRequest naming the field; and enum
  values the enum does not define (proto3 keeps them) — INVALID_ARGUMENT, reason
  `UNKNOWN_ENUM_VALUE`; Timestamps and Durations outside their documented ranges (which
  would not convert to datetimes) and strings with NUL characters (PostgreSQL cannot store or
  compare them) — INVALID_ARGUMENT naming the field.
- `load_limits(path, overrides)`: `Limits` from a `--limits` TOML file and `--limit NAME=VALUE`
  flags (durations in seconds).
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from server.api.context import Limits
from server.domain.errors import FieldViolation, InvalidArgument

LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
STRUCT_TYPES = frozenset({"google.protobuf.Struct"})
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
# google/protobuf/timestamp.proto and duration.proto: the valid ranges.
MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS = -62_135_596_800, 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000
_OPAQUE_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
# (message type, repeated field) → the Limits field capping its length.
REPEATED_CAPS: Mapping[tuple[str, str], str] = {
    ("partita.v1.ResultAsset", "artifacts"): "max_artifacts_per_asset",
    ("partita.v1.ReportMaterializationsRequest", "materializations"): "max_report_materializations",
}


def limit_exceeded(limit: str, field_path: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field_path}: {description} (limit {limit})",
        reason=LIMIT_EXCEEDED,
        metadata={"limit": limit},
        violations=[FieldViolation(field_path, description)],
    )


# --- rate limiting and stream slots ------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: `rate` tokens a second, holding at most `burst`. rate 0 = off."""

    def __init__(self, rate: float, burst: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str) -> float:
        """Takes one token for `key`: 0.0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class StreamSlots:
    """Counts open streams per key; `acquire` fails past `cap` (0 = no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self._open.get(key, 0)
        if self.cap and count >= self.cap:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def open(self, key: str) -> int:
        return self._open.get(key, 0)


# --- request shape checks ----------------------------------------------------------------------


@cache
def _interesting(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields of `descriptor` worth walking: Structs, repeated strings, capped repeated
    fields, and messages that (transitively) contain one of those."""
    return tuple(
        field for field in descriptor.fields if _field_matters(field, frozenset({descriptor.full_name}))
    )


def _field_matters(field: FieldDescriptor, seen: frozenset[str]) -> bool:
    owner = field.containing_type
    if owner is not None and (owner.full_name, field.name) in REPEATED_CAPS:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        return True
    message = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or message is None:
        return False
    if message.full_name in STRUCT_TYPES or message.full_name in (TIMESTAMP, DURATION):
        return True
    if message.GetOptions().map_entry:
        return any(inner.type == FieldDescriptor.TYPE_STRING for inner in message.fields)
    if message.full_name in _OPAQUE_TYPES or message.full_name in seen:
        return False
    return any(_field_matters(inner, seen | {message.full_name}) for inner in message.fields)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and bool(message.GetOptions().map_entry)


def _nul(name: str) -> InvalidArgument:
    return InvalidArgument.for_field(name, "must not contain NUL (U+0000) characters")


def _unknown_enum(field: FieldDescriptor, name: str, value: int) -> InvalidArgument | None:
    enum = field.enum_type
    if enum is None or value in enum.values_by_number:
        return None
    return InvalidArgument(
        f"{name}: {value} is not a value of {enum.full_name}",
        reason="UNKNOWN_ENUM_VALUE",
        metadata={"enum": enum.full_name},
        violations=[FieldViolation(name, f"{value} is not a value of {enum.full_name}")],
    )


def _violations(message: Message, path: str, limits: Limits) -> Iterator[InvalidArgument]:
    descriptor = message.DESCRIPTOR
    for field in _interesting(descriptor):
        name = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_ENUM:
            values: Sequence[int] = (
                getattr(message, field.name) if _is_repeated(field) else [getattr(message, field.name)]
            )
            for index, value in enumerate(values):
                where = f"{name}[{index}]" if _is_repeated(field) else name
                if (error := _unknown_enum(field, where, value)) is not None:
                    yield error
            continue
        if field.type == FieldDescriptor.TYPE_STRING and not _is_repeated(field):
            if "\x00" in getattr(message, field.name):
                yield _nul(name)
            continue
        if _is_map(field):
            for key, value in getattr(message, field.name).items():
                if (isinstance(key, str) and "\x00" in key) or (isinstance(value, str) and "\x00" in value):
                    yield _nul(f"{name}[{str(key)[:64]!r}]")
            continue
        if _is_repeated(field):
            entries: Sequence[Any] = getattr(message, field.name)
            cap_name = REPEATED_CAPS.get((descriptor.full_name, field.name))
            if cap_name is not None and len(entries) > getattr(limits, cap_name):
                cap = getattr(limits, cap_name)
                yield limit_exceeded(cap_name, name, f"has {len(entries)} entries; at most {cap}")
            if field.type == FieldDescriptor.TYPE_STRING and len(entries) > limits.max_keys_per_request:
                yield limit_exceeded(
                    "max_keys_per_request",
                    name,
                    f"has {len(entries)} entries; at most {limits.max_keys_per_request} per request",
                )
            if field.type == FieldDescriptor.TYPE_STRING:
                for index, value in enumerate(entries):
                    if "\x00" in value:
                        yield _nul(f"{name}[{index}]")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for index, value in enumerate(entries):
                    yield from _message_violations(value, f"{name}[{index}]", limits)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and message.HasField(field.name):
            yield from _message_violations(getattr(message, field.name), name, limits)


def _time_problem(message: Any) -> str | None:
    """Why a Timestamp or Duration is outside its valid range, or None."""
    seconds, nanos = message.seconds, message.nanos
    if message.DESCRIPTOR.full_name == TIMESTAMP:
        if not 0 <= nanos <= 999_999_999:
            return "nanos must be in [0, 999999999]"
        if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
            return "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        return None
    if not -999_999_999 <= nanos <= 999_999_999:
        return "nanos must be in [-999999999, 999999999]"
    if abs(seconds) > MAX_DURATION_SECONDS:
        return f"must be within ±{MAX_DURATION_SECONDS} seconds"
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return "seconds and nanos must have the same sign"
    return None


def _message_violations(message: Message, path: str, limits: Limits) -> Iterator[InvalidArgument]:
    if message.DESCRIPTOR.full_name in (TIMESTAMP, DURATION):
        if (problem := _time_problem(message)) is not None:
            yield InvalidArgument.for_field(path, problem)
        return
    if message.DESCRIPTOR.full_name in STRUCT_TYPES:
        size = message.ByteSize()
        if size > limits.max_payload_bytes:
            yield limit_exceeded(
                "max_payload_bytes",
                path,
                f"is {size} bytes serialized; at most {limits.max_payload_bytes}",
            )
        return
    yield from _violations(message, path, limits)


def check_request(request: Message, limits: Limits) -> None:
    """Raises INVALID_ARGUMENT naming the first limit `request` breaks (reason LIMIT_EXCEEDED)
    or its first unknown enum value (reason UNKNOWN_ENUM_VALUE)."""
    for error in _violations(request, "", limits):
        raise error


# --- configuration -----------------------------------------------------------------------------

LIMIT_FIELDS: Mapping[str, dataclasses.Field[Any]] = {
    field.name: field for field in dataclasses.fields(Limits)
}


def _coerce(name: str, value: object) -> object:
    default = getattr(Limits(), name)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"limit {name}: {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"limit {name}: {value!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"limit {name}: must be a finite number >= 0 (got {value!r})")
    if isinstance(default, timedelta):
        return timedelta(seconds=number)
    if isinstance(default, float):
        return number
    if number != int(number):
        raise ValueError(f"limit {name}: must be a whole number (got {value!r})")
    return int(number)


def limits_with(limits: Limits, values: Mapping[str, object]) -> Limits:
    """`limits` with `values` (limit name → number; durations in seconds) applied."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name not in LIMIT_FIELDS:
            raise ValueError(f"unknown limit {name!r}; known: {', '.join(sorted(LIMIT_FIELDS))}")
        changes[name] = _coerce(name, value)
    result = dataclasses.replace(limits, **changes)
    if result.max_page_size < 1 or not 1 <= result.default_page_size <= result.max_page_size:
        raise ValueError("limits: need 1 <= default_page_size <= max_page_size")
    if result.max_message_bytes < 1024:
        raise ValueError("limits: max_message_bytes must be at least 1024")
    if result.default_lease_duration > result.max_lease_duration or result.default_lease_duration < timedelta(
        seconds=1
    ):
        raise ValueError("limits: need 1 s <= default_lease_duration <= max_lease_duration")
    return result


def parse_override(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--limit {text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


def load_limits(path: str | None = None, overrides: Sequence[str] = ()) -> Limits:
    """Limits from a TOML file (top-level keys, or a [limits] table) and NAME=VALUE overrides."""
    values: dict[str, object] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"cannot read limits file {path}: {error.strerror or error}") from error
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"limits file {path}: {error}") from error
        table = document.get("limits", document)
        if not isinstance(table, dict):
            raise ValueError(f"limits file {path}: [limits] must be a table")
        values.update(table)
    for override in overrides:
        name, value = parse_override(override)
        values[name] = value
    return limits_with(Limits(), values)
