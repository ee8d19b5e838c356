"""Builds and runs the Partita gRPC server (grpc.aio).

`build_server(store, ...)` assembles a server with the five partita.v1 services, health,
reflection and the interceptors, ready to bind and start — use it from tests or to embed.
`serve(settings)` is the whole process lifecycle behind `python -m server`: open (and
migrate) the database off the event loop, bind, start, print `listening on HOST:PORT`, wait
for SIGTERM/SIGINT, then drain (health NOT_SERVING, `server.stop(grace)`) and close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import peewee
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api.auth_interceptor import AuthInterceptor
from server.api.context import Limits, ServiceContext
from server.api.interceptors import server_interceptors
from server.api.services import add_partita_services
from server.auth import AuthConfigError, TokenRegistry, install_principal_logging
from server.clock import Clock, FileClock, SystemClock
from server.lineage import run_lineage_loop
from server.logging import log_event
from server.metrics import MetricsRegistry
from server.scheduler.dispatcher import run_backfill_dispatcher
from server.scheduler.reaper import run_reaper
from server.scheduler.retention import run_retention
from server.scheduler.schedule_loop import run_schedule_loop
from server.streams import run_event_follower, run_event_pruner
from storage import migrations
from storage.database import connect
from storage.store import SchemaBehind, Store

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE = "sqlite:///partita.db"
DEFAULT_SHUTDOWN_GRACE = 10.0
MAX_MESSAGE_BYTES = Limits().max_message_bytes

# Long-lived watch streams and long-poll claims must survive idle periods and middleboxes:
# the server pings every 30 s (also with no call active) and accepts client pings down to 10 s.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    # Fail loudly when the port is taken instead of silently sharing it with another process.
    ("grpc.so_reuseport", 0),
)


def server_options(limits: Limits) -> tuple[tuple[str, int], ...]:
    """SERVER_OPTIONS with the message size cap of `limits`, and a maximum connection age when
    `PARTITA_MAX_CONNECTION_AGE_SECONDS` is set: behind a load balancer, clients then reconnect
    now and then, which spreads long-lived watch streams over replicas that joined later."""
    sized = {"grpc.max_send_message_length", "grpc.max_receive_message_length"}
    age = float(os.environ.get("PARTITA_MAX_CONNECTION_AGE_SECONDS", "0") or 0)
    aging = (
        (("grpc.max_connection_age_ms", int(age * 1000)), ("grpc.max_connection_age_grace_ms", 30_000))
        if age > 0
        else ()
    )
    return (
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        *(option for option in SERVER_OPTIONS if option[0] not in sized),
        *aging,
    )


logger = logging.getLogger("partita.server")


class StartupError(Exception):
    """The server cannot start; `exit_code` is what the process should exit with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE
    migrate: bool = True
    log_level: str = "INFO"
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    # Security (docs/security.md): tokens from a file and/or PARTITA_TOKENS, TLS, limits.
    token_file: str | None = None
    tokens_env: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure: bool = False
    limits: Limits = field(default_factory=Limits)
    # Test-only (server/clock.py FileClock): the server's "now" is the instant in this file.
    clock_file: str | None = None
    # Prometheus exposition (server/metrics_http.py) on this HOST:PORT; None: off.
    metrics_listen: str | None = None


# A loop that runs beside the server (lease reaper, later schedulers and dispatchers): it
# gets the service context and an event set at shutdown, and should return soon after.
BackgroundTask = Callable[[ServiceContext, asyncio.Event], Coroutine[Any, Any, None]]
DEFAULT_BACKGROUND_TASKS: tuple[BackgroundTask, ...] = (
    run_reaper,
    run_event_follower,
    run_event_pruner,
    run_backfill_dispatcher,
    run_schedule_loop,
    run_lineage_loop,
    run_retention,
)
BACKGROUND_STOP_TIMEOUT = 10.0


@dataclass
class PartitaServer:
    """A built, not yet started, server and the parts tests or embedders may want."""

    server: Any  # grpc.aio.Server
    health: Any  # grpc_health.v1.health.aio.HealthServicer
    context: ServiceContext
    metrics: MetricsRegistry
    service_names: tuple[str, ...]
    background: tuple[BackgroundTask, ...] = ()
    ports: list[int] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def add_insecure_port(self, address: str) -> int:
        """Binds `address` (port 0 picks a free one); returns the bound port."""
        try:
            port = int(self.server.add_insecure_port(address))
        except RuntimeError as error:
            raise StartupError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise StartupError(f"cannot listen on {address}")
        self.ports.append(port)
        return port

    def add_secure_port(self, address: str, credentials: Any) -> int:
        """Binds `address` with TLS `credentials` (grpc.ssl_server_credentials); returns the port."""
        try:
            port = int(self.server.add_secure_port(address, credentials))
        except RuntimeError as error:
            raise StartupError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise StartupError(f"cannot listen on {address}")
        self.ports.append(port)
        return port

    async def start(self) -> None:
        """Starts serving; health turns SERVING (overall and per service) once the server runs."""
        names = ("", *self.service_names)
        for name in names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        for task in self.background:
            name = getattr(task, "__name__", "background")
            self._tasks.append(asyncio.create_task(task(self.context, self.stopping), name=name))
        for name in names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight ones get `grace` seconds;
        then the background loops are told to stop (and cancelled if they linger)."""
        await self.health.enter_graceful_shutdown()
        # Watch streams never end by themselves: end them now with UNAVAILABLE so their
        # clients reconnect elsewhere instead of holding the drain for the whole grace.
        self.context.events.close()
        await self.server.stop(grace)
        self.stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=BACKGROUND_STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for task, result in zip(self._tasks, results, strict=True):
                if isinstance(result, Exception):
                    log_event(
                        logger,
                        "background task failed",
                        level=logging.ERROR,
                        task=task.get_name(),
                        error=repr(result),
                    )
            self._tasks.clear()


def build_server(
    store: Store,
    *,
    clock: Clock | None = None,
    limits: Limits | None = None,
    metrics: MetricsRegistry | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    background: Sequence[BackgroundTask] = DEFAULT_BACKGROUND_TASKS,
    tokens: TokenRegistry | None = None,
) -> PartitaServer:
    """A grpc.aio server with every partita.v1 service, health and reflection. Call inside a loop.

    `background` loops start with the server and stop after it drains; pass `()` for none.
    `options` default to SERVER_OPTIONS sized by `limits`; without `tokens` (or with none
    configured) every caller is the anonymous admin-equivalent principal.
    """
    registry = metrics if metrics is not None else MetricsRegistry()
    context = ServiceContext(store=store, clock=clock or SystemClock(), limits=limits or Limits())
    install_principal_logging()
    interceptors = [*server_interceptors(registry), AuthInterceptor(context, tokens)]
    server_opts = list(options) if options is not None else list(server_options(context.limits))
    server = grpc.aio.server(interceptors=interceptors, options=server_opts)
    partita_names = tuple(add_partita_services(server, context))
    health = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*partita_names, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    return PartitaServer(server, health, context, registry, partita_names, tuple(background))


def redact_url(url: str) -> str:
    """`url` without its password, for logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable url>"


def parse_listen(address: str) -> tuple[str, int]:
    """Splits HOST:PORT (IPv6 hosts in brackets); raises ValueError when it is not one."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 or [::]:0")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost` (HOST as in --listen, IPv6 in brackets or not)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def load_tokens(settings: Settings) -> TokenRegistry:
    try:
        return TokenRegistry.from_settings(settings.token_file, settings.tokens_env)
    except AuthConfigError as error:
        raise StartupError(f"partita: {error}", exit_code=2) from error


def check_exposure(settings: Settings, host: str, tokens: TokenRegistry) -> None:
    """Without tokens, serve loopback only unless --insecure (then warn at every start)."""
    if tokens.enabled:
        return
    if not settings.insecure:
        if not is_loopback_host(host):
            raise StartupError(
                f"partita: refusing to listen on {settings.listen} without authentication: configure "
                "tokens (--token-file or PARTITA_TOKENS) or pass --insecure to serve every caller as an "
                "anonymous admin",
                exit_code=2,
            )
        return
    log_event(
        logger,
        "no tokens configured and --insecure given: every caller is an anonymous admin",
        level=logging.WARNING,
        address=settings.listen,
    )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise StartupError(
            f"partita: cannot read {what} {path}: {error.strerror or error}", exit_code=2
        ) from error


def tls_credentials(settings: Settings) -> Any | None:
    """Server TLS credentials from --tls-cert/--tls-key (mTLS with --tls-client-ca); None without."""
    if not (settings.tls_cert or settings.tls_key or settings.tls_client_ca):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise StartupError(
            "partita: --tls-cert and --tls-key go together (and --tls-client-ca needs both)", 2
        )
    certificate = _read(settings.tls_cert, "--tls-cert")
    key = _read(settings.tls_key, "--tls-key")
    client_ca = _read(settings.tls_client_ca, "--tls-client-ca") if settings.tls_client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(key, certificate)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except (RuntimeError, ValueError, TypeError) as error:
        raise StartupError(f"partita: unusable TLS certificate or key: {error}", exit_code=2) from error


def _require_current_schema(url: str) -> None:
    """Raises SchemaBehind when the database needs migrations (checked before opening the store)."""
    db = connect(url)
    try:
        with db.connection_context():
            version = migrations.current_version(db)
    finally:
        db.close()
    if version < migrations.LATEST_VERSION:
        raise SchemaBehind(
            f"the database schema is at version {version}, this server needs version "
            f"{migrations.LATEST_VERSION}; start without --no-migrate to upgrade it"
        )


async def open_store(settings: Settings) -> Store:
    """Opens (and unless told otherwise migrates) the database, off the event loop."""
    try:
        connect(settings.database_url)  # checks the URL; opens nothing
    except ValueError as error:
        raise StartupError(f"partita: invalid --database: {error}", exit_code=2) from error
    try:
        if not settings.migrate:
            await asyncio.to_thread(_require_current_schema, settings.database_url)
        return await asyncio.to_thread(Store.open, settings.database_url, migrate=settings.migrate)
    except SchemaBehind as error:
        raise StartupError(f"partita: {error}", exit_code=2) from error
    except peewee.DatabaseError as error:
        raise StartupError(
            f"partita: cannot open database {redact_url(settings.database_url)}: {error}".rstrip()
        ) from error


def _print_listening(address: str) -> None:
    sys.stdout.write(f"listening on {address}\n")
    sys.stdout.flush()


async def serve(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[str], None] = _print_listening,
) -> None:
    """Runs the server until SIGTERM/SIGINT (or until `stop` is set), then shuts down gracefully.

    Raises StartupError when it cannot start (bad settings, schema behind, port taken).
    """
    host, _ = parse_listen(settings.listen)
    stop_event = stop if stop is not None else asyncio.Event()
    tokens = load_tokens(settings)
    check_exposure(settings, host, tokens)
    credentials = tls_credentials(settings)
    if clock is None and settings.clock_file:
        try:
            clock = FileClock(settings.clock_file)
        except ValueError as error:
            raise StartupError(f"partita: {error}", exit_code=2) from error
    store = await open_store(settings)
    try:
        app = build_server(store, clock=clock, limits=settings.limits, tokens=tokens)
        if credentials is not None:
            port = app.add_secure_port(settings.listen, credentials)
        else:
            port = app.add_insecure_port(settings.listen)
        await app.start()
        address = f"{host}:{port}"
        metrics_server = await _start_metrics(settings, store, app)
        log_event(
            logger,
            "server started",
            address=address,
            database=redact_url(settings.database_url),
            services=list(app.service_names),
            auth="tokens" if tokens.enabled else "none (anonymous admin)",
            tls="mutual" if settings.tls_client_ca else ("on" if credentials is not None else "off"),
        )
        # Handlers first: whoever reads the line may signal at once.
        with _signals_set(stop_event) as received:
            on_listening(address)
            await stop_event.wait()
            log_event(
                logger,
                "shutting down",
                signal=received[0] if received else None,
                grace_seconds=settings.shutdown_grace,
            )
            await app.stop(settings.shutdown_grace)
            if metrics_server is not None:
                await metrics_server.close()
        log_event(logger, "server stopped")
    finally:
        await asyncio.to_thread(store.close)


async def _start_metrics(settings: Settings, store: Store, app: PartitaServer) -> Any:
    """The Prometheus endpoint of --metrics-listen, started (None without the flag)."""
    if not settings.metrics_listen:
        return None
    from server.metrics_http import start_metrics_server

    host, _ = parse_listen(settings.metrics_listen)
    try:
        metrics_server = await start_metrics_server(
            settings.metrics_listen, store, app.metrics, app.context.clock, app.context.events
        )
    except OSError as error:
        await app.stop(0)
        raise StartupError(
            f"partita: cannot listen on --metrics-listen {settings.metrics_listen}: {error}"
        ) from error
    log_event(logger, "metrics listening", address=f"{host}:{metrics_server.port}", path="/metrics")
    return metrics_server


@contextlib.contextmanager
def _signals_set(event: asyncio.Event) -> Iterator[list[str]]:
    """While active, SIGTERM and SIGINT set `event`; yields the list of signal names received."""
    loop = asyncio.get_running_loop()
    received: list[str] = []
    installed: list[signal.Signals] = []

    def handle(sig: signal.Signals) -> None:
        received.append(sig.name)
        event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handle, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or a platform without it: rely on `stop`
    try:
        yield received
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
