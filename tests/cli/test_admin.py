"""The server-side commands on the click front end, the console script, and the TOML locator."""

from __future__ import annotations

import subprocess
import sys

from cli import admin
from cli.config import parse_config
from cli.toml_lines import TomlLines
from server.app import DEFAULT_DATABASE
from tests.harness import REPO_ROOT


def partita(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_default_database_matches_the_server() -> None:
    assert admin.DEFAULT_DATABASE == DEFAULT_DATABASE


def test_serve_passes_its_flags_to_the_server() -> None:
    result = partita("serve", "--help")
    assert result.returncode == 0
    assert "--metrics-listen" in result.stdout and "--listen" in result.stdout


def test_help_lists_every_command() -> None:
    result = partita("--help")
    assert result.returncode == 0
    for command in (
        "apply",
        "partitions",
        "run",
        "runs",
        "backfill",
        "watch",
        "discover",
        "worker",
        "serve",
        "migrate",
        "schema-version",
        "backfill-keys",
    ):
        assert f"  {command} " in result.stdout, command


def test_usage_errors_exit_2() -> None:
    result = partita("runs", "ls", "--state", "bogus")
    assert result.returncode == 2
    assert "Invalid value" in result.stderr


def test_locator_finds_headers_keys_arrays_and_inline_tables() -> None:
    text = """\
# comment
[workflows.sales]
description = "a ] tricky { string"
retry_policy = { max_attempts = 3,
  initial_backoff = "10s" }
consumes = [
  "x/y",
  { asset = "a/b", mapping = "all" },
]

[workflows.sales.assets."sales/daily-csv"]
partitions.daily = { start = "2024-01-01" }
notes = \"\"\"
multi [ line
\"\"\"
bad = 1

[[workflows.b.consumes]]
asset = "q"
[[workflows.b.consumes]]
asset = "r"
"""
    lines = TomlLines(text)
    assert lines.locate(("workflows", "sales", "retry_policy", "initial_backoff")) == 5
    assert lines.locate(("workflows", "sales", "consumes", 1, "mapping")) == 8
    assert (
        lines.locate(("workflows", "sales", "assets", "sales/daily-csv", "partitions", "daily", "start"))
        == 12
    )
    assert lines.locate(("workflows", "sales", "assets", "sales/daily-csv", "bad")) == 16
    assert lines.locate(("workflows", "b", "consumes", 1, "asset")) == 21
    assert lines.locate(("workflows", "b", "consumes", 1, "nothing", "here")) == 20
    assert lines.locate(("nope",)) is None


def test_schedule_and_enums_by_short_name() -> None:
    config = parse_config(
        """\
[workflows.w]
upstream_policy = "wait"
schedule = { enabled = true, cron_schedule = "0 6 * * *", target = "latest_window" }
[workflows.w.assets."w/a"]
partitions = { hourly = { start = 2024-01-01, timezone = "Europe/Paris" } }
"""
    )
    workflow = config.workflows[0].workflow
    assert workflow.upstream_policy == 2 and workflow.schedule.enabled and workflow.schedule.target == 1
    window = workflow.produces[0].partitioning.time_window
    assert window.start == "2024-01-01" and window.timezone == "Europe/Paris" and window.schedule_type == 1
    assert config.workflows[0].origin_of("workflow.produces[0].partitioning.time_window.start") == (
        "workflows",
        "w",
        "assets",
        "w/a",
        "partitions",
        "hourly",
        "start",
    )
