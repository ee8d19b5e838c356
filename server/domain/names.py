"""Rules for the names clients choose: workflow slugs and asset ids."""

from __future__ import annotations

import re

from server.domain.errors import FieldViolation

MAX_NAME_LENGTH = 128
_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ASSET_ID = re.compile(r"[a-z0-9][a-z0-9._/-]*")


def _check(value: str, field: str, pattern: re.Pattern[str], allowed: str) -> FieldViolation | None:
    if not value:
        return FieldViolation(field, "is required")
    if len(value) > MAX_NAME_LENGTH:
        return FieldViolation(
            field, f"is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    if not pattern.fullmatch(value):
        return FieldViolation(
            field, f"{value[:64]!r} must be {allowed}, starting with a lowercase letter or digit"
        )
    return None


def slug_violation(value: str, field: str) -> FieldViolation | None:
    """Why `value` is not a valid workflow slug, or None."""
    return _check(value, field, _SLUG, "characters of [a-z0-9._-]")


def asset_id_violation(value: str, field: str) -> FieldViolation | None:
    """Why `value` is not a valid asset id (slug characters plus `/` for namespaces), or None."""
    violation = _check(value, field, _ASSET_ID, "characters of [a-z0-9._/-]")
    if violation is None and ("//" in value or value.endswith("/")):
        return FieldViolation(field, f"{value[:64]!r} has an empty namespace segment")
    return violation
