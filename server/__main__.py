"""`python -m server --listen HOST:PORT --database URL [--no-migrate] [--log-level LEVEL]`
[--metrics-listen HOST:PORT]
[--token-file PATH] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--insecure]
[--limits FILE.toml] [--limit NAME=VALUE ...]`; tokens also come from PARTITA_TOKENS
(docs/security.md).

Exit codes: 0 after a graceful shutdown, 2 for bad settings or a database schema that is
behind under `--no-migrate`, 1 for any other failure to start (database unreachable, port
taken).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence

from server.app import (
    DEFAULT_DATABASE,
    DEFAULT_LISTEN,
    DEFAULT_SHUTDOWN_GRACE,
    Settings,
    StartupError,
    parse_listen,
    serve,
)
from server.auth import TOKENS_ENV
from server.clock import CLOCK_FILE_ENV
from server.limits import load_limits
from server.logging import configure_logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def _grace(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m server", description="Runs the Partita gRPC server.")
    parser.add_argument(
        "--listen",
        type=_listen,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on; port 0 picks a free one (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        metavar="URL",
        help=f"sqlite:///path.db or postgresql://user@host:port/db (default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="refuse to start (exit 2) instead of upgrading a database whose schema is behind",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="minimum level of the JSON log lines on stderr (default INFO)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_grace,
        default=DEFAULT_SHUTDOWN_GRACE,
        metavar="SECONDS",
        help=f"how long in-flight calls may finish after SIGTERM (default {DEFAULT_SHUTDOWN_GRACE:g})",
    )
    parser.add_argument(
        "--metrics-listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (no authentication; off by default)",
    )
    security = parser.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"TOML or JSON file of principals, roles and sha256 token hashes, re-read when it "
        f"changes; {TOKENS_ENV}=principal:role:token,... adds more",
    )
    security.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    security.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    security.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen with no tokens configured (every caller is an anonymous admin)",
    )
    security.add_argument("--limits", metavar="FILE", help="TOML file of limits (NAME = VALUE)")
    security.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set one limit, e.g. max_payload_bytes=1048576 or rate_limit_per_second=100 (repeatable)",
    )
    # Test-only: the server's clock reads the instant in this file (server/clock.py FileClock).
    parser.add_argument("--clock-file", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        limits = load_limits(args.limits, args.limit)
    except ValueError as error:
        parser.error(str(error))
    return Settings(
        listen=args.listen,
        database_url=args.database,
        migrate=args.migrate,
        log_level=args.log_level,
        shutdown_grace=args.shutdown_grace,
        token_file=args.token_file,
        tokens_env=os.environ.get(TOKENS_ENV) or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
        limits=limits,
        clock_file=args.clock_file or os.environ.get(CLOCK_FILE_ENV) or None,
        metrics_listen=args.metrics_listen,
    )


# The collector's first generation runs every this many container allocations (CPython's
# default is 700). A ranged run's transaction allocates tuples by the thousand, all short-lived
# and acyclic: at 700 the collector ran about every 0.3 ms and took 8 % of a ranged backfill's
# time (measured with gc.callbacks); at this threshold it takes under 1 %.
GC_FIRST_GENERATION = 50_000


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging(settings.log_level)
    # What startup built lives as long as the process: kept out of every later collection.
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION, *gc.get_threshold()[1:])
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        print(error.message, file=sys.stderr, flush=True)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
