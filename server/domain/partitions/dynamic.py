"""Dynamic partitions: the rules of an append-only key registry (the registry lives in storage).

`key_pattern` (Python `re` syntax) must match the *whole* key (`fullmatch`). When set it is
the shape every key must have, whether seeded, added by AddDynamicPartitions or registered on
first use by EnqueueRun; only a set pattern enables first use. `max_keys` caps live keys
(0 = no cap).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.domain.errors import InvalidArgument, ResourceExhausted, ViolationCollector
from server.domain.partitions.keys import key_syntax_problem, quote_key

MAX_PATTERN_LENGTH = 1024


@dataclass(frozen=True)
class DynamicSpec:
    key_pattern: str
    max_keys: int
    initial_keys: tuple[str, ...]
    _regex: re.Pattern[str] | None = field(compare=False, repr=False)

    @classmethod
    def create(
        cls,
        key_pattern: str = "",
        max_keys: int = 0,
        initial_keys: Sequence[str] = (),
        *,
        field_prefix: str = "dynamic",
    ) -> DynamicSpec:
        def path(name: str) -> str:
            return f"{field_prefix}.{name}" if field_prefix else name

        violations = ViolationCollector()
        regex: re.Pattern[str] | None = None
        if key_pattern:
            if len(key_pattern) > MAX_PATTERN_LENGTH:
                violations.add(path("key_pattern"), f"must be at most {MAX_PATTERN_LENGTH} characters")
            else:
                try:
                    regex = re.compile(key_pattern)
                except re.error as exc:
                    violations.add(
                        path("key_pattern"), f"is not a valid regular expression (Python re): {exc}"
                    )
        if max_keys < 0:
            violations.add(path("max_keys"), f"must be >= 0 (0 = no limit); got {max_keys}")
        elif max_keys and len(initial_keys) > max_keys:
            violations.add(
                path("initial_keys"), f"has {len(initial_keys)} keys, more than max_keys ({max_keys})"
            )
        seen: dict[str, int] = {}
        for i, key in enumerate(initial_keys):
            key_path = path(f"initial_keys[{i}]")
            problem = key_syntax_problem(key)
            if problem is not None:
                violations.add(key_path, f"partition key {quote_key(key)} {problem}")
            elif key in seen:
                violations.add(
                    key_path, f"duplicate of {path(f'initial_keys[{seen[key]}]')} ({quote_key(key)})"
                )
            else:
                seen[key] = i
                if regex is not None and regex.fullmatch(key) is None:
                    violations.add(key_path, f"{quote_key(key)} does not match key_pattern {key_pattern!r}")
        violations.raise_if_any("invalid dynamic partitions definition")
        return cls(key_pattern=key_pattern, max_keys=max_keys, initial_keys=tuple(initial_keys), _regex=regex)

    def matches_pattern(self, key: str) -> bool:
        """True when no pattern is set or the pattern matches the whole key."""
        return self._regex is None or self._regex.fullmatch(key) is not None

    def accepts_on_first_use(self, key: str) -> bool:
        """Whether EnqueueRun may register `key` on first use: a pattern is set and matches it.

        (Syntax is checked too, so a True answer means the key can be stored as is; the cap and
        tombstones are storage's to check.)
        """
        return (
            self._regex is not None
            and key_syntax_problem(key) is None
            and self._regex.fullmatch(key) is not None
        )

    def validate_new_key(self, key: str, field: str = "partition_key") -> None:
        """Raise InvalidArgument unless `key` may be added: valid syntax and matching the pattern."""
        problem = key_syntax_problem(key)
        if problem is not None:
            raise InvalidArgument.for_field(field, f"partition key {quote_key(key)} {problem}")
        if not self.matches_pattern(key):
            raise InvalidArgument.for_field(
                field, f"{quote_key(key)} does not match the key_pattern {self.key_pattern!r}"
            )

    def validate_new_keys(self, keys: Sequence[str], field: str = "partition_keys") -> None:
        """All-or-nothing check of a batch: every bad key (and duplicates) as ``field[i]``."""
        violations = ViolationCollector()
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            try:
                self.validate_new_key(key, f"{field}[{i}]")
            except InvalidArgument as exc:
                violations.extend(exc)
                continue
            if key in seen:
                violations.add(f"{field}[{i}]", f"duplicate of {field}[{seen[key]}] ({quote_key(key)})")
            seen[key] = i
        violations.raise_if_any("invalid partition keys")

    def check_capacity(self, live_keys: int, adding: int, asset_id: str = "") -> None:
        """Raise ResourceExhausted when `adding` new keys would pass max_keys live keys."""
        if self.max_keys and live_keys + adding > self.max_keys:
            raise ResourceExhausted(
                f"dynamic asset {asset_id!r} is capped at max_keys={self.max_keys}: {live_keys} live, "
                f"{adding} more requested; nothing was added",
                reason="DYNAMIC_KEY_LIMIT",
                metadata={"asset_id": asset_id, "max_keys": str(self.max_keys), "live_keys": str(live_keys)},
            )
