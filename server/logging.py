"""Structured logging: one JSON object per line on stderr.

Every line carries `time`, `level`, `logger` and `message`, plus whatever the caller passed
as `extra` (run_id, workflow_slug, partition_key, attempt, state, trigger, method, code,
duration_ms, ...). Use `log_event(logger, "run claimed", run_id=..., attempt=...)` rather than
formatting facts into the message, so they stay machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: the standard fields first, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Sends every log record of the process, as JSON lines, to `stream` (default stderr)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # grpc's own Python loggers are chatty at DEBUG; keep them at INFO unless asked for more.
    logging.getLogger("grpc").setLevel(max(root.level, logging.INFO))
    logging.getLogger("peewee").setLevel(max(root.level, logging.INFO))


def log_event(
    logger: logging.Logger,
    message: str,
    *,
    level: int = logging.INFO,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Logs `message` with `fields` as structured extras.

    A field whose name clashes with a LogRecord attribute (`name`, `args`, ...) is kept under
    `field_<name>` instead of raising.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {(f"field_{key}" if key in _RECORD_ATTRIBUTES else key): value for key, value in fields.items()}
    logger.log(level, message, extra=extra, exc_info=exc_info, stacklevel=2)
