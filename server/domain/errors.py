"""Domain errors: what went wrong, in the domain's words.

The API layer maps each class to one gRPC status code in a single place
(`server/api/errors.py`); the domain never imports gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is a dotted path such as `workflow.slug`."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error the domain and storage raise on purpose.

    `reason` is an UPPER_SNAKE_CASE identifier carried in google.rpc.ErrorInfo;
    `metadata` holds machine-readable facts (a conflicting run id, a limit).
    """

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[FieldViolation, ...] = tuple(violations)


class InvalidArgument(DomainError):
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def for_field(cls, field_path: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls(
            f"{field_path}: {description}",
            reason=reason,
            violations=[FieldViolation(field_path, description)],
        )


class NotFound(DomainError):
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    default_reason = "RESOURCE_EXHAUSTED"


class OutOfRange(DomainError):
    default_reason = "OUT_OF_RANGE"


class Unimplemented(DomainError):
    default_reason = "UNIMPLEMENTED"


class Unavailable(DomainError):
    default_reason = "UNAVAILABLE"


@dataclass
class ViolationCollector:
    """Gathers every field violation of a request so one error names them all."""

    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.violations.append(FieldViolation(field_path, description))

    def extend(self, error: InvalidArgument) -> None:
        self.violations.extend(error.violations)

    def raise_if_any(self, message: str = "invalid request") -> None:
        if self.violations:
            first = self.violations[0]
            detail = f"{first.field}: {first.description}"
            if len(self.violations) > 1:
                detail += f" (and {len(self.violations) - 1} more)"
            raise InvalidArgument(f"{message}: {detail}", violations=self.violations)
