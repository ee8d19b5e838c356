"""Starts and stops real `python -m server` processes for tests, and makes test databases.

    running = start_server(database_url)            # waits for "listening on HOST:PORT"
    stub = running.stub(run_pb2_grpc.RunServiceStub)
    assert running.stop() == 0                      # SIGTERM, wait, exit code

Several servers may share one database, and a stopped server can be started again on it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL_ENV = "PARTITA_TEST_POSTGRES_URL"
LISTENING_PREFIX = "listening on "
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

S = TypeVar("S")


class ServerFailedToStart(RuntimeError):
    pass


def server_command(database_url: str, *extra_args: str, listen: str = "127.0.0.1:0") -> list[str]:
    return [sys.executable, "-m", "server", "--listen", listen, "--database", database_url, *extra_args]


def _pump(stream: IO[str], lines: queue.Queue[str | None], sink: list[str]) -> None:
    for line in stream:
        sink.append(line)
        lines.put(line)
    lines.put(None)


@dataclass
class RunningServer:
    """A server subprocess that printed its `listening on` line."""

    address: str
    process: subprocess.Popen[str]
    database_url: str
    stderr_path: Path
    stdout_lines: list[str]
    _stdout_thread: threading.Thread
    _channels: list[grpc.Channel] = field(default_factory=list)
    _shared: grpc.Channel | None = None

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def channel(self) -> grpc.Channel:
        """A shared sync channel to the server, ready to use; closed by `stop()`."""
        if self._shared is None:
            self._shared = self.new_channel()
        return self._shared

    def new_channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A fresh sync channel (its own connection); closed by `stop()`."""
        channel = grpc.insecure_channel(self.address, options=options or [])
        grpc.channel_ready_future(channel).result(timeout=10)
        self._channels.append(channel)
        return channel

    def aio_channel(self) -> grpc.aio.Channel:
        """A grpc.aio channel; create it inside a running loop and close it there."""
        return grpc.aio.insecure_channel(self.address)

    def stub(self, stub_class: type[S]) -> S:
        """`stub_class` (e.g. run_pb2_grpc.RunServiceStub) bound to the shared channel."""
        return stub_class(self.channel())  # type: ignore[call-arg]

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    def close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._shared = None

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Waits for the process to exit; kills it (and fails) past `timeout`."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"server {self.address} did not exit within {timeout} s; stderr:\n{self.stderr()}"
            ) from None
        self._stdout_thread.join(timeout=5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Closes this harness's channels, sends `sig`, and returns the exit code."""
        self.close_channels()
        self.send_signal(sig)
        return self.wait(timeout)


def start_server(
    database_url: str,
    *extra_args: str,
    listen: str = "127.0.0.1:0",
    timeout: float = START_TIMEOUT,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Starts `python -m server` and returns once it prints `listening on HOST:PORT`.

    Raises ServerFailedToStart (with the server's stderr) when it exits or stays silent.
    """
    directory = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="partita-server-"))
    directory.mkdir(parents=True, exist_ok=True)
    stderr_path = directory / f"server-{secrets.token_hex(4)}.stderr"
    with stderr_path.open("w", encoding="utf-8") as stderr_file:
        process = subprocess.Popen(
            server_command(database_url, *extra_args, listen=listen),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    sink: list[str] = []
    thread = threading.Thread(target=_pump, args=(process.stdout, lines, sink), daemon=True)
    thread.start()

    def fail(why: str) -> ServerFailedToStart:
        if process.poll() is None:
            process.kill()
        process.wait()
        thread.join(timeout=5)
        stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
        return ServerFailedToStart(
            f"server {why} (exit code {process.returncode}); stdout:\n{''.join(sink)}\nstderr:\n{stderr}"
        )

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise fail(f"printed no {LISTENING_PREFIX.strip()!r} line within {timeout} s")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            raise fail("exited before listening")
        if line.startswith(LISTENING_PREFIX):
            address = line[len(LISTENING_PREFIX) :].strip()
            return RunningServer(address, process, database_url, stderr_path, sink, thread)


def run_server_to_exit(
    database_url: str, *extra_args: str, listen: str = "127.0.0.1:0", timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Runs a server that is expected to refuse to start; returns its exit code and output."""
    return subprocess.run(
        server_command(database_url, *extra_args, listen=listen),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- PostgreSQL test databases -------------------------------------------------------------


def postgres_base_url() -> str | None:
    """The URL from PARTITA_TEST_POSTGRES_URL, or None when PostgreSQL tests are off."""
    return os.environ.get(POSTGRES_URL_ENV) or None


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_postgres_database(base_url: str, prefix: str = "partita_t_") -> str:
    """Creates an empty database next to `base_url`'s (autocommit); returns its URL."""
    import psycopg

    name = f"{prefix}{secrets.token_hex(6)}"
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return with_database(base_url, name)


def drop_postgres_database(base_url: str, database_url: str) -> None:
    """Drops the database `database_url` names, disconnecting whoever still uses it."""
    import psycopg

    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the duration of the block."""
    url = create_postgres_database(base_url)
    try:
        yield url
    finally:
        drop_postgres_database(base_url, url)
