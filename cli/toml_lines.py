"""Where a key of a TOML document is: line numbers that tomllib does not give.

`TomlLines(text).locate(("workflows", "sales", "assets", "sales/daily", "partitions"))` is the
1-based line of that key (or of the nearest enclosing key, table header or array element
found). It understands table headers (`[a."b.c"]`), arrays of tables (`[[a.b]]`, indexed
from 0), dotted keys, inline tables and arrays, including ones spanning several lines, and
every string form — enough to point an error at the line a person wrote, not a validator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found: dict[Path, int] = {}
        self.array_counts: dict[Path, int] = {}

    # --- low level ---
    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self.pos < len(self.text):
                if self.text[self.pos] == "\n":
                    self.line += 1
                self.pos += 1

    def skip_space(self, newlines: bool = False) -> None:
        while True:
            char = self.peek()
            if char in (" ", "\t", "\r") or (newlines and char == "\n"):
                self.advance()
            elif char == "#":
                while self.peek() not in ("", "\n"):
                    self.advance()
            else:
                return

    def skip_line(self) -> None:
        while self.peek() not in ("", "\n"):
            self.advance()
        self.advance()

    def string(self) -> str:
        """Reads a string of any of TOML's four forms at the cursor; returns its raw content."""
        quote = self.peek()
        triple = self.text.startswith(quote * 3, self.pos)
        if triple:
            self.advance(3)
            start = self.pos
            while self.pos < len(self.text) and not self.text.startswith(quote * 3, self.pos):
                if quote == '"' and self.peek() == "\\":
                    self.advance()
                self.advance()
            content = self.text[start : self.pos]
            self.advance(3)
            while self.peek() == quote:  # up to two quotes may end the content
                self.advance()
            return content
        self.advance()
        start = self.pos
        while self.peek() not in ("", quote, "\n"):
            if quote == '"' and self.peek() == "\\":
                self.advance()
            self.advance()
        content = self.text[start : self.pos]
        self.advance()
        if quote == '"':
            with contextlib.suppress(UnicodeDecodeError, UnicodeEncodeError):
                content = content.encode("latin-1", "backslashreplace").decode("unicode_escape")
        return content

    def key(self) -> list[str]:
        """A dotted key at the cursor."""
        parts: list[str] = []
        while True:
            self.skip_space()
            char = self.peek()
            if char in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.pos
                while self.peek() in _BARE and self.peek():
                    self.advance()
                if start == self.pos:
                    return parts
                parts.append(self.text[start : self.pos])
            self.skip_space()
            if self.peek() == ".":
                self.advance()
                continue
            return parts

    # --- values ---
    def value(self, path: Path) -> None:
        self.skip_space()
        char = self.peek()
        if char in ('"', "'"):
            self.string()
        elif char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        else:
            while self.peek() not in ("", ",", "]", "}", "\n", "#"):
                self.advance()

    def array(self, path: Path) -> None:
        self.advance()  # [
        index = 0
        while True:
            self.skip_space(newlines=True)
            char = self.peek()
            if char in ("", "]"):
                self.advance()
                return
            if char == ",":
                self.advance()
                continue
            self.found.setdefault((*path, index), self.line)
            self.value((*path, index))
            index += 1

    def inline_table(self, path: Path) -> None:
        self.advance()  # {
        while True:
            self.skip_space(newlines=True)
            char = self.peek()
            if char in ("", "}"):
                self.advance()
                return
            if char == ",":
                self.advance()
                continue
            line = self.line
            parts = self.key()
            if not parts:  # not TOML; give up on this table
                self.advance()
                continue
            for depth in range(1, len(parts) + 1):
                self.found.setdefault((*path, *parts[:depth]), line)
            self.skip_space()
            if self.peek() == "=":
                self.advance()
            self.value((*path, *parts))

    # --- document ---
    def document(self) -> dict[Path, int]:
        table: Path = ()
        while self.pos < len(self.text):
            self.skip_space(newlines=True)
            char = self.peek()
            if not char:
                break
            line = self.line
            if char == "[":
                array = self.text.startswith("[[", self.pos)
                self.advance(2 if array else 1)
                parts = tuple(self.key())
                if array:
                    index = self.array_counts.get(parts, 0)
                    self.array_counts[parts] = index + 1
                    table = (*self._resolve(parts), index)
                else:
                    table = self._resolve(parts)
                self.found.setdefault(table, line)
                self.skip_line()
                continue
            parts = tuple(self.key())
            if not parts:
                self.skip_line()
                continue
            for depth in range(1, len(parts) + 1):
                self.found.setdefault((*table, *parts[:depth]), line)
            self.skip_space()
            if self.peek() == "=":
                self.advance()
                self.value((*table, *parts))
            self.skip_line()
        return self.found

    def _resolve(self, parts: tuple[str, ...]) -> Path:
        """A header path with the current index of every array of tables it passes through."""
        resolved: list[str | int] = []
        for depth, part in enumerate(parts):
            resolved.append(part)
            prefix = parts[: depth + 1]
            if depth < len(parts) - 1 and prefix in self.array_counts:
                resolved.append(self.array_counts[prefix] - 1)
        return tuple(resolved)


class TomlLines:
    def __init__(self, text: str) -> None:
        try:
            self.lines = _Scanner(text).document()
        except Exception:  # a locator must never be the thing that fails
            self.lines = {}

    def locate(self, path: Sequence[str | int]) -> int | None:
        """The line of `path` (or of the first key inside it), else of its longest prefix that
        was found; None when none was."""
        key = tuple(path)
        while key:
            line = self.lines.get(key)
            if line is not None:
                return line
            # A table defined only through its subtables ([a.b.c] defines a.b): its first one.
            inside = [found for path, found in self.lines.items() if path[: len(key)] == key]
            if inside:
                return min(inside)
            key = key[:-1]
        return None
