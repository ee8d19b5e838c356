"""Same spec + same now => same keys and windows as Dagster (fixtures computed by Dagster 1.13)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.domain.partitions import TimeWindowSpec

REPO = Path(__file__).parents[2]
OURS = REPO / "tests" / "fixtures" / "dagster_time_windows.json"
SHARED = REPO.parent / "shared" / "fixtures" / "dagster-time-windows-sample.json"


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    specs: list[dict[str, Any]] = json.loads(path.read_text())["specs"]
    for spec in specs:
        spec["_file"] = path.name
    return specs


FIXTURES = _load(OURS) + _load(SHARED)


def _expected(spec: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [
        (
            w["key"],
            datetime.fromisoformat(w["start"]).timestamp(),
            datetime.fromisoformat(w["end"]).timestamp(),
        )
        for w in spec["windows"]
    ]


def _check(definition: TimeWindowSpec, spec: dict[str, Any]) -> None:
    now = datetime.fromisoformat(spec["current_time"])
    expected = _expected(spec)
    assert [key for key, _, _ in expected] == spec["keys"]
    assert definition.count(now) == len(expected)
    assert list(definition.keys(now)) == spec["keys"]
    got = [
        (w.key, w.window.start.timestamp(), w.window.end.timestamp())
        for w in definition.windows_page(0, len(expected) + 5, now)
    ]
    assert got == expected
    for key, start, end in expected[:: max(1, len(expected) // 50)] + expected[-3:]:
        window = definition.window(key)
        assert (window.start.timestamp(), window.end.timestamp()) == (start, end)
        assert definition.validate_key(key, now) == int(start)


def test_fixtures_present() -> None:
    assert len(_load(OURS)) >= 25


@pytest.mark.parametrize("spec", FIXTURES, ids=[f"{s['_file']}:{s['name']}" for s in FIXTURES])
def test_resolved_definition_matches_dagster(spec: dict[str, Any]) -> None:
    d = spec["definition"]
    definition = TimeWindowSpec.create(
        cron_schedule=d["cron_schedule"],
        fmt=d["fmt"],
        timezone=d["timezone"],
        start=d["start"],
        end=d["end"] or "",
        end_offset=d["end_offset"],
    )
    assert definition.start.timestamp() == datetime.fromisoformat(d["start"]).timestamp()
    _check(definition, spec)


WITH_ARGS = [s for s in FIXTURES if "partita_args" in s]


@pytest.mark.parametrize("spec", WITH_ARGS, ids=[s["name"] for s in WITH_ARGS])
def test_client_arguments_match_dagster(spec: dict[str, Any]) -> None:
    """The same definitions written as a client would: presets, offsets, start/end in fmt."""
    definition = TimeWindowSpec.create(**spec["partita_args"])
    d = spec["definition"]
    assert definition.cron_schedule == d["cron_schedule"]
    assert definition.fmt == d["fmt"]
    assert definition.timezone == d["timezone"]
    assert definition.start.timestamp() == datetime.fromisoformat(d["start"]).timestamp()
    if d["end"] is None:
        assert definition.end is None
    else:
        assert definition.end is not None
        assert definition.end.timestamp() == datetime.fromisoformat(d["end"]).timestamp()
    _check(definition, spec)
