"""Schedules: keeping each workflow's schedule state in step with its definition, and evaluating
due ticks — each in one transaction with the runs or backfill it creates.

- `settings_of`, `violations` — `Workflow.schedule` as domain settings and the registration
  checks (cron parses, timezone exists, LATEST_WINDOW needs time windows, max_catch_up_ticks).
- `register_tx` (RegisterWorkflow's transaction): enabling a schedule, or changing its cron or
  timezone, starts it afresh from the registration — no tick before it fires; disabling it
  stops it; registering it unchanged keeps its cursor (missed ticks still catch up).
- `evaluate_tx` (the schedule loop, server/scheduler/schedule_loop.py): the ticks due since the
  cursor, planned by catch-up policy (server/domain/schedules.py), each claimed by inserting
  its unique `(workflow, tick_time)` row and then fired in the same transaction:
  LATEST_WINDOW queues a run for the window that closed at the tick (trigger SCHEDULE,
  source_id = the tick's id); ALL_KEYS / MISSING_KEYS create a backfill (trigger SCHEDULE,
  same source_id) that the dispatcher runs under its cap and retry policy. A tick whose row
  exists already is never fired again, whoever evaluates it and whatever became of its runs.

Outcomes: FIRED (a run or a backfill was created); SKIPPED with a reason (missed during
downtime and left out by the catch-up policy, the window's run still in flight, an earlier
tick's backfill still running, nothing to run); FAILED with the reason when the target could
not be created (say the key is no longer listed) — the tick is recorded and not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from partita.v1 import partitions_pb2, workflow_pb2
from server import backfills, keys, lifecycle
from server.api import convert
from server.catalog import Catalog, WorkflowDefinition
from server.domain import schedules as domain
from server.domain.errors import AlreadyExists, DomainError, FieldViolation
from server.domain.partitions import PartitionSpec, TimeWindowSpec
from server.domain.partitions.keys import quote_key
from server.domain.workflows import ProducedAsset
from server.logging import log_event
from storage import backfills as backfill_store
from storage import schedules as store
from storage.events import Outbox
from storage.models import from_micros, micros
from storage.schedules import ScheduleState, TickRow

logger = logging.getLogger("partita.schedules")

# trigger.principal of the runs and backfills schedules create.
PRINCIPAL = "schedule"
TRIGGER = "SCHEDULE"


# --- definitions ------------------------------------------------------------------------------------


def settings_of(workflow: workflow_pb2.Workflow) -> domain.ScheduleSettings | None:
    if not workflow.HasField("schedule"):
        return None
    schedule = workflow.schedule
    target = ""
    if schedule.target != workflow_pb2.SCHEDULE_TARGET_UNSPECIFIED:
        target = workflow_pb2.ScheduleTarget.Name(schedule.target).removeprefix("SCHEDULE_TARGET_")
    catch_up = ""
    if schedule.catch_up != workflow_pb2.CATCH_UP_POLICY_UNSPECIFIED:
        catch_up = workflow_pb2.CatchUpPolicy.Name(schedule.catch_up).removeprefix("CATCH_UP_POLICY_")
    return domain.ScheduleSettings(
        enabled=schedule.enabled,
        cron_schedule=schedule.cron_schedule,
        target=target,
        catch_up=catch_up,
        max_catch_up_ticks=schedule.max_catch_up_ticks,
        timezone=schedule.timezone,
    )


def _spec(produced: Sequence[ProducedAsset]) -> PartitionSpec | None:
    return next((asset.spec for asset in produced if asset.spec is not None), None)


def violations(workflow: workflow_pb2.Workflow, produced: Sequence[ProducedAsset]) -> list[FieldViolation]:
    """RegisterWorkflow's checks of `workflow.schedule` (none when it is absent)."""
    settings = settings_of(workflow)
    if settings is None:
        return []
    return domain.settings_violations(settings, _spec(produced))


def register_tx(workflow: workflow_pb2.Workflow, produced: Sequence[ProducedAsset], now_us: int) -> None:
    """Inside RegisterWorkflow's transaction: the workflow's schedule state follows its schedule."""
    slug = workflow.slug
    effective = domain.resolve(settings_of(workflow), _spec(produced))
    state = store.get_state(slug, lock=True)
    if effective is None:
        if state is not None and (state.enabled or state.next_tick_time is not None):
            store.save_state(replace(state, enabled=False, next_tick_time=None, update_time=now_us))
            log_event(logger, "schedule disabled", workflow_slug=slug)
        return
    if (
        state is not None
        and state.enabled
        and (state.cron_schedule, state.timezone) == (effective.cron, effective.timezone)
    ):
        return  # unchanged: keep the cursor, so ticks missed meanwhile still catch up
    # Enabled now, or another cron or zone: the first tick that counts is at or after now.
    cursor = now_us - 1 if state is None else max(state.cursor_time, now_us - 1)
    following = domain.next_tick(effective.cron, effective.timezone, cursor)
    store.save_state(ScheduleState(slug, True, effective.cron, effective.timezone, cursor, following, now_us))
    log_event(
        logger,
        "schedule enabled",
        workflow_slug=slug,
        cron_schedule=effective.cron,
        timezone=effective.timezone,
        target=effective.target,
        next_tick_time=from_micros(following).isoformat() if following is not None else None,
    )


# --- evaluating ---------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What one evaluation of a workflow's schedule did."""

    fired: int = 0
    skipped: int = 0
    failed: int = 0
    runs: int = 0
    backfills: int = 0


def evaluate_tx(outbox: Outbox, catalog: Catalog, workflow_slug: str, now: datetime) -> Evaluation:
    """Evaluates the workflow's due ticks (those in (cursor, now]) and moves its cursor to `now`.

    The state row is locked first (PostgreSQL: FOR UPDATE), so two evaluations of one schedule
    (a deposed leader's and the new one's) run one after the other and the second finds nothing
    due; each tick row is inserted ON CONFLICT DO NOTHING before anything it creates.
    """
    now_us = micros(now)
    result = Evaluation()
    state = store.get_state(workflow_slug, lock=True)
    if state is None or not state.enabled or state.next_tick_time is None or state.next_tick_time > now_us:
        return result
    definition = catalog.workflow(workflow_slug)
    settings = settings_of(definition.message) if definition is not None else None
    effective = None
    if definition is not None and settings is not None:
        # Definitions stored before schedules were checked (migration 6) may not hold.
        problems = domain.settings_violations(settings, definition.spec)
        if problems:
            log_event(
                logger,
                "schedule disabled: its settings are invalid",
                level=logging.WARNING,
                workflow_slug=workflow_slug,
                problems=[f"{problem.field}: {problem.description}" for problem in problems],
            )
        else:
            effective = domain.resolve(settings, definition.spec)
    if definition is None or effective is None:
        store.save_state(replace(state, enabled=False, next_tick_time=None, update_time=now_us))
        return result
    total, newest = domain.due_ticks(
        effective.cron, effective.timezone, state.cursor_time, now_us, domain.keep_for(effective)
    )
    for planned in domain.plan(effective, total, newest):
        tick_id = store.insert_tick(workflow_slug, planned.tick_us, now_us)
        if tick_id is None:
            continue  # evaluated already (another replica, or before a restart)
        if not planned.fire:
            row = store.finish_tick(tick_id, store.SKIPPED, planned.reason)
        else:
            row = _fire(outbox, definition, effective, tick_id, planned.tick_us, now)
        _count(result, row)
        _log_tick(row)
    cursor = max(state.cursor_time, now_us)
    store.advance(
        workflow_slug,
        state.next_tick_time,
        effective.cron,
        effective.timezone,
        cursor,
        domain.next_tick(effective.cron, effective.timezone, cursor),
        now_us,
    )
    return result


def _count(result: Evaluation, row: TickRow) -> None:
    if row.outcome == store.FIRED:
        result.fired += 1
        result.runs += len(row.run_ids)
        result.backfills += row.backfill_id is not None
    elif row.outcome == store.SKIPPED:
        result.skipped += 1
    else:
        result.failed += 1


def _log_tick(row: TickRow) -> None:
    log_event(
        logger,
        f"schedule tick {row.outcome.lower()}",
        level=logging.WARNING if row.outcome == store.FAILED else logging.INFO,
        workflow_slug=row.workflow_slug,
        tick_id=str(row.id),
        tick_time=from_micros(row.tick_time).isoformat(),
        outcome=row.outcome,
        reason=row.reason,
        run_ids=[str(run_id) for run_id in row.run_ids],
        backfill_id=str(row.backfill_id) if row.backfill_id is not None else "",
    )


def _fire(
    outbox: Outbox,
    definition: WorkflowDefinition,
    effective: domain.EffectiveSchedule,
    tick_id: int,
    tick_us: int,
    now: datetime,
) -> TickRow:
    """Creates the tick's run or backfill in a savepoint; a domain error rolls it back and
    records the tick FAILED instead."""
    mark = len(outbox.events)
    try:
        with store.savepoint():
            if effective.target == domain.LATEST_WINDOW:
                return _fire_latest_window(outbox, definition, tick_id, tick_us, now)
            return _fire_backfill(outbox, definition, effective.target, tick_id, tick_us, now)
    except DomainError as error:
        del outbox.events[mark:]
        return store.finish_tick(tick_id, store.FAILED, error.message)


def _fire_latest_window(
    outbox: Outbox, definition: WorkflowDefinition, tick_id: int, tick_us: int, now: datetime
) -> TickRow:
    from server.api.run_service import new_run  # imported late: run_service imports lifecycle

    spec = definition.spec
    if not isinstance(spec, TimeWindowSpec):
        return store.finish_tick(
            tick_id, store.FAILED, "SCHEDULE_TARGET_LATEST_WINDOW needs time-window partitions"
        )
    tick = from_micros(tick_us)
    if spec.end is not None and tick > spec.end:
        return store.finish_tick(
            tick_id,
            store.SKIPPED,
            f"the tick is past the partitions definition's end ({spec.end.isoformat()})",
        )
    key = _latest_window_key(spec, tick)
    if key is None:
        return store.finish_tick(
            tick_id, store.SKIPPED, "no window of the partitions definition had closed by the tick"
        )
    coverage = keys.single(definition, key, now, register=False)
    fresh = new_run(definition, coverage, {}, {}, TRIGGER, PRINCIPAL, source_id=str(tick_id))
    try:
        run, created = lifecycle.enqueue_tx(outbox, fresh, coverage, now, use_existing=True)
    except AlreadyExists as error:  # a ranged run in flight covers the key
        return store.finish_tick(tick_id, store.SKIPPED, error.message)
    if not created:
        return store.finish_tick(
            tick_id,
            store.SKIPPED,
            f"run {run.id} for key {quote_key(key)} is still {run.state.lower()}; "
            "a slice has one run in flight at a time",
        )
    return store.finish_tick(tick_id, store.FIRED, run_ids=[run.id])


def _latest_window_key(spec: TimeWindowSpec, tick: datetime) -> str | None:
    """The window that closed at the tick (the latest one ended by then). With a negative
    end_offset, which lists a window only k windows later, the newest window listed then."""
    if spec.end_offset < 0:
        count = spec.count(tick)
        return spec.keys_page(count - 1, 1, tick)[0] if count else None
    window = spec.last_closed_window(tick)
    return window.key if window is not None else None


def _fire_backfill(
    outbox: Outbox, definition: WorkflowDefinition, target: str, tick_id: int, tick_us: int, now: datetime
) -> TickRow:
    running = store.open_schedule_backfill(definition.slug)
    if running is not None:
        return store.finish_tick(
            tick_id, store.SKIPPED, f"backfill {running} of an earlier tick is still running"
        )
    selection = partitions_pb2.PartitionSelection()
    if target == domain.MISSING_KEYS:
        selection.missing.SetInParent()
    else:
        selection.all.SetInParent()
    planned = backfills.plan_keys(definition, selection, from_micros(tick_us))
    if not planned:
        why = (
            "every key is materialized" if target == domain.MISSING_KEYS else "the definition has no keys yet"
        )
        return store.finish_tick(tick_id, store.SKIPPED, why)
    new = backfill_store.NewBackfill(
        workflow_slug=definition.slug,
        selection=backfills.selection_json(selection),
        parameters="{}",
        max_concurrent_runs=backfills.DEFAULT_MAX_CONCURRENT_RUNS,
        retry_policy="",
        labels="{}",
        trigger_principal=PRINCIPAL,
        trigger_kind=TRIGGER,
        trigger_source_id=str(tick_id),
    )
    row = backfills.create_tx(outbox, new, planned, micros(now), definition.max_keys_per_run)
    return store.finish_tick(tick_id, store.FIRED, backfill_id=row.id)


# --- reading ------------------------------------------------------------------------------------------


def tick_message(row: TickRow) -> workflow_pb2.ScheduleTick:
    message = workflow_pb2.ScheduleTick(
        workflow_slug=row.workflow_slug,
        outcome=workflow_pb2.ScheduleTickOutcome.Value(f"SCHEDULE_TICK_OUTCOME_{row.outcome}"),
        reason=row.reason,
        run_ids=[str(run_id) for run_id in row.run_ids],
        backfill_id=str(row.backfill_id) if row.backfill_id is not None else "",
    )
    tick_time = convert.timestamp(row.tick_time)
    evaluate_time = convert.timestamp(row.evaluate_time)
    assert tick_time is not None and evaluate_time is not None
    message.tick_time.CopyFrom(tick_time)
    message.evaluate_time.CopyFrom(evaluate_time)
    return message
