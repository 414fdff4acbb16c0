"""Schedules: run a task on a cron, declared in code or created at run time.

Declarative, synced by ``podtask deploy``::

    from podtask import schedules

    @schedules.task(id="reports.nightly", cron="0 2 * * *", timezone="Europe/Berlin")
    def nightly(payload: schedules.ScheduledPayload) -> dict:
        return {"for": payload.timestamp.isoformat(), "next": payload.upcoming[0].isoformat()}

Imperative, one schedule per user (``deduplication_key`` makes creating it again
an update, never a twin)::

    schedules.create(
        task="reminders.send", cron="0 9 * * 1-5", timezone="America/New_York",
        deduplication_key=f"reminder-{user.id}", external_id=user.id,
    )

Both become Schedule resources, so GitOps tools can own them just as well.
Functions talking to Kubernetes use the official client (kubeconfig or in-cluster
credentials) or the ``api`` client given; it is imported on first use, so a run
pod that only imports a scheduled task does not load it.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, Unpack, cast
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from podtask.api.base import GROUP, ObjectMeta
from podtask.api.machines import MachineName
from podtask.api.v1alpha1 import (
    VERSION,
    ConcurrencyPolicy,
    MissedRunPolicy,
    Schedule,
    ScheduleSpec,
)
from podtask.errors import InvalidTaskDefinitionError
from podtask.tasks import DurationOption, RetryOption, Task, TaskHooks, schema_task

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CustomObjectsApi

__all__ = [
    "ScheduledPayload",
    "activate",
    "create",
    "deactivate",
    "declared",
    "delete",
    "list",
    "retrieve",
    "schedule_name",
    "task",
    "timezones",
    "update",
]

P = ParamSpec("P")
R = TypeVar("R")

PLURAL = "schedules"
SCHEDULE_LABEL = "podtask.dev/schedule"
"""On every TaskRun a schedule creates: the schedule's name (as a label value)."""
EXTERNAL_ID_LABEL = "podtask.dev/external-id"
"""On runs and imperative schedules: the externalId (as a label value)."""
DEDUPLICATION_KEY_LABEL = "podtask.dev/deduplication-key"
SCHEDULE_TYPE_LABEL = "podtask.dev/schedule-type"
"""``declarative`` (code, manifests) or ``imperative`` (``schedules.create``)."""
SCHEDULED_TIME_ANNOTATION = "podtask.dev/scheduled-time"
EXTERNAL_ID_ANNOTATION = "podtask.dev/external-id"

_MAX_LABEL = 63
_LABEL_OK = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


class ScheduledPayload(BaseModel):
    """What a scheduled run receives (Trigger.dev's scheduled payload, plus ``data``)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: Literal["DECLARATIVE", "IMPERATIVE"] = Field(
        default="DECLARATIVE", description="DECLARATIVE (code, manifests) or IMPERATIVE."
    )
    timestamp: datetime = Field(description="The tick this run is for (UTC).")
    last_timestamp: datetime | None = Field(
        default=None, description="The previous tick that created a run, if any."
    )
    timezone: str = Field(default="UTC", description="The IANA zone the cron is read in.")
    schedule_id: str = Field(description="Name of the Schedule.")
    external_id: str | None = Field(default=None, description="The schedule's externalId.")
    upcoming: builtins.list[datetime] = Field(
        default_factory=builtins.list, description="The next five ticks after this one."
    )
    data: dict[str, Any] | None = Field(default=None, description="The schedule's payload.")


# --------------------------------------------------------------------------- names


def label_value(value: str) -> str:
    """A valid label value carrying ``value`` (hashed when too long or unsafe); the
    operator labels runs with the same function."""
    if len(value) <= _MAX_LABEL and _LABEL_OK.fullmatch(value):
        return value
    hashed = _hash(value)
    prefix = _LABEL_UNSAFE.sub("-", value)[: _MAX_LABEL - len(hashed) - 1].strip("-._")
    return f"{prefix}-{hashed}" if prefix else hashed


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:10]


def schedule_name(deduplication_key: str) -> str:
    """The Schedule's name for a deduplication key: readable, deterministic, unique."""
    if not deduplication_key:
        raise ValueError("deduplication_key must not be empty")
    slug = _NAME_UNSAFE.sub("-", deduplication_key.lower()).strip("-")[:52].rstrip("-")
    suffix = _hash(deduplication_key)
    return f"{slug}-{suffix}" if slug else f"schedule-{suffix}"


# --------------------------------------------------------------------------- declarative

_DECLARED: dict[str, ScheduleSpec] = {}


def task(
    *,
    id: str,
    cron: str,
    timezone: str = "UTC",
    external_id: str | None = None,
    payload: dict[str, Any] | None = None,
    concurrency_policy: ConcurrencyPolicy | str | None = None,
    missed_run_policy: MissedRunPolicy | str | None = None,
    starting_deadline_seconds: int | None = None,
    successful_runs_history_limit: int | None = None,
    failed_runs_history_limit: int | None = None,
    machine: MachineName | None = None,
    retry: RetryOption | None = None,
    queue: str | None = None,
    max_duration: DurationOption | None = None,
    ttl: DurationOption | None = None,
    description: str | None = None,
    **hooks: Unpack[TaskHooks],
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task that runs on ``cron`` in ``timezone``: ``podtask deploy`` emits both its
    Task and a Schedule named after it (see :func:`declared`).

    The function gets a :class:`ScheduledPayload`.  ``cron`` takes 5 fields, 6 with
    seconds first (a podtask extension), or a macro such as ``@daily``.
    """
    fields: dict[str, Any] = {
        "task": id,
        "cron": cron,
        "timezone": timezone,
        "external_id": external_id,
        "payload": payload,
        "concurrency_policy": concurrency_policy,
        "missed_run_policy": missed_run_policy,
        "starting_deadline_seconds": starting_deadline_seconds,
        "successful_runs_history_limit": successful_runs_history_limit,
        "failed_runs_history_limit": failed_runs_history_limit,
        "queue": queue,
    }
    try:
        spec = ScheduleSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        raise InvalidTaskDefinitionError(
            f"scheduled task {id!r} has an invalid schedule: {_errors(error)}"
        ) from error
    declare = schema_task(
        id=id,
        schema=ScheduledPayload,
        machine=machine,
        retry=retry,
        queue=queue,
        max_duration=max_duration,
        ttl=ttl,
        description=description,
        **hooks,
    )

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        made = declare(fn)
        _DECLARED[made.id] = spec
        return made

    return decorate


def declared(namespace: str | None = None) -> builtins.list[Schedule]:
    """The Schedules of every ``@schedules.task`` imported in this process, by task id."""
    return [
        Schedule(
            metadata=ObjectMeta(
                name=task_id,
                namespace=namespace,
                labels={SCHEDULE_TYPE_LABEL: "declarative"},
            ),
            spec=spec,
        )
        for task_id, spec in sorted(_DECLARED.items())
    ]


# --------------------------------------------------------------------------- imperative


def _custom(api: ApiClient | None) -> CustomObjectsApi:
    from kubernetes import client

    from podtask.runs import default_api_client

    return client.CustomObjectsApi(api or default_api_client())


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _errors(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
    )


def _spec(**fields: Any) -> ScheduleSpec:
    try:
        return ScheduleSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        raise ValueError(f"invalid schedule: {_errors(error)}") from error


def create(
    task: str | Task[..., Any],
    cron: str,
    deduplication_key: str,
    timezone: str = "UTC",
    external_id: str | None = None,
    payload: dict[str, Any] | None = None,
    namespace: str = "default",
    *,
    suspend: bool = False,
    concurrency_policy: ConcurrencyPolicy | str | None = None,
    missed_run_policy: MissedRunPolicy | str | None = None,
    starting_deadline_seconds: int | None = None,
    api: ApiClient | None = None,
) -> Schedule:
    """Create the schedule, or update the one with this ``deduplication_key``.

    The Schedule's name comes from the key (:func:`schedule_name`), so calling this
    again, from anywhere, replaces that schedule's spec instead of adding another.
    """
    spec = _spec(
        task=task.id if isinstance(task, Task) else task,
        cron=cron,
        timezone=timezone,
        external_id=external_id,
        deduplication_key=deduplication_key,
        payload=payload,
        suspend=suspend,
        concurrency_policy=concurrency_policy,
        missed_run_policy=missed_run_policy,
        starting_deadline_seconds=starting_deadline_seconds,
    )
    name = schedule_name(deduplication_key)
    labels = {
        SCHEDULE_TYPE_LABEL: "imperative",
        DEDUPLICATION_KEY_LABEL: label_value(deduplication_key),
    }
    if external_id is not None:
        labels[EXTERNAL_ID_LABEL] = label_value(external_id)
    body = Schedule(metadata=ObjectMeta(name=name, labels=labels), spec=spec).to_wire()
    custom = _custom(api)
    try:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return Schedule.model_validate(created)
    except Exception as error:
        if _status(error) != 409:
            raise
    # It exists: replace its spec, keeping its other labels; retry a concurrent write.
    for _ in range(5):
        current = cast(
            dict[str, Any],
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )
        meta = current["metadata"]
        meta["labels"] = {
            **{k: v for k, v in (meta.get("labels") or {}).items() if k != EXTERNAL_ID_LABEL},
            **labels,
        }
        current["spec"] = body["spec"]
        try:
            replaced = custom.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, current
            )
            return Schedule.model_validate(replaced)
        except Exception as error:
            if _status(error) != 409:
                raise
    raise RuntimeError(f"schedule {namespace}/{name} kept changing while being updated")


def retrieve(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> Schedule:
    body = _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return Schedule.model_validate(body)


def list(  # Trigger.dev's name: schedules.list
    task: str | None = None,
    external_id: str | None = None,
    namespace: str = "default",
    *,
    api: ApiClient | None = None,
) -> builtins.list[Schedule]:
    """Schedules in ``namespace``, optionally only those of ``task`` or ``external_id``."""
    body = cast(
        dict[str, Any],
        _custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
    )
    found = [Schedule.model_validate(item) for item in body.get("items", [])]
    return sorted(
        (
            s
            for s in found
            if (task is None or s.spec.task == task)
            and (external_id is None or s.spec.external_id == external_id)
        ),
        key=lambda s: s.metadata.name or "",
    )


def update(
    name: str,
    *,
    task: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    external_id: str | None = None,
    payload: dict[str, Any] | None = None,
    namespace: str = "default",
    api: ApiClient | None = None,
) -> Schedule:
    """Change the given fields of a schedule; the others stay as they are."""
    current = retrieve(name, namespace, api=api)
    changes = {
        "task": task,
        "cron": cron,
        "timezone": timezone,
        "external_id": external_id,
        "payload": payload,
    }
    spec = current.spec.model_copy(update={k: v for k, v in changes.items() if v is not None})
    spec = _spec(**spec.model_dump())  # validate the result as a whole
    patch: dict[str, Any] = {"spec": spec.to_wire()}
    if external_id is not None:
        patch["metadata"] = {"labels": {EXTERNAL_ID_LABEL: label_value(external_id)}}
    body = _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch
    )
    return Schedule.model_validate(body)


def delete(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> None:
    """Delete the schedule (its runs go with it); deleting a missing one is fine."""
    try:
        _custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as error:
        if _status(error) != 404:
            raise


def _suspend(name: str, value: bool, namespace: str, api: ApiClient | None) -> Schedule:
    body = _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": value}}
    )
    return Schedule.model_validate(body)


def activate(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> Schedule:
    """Resume ticking (``spec.suspend: false``)."""
    return _suspend(name, False, namespace, api)


def deactivate(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> Schedule:
    """Stop ticking (``spec.suspend: true``); the schedule and its history stay."""
    return _suspend(name, True, namespace, api)


def timezones() -> builtins.list[str]:
    """Every IANA time zone name a schedule accepts, sorted."""
    return sorted(available_timezones())
