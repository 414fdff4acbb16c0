"""podtask.dev/v1alpha1: the single source of truth for every podtask resource.

The CRDs in ``crds/`` are generated from these models (``make crds``), so each
``description`` here is what ``kubectl explain`` prints, and each constraint is
enforced both by the SDK (pydantic) and by the API server (OpenAPI + CEL).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AfterValidator, Field, field_validator

from podtask.api.base import (
    CONDITIONS_SCHEMA_EXTRA,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    GROUP,
    Condition,
    FreeJSON,
    FreeObject,
    Model,
    ObjectMeta,
    Quantity,
    StatusModel,
    immutable,
)
from podtask.api.durations import Duration, parse_duration
from podtask.api.machines import DEFAULT_MACHINE, MachineName

VERSION = "v1alpha1"
API_VERSION: Literal["podtask.dev/v1alpha1"] = "podtask.dev/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION

MAX_TAGS = 10
MAX_TAG_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 2048
MAX_ATTEMPTS_CAP = 250
MAX_INLINE_PAYLOAD_BYTES = 512 * 1024
"""Inline payloads beyond this go in a ConfigMap or Secret (``payloadFrom``): the
whole TaskRun must stay well under etcd's 1.5 MiB request limit."""
MAX_METADATA_BYTES = 256 * 1024
"""Trigger.dev's TASK_RUN_METADATA_MAXIMUM_SIZE."""
MIN_MAX_DURATION_SECONDS = 5
MAX_BATCH_WAIT_RUNS = 1000
"""Children one batch_trigger_and_wait may create (Trigger.dev's batch v2 limit)."""

Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH)]
QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (how size limits are measured)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _limit_size(limit: int, what: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None and (size := json_size(value)) > limit:
            raise ValueError(f"{what} is {size} bytes as JSON; the limit is {limit} bytes")
        return value

    return AfterValidator(check)


def _min_duration(seconds: float) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and parse_duration(value).total_seconds() < seconds:
            raise ValueError(f"must be at least {seconds:g}s")
        return value

    return AfterValidator(check)


# --------------------------------------------------------------------------- shared parts


class KeyRef(Model):
    """A key in a ConfigMap or Secret of the run's namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap or Secret.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within it.",
    )
    optional: bool | None = Field(
        default=None, description="Whether a missing object or key is allowed."
    )


class FieldRef(Model):
    """A field of the run's pod, as in a Kubernetes env var's fieldRef."""

    field_path: str = Field(description="Path of the field, e.g. metadata.name.")


class EnvVarSource(Model):
    """Where an environment variable's value comes from."""

    __exactly_one__ = (("config_map_key_ref", "secret_key_ref", "field_ref"),)

    config_map_key_ref: KeyRef | None = Field(default=None, description="A ConfigMap key.")
    secret_key_ref: KeyRef | None = Field(default=None, description="A Secret key.")
    field_ref: FieldRef | None = Field(default=None, description="A field of the pod.")


class EnvVar(Model):
    """An environment variable for the run's container."""

    __exclusive__ = (("value", "value_from"),)

    name: str = Field(
        min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a ConfigMap, Secret or pod field."
    )


class LocalObjectRef(Model):
    """A ConfigMap or Secret in the same namespace."""

    name: ObjectName = Field(description="Object name.")
    optional: bool | None = Field(default=None, description="Whether it may be missing.")


class EnvFromSource(Model):
    """All keys of a ConfigMap or Secret as environment variables."""

    __exactly_one__ = (("config_map_ref", "secret_ref"),)

    prefix: str | None = Field(default=None, description="Prefix added to every key.")
    config_map_ref: LocalObjectRef | None = Field(default=None, description="The ConfigMap.")
    secret_ref: LocalObjectRef | None = Field(default=None, description="The Secret.")


class OutOfMemoryPolicy(Model):
    """What to do when an attempt is OOMKilled."""

    machine: MachineName = Field(
        description="Retry the run on this (bigger) machine preset if attempts remain."
    )


class RetryPolicy(Model):
    """How failed attempts are retried; Trigger.dev's defaults and meanings."""

    max_attempts: int = Field(
        default=3,
        ge=1,
        le=MAX_ATTEMPTS_CAP,
        description="Attempts in total, counting the first. Defaults to 3.",
    )
    factor: float = Field(
        default=2.0, ge=1.0, le=10.0, description="Backoff multiplier per attempt. Defaults to 2."
    )
    min_timeout: Duration = Field(
        default="1s", description="Delay before the first retry. Defaults to 1s."
    )
    max_timeout: Duration = Field(
        default="60s", description="Longest delay between attempts. Defaults to 60s."
    )
    randomize: bool = Field(
        default=True,
        description="Multiply each delay by a random factor in [1, 2) to spread retries. "
        "Defaults to true.",
    )
    out_of_memory: OutOfMemoryPolicy | None = Field(
        default=None, description="Retry an OOMKilled attempt on a bigger machine."
    )


class ResourceRequestRatios(Model):
    """Requests as a fraction of the preset's limits (1 = Guaranteed pods)."""

    cpu: float = Field(default=1.0, gt=0, le=1, description="CPU request / limit. Defaults to 1.")
    memory: float = Field(
        default=1.0, gt=0, le=1, description="Memory request / limit. Defaults to 1."
    )


# --------------------------------------------------------------------------- Task


class TaskSpec(Model):
    """A deployed task: the code to run and its defaults."""

    image: str = Field(min_length=1, description="Container image holding the task's code.")
    entrypoint: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
        description="The task function as module:function, e.g. myapp.tasks:send_welcome.",
    )
    version: str | None = Field(
        default=None, max_length=128, description="The deployed version, e.g. 20261124.1."
    )
    description: str | None = Field(
        default=None, max_length=1024, description="What the task does."
    )
    machine: MachineName = Field(
        default=DEFAULT_MACHINE,
        description="Machine preset sizing the run's pod. Defaults to small-1x.",
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="Retry policy for failed attempts."
    )
    queue: QueueName | None = Field(
        default=None,
        description="Queue the task's runs join; without one each task gets its own queue.",
    )
    max_duration: Annotated[Duration | None, _min_duration(MIN_MAX_DURATION_SECONDS)] = Field(
        default=None,
        description="Longest an attempt may run (waits excluded) before it is TimedOut. "
        "At least 5s.",
    )
    ttl: Duration | None = Field(
        default=None, description="Expire a run that has not started this long after queueing."
    )
    env: list[EnvVar] = Field(
        default_factory=list, description="Environment variables for the run's container."
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="ConfigMaps or Secrets exposed as environment."
    )
    service_account_name: ObjectName | None = Field(
        default=None,
        description="ServiceAccount of the run's pod. None by default: run pods need no "
        "Kubernetes credentials.",
    )
    payload_schema: FreeObject | None = Field(
        default=None, description="JSON Schema the payload must satisfy (from a schema_task)."
    )


class TaskStatus(StatusModel):
    """What the operator last observed of the Task."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation last processed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, with a reason when the task cannot run.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


# --------------------------------------------------------------------------- TaskRun


class Phase(StrEnum):
    """A run's status, with Trigger.dev's meanings."""

    DELAYED = "Delayed"
    QUEUED = "Queued"
    DEQUEUED = "Dequeued"
    EXECUTING = "Executing"
    WAITING = "Waiting"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    CRASHED = "Crashed"
    SYSTEM_FAILURE = "SystemFailure"
    EXPIRED = "Expired"
    TIMED_OUT = "TimedOut"

    @property
    def is_final(self) -> bool:
        return self in FINAL_PHASES


FINAL_PHASES = frozenset(
    {
        Phase.COMPLETED,
        Phase.FAILED,
        Phase.CANCELED,
        Phase.CRASHED,
        Phase.SYSTEM_FAILURE,
        Phase.EXPIRED,
        Phase.TIMED_OUT,
    }
)


class PayloadSource(Model):
    """A payload kept outside the TaskRun, for payloads over the inline limit."""

    __exactly_one__ = (("config_map_key_ref", "secret_key_ref"),)

    config_map_key_ref: KeyRef | None = Field(default=None, description="A ConfigMap key.")
    secret_key_ref: KeyRef | None = Field(default=None, description="A Secret key.")


class IdempotencyScope(StrEnum):
    GLOBAL = "global"
    RUN = "run"
    ATTEMPT = "attempt"


class TaskRunSpec(Model):
    """One run of a task: what to run it with and how."""

    __exclusive__ = (("payload", "payload_from"), ("delay", "delay_until"))

    task: ObjectName = Field(
        description="Name of the Task to run.",
        json_schema_extra=immutable("task is immutable"),
    )
    payload: Annotated[FreeJSON, _limit_size(MAX_INLINE_PAYLOAD_BYTES, "payload")] = Field(
        default=None,
        description="The JSON payload passed to the task function (up to 512 KiB inline).",
    )
    payload_from: PayloadSource | None = Field(
        default=None, description="Read the JSON payload from a ConfigMap or Secret key."
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description="Triggers with the same task and key make one run.",
        json_schema_extra=immutable("idempotencyKey is immutable"),
    )
    idempotency_key_scope: IdempotencyScope | None = Field(
        default=None,
        description="global, run (per parent run; the default inside a run) or attempt.",
    )
    idempotency_key_ttl: Duration | None = Field(
        default=None,
        alias="idempotencyKeyTTL",
        description="How long the key dedupes triggers. Defaults to 30d.",
    )
    concurrency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Runs with the same key share their own copy of the queue's limits.",
    )
    queue: QueueName | None = Field(
        default=None, description="Queue to run in; overrides the Task's."
    )
    delay: Duration | None = Field(
        default=None, description="Start no sooner than this long after creation."
    )
    delay_until: datetime | None = Field(
        default=None, description="Start no sooner than this time (RFC 3339)."
    )
    ttl: Duration | None = Field(
        default=None, description="Expire the run if it has not started this long after queueing."
    )
    machine: MachineName | None = Field(
        default=None, description="Machine preset; overrides the Task's."
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ATTEMPTS_CAP,
        description="Attempts in total; overrides the Task's retry policy.",
    )
    max_duration: Annotated[Duration | None, _min_duration(MIN_MAX_DURATION_SECONDS)] = Field(
        default=None, description="Longest an attempt may run; overrides the Task's. At least 5s."
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="Up to 10 tags of at most 128 characters, for filtering runs.",
    )
    metadata: Annotated[FreeObject | None, _limit_size(MAX_METADATA_BYTES, "metadata")] = Field(
        default=None, description="Initial run metadata (a JSON object up to 256 KiB)."
    )
    priority: int | None = Field(
        default=None,
        ge=0,
        le=86400 * 30,
        description="Seconds of head start: a run with priority 10 goes ahead of runs queued "
        "up to 10s before it.",
    )
    parent_run: ObjectName | None = Field(
        default=None,
        description="The run that triggered this one.",
        json_schema_extra=immutable("parentRun is immutable"),
    )
    replay_of: ObjectName | None = Field(
        default=None, description="The run this one replays (same task and payload)."
    )
    cancel: bool | None = Field(default=None, description="Set to true to cancel the run.")

    @field_validator("tags")
    @classmethod
    def _tags_unique(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError("tags must be unique")
        return tags


class Attempt(StatusModel):
    """One attempt: one pod."""

    number: int = Field(ge=1, description="Attempt number, from 1.")
    pod: str = Field(description="Name of the attempt's pod.")
    machine: str | None = Field(default=None, description="Machine preset the pod ran on.")
    dequeued_at: datetime | None = Field(
        default=None, description="When the attempt was admitted to its queue (pod creation)."
    )
    started_at: datetime | None = Field(default=None, description="When the pod started.")
    finished_at: datetime | None = Field(default=None, description="When the attempt ended.")
    exit_code: int | None = Field(default=None, description="The container's exit code.")
    reason: str | None = Field(
        default=None, description="Why it ended, e.g. Completed, Error, OOMKilled, Evicted."
    )
    message: str | None = Field(default=None, description="Details of the ending.")
    counted: bool = Field(
        default=True,
        description="False when an infrastructure failure did not use up an attempt.",
    )


class OutputRef(StatusModel):
    """Where output too large for the status is kept."""

    kind: Literal["Secret", "ObjectStore"] = Field(description="Secret or ObjectStore.")
    names: list[str] = Field(
        default_factory=list, description="Secrets holding the output's chunks, in order."
    )
    url: str | None = Field(default=None, description="Object URL, for ObjectStore.")
    size: int = Field(ge=0, description="Output size in bytes (JSON).")
    sha256: str = Field(description="SHA-256 of the output's JSON bytes.")


class RunError(StatusModel):
    """A structured error reported by the runner or the operator."""

    type: str = Field(description="Error type, e.g. ValueError or TASK_PROCESS_OOM_KILLED.")
    message: str = Field(default="", description="Error message.")
    stack: str | None = Field(default=None, description="Stack trace excerpt.")


WaitKind = Literal["Duration", "Token", "Run", "Batch"]


class WaitingFor(StatusModel):
    """What a Waiting run waits for."""

    kind: WaitKind = Field(description="Duration, Token, Run or Batch.")
    until: datetime | None = Field(default=None, description="Resume time of a timed wait.")
    token: str | None = Field(default=None, description="WaitToken name.")
    runs: list[str] = Field(default_factory=list, description="Child runs waited on.")
    since: datetime | None = Field(default=None, description="When the wait began.")
    position: int | None = Field(
        default=None, ge=0, description="The wait's position in the run's journal."
    )


JournalKind = Literal["Run", "Batch", "Trigger", "Duration", "CreateToken", "Token", "Step"]

MAX_JOURNAL_BYTES = 256 * 1024
"""Largest journal, as JSON: it lives in the TaskRun's status, next to the payload,
output and metadata, and the whole object must stay under etcd's 1.5 MiB."""
MAX_JOURNAL_ENTRIES = 10_000


class JournalEntry(StatusModel):
    """One thing the function did that a replay must not do again; its index is its key."""

    # Child outputs are not copied here (a replay reads them from the children); step
    # outputs are, as steps have nowhere else to live.

    kind: JournalKind = Field(
        description="Run, Batch or Trigger (child runs), Duration, CreateToken, Token or Step."
    )
    name: str | None = Field(
        default=None,
        description="What was called: the child's task id, or the step's key. A replay that "
        "reaches a different call at this position fails instead of guessing.",
    )
    runs: list[str] | None = Field(default=None, description="Child runs created here.")
    until: datetime | None = Field(default=None, description="End of a Duration wait.")
    token: str | None = Field(default=None, description="WaitToken created or waited on.")
    output: FreeJSON = Field(default=None, description="A Step's result.")


class Journal(StatusModel):
    """What the current attempt's function has done so far, for checkpoint by replay."""

    attempt: int = Field(ge=1, description="The attempt the entries belong to.")
    entries: list[JournalEntry] = Field(
        default_factory=list, description="Entries in the order the function reached them."
    )


class TaskRunStatus(StatusModel):
    """What happened to the run, written by the operator."""

    phase: Phase | None = Field(default=None, description="The run's status.")
    attempt: int | None = Field(default=None, description="Current attempt number.")
    queue: str | None = Field(default=None, description="The queue the run is in.")
    machine: str | None = Field(default=None, description="Machine preset of the next pod.")
    attempts: list[Attempt] = Field(
        default_factory=list, description="Every attempt so far, oldest first."
    )
    output: FreeJSON = Field(default=None, description="The function's return value.")
    output_ref: OutputRef | None = Field(
        default=None, description="Where a large output is kept instead of output."
    )
    error: RunError | None = Field(default=None, description="Why the run failed.")
    metadata: FreeObject | None = Field(default=None, description="Live run metadata.")
    task_snapshot: TaskSpec | None = Field(
        default=None, description="The Task's spec when the run started; later edits don't apply."
    )
    waiting_for: WaitingFor | None = Field(default=None, description="What the run waits for.")
    journal: Journal | None = Field(
        default=None,
        description="Children, waits, tokens and steps of the current attempt, replayed "
        "when the run resumes after a checkpoint.",
    )
    created_at: datetime | None = Field(default=None, description="When the run was created.")
    queued_at: datetime | None = Field(default=None, description="When the run joined its queue.")
    started_at: datetime | None = Field(default=None, description="When the first pod started.")
    finished_at: datetime | None = Field(default=None, description="When the run ended.")
    next_attempt_at: datetime | None = Field(
        default=None, description="When the next attempt may start (retry backoff)."
    )
    expires_at: datetime | None = Field(
        default=None, description="When a run still queued becomes Expired."
    )
    idempotency_key_expires_at: datetime | None = Field(
        default=None, description="After this time the idempotency key makes a new run."
    )
    duration: str | None = Field(default=None, description="Run time so far, e.g. 1m30s.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Admitted, Ready and other conditions with reasons.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last processed."
    )


# --------------------------------------------------------------------------- Schedule


def validate_cron(expression: str) -> str:
    """Five cron fields, six with seconds first (a podtask extension), or @hourly style."""
    fields = expression.split()
    if not expression.startswith("@") and len(fields) not in (5, 6):
        raise ValueError(
            f"{expression!r} has {len(fields)} fields; a cron needs 5 (minute hour day month "
            "weekday), 6 with seconds first, or a macro like @hourly"
        )
    if not croniter.is_valid(expression, second_at_beginning=len(fields) == 6):
        raise ValueError(f"{expression!r} is not a valid cron expression")
    return expression


def validate_timezone(name: str) -> str:
    """An IANA time zone name such as Europe/Berlin."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from error
    return name


Cron = Annotated[str, AfterValidator(validate_cron)]
TimeZone = Annotated[str, AfterValidator(validate_timezone)]


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class MissedRunPolicy(StrEnum):
    SKIP = "Skip"
    RUN_ONCE = "RunOnce"


class ScheduleSpec(Model):
    """Run a task on a cron schedule."""

    task: ObjectName = Field(description="Name of the Task to run.")
    cron: Cron = Field(
        min_length=1,
        max_length=256,
        pattern=r"^(@[a-z]+|\S+( +\S+){4,5})$",
        description="Cron expression: 5 fields, 6 with seconds first (a podtask extension), "
        "or @hourly, @daily, @weekly, @monthly, @yearly.",
    )
    timezone: TimeZone = Field(
        default="UTC", description="IANA time zone the cron is read in. Defaults to UTC."
    )
    external_id: str | None = Field(
        default=None,
        max_length=256,
        description="Your identifier (e.g. a user id), passed to every run and filterable.",
    )
    deduplication_key: str | None = Field(
        default=None,
        max_length=256,
        description="Stable identity: creating a schedule with this key again updates it.",
    )
    payload: FreeObject | None = Field(
        default=None, description="Extra JSON passed to each run under payload.data."
    )
    suspend: bool = Field(default=False, description="Stop creating runs. Defaults to false.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.ALLOW,
        description="Allow overlapping runs, Forbid (skip a tick while one runs) or Replace "
        "(cancel the running one). Defaults to Allow.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None, ge=0, description="A tick later than this many seconds is missed."
    )
    missed_run_policy: MissedRunPolicy = Field(
        default=MissedRunPolicy.SKIP,
        description="Skip missed ticks (the default, like Trigger.dev) or RunOnce for the "
        "latest missed tick within startingDeadlineSeconds.",
    )
    successful_runs_history_limit: int = Field(
        default=3, ge=0, description="Completed runs kept. Defaults to 3."
    )
    failed_runs_history_limit: int = Field(
        default=1, ge=0, description="Failed runs kept. Defaults to 1."
    )
    queue: QueueName | None = Field(default=None, description="Queue for the runs.")
    machine: MachineName | None = Field(default=None, description="Machine preset for the runs.")
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Tags added to every run."
    )
    ttl: Duration | None = Field(
        default=None, description="Expire a run not started this long after its tick."
    )


class ScheduledRun(StatusModel):
    """A run created by the schedule."""

    name: str = Field(description="TaskRun name.")
    scheduled_time: datetime = Field(description="The tick it was created for.")
    phase: str | None = Field(default=None, description="Its last seen phase.")


class ScheduleStatus(StatusModel):
    """What the schedule has done."""

    last_schedule_time: datetime | None = Field(
        default=None, description="The latest tick that created a run."
    )
    next_schedule_time: datetime | None = Field(default=None, description="The next tick.")
    last_runs: list[ScheduledRun] = Field(
        default_factory=list, description="Recent runs, newest first."
    )
    missed_runs: int = Field(default=0, description="Ticks missed so far.")
    last_missed_time: datetime | None = Field(default=None, description="The latest missed tick.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, False with a reason for a bad cron or time zone.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last processed."
    )


# --------------------------------------------------------------------------- Queue


class RateLimit(Model):
    """At most ``limit`` runs started per ``period``."""

    limit: int = Field(ge=1, description="Runs started per period.")
    period: Duration = Field(description="The period, e.g. 1m.")


class QueueResources(Model):
    """A ceiling on the total resources of the queue's running pods."""

    cpu: Quantity | None = Field(default=None, description="Total CPU, e.g. 4 or 2500m.")
    memory: Quantity | None = Field(default=None, description="Total memory, e.g. 8Gi.")


class QueueSpec(Model):
    """A queue: where runs wait for a slot, and how many may run at once."""

    concurrency_limit: int = Field(
        ge=0, le=100000, description="Runs executing at once; 0 pauses the queue."
    )
    per_key_limit: int | None = Field(
        default=None, ge=1, description="Runs executing at once per concurrencyKey."
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="At most this many runs started per period."
    )
    resources: QueueResources | None = Field(
        default=None, description="Total CPU/memory ceiling for the queue's pods."
    )


class QueueStatus(StatusModel):
    """The queue's current load."""

    running: int = Field(default=0, description="Runs holding a slot.")
    queued: int = Field(default=0, description="Runs waiting for a slot.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready and other conditions.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last processed."
    )


# --------------------------------------------------------------------------- WaitToken


class WaitTokenSpec(Model):
    """A waitpoint a run can wait on until someone completes it."""

    timeout: Duration | None = Field(
        default=None, description="Time out this long after creation; none waits forever."
    )
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Up to 10 tags, for filtering."
    )


class WaitTokenStatus(StatusModel):
    """Whether the token was completed, and with what."""

    completed: bool = Field(default=False, description="True once completed or timed out.")
    output: FreeJSON = Field(default=None, description="The JSON it was completed with.")
    completed_at: datetime | None = Field(default=None, description="When it was completed.")
    timed_out: bool = Field(default=False, description="True when the timeout passed first.")
    expires_at: datetime | None = Field(default=None, description="When it times out.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Conditions.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


# --------------------------------------------------------------------------- resources


class PrinterColumn(Model):
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0


class Resource(Model):
    """A whole podtask object: apiVersion, kind, metadata, spec and status."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = ()
    description: ClassVar[str]

    api_version: Literal["podtask.dev/v1alpha1"] = Field(
        default=API_VERSION, description="podtask.dev/v1alpha1."
    )
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")


_AGE = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class Task(Resource):
    kind_name = "Task"
    plural = "tasks"
    short_names = ("ptask",)
    description = "A deployed task: image, entrypoint and defaults for its runs."
    printer_columns = (
        PrinterColumn(name="Entrypoint", type="string", json_path=".spec.entrypoint"),
        PrinterColumn(name="Version", type="string", json_path=".spec.version"),
        PrinterColumn(name="Machine", type="string", json_path=".spec.machine"),
        PrinterColumn(name="Queue", type="string", json_path=".spec.queue"),
        _AGE,
    )

    kind: Literal["Task"] = Field(default="Task", description="Task.")
    spec: TaskSpec = Field(description="The task definition.")
    status: TaskStatus | None = Field(default=None, description="Observed state.")


class TaskRun(Resource):
    kind_name = "TaskRun"
    plural = "taskruns"
    short_names = ("ptr", "ptaskrun")
    description = "One run of a Task: payload and options in spec, outcome in status."
    printer_columns = (
        PrinterColumn(name="Task", type="string", json_path=".spec.task"),
        PrinterColumn(name="Phase", type="string", json_path=".status.phase"),
        PrinterColumn(name="Attempt", type="integer", json_path=".status.attempt"),
        PrinterColumn(name="Queue", type="string", json_path=".status.queue"),
        _AGE,
        PrinterColumn(name="Duration", type="string", json_path=".status.duration"),
    )

    kind: Literal["TaskRun"] = Field(default="TaskRun", description="TaskRun.")
    spec: TaskRunSpec = Field(description="What to run and how.")
    status: TaskRunStatus | None = Field(default=None, description="What happened.")


class Schedule(Resource):
    kind_name = "Schedule"
    plural = "schedules"
    short_names = ("psched",)
    description = "Runs a Task on a cron schedule in a time zone."
    printer_columns = (
        PrinterColumn(name="Task", type="string", json_path=".spec.task"),
        PrinterColumn(name="Cron", type="string", json_path=".spec.cron"),
        PrinterColumn(name="Timezone", type="string", json_path=".spec.timezone"),
        PrinterColumn(name="Suspend", type="boolean", json_path=".spec.suspend"),
        PrinterColumn(name="Next", type="date", json_path=".status.nextScheduleTime"),
        PrinterColumn(name="Last", type="date", json_path=".status.lastScheduleTime"),
        _AGE,
    )

    kind: Literal["Schedule"] = Field(default="Schedule", description="Schedule.")
    spec: ScheduleSpec = Field(description="The schedule.")
    status: ScheduleStatus | None = Field(default=None, description="Observed state.")


class Queue(Resource):
    kind_name = "Queue"
    plural = "queues"
    short_names = ("pq", "ptqueue")
    description = "A queue with concurrency, per-key and rate limits."
    printer_columns = (
        PrinterColumn(name="Limit", type="integer", json_path=".spec.concurrencyLimit"),
        PrinterColumn(name="Running", type="integer", json_path=".status.running"),
        PrinterColumn(name="Queued", type="integer", json_path=".status.queued"),
        _AGE,
    )

    kind: Literal["Queue"] = Field(default="Queue", description="Queue.")
    spec: QueueSpec = Field(description="The queue's limits.")
    status: QueueStatus | None = Field(default=None, description="Observed load.")


class WaitToken(Resource):
    kind_name = "WaitToken"
    plural = "waittokens"
    short_names = ("pwt",)
    description = "A waitpoint for human-in-the-loop waits, completed with a JSON output."
    printer_columns = (
        PrinterColumn(name="Completed", type="boolean", json_path=".status.completed"),
        PrinterColumn(name="TimedOut", type="boolean", json_path=".status.timedOut"),
        _AGE,
    )

    kind: Literal["WaitToken"] = Field(default="WaitToken", description="WaitToken.")
    spec: WaitTokenSpec = Field(default_factory=WaitTokenSpec, description="The token.")
    status: WaitTokenStatus | None = Field(default=None, description="Completion.")


RESOURCES: tuple[type[Resource], ...] = (Task, TaskRun, Schedule, Queue, WaitToken)
RESOURCES_BY_KIND: dict[str, type[Resource]] = {r.kind_name: r for r in RESOURCES}


def parse(manifest: dict[str, Any]) -> Resource:
    """Validate a manifest of any podtask kind against its model."""
    kind = manifest.get("kind")
    if manifest.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION}, not {manifest.get('apiVersion')!r}")
    if kind not in RESOURCES_BY_KIND:
        raise ValueError(f"kind must be one of {', '.join(RESOURCES_BY_KIND)}, not {kind!r}")
    return RESOURCES_BY_KIND[kind].model_validate(manifest)
