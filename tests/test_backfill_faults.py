"""Backfills under faults: the server killed (-9) mid-backfill and restarted on its database, and
the dispatcher's leader replica killed on PostgreSQL. Every key must complete exactly once and
no key may ever have two runs at once (checked on the runs in the database)."""

from __future__ import annotations

import functools
import itertools
import time
from collections import defaultdict
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from partita.v1 import backfill_pb2, backfill_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from storage.database import connect
from tests.api.test_backfills import ALL, Workers, create, get, static, wait_for, wait_for_state
from tests.api.test_runs import register
from tests.harness import RunningServer, start_server

pytestmark = pytest.mark.faults

KEYS = 80
S = backfill_pb2.BackfillState
# Attempts whose lease lapsed while the server was down retry at once.
RETRY_AT_ONCE = workflow_pb2.RetryPolicy(max_attempts=10, initial_backoff=Duration())


def runs_in_database(database_url: str, slug: str) -> list[tuple[int, str, str, int | None, int | None]]:
    db = connect(database_url)
    db.connect()
    try:
        query = "SELECT id, partition_key, state, start_time, end_time FROM run WHERE workflow_slug = %s ORDER BY id"
        if database_url.startswith("sqlite"):
            query = query.replace("%s", "?")
        return [tuple(row) for row in db.execute_sql(query, (slug,)).fetchall()]
    finally:
        db.close()


def assert_each_key_ran_once_at_a_time(database_url: str, slug: str, keys: int) -> None:
    per_key: dict[str, list[tuple[int, str, int | None, int | None]]] = defaultdict(list)
    for run_id, key, state, start, end in runs_in_database(database_url, slug):
        per_key[key].append((run_id, state, start, end))
    assert len(per_key) == keys
    for key, found in per_key.items():
        assert [state for _, state, _, _ in found].count("SUCCEEDED") == 1, (key, found)
        spans = sorted((start or 0, end) for _, _, start, end in found)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end is not None and end <= next_start, (key, found)


def progressed(stub: backfill_pb2_grpc.BackfillServiceStub, backfill_id: str, succeeded: int) -> bool:
    return get(stub, backfill_id).counts.succeeded >= succeeded


def leads(server: RunningServer) -> bool:
    return "backfill dispatcher leads" in server.stderr()


def test_kill_9_mid_backfill_then_restart_completes_every_key_once(database_url: str, tmp_path: Path) -> None:
    servers = [start_server(database_url, log_dir=tmp_path / "server-0")]
    try:
        register(servers[0].stub(workflow_pb2_grpc.WorkflowServiceStub), "regions", static(KEYS))
        created = create(
            servers[0].stub(backfill_pb2_grpc.BackfillServiceStub),
            "regions",
            ALL,
            max_concurrent_runs=6,
            retry_policy=RETRY_AT_ONCE,
        )
        with Workers(servers[0].address, 3, lambda run: "ok", lease=2.0, work_seconds=0.03) as workers:
            # Killed twice (-9) while runs are queued and running, restarted on the same database.
            for share in (4, 2):
                stub = servers[-1].stub(backfill_pb2_grpc.BackfillServiceStub)
                wait_for(functools.partial(progressed, stub, created.id, KEYS // share), what="progress")
                servers[-1].close_channels()
                servers[-1].process.kill()
                servers[-1].process.wait()
                servers.append(start_server(database_url, log_dir=tmp_path / f"server-{len(servers)}"))
                workers.address = servers[-1].address
            done = wait_for_state(
                servers[-1].stub(backfill_pb2_grpc.BackfillServiceStub),
                created.id,
                S.BACKFILL_STATE_COMPLETED,
            )
        assert not workers.errors, workers.errors
        assert done.counts.succeeded == KEYS and done.counts.failed == 0
    finally:
        last = servers[-1]
        if last.process.poll() is None:
            assert last.stop() == 0, last.stderr()
    assert_each_key_ran_once_at_a_time(database_url, "regions", KEYS)


def test_replica_takes_over_the_dispatcher_when_the_leader_dies(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share one database only on PostgreSQL")
    leader = start_server(database_url, log_dir=tmp_path / "leader")
    follower: RunningServer | None = None
    try:
        wait_for(lambda: leads(leader), timeout=10, what="the first replica to lead")
        follower = start_server(database_url, log_dir=tmp_path / "follower")
        time.sleep(1.5)  # several leadership tries
        assert not leads(follower)
        register(follower.stub(workflow_pb2_grpc.WorkflowServiceStub), "regions", static(KEYS))
        stub = follower.stub(backfill_pb2_grpc.BackfillServiceStub)
        created = create(stub, "regions", ALL, max_concurrent_runs=5, retry_policy=RETRY_AT_ONCE)
        with Workers(follower.address, 3, lambda run: "ok", lease=5.0, work_seconds=0.03) as workers:
            wait_for(lambda: get(stub, created.id).counts.succeeded >= KEYS // 4, what="a quarter done")
            leader.process.kill()  # kill -9: its lock connection drops with it
            leader.process.wait()
            killed_at = time.monotonic()
            wait_for(lambda: leads(follower), timeout=10, what="the follower to take over")
            assert time.monotonic() - killed_at < 5
            done = wait_for_state(stub, created.id, S.BACKFILL_STATE_COMPLETED)
        assert not workers.errors, workers.errors
        assert done.counts.succeeded == KEYS
    finally:
        leader.close_channels()
        if follower is not None:
            assert follower.stop() == 0, follower.stderr()
    assert_each_key_ran_once_at_a_time(database_url, "regions", KEYS)
