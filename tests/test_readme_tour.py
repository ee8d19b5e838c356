"""The README's command-line tour, run as written on a fresh directory.

The test takes the first ```sh block under "## A tour of the command line" and runs each line
with bash in a new temporary directory holding a copy of examples/, with the venv's bin first
on PATH. A line ending in `&` runs in the background; the `partita serve` line also gets
`--listen 127.0.0.1:0` (a free port instead of 50051), and PARTITA_SERVER points every later
command at the address it printed. Every foreground command must exit 0. Then the outputs are
checked, including the ```console block of the README, line by line (spacing aside). The
background processes are stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT

HEADING = "## A tour of the command line"
BACKGROUND = re.compile(r"\s*&\s*$")


def tour_blocks() -> tuple[list[str], list[str]]:
    """(the commands of the first sh block, the lines of the first console block) of the tour."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(HEADING) :]
    section = section[: section.index("\n## ", len(HEADING))]
    sh = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    console = re.search(r"```console\n(.*?)```", section, re.DOTALL)
    assert sh and console, "the tour needs a ```sh and a ```console block"
    commands = [
        line for line in sh.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return commands, [line for line in console.group(1).splitlines() if line.strip()]


def squash(text: str) -> str:
    return " ".join(text.split())


def test_the_readme_tour(tmp_path: Path) -> None:
    commands, expected_view = tour_blocks()
    workdir = tmp_path / "tour"
    workdir.mkdir()
    shutil.copytree(REPO_ROOT / "examples", workdir / "examples")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "120"}
    for name in ("PARTITA_SERVER", "PARTITA_TOKEN", "PARTITA_TOKENS"):
        env.pop(name, None)
    background: list[tuple[str, subprocess.Popen[str]]] = []
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for line in commands:
            command = line.strip()
            if BACKGROUND.search(command):
                command = BACKGROUND.sub("", command)
                if command.startswith("partita serve"):
                    process = subprocess.Popen(
                        ["bash", "-c", f"exec {command} --listen 127.0.0.1:0"],
                        cwd=workdir,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                    assert process.stdout is not None
                    first = process.stdout.readline()
                    assert first.startswith("listening on "), f"{command!r} printed {first!r}"
                    env["PARTITA_SERVER"] = first.removeprefix("listening on ").strip()
                else:
                    process = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"],
                        cwd=workdir,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                background.append((command, process))
                continue
            assert "PARTITA_SERVER" in env, f"{command!r} runs before the server started"
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert result.returncode == 0, (
                f"{command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
            outputs[command] = result
    finally:
        codes = []
        for command, process in reversed(background):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes.append((command, process.wait(timeout=60)))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append((command, -9))
    for command, code in codes:
        assert code == 0, f"{command!r} exited {code} after SIGTERM"

    def output(prefix: str) -> str:
        matches = [r.stdout for c, r in outputs.items() if c.startswith(prefix)]
        assert matches, f"no command starting with {prefix!r} in the tour"
        return matches[0]

    assert "done: 4 created, 0 updated, 0 unchanged" in output("partita apply")
    watched = output("partita backfill")
    assert re.search(r"^done\s+━+\s+5/5\s+100%", watched, re.MULTILINE), watched
    assert "backfill 1 COMPLETED: 5 succeeded (of 5)" in watched
    view = [squash(line) for line in output("partita partitions sales/daily-csv").splitlines()]
    for line in expected_view:
        assert squash(line) in view, f"README's {line!r} not in:\n" + "\n".join(view)
    listed = output("partita runs ls")
    assert listed.count("SUCCEEDED") == 5
    assert "3 added (acme, globex, initech)" in output("partita discover")
    assert "acme … initech MISSING (3)" in squash(output("partita partitions customers/profiles"))
    for day in range(1, 6):
        csv = workdir / "out" / "sales" / f"2024-01-0{day}.csv"
        assert csv.read_text(encoding="utf-8").startswith("day,product,quantity,revenue,currency\n")
        assert ",EUR\n" in csv.read_text(encoding="utf-8")
    assert (workdir / "tour.db").exists()
