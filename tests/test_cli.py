"""The `partita` console script's offline commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage import migrations


def partita(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, check=False, timeout=60
    )


def test_migrate_step_by_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert partita("schema-version", "--database", url).stdout.startswith("0 ")
    first = partita("migrate", "--database", url, "--to", "1")
    assert first.returncode == 0, first.stderr
    assert "applied 0001_unpartitioned" in first.stdout
    rest = partita("migrate", "--database", url)
    assert f"schema version 1 -> {migrations.LATEST_VERSION}" in rest.stdout


def test_bad_database_url_is_a_clear_error() -> None:
    result = partita("migrate", "--database", "mysql://nope")
    assert result.returncode == 2
    assert "scheme must be sqlite or postgresql" in result.stderr
