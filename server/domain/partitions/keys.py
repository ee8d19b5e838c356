"""Partition key syntax shared by every kind of partitioning (contract: "Keys and names").

A partition key is 1-255 characters (code points) with no control characters, no unpaired
surrogates, no leading or trailing whitespace and no ``...`` substring. The empty string is
not a key: it means "no key" (an unpartitioned slice), so callers that allow "no key" must test
for ``""`` before calling :func:`check_key_syntax`.
"""

from __future__ import annotations

import unicodedata

from server.domain.errors import InvalidArgument

MAX_KEY_LENGTH = 255

# Categories rejected anywhere in a key: Cc (C0/C1 controls, DEL), Cs (unpaired surrogates that
# a Python str can carry after a lossy decode), Zl/Zp (line and paragraph separators).
_REJECTED_CATEGORIES = {
    "Cc": "control character",
    "Cs": "unpaired surrogate",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def key_syntax_problem(key: str) -> str | None:
    """Return why `key` is not a syntactically valid partition key, or None when it is."""
    if not key:
        return "must not be empty (1-255 characters)"
    if len(key) > MAX_KEY_LENGTH:
        return f"must be at most {MAX_KEY_LENGTH} characters (got {len(key)})"
    # Fast path: printable ASCII has no rejected categories.
    if not key.isascii() or not key.isprintable():
        for index, char in enumerate(key):
            category = unicodedata.category(char)
            label = _REJECTED_CATEGORIES.get(category)
            if label is not None:
                return f"must not contain a {label} (U+{ord(char):04X} at index {index})"
    if key[0].isspace() or key[-1].isspace():
        return "must not start or end with whitespace"
    if "..." in key:
        return "must not contain '...'"
    return None


def check_key_syntax(key: str, field: str = "partition_key") -> None:
    """Raise InvalidArgument naming `field` unless `key` is a syntactically valid partition key."""
    problem = key_syntax_problem(key)
    if problem is not None:
        raise InvalidArgument.for_field(field, f"partition key {_quote(key)} {problem}")


def _quote(key: str, limit: int = 60) -> str:
    """A short, printable rendering of a (possibly hostile) key for error messages."""
    shown = key if len(key) <= limit else key[:limit] + "…"
    return ascii(shown) if not shown.isprintable() else repr(shown)


quote_key = _quote
