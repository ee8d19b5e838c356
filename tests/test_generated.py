"""Generated code is committed; it must be exactly what `make generate` makes from protos/."""

from __future__ import annotations

import filecmp
from pathlib import Path

from tools.generate_protos import REPO, generate


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    committed = REPO / "generated"
    fresh_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed_files = sorted(
        p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert committed_files == fresh_files, "run `make generate`: the set of generated files differs"
    stale = [
        str(path) for path in fresh_files if not filecmp.cmp(tmp_path / path, committed / path, shallow=False)
    ]
    assert not stale, f"run `make generate`: stale generated files {stale}"
