"""The connection the client commands share: address, token, TLS, stubs, and error reports.

`--server` (env PARTITA_SERVER, default 127.0.0.1:50051), `--token` (env PARTITA_TOKEN, sent
as `authorization: Bearer <token>` on every call), `--tls-ca`/`--tls-cert`/`--tls-key` (env
PARTITA_TLS_CA, PARTITA_TLS_CERT, PARTITA_TLS_KEY) and `--tls` (TLS with the system's roots)
may be given before the command (`partita --server H:P runs ls`) or after it
(`partita runs ls --server H:P`); the later one wins.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import click
import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.duration_pb2 import Duration

from partita.v1 import (
    asset_pb2_grpc,
    backfill_pb2_grpc,
    run_pb2_grpc,
    worker_pb2_grpc,
    workflow_pb2_grpc,
)

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "PARTITA_SERVER"
TOKEN_ENV = "PARTITA_TOKEN"
CONNECTION_KEY = "partita.connection"
# Unary calls get this deadline unless a command says otherwise.
DEFAULT_TIMEOUT = 30.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A failure to report as `partita: <message>` with exit code 1 (no traceback)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"partita: {self.format_message()}", err=True)


@dataclass
class ConnectionSettings:
    server: str | None = None
    token: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None or value is False:
        return value
    root = ctx.find_root()
    settings = root.meta.setdefault(CONNECTION_KEY, ConnectionSettings())
    explicit = root.meta.setdefault("partita.explicit", set())
    name = str(param.name)
    from_command_line = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    if name in explicit and not from_command_line:
        return value  # `partita --server X cmd` beats PARTITA_SERVER seen again by `cmd`
    if from_command_line:
        explicit.add(name)
    setattr(settings, name, value)
    return value


def _option(*names: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, expose_value=False, callback=_store, **kwargs)


def connection_options(command: F) -> F:
    """Adds the connection options (stored on the root context, not passed to `command`)."""
    options = [
        _option(
            "--server",
            envvar=SERVER_ENV,
            metavar="HOST:PORT",
            help=f"the Partita server (env {SERVER_ENV}; default {DEFAULT_SERVER})",
        ),
        _option(
            "--token",
            envvar=TOKEN_ENV,
            metavar="TOKEN",
            help=f"bearer token sent with every call (env {TOKEN_ENV})",
        ),
        _option("--tls", is_flag=True, default=False, help="use TLS with the system's root certificates"),
        _option(
            "--tls-ca",
            envvar="PARTITA_TLS_CA",
            metavar="PEM",
            help="use TLS and trust this CA (env PARTITA_TLS_CA)",
        ),
        _option(
            "--tls-cert",
            envvar="PARTITA_TLS_CERT",
            metavar="PEM",
            help="client certificate for mutual TLS (env PARTITA_TLS_CERT)",
        ),
        _option(
            "--tls-key",
            envvar="PARTITA_TLS_KEY",
            metavar="PEM",
            help="private key of --tls-cert (env PARTITA_TLS_KEY)",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer <token>` to every call (plaintext loopback or TLS alike)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or []), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CommandError(f"cannot read {flag} {path}: {error.strerror or error}") from error


@dataclass
class Client:
    """Stubs of the five partita.v1 services on one channel."""

    address: str
    channel: grpc.Channel
    _stubs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: ConnectionSettings) -> Client:
        address = settings.server or DEFAULT_SERVER
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise CommandError("--tls-cert and --tls-key go together")
        if settings.tls or settings.tls_ca or settings.tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.tls_ca, "--tls-ca") if settings.tls_ca else None,
                private_key=_read(settings.tls_key, "--tls-key") if settings.tls_key else None,
                certificate_chain=_read(settings.tls_cert, "--tls-cert") if settings.tls_cert else None,
            )
            channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        if settings.token:
            channel = grpc.intercept_channel(channel, _BearerToken(settings.token))
        return cls(address, channel)

    def _stub(self, name: str, factory: Callable[[grpc.Channel], Any]) -> Any:
        if name not in self._stubs:
            self._stubs[name] = factory(self.channel)
        return self._stubs[name]

    @property
    def workflows(self) -> workflow_pb2_grpc.WorkflowServiceStub:
        return self._stub("workflows", workflow_pb2_grpc.WorkflowServiceStub)

    @property
    def assets(self) -> asset_pb2_grpc.AssetServiceStub:
        return self._stub("assets", asset_pb2_grpc.AssetServiceStub)

    @property
    def runs(self) -> run_pb2_grpc.RunServiceStub:
        return self._stub("runs", run_pb2_grpc.RunServiceStub)

    @property
    def workers(self) -> worker_pb2_grpc.WorkerServiceStub:
        return self._stub("workers", worker_pb2_grpc.WorkerServiceStub)

    @property
    def backfills(self) -> backfill_pb2_grpc.BackfillServiceStub:
        return self._stub("backfills", backfill_pb2_grpc.BackfillServiceStub)

    def close(self) -> None:
        self.channel.close()


def client_from(ctx: click.Context) -> Client:
    """The command's client, connected on first use and closed when the command ends."""
    root = ctx.find_root()
    client = root.meta.get("partita.client")
    if client is None:
        client = Client.connect(root.meta.get(CONNECTION_KEY) or ConnectionSettings())
        root.meta["partita.client"] = client
        root.call_on_close(client.close)
    return client


# --- errors -------------------------------------------------------------------------------


def describe_rpc_error(error: grpc.RpcError, address: str = "") -> str:
    """`CODE: message [reason] field: why; ...` from a failed call's status and details."""
    code = error.code() if hasattr(error, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "ERROR"
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" at {address}" if address else ""
        return f"cannot reach the Partita server{where} (UNAVAILABLE: {details}); is it running? (--server / {SERVER_ENV})"
    parts = [f"{name}: {details}"]
    try:
        from google.rpc import error_details_pb2  # type: ignore[import-untyped]
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.reason:
                    parts.append(f"[{info.reason}]")
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                for violation in bad.field_violations:
                    parts.append(f"\n  {violation.field}: {violation.description}")
    return " ".join(parts).replace(" \n", "\n")


def bad_request_fields(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of a BadRequest detail, if any."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:
        return []
    found: list[tuple[str, str]] = []
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ('' when it carries none)."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:
        return ""
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


# --- values -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_seconds(text: str | float | int) -> float:
    """`90`, `1.5`, `500ms`, `10s`, `5m`, `1h30m`, `2d` → seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return float(text)
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(f"{text!r} is not a duration (e.g. 30s, 10m, 1h30m, 2d)") from None
        return total
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds


def duration(seconds: float) -> Duration:
    message = Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


class DurationType(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_seconds(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


DURATION = DurationType()


def format_time(stamp: timestamp_pb2.Timestamp, *, present: bool = True) -> str:
    if not present:
        return ""
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def paged(call: Callable[[str], Any], items: str) -> Iterator[Any]:
    """Every item of a paged list RPC: `call(page_token)` returns a response with `items`."""
    token = ""
    while True:
        response = call(token)
        yield from getattr(response, items)
        token = response.next_page_token
        if not token:
            return


def wrap_rpc_errors(command: F) -> F:
    """Turns a failed call into `partita: CODE: message` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as error:
            ctx = click.get_current_context(silent=True)
            address = ""
            if ctx is not None:
                settings = ctx.find_root().meta.get(CONNECTION_KEY)
                address = (settings.server if settings else None) or DEFAULT_SERVER
            raise CommandError(describe_rpc_error(error, address)) from None

    return wrapper  # type: ignore[return-value]
