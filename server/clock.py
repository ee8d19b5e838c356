"""Where every "now" comes from, so tests can set time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


# Test-only: `python -m server --clock-file PATH` (or this variable) makes the server's "now" the
# instant written in PATH, so tests running the server as a subprocess can move its time.
CLOCK_FILE_ENV = "PARTITA_TEST_CLOCK_FILE"


class FileClock:
    """Test-only: now() is the ISO 8601 instant in a file, re-read on every call (write it with
    a rename to change it atomically). An unreadable or unparseable file keeps the last instant."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._last = self._read()
        if self._last is None:
            raise ValueError(f"clock file {path!r} does not hold an ISO 8601 instant with an offset")

    def _read(self) -> datetime | None:
        try:
            with open(self.path, encoding="utf-8") as file:
                moment = datetime.fromisoformat(file.read().strip())
        except (OSError, ValueError):
            return None
        if moment.tzinfo is None or moment.utcoffset() is None:
            return None
        return moment.astimezone(UTC)

    def now(self) -> datetime:
        moment = self._read()
        if moment is not None:
            self._last = moment
        assert self._last is not None
        return self._last
