"""The Node.js client test (tests/node/client.test.mjs) against a real server.

`node --test` runs it with the server's address in PARTITA_ADDRESS; a non-zero exit (a failed
assertion, a rejected call, a missing package) fails this test with node's output. It is
skipped only when `node` is not on PATH; the Node packages come from `make install`
(`npm install`), and their absence is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.harness import REPO_ROOT, RunningServer

NODE_TEST = REPO_ROOT / "tests" / "node" / "client.test.mjs"
NODE_TIMEOUT = 60


def test_node_client_drives_a_partition(server: RunningServer) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    assert (REPO_ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "the Node packages are missing: run `make install` (npm install)"
    )
    result = subprocess.run(
        [node, "--test", str(NODE_TEST)],
        cwd=REPO_ROOT,
        env={**os.environ, "PARTITA_ADDRESS": server.address},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"node --test exited with {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert re.search(r"^# pass [1-9]", result.stdout, re.M) and "# fail 0" in result.stdout, result.stdout
