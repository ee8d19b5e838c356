"""Fuzzing the request validators: random messages built from the descriptors, sent to every
unary partita.v1 RPC of a running server (SQLite and PostgreSQL). Whatever the request, the
answer is never UNKNOWN or INTERNAL, every error carries an ErrorInfo, and the server stays
SERVING. Bounded to 200 examples per engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partita.v1 import partitions_pb2, run_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.api.test_auth import invoke, message_class, partita_methods
from tests.api.test_bad_input import health_status
from tests.harness import (
    POSTGRES_URL_ENV,
    RunningServer,
    create_postgres_database,
    drop_postgres_database,
    postgres_base_url,
    start_server,
)

MAX_DEPTH = 4
UNARY_METHODS = sorted(path for path, method in partita_methods().items() if not method.server_streaming)
KNOWN_STRINGS = [
    "fuzz",
    "fuzz/out",
    "static",
    "static/out",
    "a",
    "2024-01-01",
    "1",
    "0",
    "-1",
    "",
    "9" * 19,
    "\u00b2",
]

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(KNOWN_STRINGS),
        st.text(max_size=12),
        st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=5),  # control characters
        st.text(
            alphabet=st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), min_size=1, max_size=20
        ),
        st.from_regex(r"[a-z][a-z0-9._/-]{0,20}", fullmatch=True),
        st.integers(200, 5000).map(lambda n: "k" * n),  # long
    )


def integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field.type]
    small = st.integers(max(low, -3), min(high, 1100))
    return st.one_of(small, st.sampled_from([low, high, 0]), st.integers(low, high))


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), texts())
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts(), inner, max_size=3)),
        max_leaves=8,
    )


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.one_of(st.floats(0, 1, width=32), st.floats(width=32))  # incl. NaN, ±inf
        return st.one_of(st.floats(0, 1), st.floats())
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # defined values and a few undefined ones
    return integers(field)


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_class(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        return st.dictionaries(texts(), json_values(), max_size=4).map(_struct)
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        edges = [-62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800, 315_576_000_001, 0, 1]
        return st.builds(
            cls,
            seconds=st.one_of(
                st.sampled_from(edges),
                st.integers(1_600_000_000, 1_800_000_000),  # around now
                st.integers(-400_000_000_000, 400_000_000_000),
                st.integers(-100, 100_000),
            ),
            nanos=st.one_of(st.sampled_from([-1, 0, 999_999_999, 10**9]), st.integers(-(2**31), 2**31 - 1)),
        )
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        strategy = _field_strategy(field, depth)
        if strategy is not None:
            fields[field.name] = strategy
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key_field, value_field = message.fields_by_name["key"], message.fields_by_name["value"]
        if value_field.message_type is not None:
            return None
        return st.dictionaries(scalar(key_field), scalar(value_field), max_size=4)
    if message is not None:
        if depth >= MAX_DEPTH:
            return None
        element: st.SearchStrategy[Any] = message_strategy(message, depth + 1)
    else:
        element = scalar(field)
    if field.is_repeated:
        return st.lists(element, max_size=3)
    return element


def _struct(values: dict[str, Any]) -> Message:
    from google.protobuf.struct_pb2 import Struct

    struct = Struct()
    struct.update(values)
    return struct


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name) if field.is_repeated or field.message_type is not None else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(value)  # type: ignore[union-attr]
        elif field.is_repeated:
            target.extend(value)  # type: ignore[union-attr]
        elif field.message_type is not None:
            target.CopyFrom(value)  # type: ignore[union-attr]
        else:
            setattr(message, name, value)
    return message


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Message]:
    path = draw(st.sampled_from(UNARY_METHODS))
    descriptor = partita_methods()[path].input_type
    return path, draw(message_strategy(descriptor))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    base_url = None
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'partita.db'}"
    else:
        base_url = postgres_base_url()
        if base_url is None:
            pytest.skip(f"{POSTGRES_URL_ENV} is not set")
        url = create_postgres_database(base_url)
    # Short claim waits keep long polls from eating the time budget.
    running = start_server(url, "--limit", "max_claim_wait=0.1", log_dir=directory)
    try:
        workflows = running.stub(workflow_pb2_grpc.WorkflowServiceStub)
        static = partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=["a", "b"]))
        for slug, partitioning in (("fuzz", None), ("static", static)):
            workflows.RegisterWorkflow(
                workflow_pb2.RegisterWorkflowRequest(
                    workflow=workflow_pb2.Workflow(
                        slug=slug,
                        produces=[
                            workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)
                        ],
                    )
                )
            )
        running.stub(run_pb2_grpc.RunServiceStub)
        yield running
    finally:
        code = running.stop()
        if base_url is not None:
            drop_postgres_database(base_url, url)
    assert code == 0, running.stderr()


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(call=calls())
def test_random_requests_never_crash_the_server(
    fuzz_server: RunningServer, call: tuple[str, Message]
) -> None:
    path, request = call
    outcome = invoke(fuzz_server.channel(), path, request, timeout=10)
    assert outcome.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (path, request, outcome)
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, (path, outcome)
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.reason, (path, outcome)
    assert health_status(fuzz_server) == health_pb2.HealthCheckResponse.SERVING
