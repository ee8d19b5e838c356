"""Static partitions: a fixed, ordered list of keys (definition order = list order)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from server.domain.errors import InvalidArgument, ViolationCollector
from server.domain.partitions.keys import key_syntax_problem, quote_key


@dataclass(frozen=True)
class StaticSpec:
    """An immutable, hashable static definition. Position of a key = its index in the list.

    Methods take `now` only to share the time-window signatures; it is ignored.
    """

    key_list: tuple[str, ...]
    _index: Mapping[str, int] = field(compare=False, repr=False)

    @classmethod
    def create(cls, keys: Sequence[str], *, field_prefix: str = "static") -> StaticSpec:
        """Validate the keys (each syntactically valid, no duplicates, at least one)."""
        prefix = f"{field_prefix}.keys" if field_prefix else "keys"
        violations = ViolationCollector()
        if not keys:
            violations.add(prefix, "at least one key is required")
        index: dict[str, int] = {}
        for i, key in enumerate(keys):
            problem = key_syntax_problem(key)
            if problem is not None:
                violations.add(f"{prefix}[{i}]", f"partition key {quote_key(key)} {problem}")
            elif key in index:
                violations.add(f"{prefix}[{i}]", f"duplicate of {prefix}[{index[key]}] ({quote_key(key)})")
            else:
                index[key] = i
        violations.raise_if_any("invalid static partitions definition")
        return cls(key_list=tuple(keys), _index=index)

    def count(self, now: datetime | None = None) -> int:
        return len(self.key_list)

    def keys_page(self, offset: int, limit: int, now: datetime | None = None) -> list[str]:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        return list(self.key_list[offset : offset + limit])

    def keys(self, now: datetime | None = None) -> Iterator[str]:
        return iter(self.key_list)

    def validate_key(self, key: str, now: datetime | None = None, field: str = "partition_key") -> int:
        """Returns the key's position (its index); raises InvalidArgument naming `field`."""
        position = self._index.get(key)
        if position is not None:
            return position
        problem = key_syntax_problem(key)
        if problem is not None:
            raise InvalidArgument.for_field(field, f"partition key {quote_key(key)} {problem}")
        raise InvalidArgument.for_field(field, self._not_a_key(key))

    def _not_a_key(self, key: str) -> str:
        listed = self.key_list
        if len(listed) <= 10:
            hint = "expected one of " + ", ".join(repr(k) for k in listed)
        else:
            close = difflib.get_close_matches(key, listed, n=3) if len(listed) <= 10_000 else []
            hint = (
                "did you mean " + " or ".join(repr(k) for k in close) + "?"
                if close
                else f"expected one of {len(listed)} keys such as "
                + ", ".join(repr(k) for k in islice(listed, 3))
            )
        return f"{quote_key(key)} is not one of the static partition keys; {hint}"

    def validate_keys(
        self, keys: Sequence[str], now: datetime | None = None, field: str = "partition_keys"
    ) -> list[int]:
        violations = ViolationCollector()
        positions: list[int] = []
        for i, key in enumerate(keys):
            try:
                positions.append(self.validate_key(key, now, f"{field}[{i}]"))
            except InvalidArgument as exc:
                violations.extend(exc)
        violations.raise_if_any("invalid partition keys")
        return positions

    def position(self, key: str, field: str = "partition_key") -> int:
        return self.validate_key(key, None, field)

    def index_of(self, key: str, field: str = "partition_key") -> int:
        return self.validate_key(key, None, field)

    def key_for_position(self, position: int) -> str:
        if not 0 <= position < len(self.key_list):
            raise ValueError(f"{position} is not a position of this static definition")
        return self.key_list[position]

    def index_range(
        self,
        start_key: str,
        end_key: str,
        now: datetime | None = None,
        *,
        start_field: str = "start_key",
        end_field: str = "end_key",
    ) -> range:
        violations = ViolationCollector()
        indices: list[int] = []
        for key, name in ((start_key, start_field), (end_key, end_field)):
            try:
                indices.append(self.validate_key(key, now, name))
            except InvalidArgument as exc:
                violations.extend(exc)
        violations.raise_if_any("invalid key range")
        lo, hi = indices
        if hi < lo:
            raise InvalidArgument.for_field(
                end_field, f"{quote_key(end_key)} comes before the start key {quote_key(start_key)}"
            )
        return range(lo, hi + 1)

    def keys_in_range(
        self,
        start_key: str,
        end_key: str,
        now: datetime | None = None,
        *,
        start_field: str = "start_key",
        end_field: str = "end_key",
    ) -> list[str]:
        span = self.index_range(start_key, end_key, now, start_field=start_field, end_field=end_field)
        return list(self.key_list[span.start : span.stop])
