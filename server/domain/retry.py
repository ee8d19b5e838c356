"""Retry policies: how many attempts a run gets and how long it waits between them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from server.domain.errors import FieldViolation

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_BACKOFF = timedelta(seconds=10)
DEFAULT_BACKOFF_COEFFICIENT = 2.0
DEFAULT_MAXIMUM_BACKOFF = timedelta(minutes=5)
MAX_ATTEMPTS_LIMIT = 100


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: timedelta = DEFAULT_INITIAL_BACKOFF
    backoff_coefficient: float = DEFAULT_BACKOFF_COEFFICIENT
    maximum_backoff: timedelta = DEFAULT_MAXIMUM_BACKOFF

    def backoff_after(self, attempt: int) -> timedelta:
        """Delay before the attempt that follows failed attempt number `attempt` (from 1)."""
        delay = self.initial_backoff.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        return min(timedelta(seconds=delay), self.maximum_backoff)

    def allows_another_attempt(self, attempt: int) -> bool:
        return attempt < self.max_attempts


def retry_policy_violations(
    field: str,
    max_attempts: int,
    initial_backoff: timedelta | None,
    backoff_coefficient: float,
    maximum_backoff: timedelta | None,
) -> list[FieldViolation]:
    violations = []
    if not 0 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        violations.append(
            FieldViolation(f"{field}.max_attempts", f"must be between 0 and {MAX_ATTEMPTS_LIMIT}")
        )
    if initial_backoff is not None and initial_backoff < timedelta(0):
        violations.append(FieldViolation(f"{field}.initial_backoff", "must not be negative"))
    if maximum_backoff is not None and maximum_backoff < timedelta(0):
        violations.append(FieldViolation(f"{field}.maximum_backoff", "must not be negative"))
    if backoff_coefficient != 0 and not 1.0 <= backoff_coefficient <= 100.0:
        violations.append(
            FieldViolation(f"{field}.backoff_coefficient", "must be between 1 and 100 (0 = default 2)")
        )
    return violations


def resolve_retry_policy(
    max_attempts: int,
    initial_backoff: timedelta | None,
    backoff_coefficient: float,
    maximum_backoff: timedelta | None,
) -> RetryPolicy:
    """A policy with the defaults filled in for unset (zero) fields."""
    return RetryPolicy(
        max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
        initial_backoff=initial_backoff if initial_backoff is not None else DEFAULT_INITIAL_BACKOFF,
        backoff_coefficient=backoff_coefficient or DEFAULT_BACKOFF_COEFFICIENT,
        maximum_backoff=maximum_backoff if maximum_backoff is not None else DEFAULT_MAXIMUM_BACKOFF,
    )
