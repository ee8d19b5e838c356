"""Schedules through the real server, with its clock under the test's control (`--clock-file`):
ticks at the right instants on DST gap and overlap days, the window LATEST_WINDOW enqueues,
catch-up after an outage for both policies, a tick never fired twice across kill -9 and a
leader change (two replicas on PostgreSQL), MISSING_KEYS backfills, registration checks,
disabling and re-enabling, and ListScheduleTicks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from partita.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    backfill_pb2,
    backfill_pb2_grpc,
    partitions_pb2,
    run_pb2,
    run_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.api.test_backfills import partitions, wait_for
from tests.api.test_runs import claim
from tests.harness import RunningServer, run_server_to_exit, start_server
from tests.rpc import expect_error

FIRED = workflow_pb2.SCHEDULE_TICK_OUTCOME_FIRED
SKIPPED = workflow_pb2.SCHEDULE_TICK_OUTCOME_SKIPPED
# The schedule loop looks at the clock at least this often (server/scheduler/schedule_loop.py).
LOOP_PERIOD = 1.0


class ServerClock:
    """The server's clock: an ISO instant in a file, replaced atomically."""

    def __init__(self, path: Path, start: str) -> None:
        self.path = path
        self.set(start)

    def set(self, instant: str) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(instant, encoding="utf-8")
        os.replace(temporary, self.path)


@pytest.fixture
def clock(tmp_path: Path) -> ServerClock:
    return ServerClock(tmp_path / "clock", "2024-01-01T00:00:00+00:00")


def start(database_url: str, clock: ServerClock, log_dir: Path) -> RunningServer:
    return start_server(database_url, "--clock-file", str(clock.path), log_dir=log_dir)


@pytest.fixture
def clocked(database_url: str, clock: ServerClock, tmp_path: Path) -> Iterator[RunningServer]:
    running = start(database_url, clock, tmp_path)
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, f"server exited with {code}; stderr:\n{running.stderr()}"


def hourly(timezone: str = "UTC", start: str = "2024-01-01") -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start=start, timezone=timezone
        )
    )


def static(*keys: str) -> partitions_pb2.PartitionsDefinition:
    return partitions_pb2.PartitionsDefinition(static=partitions_pb2.StaticPartitions(keys=list(keys)))


def register(
    server: RunningServer,
    slug: str,
    partitioning: partitions_pb2.PartitionsDefinition | None,
    schedule: workflow_pb2.Schedule,
) -> workflow_pb2.Workflow:
    workflow = workflow_pb2.Workflow(
        slug=slug,
        produces=[workflow_pb2.AssetDeclaration(asset_id=f"{slug}/out", partitioning=partitioning)],
        schedule=schedule,
    )
    stub = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    return stub.RegisterWorkflow(workflow_pb2.RegisterWorkflowRequest(workflow=workflow)).workflow


def ticks(server: RunningServer, slug: str) -> list[workflow_pb2.ScheduleTick]:
    """Every tick of the workflow, newest first."""
    stub = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    found: list[workflow_pb2.ScheduleTick] = []
    token = ""
    while True:
        page = stub.ListScheduleTicks(
            workflow_pb2.ListScheduleTicksRequest(workflow_slug=slug, page_size=1000, page_token=token)
        )
        found.extend(page.ticks)
        token = page.next_page_token
        if not token:
            return found


def wait_ticks(
    server: RunningServer, slug: str, count: int, timeout: float = 15
) -> list[workflow_pb2.ScheduleTick]:
    wait_for(lambda: len(ticks(server, slug)) >= count, timeout=timeout, what=f"{count} ticks of {slug}")
    found = ticks(server, slug)
    assert len(found) == count, found
    return found


def settle() -> None:
    """Long enough for the schedule loop to have looked at the clock since it was set."""
    time.sleep(LOOP_PERIOD + 0.4)


def iso(tick: workflow_pb2.ScheduleTick) -> str:
    return tick.tick_time.ToDatetime().strftime("%Y-%m-%dT%H:%MZ")


def run_of(server: RunningServer, run_id: str) -> run_pb2.Run:
    return server.stub(run_pb2_grpc.RunServiceStub).GetRun(run_pb2.GetRunRequest(run_id=run_id)).run


def key_of(server: RunningServer, tick: workflow_pb2.ScheduleTick) -> str:
    assert tick.outcome == FIRED and len(tick.run_ids) == 1, tick
    return run_of(server, tick.run_ids[0]).partition_key


def runs_of(server: RunningServer, slug: str) -> list[run_pb2.Run]:
    stub = server.stub(run_pb2_grpc.RunServiceStub)
    return list(stub.ListRuns(run_pb2.ListRunsRequest(workflow_slug=slug, page_size=1000)).runs)


def complete_next(server: RunningServer, slug: str) -> run_pb2.Run:
    stub = server.stub(worker_pb2_grpc.WorkerServiceStub)
    claimed = claim(stub, slug, wait=5)
    assert claimed.HasField("run"), f"no run of {slug} to claim"
    stub.CompleteRun(worker_pb2.CompleteRunRequest(run_id=claimed.run.id, lease_id=claimed.lease_id))
    return claimed.run


# --- ticks at the right instants ----------------------------------------------------------------


def test_a_daily_tick_in_the_dst_gap_fires_at_the_gap_end_and_enqueues_the_closed_window(
    clocked: RunningServer, clock: ServerClock
) -> None:
    clock.set("2024-03-09T12:00:00-05:00")
    nightly = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            cron_schedule="30 2 * * *", start="2024-03-01", timezone="America/New_York"
        )
    )
    # The cron and timezone default to the definition's; the target to LATEST_WINDOW.
    register(clocked, "nightly", nightly, workflow_pb2.Schedule(enabled=True))
    # 02:30 does not exist on 2024-03-10 in New York: the tick moves to the gap's end, 03:00 EDT.
    clock.set("2024-03-10T06:59:59+00:00")  # 01:59:59 EST
    settle()
    assert ticks(clocked, "nightly") == []
    clock.set("2024-03-10T07:00:00+00:00")  # 03:00 EDT
    (first,) = wait_ticks(clocked, "nightly", 1)
    assert iso(first) == "2024-03-10T07:00Z"
    run = run_of(clocked, first.run_ids[0])
    assert run.partition_key == "2024-03-09"  # the 23-hour window that closed at the tick
    assert run.trigger.kind == run_pb2.TRIGGER_KIND_SCHEDULE
    assert run.trigger.source_id.isdigit()
    assert first.evaluate_time.ToDatetime() >= first.tick_time.ToDatetime()
    # The next day the tick is back at 02:30, now EDT (06:30 UTC).
    clock.set("2024-03-11T06:29:00+00:00")
    settle()
    assert len(ticks(clocked, "nightly")) == 1
    clock.set("2024-03-11T06:30:00+00:00")
    second, _ = wait_ticks(clocked, "nightly", 2)
    assert iso(second) == "2024-03-11T06:30Z"
    assert key_of(clocked, second) == "2024-03-10"


def test_hourly_ticks_fire_at_both_repeated_hours_of_the_dst_overlap(
    clocked: RunningServer, clock: ServerClock
) -> None:
    clock.set("2024-11-03T03:30:00+00:00")  # 23:30 EDT on Nov 2
    register(
        clocked, "hourly-ny", hourly("America/New_York", "2024-11-01"), workflow_pb2.Schedule(enabled=True)
    )
    expected = [
        # (tick, the key of the window that closed at it)
        ("2024-11-03T04:00:00+00:00", "2024-11-02-23:00"),  # 00:00 EDT
        ("2024-11-03T05:00:00+00:00", "2024-11-03-00:00"),  # 01:00 EDT
        ("2024-11-03T06:00:00+00:00", "2024-11-03-01:00"),  # 01:00 EST, the repeated hour
        ("2024-11-03T07:00:00+00:00", "2024-11-03-01:00-0500"),  # 02:00 EST
        ("2024-11-03T08:00:00+00:00", "2024-11-03-02:00"),
    ]
    for count, (instant, key) in enumerate(expected, start=1):
        if count == 3:  # a second before the repeated 01:00: nothing new
            clock.set("2024-11-03T05:59:59+00:00")
            settle()
            assert len(ticks(clocked, "hourly-ny")) == 2
        clock.set(instant)
        newest = wait_ticks(clocked, "hourly-ny", count)[0]
        assert newest.tick_time.ToDatetime().isoformat() + "+00:00" == instant
        assert newest.outcome == FIRED
        assert key_of(clocked, newest) == key


# --- catch-up -------------------------------------------------------------------------------------


def test_catch_up_after_an_outage_for_both_policies(
    database_url: str, clock: ServerClock, tmp_path: Path
) -> None:
    clock.set("2024-01-02T00:30:00+00:00")
    server = start(database_url, clock, tmp_path / "before")
    try:
        register(server, "latest", hourly(), workflow_pb2.Schedule(enabled=True))
        register(
            server,
            "every",
            hourly(),
            workflow_pb2.Schedule(
                enabled=True, catch_up=workflow_pb2.CATCH_UP_POLICY_ALL_MISSED, max_catch_up_ticks=3
            ),
        )
        settle()
        # Registered after 24 hours of windows: no tick from before the registration fires.
        assert ticks(server, "latest") == [] and ticks(server, "every") == []
    finally:
        assert server.stop() == 0, server.stderr()
    clock.set("2024-01-02T05:30:00+00:00")  # five ticks pass while no server runs
    server = start(database_url, clock, tmp_path / "after")
    try:
        latest = wait_ticks(server, "latest", 5)
        assert [iso(tick) for tick in latest] == [f"2024-01-02T{hour:02d}:00Z" for hour in (5, 4, 3, 2, 1)]
        assert [tick.outcome for tick in latest] == [FIRED, SKIPPED, SKIPPED, SKIPPED, SKIPPED]
        assert key_of(server, latest[0]) == "2024-01-02-04:00"
        assert all("LATEST_ONLY" in tick.reason and not tick.run_ids for tick in latest[1:])

        every = wait_ticks(server, "every", 5)
        assert [tick.outcome for tick in every] == [FIRED, FIRED, FIRED, SKIPPED, SKIPPED]
        assert [key_of(server, tick) for tick in every[:3]] == [
            "2024-01-02-04:00",
            "2024-01-02-03:00",
            "2024-01-02-02:00",
        ]
        # Fired oldest first: the runs' ids rise with the tick time.
        run_ids = [int(tick.run_ids[0]) for tick in every[:3]]
        assert run_ids == sorted(run_ids, reverse=True)
        assert "max_catch_up_ticks = 3" in every[3].reason

        # Pages: newest first, resumable.
        stub = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
        page = stub.ListScheduleTicks(
            workflow_pb2.ListScheduleTicksRequest(workflow_slug="every", page_size=2)
        )
        assert [iso(tick) for tick in page.ticks] == ["2024-01-02T05:00Z", "2024-01-02T04:00Z"]
        rest = stub.ListScheduleTicks(
            workflow_pb2.ListScheduleTicksRequest(
                workflow_slug="every", page_size=10, page_token=page.next_page_token
            )
        )
        assert [iso(tick) for tick in rest.ticks] == [f"2024-01-02T{hour:02d}:00Z" for hour in (3, 2, 1)]
        assert not rest.next_page_token

        # Back to normal: the next tick fires once for each.
        clock.set("2024-01-02T06:00:00+00:00")
        assert wait_ticks(server, "latest", 6)[0].outcome == FIRED
        assert wait_ticks(server, "every", 6)[0].outcome == FIRED
    finally:
        assert server.stop() == 0, server.stderr()


# --- never twice ------------------------------------------------------------------------------------


def assert_each_key_ran_once(server: RunningServer, slug: str, keys: list[str]) -> None:
    found = runs_of(server, slug)
    assert sorted(run.partition_key for run in found) == sorted(keys), found


@pytest.mark.faults
def test_a_fired_tick_is_not_fired_again_after_kill_9_and_restart(
    database_url: str, clock: ServerClock, tmp_path: Path
) -> None:
    clock.set("2024-01-02T00:30:00+00:00")
    servers = [start(database_url, clock, tmp_path / "first")]
    try:
        register(servers[0], "hourly", hourly(), workflow_pb2.Schedule(enabled=True))
        clock.set("2024-01-02T01:00:00+00:00")
        wait_ticks(servers[0], "hourly", 1)
        done = complete_next(servers[0], "hourly")  # the tick's run has finished
        assert done.partition_key == "2024-01-02-00:00"
        servers[0].close_channels()
        servers[0].process.kill()  # kill -9
        servers[0].process.wait()
        servers.append(start(database_url, clock, tmp_path / "second"))
        wait_for(lambda: "schedule loop leads" in servers[-1].stderr(), timeout=10, what="the loop")
        settle()
        assert len(ticks(servers[-1], "hourly")) == 1
        assert_each_key_ran_once(servers[-1], "hourly", ["2024-01-02-00:00"])
        clock.set("2024-01-02T02:00:00+00:00")
        newest = wait_ticks(servers[-1], "hourly", 2)[0]
        assert key_of(servers[-1], newest) == "2024-01-02-01:00"
        settle()
        assert_each_key_ran_once(servers[-1], "hourly", ["2024-01-02-00:00", "2024-01-02-01:00"])
    finally:
        if servers[-1].process.poll() is None:
            assert servers[-1].stop() == 0, servers[-1].stderr()


@pytest.mark.faults
def test_a_new_leader_does_not_fire_the_old_leaders_ticks_again(
    database_url: str, clock: ServerClock, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share one database only on PostgreSQL")
    clock.set("2024-01-02T00:30:00+00:00")
    leader = start(database_url, clock, tmp_path / "leader")
    follower: RunningServer | None = None
    try:
        wait_for(
            lambda: "schedule loop leads" in leader.stderr(), timeout=10, what="the first replica to lead"
        )
        follower = start(database_url, clock, tmp_path / "follower")
        register(follower, "hourly", hourly(), workflow_pb2.Schedule(enabled=True))
        clock.set("2024-01-02T01:00:00+00:00")
        wait_ticks(follower, "hourly", 1)
        assert "schedule tick fired" in leader.stderr()
        assert "schedule loop leads" not in follower.stderr()
        complete_next(follower, "hourly")
        leader.process.kill()  # kill -9: its advisory lock goes with its connection
        leader.process.wait()
        wait_for(lambda: "schedule loop leads" in follower.stderr(), timeout=10, what="the follower to lead")
        settle()
        assert len(ticks(follower, "hourly")) == 1
        assert_each_key_ran_once(follower, "hourly", ["2024-01-02-00:00"])
        clock.set("2024-01-02T02:00:00+00:00")
        wait_ticks(follower, "hourly", 2)
        settle()
        assert_each_key_ran_once(follower, "hourly", ["2024-01-02-00:00", "2024-01-02-01:00"])
    finally:
        leader.close_channels()
        if leader.process.poll() is None:
            leader.process.kill()
            leader.process.wait()
        if follower is not None:
            assert follower.stop() == 0, follower.stderr()


# --- backfill targets ----------------------------------------------------------------------------


def test_missing_keys_backfills_only_keys_without_a_materialization(
    clocked: RunningServer, clock: ServerClock
) -> None:
    clock.set("2024-01-01T00:30:00+00:00")
    every_hour = "0 * * * *"
    register(
        clocked,
        "regions",
        static("eu", "us", "apac", "latam"),
        workflow_pb2.Schedule(
            enabled=True, cron_schedule=every_hour, target=workflow_pb2.SCHEDULE_TARGET_MISSING_KEYS
        ),
    )
    # An unpartitioned workflow: the target defaults to ALL_KEYS, its one slice.
    register(clocked, "plain", None, workflow_pb2.Schedule(enabled=True, cron_schedule=every_hour))
    clocked.stub(asset_pb2_grpc.AssetServiceStub).ReportMaterializations(
        asset_pb2.ReportMaterializationsRequest(
            materializations=[
                asset_pb2.ResultAsset(asset_id="regions/out", partition_key=key) for key in ("eu", "apac")
            ]
        )
    )
    backfills = clocked.stub(backfill_pb2_grpc.BackfillServiceStub)

    clock.set("2024-01-01T01:00:00+00:00")
    (fired,) = wait_ticks(clocked, "regions", 1)
    assert fired.outcome == FIRED and fired.backfill_id and not fired.run_ids
    backfill = backfills.GetBackfill(backfill_pb2.GetBackfillRequest(backfill_id=fired.backfill_id)).backfill
    assert backfill.trigger.kind == run_pb2.TRIGGER_KIND_SCHEDULE and backfill.trigger.source_id.isdigit()
    assert backfill.selection.HasField("missing")
    assert [key.partition_key for key in partitions(backfills, fired.backfill_id)] == ["us", "latam"]
    (plain,) = wait_ticks(clocked, "plain", 1)
    assert [key.partition_key for key in partitions(backfills, plain.backfill_id)] == [""]

    clock.set("2024-01-01T02:00:00+00:00")  # the first backfill is still running
    busy = wait_ticks(clocked, "regions", 2)[0]
    assert (
        busy.outcome == SKIPPED
        and f"backfill {fired.backfill_id}" in busy.reason
        and "running" in busy.reason
    )

    assert {complete_next(clocked, "regions").partition_key for _ in range(2)} == {"us", "latam"}
    wait_for(
        lambda: (
            backfills.GetBackfill(
                backfill_pb2.GetBackfillRequest(backfill_id=fired.backfill_id)
            ).backfill.state
            == backfill_pb2.BACKFILL_STATE_COMPLETED
        ),
        what="the backfill to complete",
    )
    clock.set("2024-01-01T03:00:00+00:00")
    done = wait_ticks(clocked, "regions", 3)[0]
    assert done.outcome == SKIPPED and "materialized" in done.reason and not done.backfill_id


# --- registration -------------------------------------------------------------------------------------


def test_registration_checks_the_schedule(clocked: RunningServer) -> None:
    stub = clocked.stub(workflow_pb2_grpc.WorkflowServiceStub)

    def request(partitioning: partitions_pb2.PartitionsDefinition | None, **fields: object) -> object:
        return workflow_pb2.RegisterWorkflowRequest(
            workflow=workflow_pb2.Workflow(
                slug="checked",
                produces=[workflow_pb2.AssetDeclaration(asset_id="checked/out", partitioning=partitioning)],
                schedule=workflow_pb2.Schedule(**fields),  # type: ignore[arg-type]
            )
        )

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    failure = expect_error(
        stub.RegisterWorkflow,
        request(
            static("a", "b"),
            enabled=True,
            target=workflow_pb2.SCHEDULE_TARGET_LATEST_WINDOW,
            timezone="Mars/Olympus",
            max_catch_up_ticks=-1,
        ),
        invalid,
    )
    assert set(failure.fields) == {
        "workflow.schedule.cron_schedule",  # required: a static definition has no cron
        "workflow.schedule.target",
        "workflow.schedule.timezone",
        "workflow.schedule.max_catch_up_ticks",
    }
    failure = expect_error(
        stub.RegisterWorkflow, request(hourly(), enabled=True, cron_schedule="61 * * * *"), invalid
    )
    assert failure.fields == ["workflow.schedule.cron_schedule"]
    # Disabled, a schedule may leave the cron out; what it sets is still checked.
    stub.RegisterWorkflow(request(static("a"), enabled=False))
    failure = expect_error(stub.RegisterWorkflow, request(static("a"), timezone="Nowhere"), invalid)
    assert failure.fields == ["workflow.schedule.timezone"]

    expect_error(
        stub.ListScheduleTicks,
        workflow_pb2.ListScheduleTicksRequest(workflow_slug="absent"),
        grpc.StatusCode.NOT_FOUND,
    )
    expect_error(
        stub.ListScheduleTicks, workflow_pb2.ListScheduleTicksRequest(workflow_slug="Not A Slug"), invalid
    )
    assert ticks(clocked, "checked") == []


def test_disabling_stops_ticks_and_reenabling_starts_afresh(
    clocked: RunningServer, clock: ServerClock
) -> None:
    clock.set("2024-01-02T00:30:00+00:00")
    register(clocked, "toggled", hourly(), workflow_pb2.Schedule(enabled=True))
    clock.set("2024-01-02T01:00:00+00:00")
    wait_ticks(clocked, "toggled", 1)
    clock.set("2024-01-02T01:10:00+00:00")
    stored = register(clocked, "toggled", hourly(), workflow_pb2.Schedule(enabled=False))
    assert not stored.schedule.enabled
    clock.set("2024-01-02T03:30:00+00:00")
    settle()
    assert len(ticks(clocked, "toggled")) == 1
    # Re-enabled: the ticks of 02:00 and 03:00 passed while it was off and are not caught up.
    register(
        clocked,
        "toggled",
        hourly(),
        workflow_pb2.Schedule(enabled=True, catch_up=workflow_pb2.CATCH_UP_POLICY_ALL_MISSED),
    )
    settle()
    assert len(ticks(clocked, "toggled")) == 1
    clock.set("2024-01-02T04:00:00+00:00")
    newest = wait_ticks(clocked, "toggled", 2)[0]
    assert iso(newest) == "2024-01-02T04:00Z" and key_of(clocked, newest) == "2024-01-02-03:00"
    # Another cron starts from the registration. Its 04:30 tick closes no new hourly window:
    # the 03:00 window's run (from the 04:00 tick) is still queued, so the tick is skipped.
    clock.set("2024-01-02T04:10:00+00:00")
    register(
        clocked,
        "toggled",
        hourly(),
        workflow_pb2.Schedule(enabled=True, cron_schedule="30 * * * *"),
    )
    clock.set("2024-01-02T04:30:00+00:00")
    newest = wait_ticks(clocked, "toggled", 3)[0]
    assert iso(newest) == "2024-01-02T04:30Z"
    assert newest.outcome == SKIPPED and "still queued" in newest.reason and not newest.run_ids


def test_a_tick_that_cannot_create_its_backfill_is_recorded_failed_and_end_offset_is_respected(
    clocked: RunningServer, clock: ServerClock
) -> None:
    clock.set("2024-01-01T00:30:00+00:00")
    minutely = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(cron_schedule="* * * * *", start="2020-01-01")
    )
    every_key = workflow_pb2.Schedule(
        enabled=True, cron_schedule="0 * * * *", target=workflow_pb2.SCHEDULE_TARGET_ALL_KEYS
    )
    register(clocked, "minutely", minutely, every_key)
    lagging = partitions_pb2.PartitionsDefinition(
        time_window=partitions_pb2.TimeWindowPartitions(
            schedule_type=partitions_pb2.SCHEDULE_TYPE_HOURLY, start="2024-01-01", end_offset=-1
        )
    )
    register(clocked, "lagging", lagging, workflow_pb2.Schedule(enabled=True))

    clock.set("2024-01-01T01:00:00+00:00")
    # Two million keys: more than a backfill holds.
    (failed,) = wait_ticks(clocked, "minutely", 1)
    assert failed.outcome == workflow_pb2.SCHEDULE_TICK_OUTCOME_FAILED
    assert "1,000,000" in failed.reason and not failed.backfill_id
    listed = clocked.stub(backfill_pb2_grpc.BackfillServiceStub).ListBackfills(
        backfill_pb2.ListBackfillsRequest(workflow_slug="minutely")
    )
    assert list(listed.backfills) == []
    # end_offset -1 lists a window only once the next one has closed too: nothing yet at 01:00,
    # then the newest listed window.
    (early,) = wait_ticks(clocked, "lagging", 1)
    assert early.outcome == SKIPPED and not early.run_ids
    clock.set("2024-01-01T02:00:00+00:00")
    fired = wait_ticks(clocked, "lagging", 2)[0]
    assert key_of(clocked, fired) == "2024-01-01-00:00"
    assert wait_ticks(clocked, "minutely", 2)[0].outcome == workflow_pb2.SCHEDULE_TICK_OUTCOME_FAILED


def test_the_clock_file_must_hold_an_instant(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("yesterday", encoding="utf-8")
    result = run_server_to_exit(database_url, "--clock-file", str(path))
    assert result.returncode == 2 and "clock file" in result.stderr
