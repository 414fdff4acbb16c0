"""Triggering without I/O: options to a TaskRun, idempotent names, the create flow.

The sync :class:`~podtask.client.Client` and the async
:class:`~podtask.aio.AsyncClient` share everything here.  The create-if-absent
flow is a generator of API operations (:func:`trigger_flow`) that each client
drives with its own transport, so the idempotency rules exist exactly once and
are unit-tested against an in-memory API.

No ``kubernetes`` import: this module is reachable from ``podtask.tasks``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from podtask._runenv import CurrentRun
from podtask.api.durations import DurationError, format_duration, parse_duration
from podtask.api.machines import MachineName
from podtask.api.v1alpha1 import API_VERSION, MAX_IDEMPOTENCY_KEY_LENGTH, Phase, TaskRunSpec
from podtask.errors import (
    InvalidTriggerOptionsError,
    KubernetesApiError,
    PayloadValidationError,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_KEY_TTL",
    "MAX_BATCH_ITEMS",
    "BatchItem",
    "IdempotencyScope",
    "RunPlan",
    "TriggerOptions",
    "Triggered",
    "idempotency_run_name",
    "key_release_reason",
    "plan_run",
    "trigger_flow",
]

LABEL_TASK = "podtask.dev/task"
"""On every run the SDK creates: the task id (as a label value), for selectors."""
LABEL_BATCH = "podtask.dev/batch-id"
"""On every run of a batch: the batch id."""
LABEL_PARENT = "podtask.dev/parent-run"
"""On a run triggered inside another: the parent's name (as a label value)."""
ANNOTATION_BATCH_INDEX = "podtask.dev/batch-index"

DEFAULT_IDEMPOTENCY_KEY_TTL = timedelta(days=30)
"""Trigger.dev v4's default idempotencyKeyTTL."""
MAX_BATCH_ITEMS = 1000
"""Trigger.dev's batch v2 limit."""

# Trigger.dev clears a key when its run ends in a failed status or expires, so a
# retrying caller gets a fresh run; Completed and Canceled runs keep their key.
KEY_RELEASING_PHASES = frozenset(
    {Phase.FAILED, Phase.CRASHED, Phase.SYSTEM_FAILURE, Phase.TIMED_OUT, Phase.EXPIRED}
)

IdempotencyScope = Literal["global", "run", "attempt"]
DurationOption = str | float | timedelta

_MAX_LABEL = 63
_LABEL_OK = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_SLUG_LENGTH = 40
_MAX_CONFLICT_ROUNDS = 20
_DELETING_POLL_SECONDS = 0.2
_MAX_DELETING_WAITS = 300  # a minute of waiting for a deleted run to go


class TriggerOptions(TypedDict, total=False):
    """Options of one trigger, with Trigger.dev's names and meanings (snake_case)."""

    idempotency_key: str | Sequence[str]
    """Triggers with the same task and key make one run (parts of a list are joined)."""
    idempotency_key_ttl: DurationOption
    """How long the key dedupes: ``"60s"``, ``"2h"``, seconds or a timedelta (default 30d)."""
    idempotency_key_scope: IdempotencyScope
    """``global``, ``run`` (per parent run, the default inside a run) or ``attempt``."""
    concurrency_key: str
    """Runs with the same key share their own copy of the queue's limits."""
    queue: str
    """Queue to run in, overriding the task's."""
    delay: DurationOption | datetime
    """Start no sooner than this long from now, or than this time."""
    ttl: DurationOption
    """Expire the run if it has not started this long after it was queued."""
    tags: str | Sequence[str]
    """Up to 10 tags of at most 128 characters."""
    metadata: Mapping[str, Any]
    """Initial run metadata (a JSON object up to 256 KiB)."""
    machine: MachineName
    """Machine preset, overriding the task's."""
    max_attempts: int
    """Attempts in total, overriding the task's retry policy."""
    max_duration: DurationOption
    """Longest an attempt may run (at least 5s), overriding the task's."""
    priority: int
    """Seconds of head start in the queue."""
    labels: Mapping[str, str]
    """Kubernetes labels for the TaskRun (a podtask extension)."""


class BatchItem(TypedDict):
    """One item of a batch: a payload and, optionally, its own options and task."""

    payload: Any
    options: NotRequired[TriggerOptions]
    task: NotRequired[str]
    """The task id, for batches that mix tasks (``Client.batch_trigger_by_task``)."""


_OPTION_NAMES = frozenset(TriggerOptions.__annotations__)


# --------------------------------------------------------------------------- names


def label_value(value: str) -> str:
    """A valid label value carrying ``value``, hashed when too long or unsafe.

    The same rule as the operator's and the schedules', so selectors agree.
    """
    if len(value) <= _MAX_LABEL and _LABEL_OK.fullmatch(value):
        return value
    hashed = hashlib.sha256(value.encode()).hexdigest()[:10]
    prefix = _LABEL_UNSAFE.sub("-", value)[: _MAX_LABEL - len(hashed) - 1].strip("-._")
    return f"{prefix}-{hashed}" if prefix else hashed


def name_slug(task_id: str) -> str:
    """The readable start of a run's name: the task id, dots as dashes, shortened."""
    return task_id.replace(".", "-")[:_NAME_SLUG_LENGTH].rstrip("-") or "run"


def idempotency_run_name(
    namespace: str,
    task_id: str,
    key: str,
    scope: IdempotencyScope = "global",
    parent: CurrentRun | None = None,
) -> str:
    """The deterministic name of the run an idempotency key makes.

    A hash of namespace, task, scope and key, and for ``run`` scope the parent
    run, for ``attempt`` scope its attempt too; so a second create with the same
    inputs meets the first one's name (409) instead of making a twin.  Without a
    parent run every scope is global, as in Trigger.dev.
    """
    parts = ["podtask-idempotency-v1", namespace, task_id]
    if parent is None or scope == "global":
        parts += ["global"]
    elif scope == "run":
        parts += ["run", parent.namespace, parent.name]
    else:
        parts += ["attempt", parent.namespace, parent.name, str(parent.attempt)]
    parts.append(key)
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]
    return f"{name_slug(task_id)}-{digest}"


def new_batch_id(idempotency_key: str | None = None, namespace: str = "") -> str:
    """A batch id: random, or derived from the batch's idempotency key so that a
    repeated batch reports the same id."""
    if idempotency_key is None:
        return f"batch-{secrets.token_hex(8)}"
    digest = hashlib.sha256(f"{namespace}\x00{idempotency_key}".encode()).hexdigest()[:16]
    return f"batch-{digest}"


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A TaskRun ready to create, and how to recognise it on a conflict."""

    namespace: str
    task: str
    body: dict[str, Any]
    name: str | None
    """The deterministic name (idempotency key), or None for a generated one."""
    idempotency_key_ttl: timedelta = DEFAULT_IDEMPOTENCY_KEY_TTL
    batch_id: str | None = None


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
    )


def _duration(value: DurationOption, option: str) -> str | None:
    if isinstance(value, bool):
        raise InvalidTriggerOptionsError(f"{option} must be a duration, not {value!r}")
    if isinstance(value, str):
        try:
            parse_duration(value)
        except DurationError as error:
            raise InvalidTriggerOptionsError(f"{option}: {error}") from None
        return value
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise InvalidTriggerOptionsError(f"{option} cannot be negative")
    # Zero means "none", as Trigger.dev's ttl: 0.
    return format_duration(seconds) if seconds > 0 else None


def payload_json(payload: Any, task_id: str) -> Any:
    """The payload as JSON data: pydantic models, dates and the like converted."""
    try:
        data = to_jsonable_python(payload)
        json.dumps(data, allow_nan=False)
    except (PydanticSerializationError, TypeError, ValueError) as error:
        raise PayloadValidationError(
            f"the payload for task {task_id!r} is not JSON: {error}"
        ) from error
    return data


def _idempotency_key(value: str | Sequence[str]) -> str:
    key = value if isinstance(value, str) else ":".join(str(part) for part in value)
    if not key:
        raise InvalidTriggerOptionsError("idempotency_key must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidTriggerOptionsError(
            f"idempotency_key is {len(key)} characters; the limit is {MAX_IDEMPOTENCY_KEY_LENGTH}"
        )
    return key


def _tags(value: str | Sequence[str]) -> list[str]:
    tags = [value] if isinstance(value, str) else [str(tag) for tag in value]
    return list(dict.fromkeys(tags))  # a set, in the caller's order


def plan_run(
    task_id: str,
    payload: Any,
    options: Mapping[str, Any],
    *,
    namespace: str,
    parent: CurrentRun | None = None,
    batch: tuple[str, int] | None = None,
    validate: Callable[[Any], Any] | None = None,
    now: datetime | None = None,
) -> RunPlan:
    """Check ``options`` and ``payload`` and build the TaskRun; nothing is sent.

    ``validate`` turns the payload into JSON data (a ``schema_task`` validates it
    there, raising :class:`~podtask.errors.PayloadValidationError`).  Bad options
    raise :class:`~podtask.errors.InvalidTriggerOptionsError`.
    """
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise InvalidTriggerOptionsError(
            f"unknown trigger option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_OPTION_NAMES))}"
        )
    data = validate(payload) if validate is not None else payload_json(payload, task_id)
    fields: dict[str, Any] = {"task": task_id, "payload": data}
    ttl_of_key = DEFAULT_IDEMPOTENCY_KEY_TTL
    name: str | None = None
    if options.get("idempotency_key") is not None:
        key = _idempotency_key(options["idempotency_key"])
        scope: IdempotencyScope = options.get(
            "idempotency_key_scope", "run" if parent is not None else "global"
        )
        if scope not in ("global", "run", "attempt"):
            raise InvalidTriggerOptionsError(
                f"idempotency_key_scope must be global, run or attempt, not {scope!r}"
            )
        if parent is None:
            scope = "global"  # outside a run every scope is global
        name = idempotency_run_name(namespace, task_id, key, scope, parent)
        fields["idempotency_key"] = key
        fields["idempotency_key_scope"] = scope
        if options.get("idempotency_key_ttl") is not None:
            ttl = _duration(options["idempotency_key_ttl"], "idempotency_key_ttl")
            if ttl is not None:
                fields["idempotency_key_ttl"] = ttl
                ttl_of_key = parse_duration(ttl)
    elif options.get("idempotency_key_ttl") is not None:
        raise InvalidTriggerOptionsError("idempotency_key_ttl needs an idempotency_key")
    delay = options.get("delay")
    if isinstance(delay, datetime):
        # A naive datetime is local time, as everywhere in Python.
        fields["delay_until"] = delay.astimezone(UTC)
    elif delay is not None:
        fields["delay"] = _duration(delay, "delay")
    for option in ("ttl", "max_duration"):
        if options.get(option) is not None:
            fields[option] = _duration(options[option], option)
    for option in ("concurrency_key", "queue", "machine", "max_attempts", "priority"):
        if options.get(option) is not None:
            fields[option] = options[option]
    if options.get("tags") is not None:
        fields["tags"] = _tags(options["tags"])
    if options.get("metadata") is not None:
        fields["metadata"] = payload_json(dict(options["metadata"]), task_id)
    if parent is not None:
        fields["parent_run"] = parent.name
    try:
        spec = TaskRunSpec.model_validate(fields)
    except ValidationError as error:
        # The payload limit is the payload's problem, not an option's.
        if any(e["loc"][:1] == ("payload",) for e in error.errors()):
            raise PayloadValidationError(
                f"the payload for task {task_id!r} cannot be sent inline: {_problems(error)}"
            ) from error
        raise InvalidTriggerOptionsError(
            f"invalid trigger options for task {task_id!r}: {_problems(error)}"
        ) from error
    labels = {LABEL_TASK: label_value(task_id), **dict(options.get("labels") or {})}
    annotations: dict[str, str] = {}
    batch_id = None
    if batch is not None:
        batch_id, index = batch
        labels[LABEL_BATCH] = batch_id
        annotations[ANNOTATION_BATCH_INDEX] = str(index)
    if parent is not None:
        labels[LABEL_PARENT] = label_value(parent.name)
    metadata: dict[str, Any] = {"namespace": namespace, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    if name is not None:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{name_slug(task_id)}-"
    wire = spec.to_wire()
    if not wire.get("tags"):
        wire.pop("tags", None)  # what was not asked for stays out of the object
    body = {"apiVersion": API_VERSION, "kind": "TaskRun", "metadata": metadata, "spec": wire}
    return RunPlan(
        namespace=namespace,
        task=task_id,
        body=body,
        name=name,
        idempotency_key_ttl=ttl_of_key,
        batch_id=batch_id,
    )


# --------------------------------------------------------------------------- the flow


@dataclass(frozen=True, slots=True)
class CreateRun:
    namespace: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GetRun:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class DeleteRun:
    """Delete exactly this object: ``uid`` is a precondition, so a newer run under
    the same name (another trigger won the race) is never deleted."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Op = CreateRun | GetRun | DeleteRun | Sleep


@dataclass(frozen=True, slots=True)
class Triggered:
    """The run a trigger produced, and whether it existed already (``cached``)."""

    run: dict[str, Any]
    cached: bool
    replaced: str | None = None
    """Why an earlier run under the same key was deleted first, if one was."""


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def key_release_reason(run: Mapping[str, Any], now: datetime) -> str | None:
    """Why ``run`` no longer holds its idempotency key, or None while it does.

    The key is released when the run ended in a failed phase (Failed, Crashed,
    SystemFailure, TimedOut, Expired: Trigger.dev clears the key then), or when
    its ``idempotencyKeyTTL`` (default 30 days) has passed since it was created.
    """
    phase = (run.get("status") or {}).get("phase")
    if phase in {p.value for p in KEY_RELEASING_PHASES}:
        return f"its run ended {phase}"
    created = _time((run.get("metadata") or {}).get("creationTimestamp"))
    ttl_text = (run.get("spec") or {}).get("idempotencyKeyTTL")
    try:
        ttl = parse_duration(ttl_text) if ttl_text else DEFAULT_IDEMPOTENCY_KEY_TTL
    except DurationError:
        ttl = DEFAULT_IDEMPOTENCY_KEY_TTL
    if created is not None and created + ttl <= now:
        return f"the key expired ({format_duration(ttl)} after {created.isoformat()})"
    return None


def trigger_flow(
    plan: RunPlan, clock: Callable[[], datetime] | None = None
) -> Generator[Op, Any, Triggered]:
    """Create the run; with an idempotency key, return the run that holds it.

    On a conflict the existing run is read: while it holds the key it is the
    answer (``cached``); once its key is released it is deleted with a ``uid``
    precondition and the create is tried again.  Concurrent triggers converge:
    only one delete of that object succeeds, only one create of the new one does,
    and every loser reads the winner.
    """
    now = clock or (lambda: datetime.now(UTC))
    replaced: str | None = None
    rounds = waits = 0
    while True:
        rounds += 1
        if rounds > _MAX_CONFLICT_ROUNDS or waits > _MAX_DELETING_WAITS:
            raise KubernetesApiError(
                f"run {plan.namespace}/{plan.name} kept changing while being triggered",
                409,
                "Conflict",
            )
        try:
            created = yield CreateRun(plan.namespace, plan.body)
            return Triggered(created, cached=False, replaced=replaced)
        except KubernetesApiError as error:
            if error.status != 409:
                raise
            if plan.name is None:
                # A generated name met an existing one (the server picks 5 random
                # characters): nothing was created, so asking again is safe.
                continue
        try:
            existing = yield GetRun(plan.namespace, plan.name)
        except KubernetesApiError as error:
            if error.status == 404:
                continue  # deleted in between: create again
            raise
        meta = existing.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            # Being deleted (finalizers, or a concurrent release): wait for it to go.
            rounds -= 1
            waits += 1
            yield Sleep(_DELETING_POLL_SECONDS)
            continue
        reason = key_release_reason(existing, now())
        if reason is None:
            return Triggered(existing, cached=True)
        replaced = reason
        try:
            yield DeleteRun(plan.namespace, plan.name, str(meta.get("uid", "")))
        except KubernetesApiError as error:
            # 404: gone already; 409: the uid precondition failed, a newer run is there.
            if error.status not in (404, 409):
                raise
