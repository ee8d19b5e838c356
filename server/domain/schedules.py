"""Schedules: which cron ticks are due, and which of them fire after downtime. Pure: no I/O, no
clock — instants are passed in (integer seconds or microseconds since the epoch, UTC).

Ticks are the instants `ticks.py` computes for a cron in an IANA zone, with Dagster's DST
rules: a daily `30 2 * * *` in America/New_York fires at 03:00 EDT on the day the clocks skip
02:30, an hourly `0 * * * *` fires at both 01:00 EDT and 01:00 EST on the day they repeat it.

- `resolve` turns a workflow's `Schedule` settings and its partitions definition into the
  effective schedule (cron and timezone default to a time-window definition's; the target to
  LATEST_WINDOW for a time-window workflow, ALL_KEYS otherwise), or None when it is disabled.
- `settings_violations` are the registration checks.
- `due_ticks` counts the ticks in (cursor, now] and lists the newest of them; `plan` decides,
  by catch-up policy, which of those fire and which are recorded as SKIPPED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice

from server.domain.errors import FieldViolation, ViolationCollector
from server.domain.partitions import PartitionSpec, TimeWindowSpec
from server.domain.partitions.cron import CronError, normalize_cron, parse_cron
from server.domain.partitions.ticks import BeyondRange, get_schedule
from server.domain.partitions.zones import zone_problem

LATEST_WINDOW = "LATEST_WINDOW"
ALL_KEYS = "ALL_KEYS"
MISSING_KEYS = "MISSING_KEYS"
TARGETS = (LATEST_WINDOW, ALL_KEYS, MISSING_KEYS)
LATEST_ONLY = "LATEST_ONLY"
ALL_MISSED = "ALL_MISSED"
CATCH_UP_POLICIES = (LATEST_ONLY, ALL_MISSED)

# max_catch_up_ticks = 0 means this many; more than the limit is INVALID_ARGUMENT.
DEFAULT_MAX_CATCH_UP_TICKS = 100
MAX_CATCH_UP_TICKS_LIMIT = 10_000
# Skipped ticks recorded per evaluation at most (the newest ones); older ones are only counted.
MAX_RECORDED_SKIPS = 1_000
MICROS = 1_000_000


@dataclass(frozen=True)
class ScheduleSettings:
    """`Workflow.schedule` as given (enums as their names without prefix, '' when unset)."""

    enabled: bool = False
    cron_schedule: str = ""
    target: str = ""
    catch_up: str = ""
    max_catch_up_ticks: int = 0
    timezone: str = ""


@dataclass(frozen=True)
class EffectiveSchedule:
    """A schedule that fires, with every default applied."""

    cron: str  # normalized (macros expanded)
    timezone: str
    target: str  # one of TARGETS
    catch_up: str  # one of CATCH_UP_POLICIES
    max_catch_up_ticks: int  # > 0


def settings_violations(
    settings: ScheduleSettings, spec: PartitionSpec | None, field: str = "workflow.schedule"
) -> list[FieldViolation]:
    """What is wrong with `settings` for a workflow whose partitions definition is `spec`.

    Values that are set are checked whether or not the schedule is enabled; what an enabled
    schedule needs (a cron when the definition has none) only when it is enabled.
    """
    collector = ViolationCollector()
    if settings.cron_schedule.strip():
        try:
            parse_cron(settings.cron_schedule)
        except CronError as error:
            collector.add(f"{field}.cron_schedule", f"invalid cron schedule: {error}")
    elif settings.enabled and not isinstance(spec, TimeWindowSpec):
        collector.add(
            f"{field}.cron_schedule",
            "is required: only a workflow with time-window partitions has a cron to default to",
        )
    if settings.timezone and (problem := zone_problem(settings.timezone)):
        collector.add(f"{field}.timezone", problem)
    if settings.target == LATEST_WINDOW and not isinstance(spec, TimeWindowSpec):
        collector.add(
            f"{field}.target",
            "SCHEDULE_TARGET_LATEST_WINDOW needs a workflow whose assets have time-window partitions; "
            "use ALL_KEYS or MISSING_KEYS for other definitions",
        )
    if settings.target and settings.target not in TARGETS:
        collector.add(f"{field}.target", f"unknown target {settings.target!r}")
    if settings.catch_up and settings.catch_up not in CATCH_UP_POLICIES:
        collector.add(f"{field}.catch_up", f"unknown catch-up policy {settings.catch_up!r}")
    if not 0 <= settings.max_catch_up_ticks <= MAX_CATCH_UP_TICKS_LIMIT:
        collector.add(
            f"{field}.max_catch_up_ticks",
            f"must be between 0 (the default, {DEFAULT_MAX_CATCH_UP_TICKS}) and {MAX_CATCH_UP_TICKS_LIMIT} "
            f"(got {settings.max_catch_up_ticks})",
        )
    return collector.violations


def resolve(settings: ScheduleSettings | None, spec: PartitionSpec | None) -> EffectiveSchedule | None:
    """The effective schedule of valid `settings`; None when there is none or it is disabled."""
    if settings is None or not settings.enabled:
        return None
    window = spec if isinstance(spec, TimeWindowSpec) else None
    cron = settings.cron_schedule.strip() or (window.cron_schedule if window is not None else "")
    if not cron:
        return None
    timezone = settings.timezone or (window.timezone if window is not None else "") or "UTC"
    target = settings.target or (LATEST_WINDOW if window is not None else ALL_KEYS)
    return EffectiveSchedule(
        cron=normalize_cron(cron),
        timezone=timezone,
        target=target,
        catch_up=settings.catch_up or LATEST_ONLY,
        max_catch_up_ticks=settings.max_catch_up_ticks or DEFAULT_MAX_CATCH_UP_TICKS,
    )


# --- ticks ----------------------------------------------------------------------------------------


def _first_index_after(cron: str, timezone: str, after_us: int) -> int:
    """Schedule index of the first tick strictly after `after_us` (ticks are whole seconds)."""
    return get_schedule(cron, timezone).tick_index(math.floor(after_us / MICROS) + 1)


def next_tick(cron: str, timezone: str, after_us: int) -> int | None:
    """The first tick strictly after `after_us`, in microseconds; None past the supported range."""
    schedule = get_schedule(cron, timezone)
    try:
        return schedule.tick_at(_first_index_after(cron, timezone, after_us)) * MICROS
    except BeyondRange:
        return None


def ticks_between(cron: str, timezone: str, after_us: int, until_us: int) -> list[int]:
    """Every tick in (after_us, until_us], in microseconds, oldest first."""
    total, newest = due_ticks(cron, timezone, after_us, until_us, keep=None)
    assert len(newest) == total
    return newest


def due_ticks(
    cron: str, timezone: str, after_us: int, until_us: int, keep: int | None
) -> tuple[int, list[int]]:
    """(how many ticks fall in (after_us, until_us], the newest `keep` of them oldest first, in
    microseconds). Counting is arithmetic, so a long outage costs nothing to measure."""
    if until_us <= after_us:
        return 0, []
    schedule = get_schedule(cron, timezone)
    low = _first_index_after(cron, timezone, after_us)
    high = schedule.tick_index(math.floor(until_us / MICROS) + 1)
    total = max(0, high - low)
    start = low if keep is None else max(low, high - keep)
    found = [tick * MICROS for tick, _ in islice(schedule.iter_ticks(start), high - start)]
    return total, found


# --- catch-up ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTick:
    tick_us: int
    fire: bool
    reason: str = ""  # why a skipped tick is skipped


def plan(effective: EffectiveSchedule, total: int, newest: list[int]) -> list[PlannedTick]:
    """Which of the due ticks fire, oldest first; the others are SKIPPED with a reason.

    `total` ticks are due and `newest` are the latest of them (at least as many as may fire plus
    MAX_RECORDED_SKIPS, or all). One due tick is the normal case and fires. More means the
    schedule was not evaluated for a while (the server was down): LATEST_ONLY fires only the
    newest, ALL_MISSED the newest `max_catch_up_ticks`; the older ones are recorded as SKIPPED
    (at most MAX_RECORDED_SKIPS of them; the oldest recorded one counts those left out).
    """
    if not total or not newest:
        return []
    firing = 1 if effective.catch_up == LATEST_ONLY else min(effective.max_catch_up_ticks, total)
    skipped_total = total - firing
    if effective.catch_up == LATEST_ONLY:
        why = "missed while no server evaluated the schedule; catch_up LATEST_ONLY fires only the newest missed tick"
    else:
        why = (
            "missed while no server evaluated the schedule; catch_up ALL_MISSED fires at most "
            f"max_catch_up_ticks = {effective.max_catch_up_ticks} missed ticks"
        )
    recorded = newest[-(firing + MAX_RECORDED_SKIPS) :]
    skips = recorded[:-firing] if firing < len(recorded) else []
    unrecorded = skipped_total - len(skips)
    planned: list[PlannedTick] = []
    for index, tick in enumerate(skips):
        reason = why
        if index == 0 and unrecorded > 0:
            reason += f" ({unrecorded:,} earlier missed ticks were skipped without a record)"
        planned.append(PlannedTick(tick, False, reason))
    planned.extend(PlannedTick(tick, True) for tick in recorded[len(skips) :])
    return planned


def keep_for(effective: EffectiveSchedule) -> int:
    """How many of the newest due ticks `plan` may need."""
    firing = 1 if effective.catch_up == LATEST_ONLY else effective.max_catch_up_ticks
    return firing + MAX_RECORDED_SKIPS
