"""Who may call what: roles, the RPC→role table, principals, and the tokens that name them.

- `METHOD_PERMISSIONS` maps every full method name of every partita.v1 service to the
  permission it needs (a test asserts the table is total); `ADMIN_WHEN` raises a method to
  admin for some requests (RegisterWorkflow with `allow_partitioning_change`). Health and
  reflection (`OPEN_SERVICES`) need nothing.
- Roles grant permissions: reader → READ; operator → READ + OPERATE; worker → WORK (optionally
  limited to named workflows); admin → everything.
- `TokenRegistry` holds the configured principals: bearer tokens from a token file (TOML or
  JSON, tokens stored as sha256 hex, never in plaintext) and from `PARTITA_TOKENS`
  (`principal:role:token[:workflow|workflow...]`, comma-separated), plus mTLS certificate
  subjects from the file. The file is re-read when it changes (checked at most once a second,
  on use). Tokens are compared as hashes with `hmac.compare_digest`.
- With no tokens configured every caller is `ANONYMOUS`, an admin-equivalent principal (the
  server then listens on loopback only unless started with `--insecure`).
- The interceptor (server/api/auth_interceptor.py) puts the caller in `CURRENT_PRINCIPAL`
  for the handler (`trigger.principal`) and the log lines of the call.

`python -m server.auth hash-token --principal NAME --role ROLE` prints a new token and the
token-file entry that admits it (see docs/security.md).
"""

from __future__ import annotations

import argparse
import contextvars
import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.domain.names import slug_violation
from server.logging import log_event

logger = logging.getLogger("partita.auth")

TOKENS_ENV = "PARTITA_TOKENS"
TOKEN_RELOAD_INTERVAL = 1.0
MAX_PRINCIPAL_LENGTH = 255
HEALTH_SERVICE = "grpc.health.v1.Health"
OPEN_SERVICES = frozenset(
    {
        HEALTH_SERVICE,
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class AuthConfigError(ValueError):
    """A token file or PARTITA_TOKENS value that cannot be used."""


class Permission(enum.Enum):
    READ = "read"
    OPERATE = "operate"
    WORK = "work"
    ADMIN = "admin"


class Role(enum.Enum):
    READER = "reader"
    OPERATOR = "operator"
    WORKER = "worker"
    ADMIN = "admin"


ROLE_GRANTS: Mapping[Role, frozenset[Permission]] = {
    Role.READER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.WORKER: frozenset({Permission.WORK}),
    Role.ADMIN: frozenset(Permission),
}

# The least role that holds each permission (for messages).
LEAST_ROLE: Mapping[Permission, Role] = {
    Permission.READ: Role.READER,
    Permission.OPERATE: Role.OPERATOR,
    Permission.WORK: Role.WORKER,
    Permission.ADMIN: Role.ADMIN,
}


def _service(name: str, methods: Mapping[str, Permission]) -> dict[str, Permission]:
    return {f"/partita.v1.{name}/{method}": permission for method, permission in methods.items()}


_R, _O, _W, _A = Permission.READ, Permission.OPERATE, Permission.WORK, Permission.ADMIN

# The one RPC → permission table. Every method of every partita.v1 service must be here
# (tests/api/test_auth.py checks against the descriptors); a method missing from it is denied.
METHOD_PERMISSIONS: Mapping[str, Permission] = {
    **_service(
        "WorkflowService",
        {"RegisterWorkflow": _O, "GetWorkflow": _R, "ListWorkflows": _R, "ListScheduleTicks": _R},
    ),
    **_service(
        "AssetService",
        {
            "GetAsset": _R,
            "ListAssets": _R,
            "ListPartitionKeys": _R,
            "AddDynamicPartitions": _O,
            "DeleteDynamicPartitions": _A,
            "ListPartitions": _R,
            "GetPartition": _R,
            "GetUpstreamPartitions": _R,
            "GetDownstreamPartitions": _R,
            "GetLatestMaterialization": _R,
            "ListMaterializations": _R,
            "ReportMaterializations": _O,
        },
    ),
    **_service(
        "RunService",
        {
            "EnqueueRun": _O,
            "GetRun": _R,
            "ListRuns": _R,
            "CancelRun": _O,
            "RetryRun": _O,
            "WatchRuns": _R,
        },
    ),
    **_service(
        "WorkerService",
        {"ClaimRun": _W, "Heartbeat": _W, "CompleteRun": _W, "FailRun": _W},
    ),
    **_service(
        "BackfillService",
        {
            "CreateBackfill": _O,
            "GetBackfill": _R,
            "ListBackfills": _R,
            "ListBackfillPartitions": _R,
            "CancelBackfill": _O,
            "RetryBackfill": _O,
            "WatchBackfill": _R,
        },
    ),
}

# Requests that need admin although their method needs less.
ADMIN_WHEN: Mapping[str, Callable[[Any], bool]] = {
    "/partita.v1.WorkflowService/RegisterWorkflow": lambda request: bool(
        getattr(request, "allow_partitioning_change", False)
    ),
}

# Worker methods that act on one run (`run_id`): a worker limited to workflows may only
# touch runs of those workflows.
RUN_SCOPED_WORKER_METHODS = frozenset(
    f"/partita.v1.WorkerService/{name}" for name in ("Heartbeat", "CompleteRun", "FailRun")
)
CLAIM_METHOD = "/partita.v1.WorkerService/ClaimRun"


def is_open(method: str) -> bool:
    """Health and reflection need no credentials."""
    service = method.lstrip("/").partition("/")[0]
    return service in OPEN_SERVICES


def required_permission(method: str, request: Any) -> Permission | None:
    """What calling `method` with `request` needs; None for a method not in the table."""
    permission = METHOD_PERMISSIONS.get(method)
    if permission is None:
        return None
    escalate = ADMIN_WHEN.get(method)
    if escalate is not None and escalate(request):
        return Permission.ADMIN
    return permission


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `workflows` limits a worker to those workflows (None: all)."""

    name: str
    role: Role
    workflows: frozenset[str] | None = None
    source: str = "token"  # token | certificate | anonymous

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_GRANTS[self.role]


ANONYMOUS = Principal("anonymous", Role.ADMIN, source="anonymous")

CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "partita_principal", default=None
)


def current_principal_name() -> str:
    """The name of the principal of the RPC being handled ('' outside an RPC)."""
    principal = CURRENT_PRINCIPAL.get()
    return principal.name if principal is not None else ""


_record_factory_installed = False


def install_principal_logging() -> None:
    """Adds `principal` to every log record made while an RPC's principal is known."""
    global _record_factory_installed
    if _record_factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        principal = CURRENT_PRINCIPAL.get()
        if principal is not None and not hasattr(record, "principal"):
            record.principal = principal.name
        return record

    logging.setLogRecordFactory(factory)
    _record_factory_installed = True


# --- tokens ------------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """The sha256 hex digest a token file stores for `token`."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenEntry:
    """One configured principal: admitted by a token (its sha256) or a certificate subject."""

    principal: Principal
    token_sha256: str = ""
    subject: str = ""


_ENTRY_KEYS = frozenset({"principal", "name", "role", "workflows", "token_sha256", "subject"})


def _check_principal_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_PRINCIPAL_LENGTH:
        raise AuthConfigError(f"{where}: principal must be a string of 1-{MAX_PRINCIPAL_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name) or name != name.strip():
        raise AuthConfigError(f"{where}: principal {name!r} has control characters or surrounding spaces")
    return name


def _role(value: object, where: str) -> Role:
    try:
        return Role(str(value).lower())
    except ValueError:
        roles = ", ".join(role.value for role in Role)
        raise AuthConfigError(f"{where}: role {value!r} is not one of {roles}") from None


def _workflows(value: object, role: Role, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if role is not Role.WORKER:
        raise AuthConfigError(f"{where}: only a worker can be limited to workflows")
    if not isinstance(value, list) or not value or not all(isinstance(slug, str) for slug in value):
        raise AuthConfigError(f"{where}: workflows must be a non-empty list of workflow slugs")
    for slug in value:
        if violation := slug_violation(slug, "workflows"):
            raise AuthConfigError(f"{where}: workflow {slug!r}: {violation.description}")
    return frozenset(value)


def parse_entry(raw: object, where: str) -> TokenEntry:
    """One entry of a token file (a table / object)."""
    if not isinstance(raw, dict):
        raise AuthConfigError(f"{where}: expected a table with principal, role and token_sha256 or subject")
    if "token" in raw:
        raise AuthConfigError(
            f"{where}: plaintext `token` is not accepted; store token_sha256 "
            "(python -m server.auth hash-token prints it)"
        )
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise AuthConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    name = _check_principal_name(raw.get("principal", raw.get("name")), where)
    role = _role(raw.get("role"), where)
    workflows = _workflows(raw.get("workflows"), role, where)
    digest = raw.get("token_sha256", "")
    subject = raw.get("subject", "")
    if not isinstance(digest, str) or not isinstance(subject, str) or bool(digest) == bool(subject):
        raise AuthConfigError(f"{where}: give exactly one of token_sha256 and subject")
    digest = digest.lower()
    if digest and (len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest)):
        raise AuthConfigError(f"{where}: token_sha256 must be 64 hex digits (a sha256 digest)")
    source = "token" if digest else "certificate"
    return TokenEntry(Principal(name, role, workflows, source), token_sha256=digest, subject=subject.strip())


def parse_token_file(text: str, name: str = "token file") -> list[TokenEntry]:
    """Entries of a token file: TOML (`[[tokens]]` tables) or JSON (`{"tokens": [...]}` or a list)."""
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")) and not stripped.startswith("[["):
            document: Any = json.loads(text)
        else:
            document = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise AuthConfigError(f"{name}: cannot parse: {error}") from error
    raw_entries = document.get("tokens", []) if isinstance(document, dict) else document
    if not isinstance(raw_entries, list):
        raise AuthConfigError(f"{name}: `tokens` must be a list of tables")
    entries = [parse_entry(raw, f"{name}: tokens[{index}]") for index, raw in enumerate(raw_entries)]
    _check_unique(entries, name)
    return entries


def parse_env_tokens(value: str) -> list[TokenEntry]:
    """`principal:role:token[:workflow|workflow...]`, comma-separated (the token in plaintext)."""
    entries = []
    for index, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        where = f"{TOKENS_ENV}[{index}]"
        fields = item.split(":")
        if len(fields) not in (3, 4):
            raise AuthConfigError(f"{where}: expected principal:role:token[:workflow|workflow...]")
        name, role_text, token = fields[0], fields[1], fields[2]
        if len(token) < 16:
            raise AuthConfigError(f"{where}: the token must be at least 16 characters")
        role = _role(role_text, where)
        workflows = _workflows(fields[3].split("|") if len(fields) == 4 else None, role, where)
        principal = Principal(_check_principal_name(name, where), role, workflows)
        entries.append(TokenEntry(principal, token_sha256=hash_token(token)))
    _check_unique(entries, TOKENS_ENV)
    return entries


def _check_unique(entries: Sequence[TokenEntry], name: str) -> None:
    digests = [entry.token_sha256 for entry in entries if entry.token_sha256]
    if len(set(digests)) != len(digests):
        raise AuthConfigError(f"{name}: the same token is listed twice")
    subjects = [entry.subject for entry in entries if entry.subject]
    if len(set(subjects)) != len(subjects):
        raise AuthConfigError(f"{name}: the same subject is listed twice")


def _normalize_subject(text: str) -> str:
    return ",".join(part.strip() for part in text.split(","))


def _subject_matches(pattern: str, subject: str, common_name: str) -> bool:
    """`CN=name` matches the certificate's common name; anything else the whole subject."""
    if pattern.upper().startswith("CN=") and "," not in pattern:
        return hmac.compare_digest(pattern[3:].strip().encode(), common_name.encode())
    return hmac.compare_digest(_normalize_subject(pattern).encode(), _normalize_subject(subject).encode())


class TokenRegistry:
    """The configured principals; re-reads the token file when it changes.

    `enabled` is true once a token file or PARTITA_TOKENS is given (even when the file is
    currently empty: then every call is UNAUTHENTICATED). A file that becomes unreadable or
    invalid keeps the last good entries (and logs an error).
    """

    def __init__(
        self,
        env_entries: Sequence[TokenEntry] = (),
        path: str | os.PathLike[str] | None = None,
        *,
        reload_interval: float = TOKEN_RELOAD_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._env = list(env_entries)
        self._file: list[TokenEntry] = []
        self._file_state: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._interval = reload_interval
        self._monotonic = monotonic
        if self.path is not None:
            self._file_state, self._file = self._read_file(self.path)
            self._checked = monotonic()
        self._entries = self._merge()

    @classmethod
    def from_settings(cls, token_file: str | None, env_value: str | None) -> TokenRegistry:
        return cls(parse_env_tokens(env_value) if env_value else (), token_file)

    @property
    def enabled(self) -> bool:
        return self.path is not None or bool(self._env)

    @property
    def entries(self) -> list[TokenEntry]:
        self._maybe_reload()
        return self._entries

    def _merge(self) -> list[TokenEntry]:
        merged = [*self._env, *self._file]
        _check_unique(merged, "tokens")
        return merged

    @staticmethod
    def _read_file(path: Path) -> tuple[tuple[int, int, int], list[TokenEntry]]:
        try:
            stat = path.stat()
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise AuthConfigError(f"cannot read token file {path}: {error.strerror or error}") from error
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino), parse_token_file(text, str(path))

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = self._monotonic()
        if now - self._checked < self._interval:
            return
        self._checked = now
        try:
            stat = self.path.stat()
        except OSError as error:
            log_event(
                logger,
                "token file unreadable; keeping the last good tokens",
                level=logging.ERROR,
                path=str(self.path),
                error=str(error),
            )
            return
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._file_state:
            return
        try:
            state, entries = self._read_file(self.path)
            self._file = entries
            self._entries = self._merge()
            self._file_state = state
        except AuthConfigError as error:
            log_event(
                logger,
                "token file invalid; keeping the last good tokens",
                level=logging.ERROR,
                path=str(self.path),
                error=str(error),
            )
            self._file_state = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            return
        log_event(logger, "token file reloaded", path=str(self.path), entries=len(entries))

    def authenticate_token(self, token: str) -> Principal | None:
        """The principal whose token hashes like `token`, comparing every entry in constant time."""
        digest = hash_token(token)
        found: Principal | None = None
        for entry in self.entries:
            if entry.token_sha256 and hmac.compare_digest(digest, entry.token_sha256):
                found = entry.principal
        return found

    def authenticate_subject(self, subject: str, common_name: str) -> Principal | None:
        """The principal configured for a verified client certificate's subject."""
        for entry in self.entries:
            if entry.subject and _subject_matches(entry.subject, subject, common_name):
                return entry.principal
        return None


# --- python -m server.auth ---------------------------------------------------------------------


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def token_file_entry(
    principal: str, role: Role, digest: str = "", subject: str = "", workflows: Sequence[str] = ()
) -> str:
    """A `[[tokens]]` table for a token file."""
    lines = ["[[tokens]]", f"principal = {_toml_string(principal)}", f"role = {_toml_string(role.value)}"]
    if workflows:
        lines.append(f"workflows = [{', '.join(_toml_string(slug) for slug in workflows)}]")
    if digest:
        lines.append(f"token_sha256 = {_toml_string(digest)}")
    if subject:
        lines.append(f"subject = {_toml_string(subject)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.auth", description="Partita token helpers.")
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser(
        "hash-token",
        help="print a token-file entry; a new random token unless --stdin gives one",
    )
    hashing.add_argument("--principal", required=True, help="the name recorded as trigger.principal")
    hashing.add_argument("--role", required=True, choices=[role.value for role in Role])
    hashing.add_argument(
        "--workflow", action="append", default=[], metavar="SLUG", help="limit a worker to this workflow"
    )
    hashing.add_argument(
        "--stdin", action="store_true", help="read the token from stdin instead of making one"
    )
    check = commands.add_parser("check", help="validate a token file")
    check.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            entries = parse_token_file(Path(args.path).read_text(encoding="utf-8"), args.path)
            print(f"{args.path}: {len(entries)} entries OK")
            return 0
        role = Role(args.role)
        name = _check_principal_name(args.principal, "--principal")
        _workflows(args.workflow or None, role, "--workflow")
    except (AuthConfigError, OSError) as error:
        print(f"partita: {error}", file=sys.stderr)
        return 2
    if args.stdin:
        token = sys.stdin.readline().strip()
        if len(token) < 16:
            print("partita: the token must be at least 16 characters", file=sys.stderr)
            return 2
        print(token_file_entry(name, role, hash_token(token), workflows=args.workflow), end="")
        return 0
    token = new_token()
    print(f"# bearer token for {name} (hand it to the client; only its hash is stored):")
    print(f"# {token}")
    print(token_file_entry(name, role, hash_token(token), workflows=args.workflow), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
