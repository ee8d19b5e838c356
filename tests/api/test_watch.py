"""WatchRuns through the real server: filters, exact resume, replicas, paused writers, pruning,
stalled clients, bookmarks and shutdown (server/streams.py)."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import peewee as pw
import pytest

from partita.v1 import run_pb2, run_pb2_grpc, worker_pb2, worker_pb2_grpc, workflow_pb2_grpc
from server.api.errors import error_details
from storage import migrations
from storage.database import connect
from storage.events import NewEvent, append_events, prune_events
from storage.models import RunEvent, bind_models, micros
from tests.api.test_runs import STATIC, claim, enqueue, register
from tests.harness import RunningServer, start_server
from tests.rpc import expect_error

BOOKMARK = run_pb2.RUN_EVENT_TYPE_BOOKMARK
# Short bookmarks let a test tell "nothing more matches up to the head" quickly; a quick poll
# picks up rows written straight into the database on SQLite (no NOTIFY there).
FAST = {"PARTITA_WATCH_BOOKMARK_SECONDS": "0.2", "PARTITA_WATCH_POLL_SECONDS": "0.2"}


@pytest.fixture
def launch(database_url: str, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Starts servers on the test's database with extra environment; each must exit 0."""
    started: list[RunningServer] = []

    def start(env: dict[str, str] | None = None) -> RunningServer:
        running = start_server(
            database_url, log_dir=tmp_path / f"server-{len(started)}", env={**FAST, **(env or {})}
        )
        started.append(running)
        return running

    yield start
    for running in started:
        code = running.stop()
        assert code == 0, f"server exited with {code}; stderr:\n{running.stderr()}"


def stubs(
    running: RunningServer,
) -> tuple[
    workflow_pb2_grpc.WorkflowServiceStub, run_pb2_grpc.RunServiceStub, worker_pb2_grpc.WorkerServiceStub
]:
    return (
        running.stub(workflow_pb2_grpc.WorkflowServiceStub),
        running.stub(run_pb2_grpc.RunServiceStub),
        running.stub(worker_pb2_grpc.WorkerServiceStub),
    )


def head(run_stub: run_pb2_grpc.RunServiceStub) -> int:
    return int(run_stub.ListRuns(run_pb2.ListRunsRequest(page_size=1)).head_sequence)


def watch(
    run_stub: run_pb2_grpc.RunServiceStub,
    until: int,
    timeout: float = 15.0,
    **request: Any,
) -> list[run_pb2.RunEvent]:
    """The events (bookmarks skipped) of one stream, read until it has scanned `until`."""
    return read_until(run_stub.WatchRuns(run_pb2.WatchRunsRequest(**request), timeout=timeout), until)


def read_until(call: Any, until: int) -> list[run_pb2.RunEvent]:
    """The events (bookmarks skipped) of an open stream, read until it has scanned `until`;
    cancels the call."""
    seen: list[run_pb2.RunEvent] = []
    try:
        for response in call:
            event = response.event
            if event.type != BOOKMARK:
                seen.append(event)
            if event.sequence >= until:
                break
    finally:
        call.cancel()
    sequences = [event.sequence for event in seen]
    assert sequences == sorted(set(sequences)), "sequences must rise strictly"
    return seen


def workload(
    workflow_stub: workflow_pb2_grpc.WorkflowServiceStub,
    run_stub: run_pb2_grpc.RunServiceStub,
    worker_stub: worker_pb2_grpc.WorkerServiceStub,
) -> None:
    """Runs of two partitioned workflows and an unpartitioned one, in every ending."""
    register(workflow_stub, "alpha", STATIC)
    register(workflow_stub, "beta", STATIC)
    register(workflow_stub, "plain")
    for slug in ("alpha", "beta"):
        for key in ("eu", "us", "apac"):
            enqueue(run_stub, slug, key)
    enqueue(run_stub, "plain")
    for index in range(5):
        claimed = claim(worker_stub)
        worker_stub.Heartbeat(
            worker_pb2.HeartbeatRequest(run_id=claimed.run.id, lease_id=claimed.lease_id, progress=0.5)
        )
        if index % 3 == 0:
            worker_stub.CompleteRun(
                worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
            )
        elif index % 3 == 1:
            worker_stub.FailRun(worker_pb2.FailRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id))
        else:
            worker_stub.FailRun(
                worker_pb2.FailRunRequest(
                    run_id=claimed.run.id, lease_id=claimed.lease_id, error_message="bad", retryable=False
                )
            )
    queued = run_stub.ListRuns(run_pb2.ListRunsRequest(states=[run_pb2.RUN_STATE_QUEUED])).runs
    run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=queued[0].id, reason="not needed"))


_databases: dict[str, pw.Database] = {}
_databases_lock = threading.Lock()


def write_directly(database_url: str, new_events: list[NewEvent], pause: float = 0.0) -> list[int]:
    """Appends events the way the server does, from this process (any thread; each gets its
    own connection); `pause` sleeps before COMMIT."""
    with _databases_lock:
        if database_url not in _databases:
            _databases[database_url] = connect(database_url)
        db = _databases[database_url]
        bind_models(db)  # other tests of this process may have bound the models elsewhere
    with db.connection_context(), db.atomic():
        sequences = append_events(db, new_events, micros(datetime.now(UTC)))
        time.sleep(pause)
    return sequences


def test_filtered_streams_see_exactly_their_events(
    database_url: str, launch: Callable[..., RunningServer]
) -> None:
    running = launch()
    workflow_stub, run_stub, worker_stub = stubs(running)
    filters: list[tuple[dict[str, Any], Callable[[run_pb2.RunEvent], bool]]] = [
        ({"workflow_slug": "alpha"}, lambda e: e.workflow_slug == "alpha"),
        ({"workflow_slug": "plain"}, lambda e: e.workflow_slug == "plain"),
        ({"partition_keys": ["eu", "apac"]}, lambda e: e.partition_key in ("eu", "apac")),
        ({"partition_keys": [""]}, lambda e: e.partition_key == ""),
        (
            {"workflow_slug": "beta", "partition_keys": ["us"]},
            lambda e: (e.workflow_slug, e.partition_key) == ("beta", "us"),
        ),
        ({"run_id": "1"}, lambda e: e.run_id == "1"),
        ({"backfill_id": "7"}, lambda e: e.backfill_id == "7"),
        ({"backfill_id": "7", "partition_keys": ["us"]}, lambda e: False),
        ({"workflow_slug": "ghost"}, lambda e: False),
    ]
    # Live streams, opened before anything happens.
    live = [run_stub.WatchRuns(run_pb2.WatchRunsRequest(**request), timeout=30) for request, _ in filters]
    workload(workflow_stub, run_stub, worker_stub)
    # Backfills arrive with their own capability; their events are plain log rows.
    write_directly(
        database_url,
        [
            NewEvent(type="QUEUED", workflow_slug="alpha", partition_key="eu", backfill_id=7, state="QUEUED"),
            NewEvent(type="QUEUED", workflow_slug="alpha", partition_key="us", backfill_id=8, state="QUEUED"),
        ],
    )
    last = head(run_stub)
    everything = watch(run_stub, last)
    assert [event.sequence for event in everything] == list(range(1, last + 1))
    types = {event.type for event in everything}
    for name in ("QUEUED", "STARTED", "PROGRESS", "SUCCEEDED", "FAILED", "RETRY_SCHEDULED", "CANCELED"):
        assert run_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{name}") in types, name
    materialized = [e for e in everything if e.type == run_pb2.RUN_EVENT_TYPE_MATERIALIZED]
    assert materialized and all(e.materialization_ids and e.asset_id for e in materialized)
    retry = next(e for e in everything if e.type == run_pb2.RUN_EVENT_TYPE_RETRY_SCHEDULED)
    assert retry.next_attempt_time.seconds > 0
    assert len([e for e in everything if e.run_id == "1"]) >= 3

    for (request, wanted), call in zip(filters, live, strict=True):
        expected = [e for e in everything if wanted(e)]
        assert read_until(call, last) == expected, request
        assert watch(run_stub, last, **request) == expected, request
        # The same from a cursor in the middle: exactly the later ones.
        middle = last // 2
        assert watch(run_stub, last, after_sequence=middle, **request) == [
            e for e in expected if e.sequence > middle
        ], request
    assert watch(run_stub, last, after_sequence=last + 5) == []


def test_invalid_requests_name_the_field(launch: Callable[..., RunningServer]) -> None:
    _, run_stub, _ = stubs(launch())
    cases: list[tuple[dict[str, object], list[str]]] = [
        ({"run_id": "r-1"}, ["run_id"]),
        ({"backfill_id": "12x"}, ["backfill_id"]),
        ({"workflow_slug": "Not A Slug"}, ["workflow_slug"]),
        ({"partition_keys": ["eu", " padded"]}, ["partition_keys[1]"]),
        ({"after_sequence": -1}, ["after_sequence"]),
        ({"run_id": "x", "after_sequence": -5}, ["run_id", "after_sequence"]),
    ]
    for request, fields in cases:
        failure = expect_error(
            lambda r: list(run_stub.WatchRuns(r, timeout=5)),
            run_pb2.WatchRunsRequest(**request),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == fields, request


def test_reconnects_resume_exactly_while_writes_go_on(launch: Callable[..., RunningServer]) -> None:
    running = launch()
    workflow_stub, run_stub, worker_stub = stubs(running)
    register(workflow_stub, "alpha", STATIC)
    register(workflow_stub, "plain")
    uninterrupted = run_stub.WatchRuns(run_pb2.WatchRunsRequest(), timeout=60)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for round_ in range(12):
                for key in ("eu", "us", "apac"):
                    enqueue(run_stub, "alpha", key)
                enqueue(run_stub, "plain")
                for _ in range(4):
                    claimed = claim(worker_stub)
                    if round_ % 2:
                        worker_stub.CompleteRun(
                            worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id)
                        )
                    else:
                        worker_stub.FailRun(
                            worker_pb2.FailRunRequest(
                                run_id=claimed.run.id, lease_id=claimed.lease_id, retryable=False
                            )
                        )
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    rng = random.Random(7)
    resumed: list[run_pb2.RunEvent] = []
    reconnects = 0
    while True:
        final = head(run_stub) if done.is_set() else None
        cursor = resumed[-1].sequence if resumed else 0
        if final is not None and cursor >= final:
            break
        take = rng.randint(1, 12)
        call = run_stub.WatchRuns(run_pb2.WatchRunsRequest(after_sequence=cursor), timeout=30)
        try:
            for response in call:
                if response.event.type != BOOKMARK:
                    resumed.append(response.event)
                    take -= 1
                # A bookmark means "idle for now": reconnect and look at the writer again.
                if take == 0 or response.event.type == BOOKMARK:
                    break
        finally:
            call.cancel()
        reconnects += 1
    thread.join()
    assert not errors, errors
    assert reconnects >= 5

    final = head(run_stub)
    one_stream: list[run_pb2.RunEvent] = []
    try:
        for response in uninterrupted:
            if response.event.type != BOOKMARK:
                one_stream.append(response.event)
            if response.event.sequence >= final:
                break
    finally:
        uninterrupted.cancel()
    assert [e.sequence for e in one_stream] == list(range(1, final + 1))
    assert resumed == one_stream


def test_events_written_through_another_replica_arrive(
    database_url: str, launch: Callable[..., RunningServer]
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share one database only on PostgreSQL")
    # A slow poll: the events must come through LISTEN/NOTIFY.
    watched = launch({"PARTITA_WATCH_POLL_SECONDS": "60"})
    writer = launch()
    workflow_stub, run_stub, _ = stubs(writer)
    _, watched_stub, _ = stubs(watched)
    register(workflow_stub, "alpha", STATIC)
    call = watched_stub.WatchRuns(run_pb2.WatchRunsRequest(workflow_slug="alpha"), timeout=30)
    try:
        latencies = []
        for key in ("eu", "us", "apac"):
            started = time.monotonic()
            run = enqueue(run_stub, "alpha", key)
            event = next(r.event for r in call if r.event.type != BOOKMARK)
            latencies.append(time.monotonic() - started)
            assert (event.run_id, event.partition_key, event.type) == (
                run.id,
                key,
                run_pb2.RUN_EVENT_TYPE_QUEUED,
            )
        assert max(latencies) < 2.0, latencies
    finally:
        call.cancel()


def test_writers_that_pause_before_commit_are_never_skipped(
    database_url: str, launch: Callable[..., RunningServer]
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer; commit order is sequence order by construction")
    running = launch()
    workflow_stub, run_stub, _ = stubs(running)
    register(workflow_stub, "alpha", STATIC)
    call = run_stub.WatchRuns(run_pb2.WatchRunsRequest(), timeout=30)
    live: list[run_pb2.RunEvent] = []
    reader = threading.Thread(
        target=lambda: live.extend(r.event for r in _until_count(call, 6)),
    )
    reader.start()
    # The first writer takes its sequence and sleeps before COMMIT; meanwhile another direct
    # writer and the server itself (an enqueue) write later events.
    slow = threading.Thread(
        target=write_directly,
        args=(database_url, [NewEvent(type="QUEUED", workflow_slug="slow", state="QUEUED")]),
        kwargs={"pause": 1.5},
    )
    slow.start()
    time.sleep(0.3)
    fast = threading.Thread(
        target=write_directly,
        args=(database_url, [NewEvent(type="QUEUED", workflow_slug="fast", state="QUEUED")]),
        kwargs={"pause": 0.0},
    )
    fast.start()
    enqueue(run_stub, "alpha", "eu")
    enqueue(run_stub, "alpha", "us")
    slow.join()
    fast.join()
    write_directly(
        database_url,
        [
            NewEvent(type="PROGRESS", workflow_slug="after"),
            NewEvent(type="PROGRESS", workflow_slug="after"),
        ],
    )
    reader.join(timeout=20)
    call.cancel()
    assert [e.workflow_slug for e in live][:1] == ["slow"], [e.workflow_slug for e in live]
    assert sorted(e.workflow_slug for e in live[1:4]) == ["alpha", "alpha", "fast"]
    assert [e.workflow_slug for e in live[4:]] == ["after", "after"]
    assert live == watch(run_stub, head(run_stub))


def _until_count(call: grpc.Call, count: int) -> Iterator[run_pb2.WatchRunsResponse]:
    for response in call:
        if response.event.type == BOOKMARK:
            continue
        yield response
        count -= 1
        if count == 0:
            return


def test_a_pruned_cursor_is_out_of_range(launch: Callable[..., RunningServer]) -> None:
    running = launch({"PARTITA_EVENT_RETENTION_MAX": "5", "PARTITA_EVENT_PRUNE_SECONDS": "0.1"})
    workflow_stub, run_stub, _ = stubs(running)
    register(workflow_stub, "plain")
    for _ in range(10):
        run = enqueue(run_stub, "plain")
        run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=run.id))
    last = head(run_stub)
    assert last == 20
    deadline = time.monotonic() + 10
    while True:
        retained = watch(run_stub, last)
        if retained[0].sequence == last - 4:
            break
        assert time.monotonic() < deadline, [e.sequence for e in retained]
        time.sleep(0.1)
    oldest = retained[0].sequence
    assert [e.sequence for e in retained] == list(range(oldest, last + 1))
    for cursor in (1, oldest - 2):
        failure = expect_error(
            lambda r: list(run_stub.WatchRuns(r, timeout=5)),
            run_pb2.WatchRunsRequest(after_sequence=cursor),
            grpc.StatusCode.OUT_OF_RANGE,
        )
        assert failure.reason == "SEQUENCE_COMPACTED"
        assert failure.info is not None and failure.info.metadata["oldest_sequence"] == str(oldest)
    # Right before the oldest retained event is still exact; 0 replays what is retained.
    assert watch(run_stub, last, after_sequence=oldest - 1) == retained
    assert watch(run_stub, last, after_sequence=0) == retained


def test_a_stalled_client_does_not_slow_writers_and_is_ended(launch: Callable[..., RunningServer]) -> None:
    running = launch({"PARTITA_WATCH_STALL_SECONDS": "1"})
    workflow_stub, run_stub, _ = stubs(running)
    register(workflow_stub, "plain")

    def enqueue_latencies(count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            run = enqueue(run_stub, "plain")
            latencies.append(time.perf_counter() - started)
            run_stub.CancelRun(run_pb2.CancelRunRequest(run_id=run.id))
        return latencies

    before = statistics.median(enqueue_latencies(60))
    # A client that never reads, with a small receive window: the server's sends block at once.
    channel = running.new_channel([("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)])
    stalled = run_pb2_grpc.RunServiceStub(channel).WatchRuns(run_pb2.WatchRunsRequest(), timeout=60)
    healthy = run_stub.WatchRuns(run_pb2.WatchRunsRequest(), timeout=60)
    during = statistics.median(enqueue_latencies(60))
    assert during < max(3 * before, before + 0.010), (before, during)

    # Another watcher is not held back by the stalled one.
    last = head(run_stub)
    got = [r.event.sequence for r in _until_count(healthy, last)]
    healthy.cancel()
    assert got == list(range(1, last + 1))

    time.sleep(2.5)  # past the stall timeout
    received: list[int] = []
    with pytest.raises(grpc.RpcError) as raised:
        for response in stalled:
            received.append(response.event.sequence)
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    info, _ = error_details(error)
    assert info is not None and info.reason == "WATCH_STREAM_STALLED"
    assert received and len(received) < last
    assert info.metadata["last_sequence"] == str(received[-1])
    assert received == list(range(1, len(received) + 1))


def test_an_idle_stream_gets_bookmarks_at_the_head(launch: Callable[..., RunningServer]) -> None:
    running = launch()
    workflow_stub, run_stub, _ = stubs(running)
    register(workflow_stub, "plain")
    register(workflow_stub, "alpha", STATIC)
    enqueue(run_stub, "plain")
    enqueue(run_stub, "alpha", "eu")
    last = head(run_stub)
    for request in (
        run_pb2.WatchRunsRequest(),
        run_pb2.WatchRunsRequest(workflow_slug="ghost", after_sequence=1),
    ):
        call = run_stub.WatchRuns(request, timeout=10)
        try:
            started = time.monotonic()
            bookmarks = []
            for response in call:
                if response.event.type == BOOKMARK:
                    bookmarks.append((time.monotonic() - started, response.event))
                    if len(bookmarks) == 2:
                        break
        finally:
            call.cancel()
        for _, event in bookmarks:
            assert event == run_pb2.RunEvent(type=BOOKMARK, sequence=last)
        assert bookmarks[1][0] - bookmarks[0][0] >= 0.15
    # A new event moves the bookmark of an idle filtered stream too.
    call = run_stub.WatchRuns(run_pb2.WatchRunsRequest(workflow_slug="ghost"), timeout=10)
    try:
        enqueue(run_stub, "alpha", "us")
        newest = head(run_stub)
        assert next(r.event for r in call if r.event.sequence >= newest) == run_pb2.RunEvent(
            type=BOOKMARK, sequence=newest
        )
    finally:
        call.cancel()


def test_shutdown_ends_streams_with_unavailable(database_url: str, tmp_path: Path) -> None:
    running = start_server(database_url, log_dir=tmp_path, env=FAST)
    try:
        workflow_stub, run_stub, _ = stubs(running)
        register(workflow_stub, "plain")
        enqueue(run_stub, "plain")
        calls = [run_stub.WatchRuns(run_pb2.WatchRunsRequest(), timeout=30) for _ in range(3)]
        for call in calls:
            assert next(iter(call)).event.sequence == 1
        started = time.monotonic()
        running.send_signal()
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                for response in call:
                    assert response.event.type == BOOKMARK
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert running.wait() == 0
        assert time.monotonic() - started < 5.0  # well within the 10 s grace
    finally:
        running.stop()


def test_pruning_deletes_an_old_prefix_in_batches_and_keeps_the_newest(database_url: str) -> None:
    db = connect(database_url)
    with db.connection_context():
        migrations.migrate(db)
    bind_models(db)
    try:
        with db.connection_context():
            with db.atomic():
                for index in range(30):
                    # Times rise with the sequence, except one young event early in the log.
                    when = 1_000_000 if index == 3 else index * 10
                    append_events(db, [NewEvent(type="PROGRESS", workflow_slug="w")], when)

            def prune(**limits: Any) -> int:
                with db.atomic():
                    return prune_events(**limits)

            def retained() -> list[int]:
                return [row.sequence for row in RunEvent.select().order_by(RunEvent.sequence)]

            assert prune(older_than_micros=None, keep_last=None, limit=1000) == 0
            # Older than 100: events 1..3 go; the young event 4 stops the prefix there.
            assert prune(older_than_micros=100, keep_last=None, limit=1000) == 3
            assert retained()[0] == 4
            # A count cap, two rows per batch.
            assert prune(older_than_micros=None, keep_last=20, limit=2) == 2
            assert retained()[0] == 6
            while prune(older_than_micros=None, keep_last=20, limit=2):
                pass
            assert retained() == list(range(11, 31))
            # Everything is old, yet the newest event stays: the log never restarts.
            while prune(older_than_micros=10**12, keep_last=None, limit=7):
                pass
            assert retained() == [30]
    finally:
        db.close()
