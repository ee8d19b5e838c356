"""`partita worker --workflow SLUG --exec 'CMD {partition_key} {param.x}'`: a generic worker.

Each of `--concurrency N` slots long-polls ClaimRun, runs the command for the run it got,
heartbeats while the command runs (progress from `PROGRESS` lines; a cancellation stops the
command: SIGTERM to its process group, SIGKILL after `--kill-grace`), and reports the
outcome:

- exit status 0: CompleteRun with the files the command listed on stdout as `ARTIFACT
  <path>` lines, plus every file under `--output-dir` — each as an artifact with its file
  name, a file:// storage URL, its size and content type — and the JSON objects of `PAYLOAD
  {...}` lines merged into the payload. The artifacts go to `--asset` (default: the first
  asset the workflow produces); its other assets are recorded without artifacts.
- any other status: FailRun (retryable) with the exit status and the tail of stderr; a
  signal is reported as such.

The command template is formatted per run with `{partition_key}`, `{run_id}`, `{workflow}`,
`{attempt}`, `{output_dir}`, `{param.NAME}` (also `{param[NAME]}`) and `{label.NAME}`. By
default it is split into argv first (shlex) and each word formatted on its own, then run
without a shell, so a key with spaces or quotes stays one argument. With `--shell` the whole
string is formatted with every value shell-quoted and run with `sh -c`. The command also gets
PARTITA_RUN_ID, PARTITA_WORKFLOW, PARTITA_PARTITION_KEY, PARTITA_ATTEMPT, PARTITA_PARAMETERS
(JSON) and PARTITA_OUTPUT_DIR in its environment.

SIGINT/SIGTERM stop claiming, stop running commands and report them as retryable failures
(`the worker stopped`), so another worker takes them over.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import grpc
from google.protobuf import json_format

from cli.client import (
    DURATION,
    Client,
    client_from,
    connection_options,
    describe_rpc_error,
    duration,
    error_reason,
)
from partita.v1 import asset_pb2, run_pb2, worker_pb2, workflow_pb2

STDERR_TAIL_LINES = 20
PROGRESS_INTERVAL = 1.0  # seconds between heartbeats sent early to report progress
STDERR_TAIL_CHARS = 2000
LEASE_LOST_REASONS = frozenset({"LEASE_MISMATCH", "LEASE_EXPIRED"})


class TemplateError(Exception):
    pass


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


class _Values:
    """`{param.x}` / `{param[x]}` in a template: the run's value as text (quoted for a shell)."""

    def __init__(self, what: str, values: dict[str, Any], quote: bool) -> None:
        self._what = what
        self._values = values
        self._quote = quote

    def __getitem__(self, name: str) -> str:
        if name not in self._values:
            raise TemplateError(f"the run has no {self._what} {name!r}")
        text = _text(self._values[name])
        return shlex.quote(text) if self._quote else text

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


def template_values(run: run_pb2.Run, output_dir: str, *, quote: bool) -> dict[str, Any]:
    def q(text: str) -> str:
        return shlex.quote(text) if quote else text

    return {
        "partition_key": q(run.partition_key),
        "run_id": q(run.id),
        "workflow": q(run.workflow_slug),
        "attempt": q(str(run.attempt)),
        "output_dir": q(output_dir),
        "param": _Values("parameter", json_format.MessageToDict(run.parameters), quote),
        "label": _Values("label", dict(run.labels), quote),
    }


def format_template(template: str, values: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), values)
    except TemplateError:
        raise
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise TemplateError(f"cannot format {template!r}: {error!r}") from error


def build_command(template: str, run: run_pb2.Run, output_dir: str, *, shell: bool) -> list[str]:
    """The argv for a run: shell-free (each word formatted) or `sh -c <formatted string>`."""
    if shell:
        return ["sh", "-c", format_template(template, template_values(run, output_dir, quote=True))]
    try:
        words = shlex.split(template)
    except ValueError as error:
        raise TemplateError(f"cannot split {template!r} into words: {error}") from error
    values = template_values(run, output_dir, quote=False)
    return [format_template(word, values) for word in words]


def artifact_of(path: Path, name: str) -> asset_pb2.Artifact:
    resolved = path.resolve()
    content_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
    return asset_pb2.Artifact(
        file_name=name,
        storage_url=resolved.as_uri(),
        size_bytes=resolved.stat().st_size,
        content_type=content_type,
    )


@dataclass
class WorkerOptions:
    workflows: tuple[str, ...]
    template: str
    shell: bool = False
    concurrency: int = 1
    output_dir: str = ""
    asset: str = ""
    worker_id: str = ""
    lease: float = 60.0
    wait: float = 20.0
    heartbeat: float = 0.0  # 0: a third of the lease, at most 10 s
    kill_grace: float = 10.0
    max_runs: int = 0
    exit_when_idle: bool = False
    quiet: bool = False

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat or min(self.lease / 3, 10.0)


@dataclass
class _Execution:
    """What a running command told us on stdout/stderr."""

    artifacts: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    progress: float | None = None
    message: str = ""
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    def __init__(self, client: Client, options: WorkerOptions) -> None:
        self.client = client
        self.options = options
        self.worker_id = options.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.claimed = 0
        self.outcomes: dict[str, int] = {"succeeded": 0, "failed": 0, "canceled": 0, "abandoned": 0}
        self._workflows: dict[str, workflow_pb2.Workflow] = {}
        self._processes: set[subprocess.Popen[bytes]] = set()

    # --- output ---
    def log(self, message: str) -> None:
        click.echo(f"worker {self.worker_id}: {message}", err=True)

    # --- loop ---
    def run(self) -> dict[str, int]:
        slots = [
            threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True)
            for i in range(self.options.concurrency)
        ]
        self.log(
            f"waiting for runs of {', '.join(self.options.workflows) or 'any workflow'} "
            f"(concurrency {self.options.concurrency})"
        )
        for slot in slots:
            slot.start()
        while any(slot.is_alive() for slot in slots):
            for slot in slots:
                slot.join(timeout=0.2)
        return dict(self.outcomes)

    def stop(self) -> None:
        if not self.stopping.is_set():
            self.log("stopping: no new claims; running commands are stopped and handed back")
        self.stopping.set()

    def _take_slot(self) -> bool:
        with self.lock:
            if self.options.max_runs and self.claimed >= self.options.max_runs:
                return False
            self.claimed += 1
            return True

    def _give_back_slot(self) -> None:
        with self.lock:
            self.claimed -= 1

    def _slot(self) -> None:
        errors = 0
        while not self.stopping.is_set():
            if not self._take_slot():
                return
            try:
                claim = self._claim()
            except grpc.RpcError as error:
                self._give_back_slot()
                errors += 1
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self.log(f"cannot claim: {describe_rpc_error(error, self.client.address)}")
                    self.stop()
                    return
                self.log(f"claim failed ({describe_rpc_error(error, self.client.address)}); retrying")
                self.stopping.wait(min(30.0, 0.5 * 2 ** min(errors, 6)))
                continue
            errors = 0
            if claim is None or not claim.HasField("run"):
                self._give_back_slot()
                if self.options.exit_when_idle or self.stopping.is_set():
                    return
                continue
            try:
                self._execute(claim.run, claim.lease_id)
            except grpc.RpcError as error:
                self.log(f"run {claim.run.id}: {describe_rpc_error(error, self.client.address)}")
            except Exception as error:  # never let one run kill the slot
                self.log(f"run {claim.run.id}: unexpected error {error!r}")

    def _claim(self) -> worker_pb2.ClaimRunResponse | None:
        request = worker_pb2.ClaimRunRequest(
            worker_id=self.worker_id,
            workflow_slugs=list(self.options.workflows),
            wait=duration(self.options.wait),
            lease_duration=duration(self.options.lease),
        )
        future = self.client.workers.ClaimRun.future(request, timeout=self.options.wait + 10)
        while not future.done():
            if self.stopping.wait(0.2) and future.cancel():
                return None  # a claim cancelled while it commits is put back by the server
        if future.cancelled():
            return None
        # Even when stopping: a run claimed meanwhile is ours; _execute hands it back at once.
        return future.result()  # type: ignore[no-any-return]

    def _workflow(self, slug: str) -> workflow_pb2.Workflow | None:
        if slug not in self._workflows:
            try:
                self._workflows[slug] = self.client.workflows.GetWorkflow(
                    workflow_pb2.GetWorkflowRequest(slug=slug), timeout=30
                ).workflow
            except grpc.RpcError:
                return None
        return self._workflows[slug]

    # --- one run ---
    def _name(self, run: run_pb2.Run) -> str:
        key = f" {run.partition_key}" if run.partition_key else ""
        return f"run {run.id} {run.workflow_slug}{key}"

    def _fail(self, run: run_pb2.Run, lease_id: str, message: str, *, retryable: bool | None = None) -> None:
        request = worker_pb2.FailRunRequest(run_id=run.id, lease_id=lease_id, error_message=message[:4000])
        if retryable is not None:
            request.retryable = retryable
        try:
            answer = self.client.workers.FailRun(request, timeout=30).run
        except grpc.RpcError as error:
            self.log(
                f"{self._name(run)}: could not report the failure: {describe_rpc_error(error, self.client.address)}"
            )
            return
        state = run_pb2.RunState.Name(answer.state).removeprefix("RUN_STATE_")
        if answer.state == run_pb2.RUN_STATE_QUEUED:
            state = f"queued again for attempt {answer.attempt}"
        self.log(
            f"{self._name(run)} failed ({message.splitlines()[0] if message else 'no message'}): run {state.lower()}"
        )

    def _execute(self, run: run_pb2.Run, lease_id: str) -> None:
        started = time.monotonic()
        self.log(f"{self._name(run)} claimed (attempt {run.attempt})")
        if self.stopping.is_set():
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, "the worker stopped before the command started")
            return
        output_dir = ""
        try:
            if self.options.output_dir:
                output_dir = format_template(self.options.output_dir, template_values(run, "", quote=False))
                Path(output_dir).mkdir(parents=True, exist_ok=True)
            argv = build_command(self.options.template, run, output_dir, shell=self.options.shell)
        except (TemplateError, OSError) as error:
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, f"the worker cannot build the command: {error}", retryable=False)
            return
        env = {
            **os.environ,
            "PARTITA_RUN_ID": run.id,
            "PARTITA_WORKFLOW": run.workflow_slug,
            "PARTITA_PARTITION_KEY": run.partition_key,
            "PARTITA_ATTEMPT": str(run.attempt),
            "PARTITA_PARAMETERS": json.dumps(json_format.MessageToDict(run.parameters)),
            "PARTITA_OUTPUT_DIR": output_dir,
        }
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, f"cannot start {argv[0]!r}: {error.strerror or error}")
            return
        with self.lock:
            self._processes.add(process)
        execution = _Execution()
        readers = [
            threading.Thread(target=self._read_stdout, args=(process.stdout, execution, run), daemon=True),
            threading.Thread(target=self._read_stderr, args=(process.stderr, execution, run), daemon=True),
        ]
        for reader in readers:
            reader.start()
        verdict = self._supervise(run, lease_id, process, execution)
        for reader in readers:
            reader.join(timeout=10)
        with self.lock:
            self._processes.discard(process)
        elapsed = time.monotonic() - started
        code = process.returncode
        if verdict == "lost":
            with self.lock:
                self.outcomes["abandoned"] += 1
            self.log(f"{self._name(run)}: the lease was lost; the command was stopped and nothing reported")
            return
        if verdict == "canceled":
            with self.lock:
                self.outcomes["canceled"] += 1
            self._fail(run, lease_id, "canceled: the command was stopped", retryable=False)
            return
        if verdict == "stopped":
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, "the worker stopped before the command finished")
            return
        if code != 0:
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, self._failure_message(code, execution))
            return
        try:
            assets = self._result_assets(run, output_dir, execution)
        except (OSError, ValueError) as error:
            with self.lock:
                self.outcomes["failed"] += 1
            self._fail(run, lease_id, f"the command succeeded but its output is unusable: {error}")
            return
        try:
            self.client.workers.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=run.id, lease_id=lease_id, assets=assets), timeout=60
            )
        except grpc.RpcError as error:
            with self.lock:
                self.outcomes["failed"] += 1
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                self._fail(
                    run, lease_id, f"the result was refused: {describe_rpc_error(error)}", retryable=False
                )
            else:
                self.log(
                    f"{self._name(run)}: could not complete: {describe_rpc_error(error, self.client.address)}"
                )
            return
        with self.lock:
            self.outcomes["succeeded"] += 1
        count = sum(len(a.artifacts) for a in assets)
        self.log(
            f"{self._name(run)} succeeded in {elapsed:.1f} s ({count} artifact{'s' if count != 1 else ''})"
        )

    def _failure_message(self, code: int, execution: _Execution) -> str:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            head = f"the command was killed by {name}"
        else:
            head = f"the command exited with status {code}"
        tail = "\n".join(execution.stderr_tail)[-STDERR_TAIL_CHARS:]
        return f"{head}; stderr:\n{tail}" if tail else head

    def _supervise(
        self, run: run_pb2.Run, lease_id: str, process: subprocess.Popen[bytes], execution: _Execution
    ) -> str:
        """Heartbeats until the command exits; returns done, canceled, lost or stopped."""
        sent: tuple[float, str] | None = None
        last_beat = 0.0
        while True:
            deadline = time.monotonic() + self.options.heartbeat_every
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return "done"
                if self.stopping.is_set():
                    self._terminate(process)
                    return "stopped"
                with execution.lock:
                    changed = (
                        execution.progress is not None and (execution.progress, execution.message) != sent
                    )
                if changed and time.monotonic() - last_beat >= PROGRESS_INTERVAL:
                    break  # report progress now, at most once per PROGRESS_INTERVAL
                time.sleep(0.05)
            with execution.lock:
                progress = execution.progress if execution.progress is not None else 0.0
                message = execution.message
            try:
                beat = self.client.workers.Heartbeat(
                    worker_pb2.HeartbeatRequest(
                        run_id=run.id, lease_id=lease_id, progress=progress, message=message
                    ),
                    timeout=30,
                )
                sent = (progress, message)
                last_beat = time.monotonic()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND or error_reason(error) in LEASE_LOST_REASONS:
                    self._terminate(process)
                    return "lost"
                self.log(
                    f"{self._name(run)}: heartbeat failed ({describe_rpc_error(error, self.client.address)})"
                )
                continue
            if beat.cancel_requested:
                self.log(f"{self._name(run)}: cancel requested; stopping the command")
                self._terminate(process)
                return "canceled"

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the command's process group, SIGKILL after the grace period."""
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=self.options.kill_grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _read_stdout(self, stream: IO[bytes], execution: _Execution, run: run_pb2.Run) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            word, _, rest = line.partition(" ")
            with execution.lock:
                if word == "ARTIFACT" and rest.strip():
                    execution.artifacts.append(rest.strip())
                    continue
                if word == "PROGRESS":
                    value, _, message = rest.strip().partition(" ")
                    try:
                        execution.progress = min(1.0, max(0.0, float(value)))
                        execution.message = message.strip()
                        continue
                    except ValueError:
                        pass
                if word == "PAYLOAD":
                    try:
                        data = json.loads(rest)
                    except ValueError:
                        data = None
                    if isinstance(data, dict):
                        execution.payload.update(data)
                        continue
                    execution.problems.append(f"PAYLOAD is not a JSON object: {rest[:100]!r}")
            if not self.options.quiet:
                click.echo(f"  run {run.id} | {line}", err=True)

    def _read_stderr(self, stream: IO[bytes], execution: _Execution, run: run_pb2.Run) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            with execution.lock:
                execution.stderr_tail.append(line)
            if not self.options.quiet:
                click.echo(f"  run {run.id} ! {line}", err=True)

    def _result_assets(
        self, run: run_pb2.Run, output_dir: str, execution: _Execution
    ) -> list[asset_pb2.ResultAsset]:
        if execution.problems:
            raise ValueError("; ".join(execution.problems))
        artifacts: list[asset_pb2.Artifact] = []
        seen: set[Path] = set()
        for listed in execution.artifacts:
            path = Path(listed)
            if not path.is_file():
                raise ValueError(f"ARTIFACT {listed}: no such file")
            seen.add(path.resolve())
            artifacts.append(artifact_of(path, path.name))
        if output_dir:
            root = Path(output_dir)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.resolve() in seen:
                    continue
                artifacts.append(artifact_of(path, path.relative_to(root).as_posix()))
        if not artifacts and not execution.payload:
            return []  # CompleteRun with no assets: an artifact-less materialization of each asset
        workflow = self._workflow(run.workflow_slug)
        produced = [d.asset_id for d in workflow.produces] if workflow is not None else []
        target = self.options.asset or (produced[0] if produced else "")
        if not target:
            raise ValueError("cannot tell which asset the artifacts belong to (use --asset)")
        main = asset_pb2.ResultAsset(asset_id=target, artifacts=artifacts)
        if execution.payload:
            main.payload.update(execution.payload)
        return [main, *(asset_pb2.ResultAsset(asset_id=a) for a in produced if a != target)]


@click.command("worker")
@click.option(
    "--workflow",
    "workflows",
    multiple=True,
    metavar="SLUG",
    help="claim runs of this workflow (repeatable; none: any)",
)
@click.option(
    "--exec",
    "template",
    required=True,
    metavar="CMD",
    help="the command per run, e.g. 'python export.py {partition_key}'",
)
@click.option("--shell", is_flag=True, help="run the formatted command with sh -c (values shell-quoted)")
@click.option(
    "--concurrency", default=1, type=click.IntRange(min=1), show_default=True, help="runs at a time"
)
@click.option(
    "--output-dir",
    default="",
    metavar="DIR",
    help="per-run directory (a template, e.g. out/{partition_key}); its files are artifacts",
)
@click.option(
    "--asset",
    default="",
    metavar="ASSET",
    help="the asset the artifacts belong to (default: the workflow's first)",
)
@click.option("--worker-id", default="", help="default: HOSTNAME-PID")
@click.option(
    "--lease", type=DURATION, default="60s", show_default=True, help="lease duration (heartbeats renew it)"
)
@click.option("--wait", type=DURATION, default="20s", show_default=True, help="long-poll wait of a claim")
@click.option(
    "--heartbeat",
    type=DURATION,
    default=None,
    help="heartbeat interval (default: a third of --lease, at most 10s)",
)
@click.option(
    "--kill-grace",
    type=DURATION,
    default="10s",
    show_default=True,
    help="SIGTERM → SIGKILL delay when stopping a command",
)
@click.option("--max-runs", default=0, type=click.IntRange(min=0), help="exit after handling N runs")
@click.option("--exit-when-idle", is_flag=True, help="exit once a claim comes back empty")
@click.option("--quiet", is_flag=True, help="don't echo the commands' output")
@connection_options
@click.pass_context
def worker(
    ctx: click.Context,
    workflows: tuple[str, ...],
    template: str,
    shell: bool,
    concurrency: int,
    output_dir: str,
    asset: str,
    worker_id: str,
    lease: float,
    wait: float,
    heartbeat: float | None,
    kill_grace: float,
    max_runs: int,
    exit_when_idle: bool,
    quiet: bool,
) -> None:
    """Claim runs and execute a command for each (see docs/cli.md#worker)."""
    options = WorkerOptions(
        workflows=workflows,
        template=template,
        shell=shell,
        concurrency=concurrency,
        output_dir=output_dir,
        asset=asset,
        worker_id=worker_id,
        lease=lease,
        wait=wait,
        heartbeat=heartbeat or 0.0,
        kill_grace=kill_grace,
        max_runs=max_runs,
        exit_when_idle=exit_when_idle,
        quiet=quiet,
    )
    if not shell:
        try:
            shlex.split(template)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--exec") from None
    running = Worker(client_from(ctx), options)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: running.stop())
    try:
        outcomes = running.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = ", ".join(f"{n} {name}" for name, n in outcomes.items() if n) or "no runs"
    running.log(f"exiting: {summary}")
    sys.stderr.flush()
