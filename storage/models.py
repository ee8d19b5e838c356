"""Peewee models of the current schema (the sum of the migrations).

Migrations keep their own frozen copies; these follow the newest migration. Times are
integer microseconds since the Unix epoch (UTC); JSON documents are stored as text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import peewee as pw

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Bound at runtime to the store's database (see `bind_models`).
database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Workflow(BaseModel):
    slug = pw.CharField(max_length=128, primary_key=True)
    description = pw.TextField(default="")
    definition = pw.TextField()
    max_concurrent_runs = pw.IntegerField(default=0)
    create_time = pw.BigIntegerField()
    update_time = pw.BigIntegerField()


class Asset(BaseModel):
    asset_id = pw.CharField(max_length=128, primary_key=True)
    workflow_slug = pw.CharField(max_length=128)
    description = pw.TextField(default="")
    partitioning = pw.TextField(default="")
    partition_kind = pw.CharField(max_length=16, default="")


class Run(BaseModel):
    id = pw.BigAutoField()
    workflow_slug = pw.CharField(max_length=128)
    partition_key = pw.CharField(max_length=255, default="")
    backfill_id = pw.BigIntegerField(null=True)
    # 0 for every run since migration 2; in-flight runs carried over from version 1 keep their
    # own slot so the in-flight unique index could be built (see migration 2).
    dedupe_slot = pw.BigIntegerField(default=0)
    parameters = pw.TextField(default="{}")
    requested_parameters = pw.TextField(default="{}")
    state = pw.CharField(max_length=16)
    attempt = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField(default=3)
    # JSON {initial_backoff_s, backoff_coefficient, maximum_backoff_s} in force for this run.
    retry_policy = pw.TextField(default="")
    next_attempt_time = pw.BigIntegerField(null=True)
    trigger_kind = pw.CharField(max_length=16, default="MANUAL")
    trigger_source_id = pw.CharField(max_length=255, default="")
    trigger_principal = pw.CharField(max_length=255, default="")
    labels = pw.TextField(default="{}")
    worker_id = pw.CharField(max_length=255, default="")
    lease_id = pw.CharField(max_length=64, default="")
    lease_expire_time = pw.BigIntegerField(null=True)
    progress = pw.DoubleField(default=0.0)
    progress_message = pw.TextField(default="")
    error_message = pw.TextField(default="")
    cancel_requested = pw.BooleanField(default=False)
    create_time = pw.BigIntegerField()
    start_time = pw.BigIntegerField(null=True)
    end_time = pw.BigIntegerField(null=True)
    update_time = pw.BigIntegerField()
    # Why a queued run is held (upstream policy WAIT, migration 5); '' when claimable.
    hold_reason = pw.TextField(default="")
    # A ranged run's keys (migration 7): the inclusive range (time-window and static keys, ''
    # for dynamic ones) and every covered key as a JSON list; '' for a single-key run, whose
    # key is `partition_key`.
    range_start_key = pw.CharField(max_length=255, default="")
    range_end_key = pw.CharField(max_length=255, default="")
    range_keys = pw.TextField(default="")
    # Whether the run claims its keys in `run_slice` while in flight (workflows whose backfill
    # policy allows ranged runs), so the claims are released when it ends.
    claims_slices = pw.BooleanField(default=False)


class Materialization(BaseModel):
    id = pw.BigAutoField()
    asset_id = pw.CharField(max_length=128)
    partition_key = pw.CharField(max_length=255, default="")
    run_id = pw.BigIntegerField(null=True)
    artifacts = pw.TextField(default="[]")
    payload = pw.TextField(default="{}")
    inputs = pw.TextField(default="[]")
    create_time = pw.BigIntegerField()


class RunEvent(BaseModel):
    sequence = pw.BigAutoField()
    time = pw.BigIntegerField()
    run_id = pw.BigIntegerField(null=True)
    workflow_slug = pw.CharField(max_length=128, default="")
    partition_key = pw.CharField(max_length=255, default="")
    backfill_id = pw.BigIntegerField(null=True)
    asset_id = pw.CharField(max_length=128, default="")
    type = pw.CharField(max_length=24)
    state = pw.CharField(max_length=16, default="")
    attempt = pw.IntegerField(default=0)
    progress = pw.DoubleField(default=0.0)
    message = pw.TextField(default="")
    materialization_ids = pw.TextField(default="[]")
    data = pw.TextField(default="{}")


class DynamicPartition(BaseModel):
    id = pw.BigAutoField()
    asset_id = pw.CharField(max_length=128)
    partition_key = pw.CharField(max_length=255)
    create_time = pw.BigIntegerField()
    delete_time = pw.BigIntegerField(null=True)


class PartitionState(BaseModel):
    asset_id = pw.CharField(max_length=128)
    partition_key = pw.CharField(max_length=255)
    position = pw.BigIntegerField()
    status = pw.CharField(max_length=16)
    latest_run_id = pw.BigIntegerField(null=True)
    in_flight_run_id = pw.BigIntegerField(null=True)
    latest_materialization_id = pw.BigIntegerField(null=True)
    latest_materialization_time = pw.BigIntegerField(null=True)
    latest_failure_time = pw.BigIntegerField(null=True)
    update_time = pw.BigIntegerField()
    # Index in the definition's key list (migration 3); None for dynamic keys and detached rows.
    ordinal = pw.BigIntegerField(null=True)

    class Meta:
        primary_key = pw.CompositeKey("asset_id", "partition_key")


class Backfill(BaseModel):
    id = pw.BigAutoField()
    workflow_slug = pw.CharField(max_length=128)
    state = pw.CharField(max_length=32)
    selection = pw.TextField()
    parameters = pw.TextField(default="{}")
    max_concurrent_runs = pw.IntegerField()
    retry_policy = pw.TextField(default="")
    labels = pw.TextField(default="{}")
    trigger_kind = pw.CharField(max_length=16, default="MANUAL")
    trigger_source_id = pw.CharField(max_length=255, default="")
    trigger_principal = pw.CharField(max_length=255, default="")
    create_time = pw.BigIntegerField()
    end_time = pw.BigIntegerField(null=True)
    update_time = pw.BigIntegerField()
    # Keys per state (migration 4), kept in the transaction of every key transition.
    total_count = pw.BigIntegerField(default=0)
    pending_count = pw.BigIntegerField(default=0)
    queued_count = pw.BigIntegerField(default=0)
    running_count = pw.BigIntegerField(default=0)
    succeeded_count = pw.BigIntegerField(default=0)
    failed_count = pw.BigIntegerField(default=0)
    canceled_count = pw.BigIntegerField(default=0)
    # Keys one run covers at most (migration 7); max_concurrent_runs times it caps in-flight keys.
    keys_per_run = pw.BigIntegerField(default=1)


class BackfillPartition(BaseModel):
    backfill_id = pw.BigIntegerField()
    ordinal = pw.IntegerField()
    partition_key = pw.CharField(max_length=255)
    state = pw.CharField(max_length=16)
    attempts = pw.IntegerField(default=0)
    run_id = pw.BigIntegerField(null=True)
    last_error = pw.TextField(default="")
    update_time = pw.BigIntegerField()
    # BACKFILL, or RETRY once RetryBackfill reopened the key (migration 4).
    next_trigger = pw.CharField(max_length=16, default="BACKFILL")

    class Meta:
        primary_key = pw.CompositeKey("backfill_id", "ordinal")


class RunSlice(BaseModel):
    """A key covered by an in-flight run of a workflow with a ranged backfill policy (migration 7)."""

    workflow_slug = pw.CharField(max_length=128)
    partition_key = pw.CharField(max_length=255)
    run_id = pw.BigIntegerField(index=True)

    class Meta:
        primary_key = pw.CompositeKey("workflow_slug", "partition_key")


class RequestRecord(BaseModel):
    method = pw.CharField(max_length=64)
    request_id = pw.CharField(max_length=128)
    request_hash = pw.CharField(max_length=64)
    response = pw.BlobField()
    create_time = pw.BigIntegerField()

    class Meta:
        primary_key = pw.CompositeKey("method", "request_id")


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Workflow,
    Asset,
    Run,
    Materialization,
    RunEvent,
    DynamicPartition,
    PartitionState,
    Backfill,
    BackfillPartition,
    RunSlice,
    RequestRecord,
)


def bind_models(db: pw.Database) -> None:
    database_proxy.initialize(db)


def micros(instant: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)
