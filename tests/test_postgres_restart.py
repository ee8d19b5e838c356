"""PostgreSQL itself restarted under a running server (`pg_ctlcluster stop`, then `start`).

While the cluster is down every call fails UNAVAILABLE (never INTERNAL, and the server does not
exit); once it is back the same server process serves again on fresh connections; every run
acknowledged before the restart is there in the state it had; the enqueues that were in flight
keep one run per key (the ones that failed retry with their request_id, and a second enqueue
of a key in flight is still ALREADY_EXISTS); and the leases held across the restart complete.

It restarts the whole local cluster, so it runs only with PARTITA_TEST_POSTGRES_URL pointing at
a cluster on this machine that `pg_ctlcluster` (as root) controls; it always leaves the cluster
running. Others using the same cluster at that moment lose their connections: deselect it with
`-m "not pg_restart"` while they do.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest

from partita.v1 import (
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2_grpc,
)
from tests.api.test_runs import register
from tests.harness import RunningServer, postgres_base_url, postgres_database, start_server

pytestmark = [pytest.mark.postgres, pytest.mark.faults, pytest.mark.pg_restart, pytest.mark.timeout(90)]

KEYS = [f"k{i:04d}" for i in range(2000)]
CALL_TIMEOUT = 5.0
R = run_pb2.RunState
IN_FLIGHT = {R.RUN_STATE_QUEUED, R.RUN_STATE_RUNNING}


def local_cluster(base_url: str) -> tuple[str, str] | str:
    """(version, name) of the pg_ctlcluster cluster serving `base_url`, or why there is none."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not installed"
    if os.geteuid() != 0:
        return "restarting PostgreSQL with pg_ctlcluster needs root"
    parts = urlsplit(base_url)
    if parts.hostname not in (None, "", "127.0.0.1", "localhost", "::1"):
        return f"{parts.hostname} is not this machine"
    port = str(parts.port or 5432)
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return fields[0], fields[1]
    return f"no local cluster listens on port {port}"


def pg_ctlcluster(cluster: tuple[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def accepts_connections(base_url: str) -> bool:
    try:
        with psycopg.connect(base_url, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def ensure_running(cluster: tuple[str, str], base_url: str) -> None:
    """Starts the cluster unless it accepts connections, and waits until it does."""
    if accepts_connections(base_url):
        return
    pg_ctlcluster(cluster, "start")  # fails harmlessly when it is already up or starting
    deadline = time.monotonic() + 60
    while not accepts_connections(base_url):
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL {cluster} did not come back within 60 s")
        time.sleep(0.2)


@contextlib.contextmanager
def postgres_kept_running(cluster: tuple[str, str], base_url: str) -> Iterator[None]:
    """Whatever happens in the block, PostgreSQL accepts connections again when it ends."""
    try:
        yield
    finally:
        ensure_running(cluster, base_url)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


class Enqueuer(threading.Thread):
    """Enqueues one new key after another (with a request_id each) until stopped: the calls in
    flight when PostgreSQL goes away and comes back."""

    def __init__(self, server: RunningServer, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.runs = run_pb2_grpc.RunServiceStub(server.new_channel())
        self.keys = keys
        self.acknowledged: dict[str, str] = {}  # key -> run id
        self.failed: dict[str, grpc.StatusCode] = {}
        self.outcomes: list[grpc.StatusCode] = []  # in call order
        self.stopping = threading.Event()

    def run(self) -> None:
        for key in self.keys:
            if self.stopping.is_set():
                return
            try:
                response = self.runs.EnqueueRun(
                    run_pb2.EnqueueRunRequest(
                        workflow_slug="wf", partition_key=key, request_id=f"enqueue-{key}"
                    ),
                    timeout=CALL_TIMEOUT,
                )
                self.acknowledged[key] = response.run.id
                self.outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                self.failed[key] = error.code()
                self.outcomes.append(error.code())
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=CALL_TIMEOUT * 2)
        assert not self.is_alive(), "an EnqueueRun hung"


def all_runs(runs: run_pb2_grpc.RunServiceStub) -> list[run_pb2.Run]:
    found: list[run_pb2.Run] = []
    token = ""
    while True:
        page = runs.ListRuns(
            run_pb2.ListRunsRequest(workflow_slug="wf", page_size=500, page_token=token), timeout=CALL_TIMEOUT
        )
        found.extend(page.runs)
        token = page.next_page_token
        if not token:
            return found


def test_server_rides_out_a_postgresql_restart(tmp_path: Path) -> None:
    base_url = postgres_base_url()
    if base_url is None:
        pytest.skip("PARTITA_TEST_POSTGRES_URL is not set")
    cluster = local_cluster(base_url)
    if isinstance(cluster, str):
        pytest.skip(cluster)
    with postgres_database(base_url) as url, postgres_kept_running(cluster, base_url):
        server = start_server(url, log_dir=tmp_path)
        try:
            restart_under(server, cluster, base_url)
        finally:
            ensure_running(cluster, base_url)  # before the server drains, not only at the end
            code = server.stop()
        assert code == 0, f"server exited with {code}; stderr:\n{server.stderr()}"


def restart_under(server: RunningServer, cluster: tuple[str, str], base_url: str) -> None:
    runs = server.stub(run_pb2_grpc.RunServiceStub)
    workers = server.stub(worker_pb2_grpc.WorkerServiceStub)
    register(
        server.stub(workflow_pb2_grpc.WorkflowServiceStub),
        "wf",
        partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=KEYS)),
    )

    # Before: 30 runs acknowledged: 10 succeeded, 5 running under a lease, 15 queued.
    before: dict[str, tuple[str, int]] = {}  # run id -> (key, state)
    for key in KEYS[:30]:
        run = runs.EnqueueRun(run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key)).run
        before[run.id] = (key, R.RUN_STATE_QUEUED)
    leases: dict[str, str] = {}
    for index in range(15):
        claimed = workers.ClaimRun(worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=["wf"]))
        assert claimed.HasField("run")
        if index < 10:
            workers.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
            )
            before[claimed.run.id] = (claimed.run.partition_key, R.RUN_STATE_SUCCEEDED)
        else:
            leases[claimed.run.id] = claimed.lease_id
            before[claimed.run.id] = (claimed.run.partition_key, R.RUN_STATE_RUNNING)

    # The restart, with enqueues in flight, and calls of each kind while the cluster is down.
    enqueuer = Enqueuer(server, KEYS[30:])
    enqueuer.start()
    time.sleep(0.3)
    stopped = pg_ctlcluster(cluster, "stop")
    assert stopped.returncode == 0, stopped.stderr
    some_run = next(iter(before))
    during = {
        "EnqueueRun": code_of(
            lambda: runs.EnqueueRun(
                run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=KEYS[-1]), timeout=CALL_TIMEOUT
            )
        ),
        "GetRun": code_of(lambda: runs.GetRun(run_pb2.GetRunRequest(run_id=some_run), timeout=CALL_TIMEOUT)),
        "ListRuns": code_of(lambda: runs.ListRuns(run_pb2.ListRunsRequest(), timeout=CALL_TIMEOUT)),
        "ClaimRun": code_of(
            lambda: workers.ClaimRun(
                worker_pb2.ClaimRunRequest(worker_id="w", workflow_slugs=["wf"]), timeout=CALL_TIMEOUT
            )
        ),
    }
    time.sleep(0.5)  # the enqueuer keeps calling into the outage
    started = pg_ctlcluster(cluster, "start")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while not accepts_connections(base_url):
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.1)
    assert during == dict.fromkeys(during, grpc.StatusCode.UNAVAILABLE), during
    assert server.process.poll() is None, f"the server exited:\n{server.stderr()}"

    # After: the same server serves again. Each pooled connection that broke fails its next
    # call UNAVAILABLE once and reconnects; within a few seconds every call goes through.
    after_failures: list[grpc.StatusCode] = []
    streak_deadline = time.monotonic() + 15
    streak = 0
    while streak < 20:
        assert time.monotonic() < streak_deadline, after_failures
        code = code_of(lambda: runs.ListRuns(run_pb2.ListRunsRequest(page_size=1), timeout=CALL_TIMEOUT))
        if code == grpc.StatusCode.OK:
            streak += 1
        else:
            after_failures.append(code)
            streak = 0
    recovered = len(enqueuer.outcomes)
    while enqueuer.outcomes[recovered:].count(grpc.StatusCode.OK) < 10:  # the enqueuer goes through again too
        assert time.monotonic() < streak_deadline, enqueuer.outcomes[recovered:]
        time.sleep(0.05)
    enqueuer.stop()
    assert set(after_failures) <= {grpc.StatusCode.UNAVAILABLE}, after_failures
    assert enqueuer.failed, "the restart went unnoticed by the calls in flight"
    assert set(enqueuer.failed.values()) == {grpc.StatusCode.UNAVAILABLE}, Counter(enqueuer.failed.values())
    assert enqueuer.outcomes[-5:] == [grpc.StatusCode.OK] * 5, enqueuer.outcomes[-20:]
    assert '"code": "INTERNAL"' not in server.stderr(), server.stderr()[-5000:]

    # Nothing acknowledged is lost: every run from before in its state, every in-flight
    # enqueue that was answered.
    for run_id, (key, state) in before.items():
        run = runs.GetRun(run_pb2.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT).run
        assert (run.partition_key, run.state) == (key, state), (run_id, run)
    for key, run_id in enqueuer.acknowledged.items():
        run = runs.GetRun(run_pb2.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT).run
        assert (run.partition_key, run.state) == (key, R.RUN_STATE_QUEUED), run

    # The enqueues that failed retry with their request_id: one run each, whether or not the
    # failed attempt had committed.
    for key in enqueuer.failed:
        retry = run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key, request_id=f"enqueue-{key}")
        assert runs.EnqueueRun(retry, timeout=CALL_TIMEOUT).run.partition_key == key
    # In-flight dedupe holds: one run per key, and a key in flight refuses another.
    listed = all_runs(runs)
    per_key = Counter(run.partition_key for run in listed)
    expected = {key for key, _ in before.values()} | set(enqueuer.acknowledged) | set(enqueuer.failed)
    assert set(per_key) == expected and set(per_key.values()) == {1}, per_key.most_common(3)
    in_flight = [run.partition_key for run in listed if run.state in IN_FLIGHT]
    for key in in_flight[:5] + in_flight[-5:]:
        again = functools.partial(
            runs.EnqueueRun,
            run_pb2.EnqueueRunRequest(workflow_slug="wf", partition_key=key),
            timeout=CALL_TIMEOUT,
        )
        assert code_of(again) == grpc.StatusCode.ALREADY_EXISTS, key

    # The leases held across the restart still complete their runs.
    for run_id, lease_id in leases.items():
        workers.CompleteRun(
            worker_pb2.CompleteRunRequest(run_id=run_id, lease_id=lease_id), timeout=CALL_TIMEOUT
        )
        assert runs.GetRun(run_pb2.GetRunRequest(run_id=run_id)).run.state == R.RUN_STATE_SUCCEEDED
