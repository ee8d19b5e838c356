"""Partition key syntax (contract: "Keys and names") and time-window key formatting."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.errors import InvalidArgument
from server.domain.partitions import MAX_KEY_LENGTH, check_key_syntax, key_syntax_problem
from server.domain.partitions.keyfmt import KeyFormat


@pytest.mark.parametrize(
    "key",
    ["a", "2024-01-01", "customer/eu-west-1", "ünïcødé ✓", "x" * MAX_KEY_LENGTH, "a b", "a..b", "🙂"],
)
def test_valid_keys(key: str) -> None:
    assert key_syntax_problem(key) is None
    check_key_syntax(key)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("x" * (MAX_KEY_LENGTH + 1), "at most 255"),
        ("a\nb", "control character (U+000A"),
        ("a\x00", "control character (U+0000"),
        ("a\x7f", "control character"),
        ("a\x85b", "control character (U+0085"),
        ("a\ud800b", "unpaired surrogate (U+D800"),
        ("a\u2028b", "line separator"),
        (" a", "whitespace"),
        ("a ", "whitespace"),
        ("\u00a0a", "whitespace"),
        ("a\u3000", "whitespace"),
        ("a...b", "'...'"),
        ("...", "'...'"),
    ],
)
def test_invalid_keys(key: str, fragment: str) -> None:
    problem = key_syntax_problem(key)
    assert problem is not None and fragment in problem, problem
    with pytest.raises(InvalidArgument) as exc:
        check_key_syntax(key, field="selection.keys.partition_keys[2]")
    (violation,) = exc.value.violations
    assert violation.field == "selection.keys.partition_keys[2]"
    assert fragment in violation.description


def test_default_field_is_partition_key() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_key_syntax("")
    assert exc.value.violations[0].field == "partition_key"


def test_error_messages_do_not_echo_raw_control_characters() -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_key_syntax("bad\x1b[31mkey")
    assert "\x1b" not in exc.value.message


@settings(max_examples=400, deadline=None)
@given(
    instant=st.integers(min_value=-62_000_000_000, max_value=250_000_000_000),
    fmt=st.sampled_from(["%Y-%m-%d", "%Y-%m-%d-%H:%M", "%Y%m%d%H%M%S", "%Y", "w%H%%"]),
    zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
)
def test_key_formatting_writes_what_strftime_writes(instant: int, fmt: str, zone: str) -> None:
    """Keys are formatted without strftime for plain numeric formats; the text must not change,
    down to the unpadded years below 1000 that strftime writes."""
    tz = ZoneInfo(zone)
    assert KeyFormat(fmt, tz).format(instant) == datetime.fromtimestamp(instant, tz).strftime(fmt)
