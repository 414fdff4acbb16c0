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
Functions talking to Kubernetes take ``namespace`` (default: the current run's, else
the kubeconfig context's, else ``default``) and either ``client``, a
:class:`podtask.Client` (errors are podtask's: :class:`ScheduleNotFoundError`,
:class:`~podtask.errors.ClusterUnreachableError`...), or ``api``, an official
``kubernetes`` ``ApiClient`` (errors are its ``ApiException``); with neither, the
official client from the kubeconfig or in-cluster credentials.  It is imported on
first use, so a run pod that only imports a scheduled task does not load it.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NoReturn,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    cast,
)
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from podtask.api.base import DNS_SUBDOMAIN_PATTERN, GROUP, ObjectMeta
from podtask.api.machines import MachineName
from podtask.api.v1alpha1 import (
    VERSION,
    ConcurrencyPolicy,
    MissedRunPolicy,
    Schedule,
    ScheduleSpec,
    validate_cron,
)
from podtask.errors import InvalidTaskDefinitionError, KubernetesApiError
from podtask.tasks import DurationOption, RetryOption, Task, TaskHooks, schema_task

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CustomObjectsApi

    from podtask.client import Client

__all__ = [
    "ScheduleNotFoundError",
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
_MAX_NAME = 253
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


class ScheduleNotFoundError(KubernetesApiError, LookupError):
    """No Schedule with that name in the namespace."""

    error_type = "ScheduleNotFound"

    def __init__(self, message: str, name: str = "", namespace: str = "") -> None:
        super().__init__(message, 404, "NotFound")
        self.name = name
        self.namespace = namespace


class _Objects(Protocol):
    """The calls on custom objects these functions make: a part of the SDK's backend."""

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]: ...

    def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None: ...

    def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...

    def replace(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...


class _OfficialClient:
    """The official client's calls as they are: its ``ApiException`` passes through
    unchanged (the ``api=`` form, as it always behaved)."""

    def __init__(self, api: ApiClient | None) -> None:
        from kubernetes import client

        from podtask.runs import default_api_client

        self.custom: CustomObjectsApi = client.CustomObjectsApi(api or default_api_client())

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, body
        )
        return cast(dict[str, Any], created)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return cast(dict[str, Any], found)

    def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        if namespace is None:
            body = self.custom.list_cluster_custom_object(
                GROUP,
                VERSION,
                plural,
                label_selector=label_selector,
                field_selector=field_selector,
            )
        else:
            body = self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                plural,
                label_selector=label_selector,
                field_selector=field_selector,
            )
        page = cast(dict[str, Any], body)
        version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        return builtins.list(page.get("items") or []), version

    def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        patched = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, patch
        )
        return cast(dict[str, Any], patched)

    def replace(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        replaced = self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, body
        )
        return cast(dict[str, Any], replaced)


def _target(
    namespace: str | None, api: ApiClient | None, client: Client | None
) -> tuple[_Objects, str]:
    """Where the calls go, and the namespace: the one given, else the client's (the
    current run's, else the kubeconfig context's, else ``default``)."""
    from podtask.client import client_for

    if client is not None:
        return client.backend, namespace or client.namespace
    return _OfficialClient(api), namespace or client_for(api).namespace


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _missing(error: Exception, name: str, namespace: str) -> NoReturn:
    """Raise ``error``; a 404 of the podtask client as :class:`ScheduleNotFoundError`."""
    if isinstance(error, KubernetesApiError) and error.status == 404:
        raise ScheduleNotFoundError(
            f"no schedule {name!r} in namespace {namespace!r}", name, namespace
        ) from None
    raise error


def _errors(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {_message(e)}" for e in error.errors()
    )


def _message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch" and error["loc"] == ("cron",):
        try:  # say what is wrong with it rather than quote the pattern
            validate_cron(str(error["input"]))
        except ValueError as wrong:
            return str(wrong)
    return error["msg"].removeprefix("Value error, ")


def _spec(**fields: Any) -> ScheduleSpec:
    try:
        return ScheduleSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        raise ValueError(f"invalid schedule: {_errors(error)}") from error


def _check_name(name: str) -> str:
    if len(name) > _MAX_NAME or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
        raise ValueError(
            f"invalid schedule name {name!r}: use lower case letters, digits, '-' and '.', "
            f"starting and ending with a letter or digit, at most {_MAX_NAME} characters"
        )
    return name


def create(
    task: str | Task[..., Any],
    cron: str,
    deduplication_key: str | None = None,
    timezone: str = "UTC",
    external_id: str | None = None,
    payload: dict[str, Any] | None = None,
    namespace: str | None = None,
    *,
    name: str | None = None,
    suspend: bool = False,
    concurrency_policy: ConcurrencyPolicy | str | None = None,
    missed_run_policy: MissedRunPolicy | str | None = None,
    starting_deadline_seconds: int | None = None,
    successful_runs_history_limit: int | None = None,
    failed_runs_history_limit: int | None = None,
    queue: str | None = None,
    machine: MachineName | str | None = None,
    tags: Sequence[str] | None = None,
    ttl: str | None = None,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> Schedule:
    """Create the schedule, or update the one with this ``deduplication_key``.

    The Schedule's name is ``name``, else derived from the key
    (:func:`schedule_name`).  Creating it again with the same key, from anywhere,
    replaces that schedule's spec instead of adding another; a schedule of that name
    without the same key is left alone and the call fails with a 409 (conflict).
    Everything is validated before anything is sent: a bad cron, time zone or option
    raises :class:`ValueError`.
    """
    return _create(
        task,
        cron,
        deduplication_key,
        timezone,
        external_id,
        payload,
        namespace,
        name=name,
        suspend=suspend,
        concurrency_policy=concurrency_policy,
        missed_run_policy=missed_run_policy,
        starting_deadline_seconds=starting_deadline_seconds,
        successful_runs_history_limit=successful_runs_history_limit,
        failed_runs_history_limit=failed_runs_history_limit,
        queue=queue,
        machine=machine,
        tags=tags,
        ttl=ttl,
        api=api,
        client=client,
    )[0]


def _create(
    task: str | Task[..., Any],
    cron: str,
    deduplication_key: str | None,
    timezone: str,
    external_id: str | None,
    payload: dict[str, Any] | None,
    namespace: str | None,
    *,
    name: str | None,
    api: ApiClient | None,
    client: Client | None,
    tags: Sequence[str] | None,
    **options: Any,
) -> tuple[Schedule, bool]:
    """:func:`create`; also says whether the schedule is new (else it was updated)."""
    spec = _spec(
        task=task.id if isinstance(task, Task) else task,
        cron=cron,
        timezone=timezone,
        external_id=external_id,
        deduplication_key=deduplication_key,
        payload=payload,
        tags=builtins.list(tags) if tags is not None else None,
        **options,
    )
    if name is not None:
        _check_name(name)
    elif deduplication_key:
        name = schedule_name(deduplication_key)
    else:
        raise ValueError("a schedule needs a deduplication_key or a name")
    labels = {SCHEDULE_TYPE_LABEL: "imperative"}
    if deduplication_key is not None:
        labels[DEDUPLICATION_KEY_LABEL] = label_value(deduplication_key)
    if external_id is not None:
        labels[EXTERNAL_ID_LABEL] = label_value(external_id)
    body = Schedule(metadata=ObjectMeta(name=name, labels=labels), spec=spec).to_wire()
    objects, ns = _target(namespace, api, client)
    for _ in range(5):
        try:
            return Schedule.model_validate(objects.create(PLURAL, ns, body)), True
        except Exception as error:
            if _status(error) != 409:
                raise
            exists = error
        try:
            current = objects.get(PLURAL, ns, name)
        except Exception as error:
            if _status(error) == 404:
                continue  # deleted meanwhile: create it again
            raise
        if (
            deduplication_key is None
            or (current.get("spec") or {}).get("deduplicationKey") != deduplication_key
        ):
            _already_exists(exists, name, ns, deduplication_key)
        # The same key: replace its spec, keeping its other labels.
        meta = current["metadata"]
        meta["labels"] = {
            **{k: v for k, v in (meta.get("labels") or {}).items() if k != EXTERNAL_ID_LABEL},
            **labels,
        }
        current["spec"] = body["spec"]
        try:
            return Schedule.model_validate(objects.replace(PLURAL, ns, name, current)), False
        except Exception as error:
            if _status(error) not in (404, 409):  # changed or deleted meanwhile: again
                raise
    raise KubernetesApiError(
        f"schedule {ns}/{name} kept changing while being created", 409, "Conflict"
    )


def _already_exists(error: Exception, name: str, namespace: str, key: str | None) -> NoReturn:
    if isinstance(error, KubernetesApiError):
        why = "" if key is None else " with another deduplication key (or none)"
        raise KubernetesApiError(
            f"schedule {name!r} already exists in namespace {namespace!r}{why}",
            409,
            "AlreadyExists",
        ) from None
    raise error


def retrieve(
    name: str,
    namespace: str | None = None,
    *,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> Schedule:
    """The schedule as stored now (spec and status)."""
    objects, ns = _target(namespace, api, client)
    try:
        body = objects.get(PLURAL, ns, name)
    except Exception as error:
        _missing(error, name, ns)
    return Schedule.model_validate(body)


def list(  # Trigger.dev's name: schedules.list
    task: str | None = None,
    external_id: str | None = None,
    namespace: str | None = None,
    *,
    all_namespaces: bool = False,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> builtins.list[Schedule]:
    """Schedules in ``namespace`` (or every namespace), by namespace and name,
    optionally only those of ``task`` or ``external_id``."""
    objects, ns = _target(namespace, api, client)
    items, _ = objects.list(PLURAL, None if all_namespaces else ns)
    found = [Schedule.model_validate(item) for item in items]
    return sorted(
        (
            s
            for s in found
            if (task is None or s.spec.task == task)
            and (external_id is None or s.spec.external_id == external_id)
        ),
        key=lambda s: (s.metadata.namespace or "", s.metadata.name or ""),
    )


def update(
    name: str,
    *,
    task: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    external_id: str | None = None,
    payload: dict[str, Any] | None = None,
    namespace: str | None = None,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> Schedule:
    """Change the given fields of a schedule; the others stay as they are."""
    current = retrieve(name, namespace, api=api, client=client)
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
    return _patch(name, patch, namespace, api, client)


def _patch(
    name: str,
    patch: dict[str, Any],
    namespace: str | None,
    api: ApiClient | None,
    client: Client | None,
) -> Schedule:
    objects, ns = _target(namespace, api, client)
    try:
        body = objects.patch(PLURAL, ns, name, patch)
    except Exception as error:
        _missing(error, name, ns)
    return Schedule.model_validate(body)


def delete(
    name: str,
    namespace: str | None = None,
    *,
    missing_ok: bool = True,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> None:
    """Delete the schedule (its runs go with it).  Deleting a missing one is fine
    unless ``missing_ok=False``."""
    objects, ns = _target(namespace, api, client)
    try:
        objects.delete(PLURAL, ns, name)
    except Exception as error:
        if _status(error) != 404 or not missing_ok:
            _missing(error, name, ns)


def activate(
    name: str,
    namespace: str | None = None,
    *,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> Schedule:
    """Resume ticking (``spec.suspend: false``)."""
    return _patch(name, {"spec": {"suspend": False}}, namespace, api, client)


def deactivate(
    name: str,
    namespace: str | None = None,
    *,
    api: ApiClient | None = None,
    client: Client | None = None,
) -> Schedule:
    """Stop ticking (``spec.suspend: true``); the schedule and its history stay."""
    return _patch(name, {"spec": {"suspend": True}}, namespace, api, client)


def timezones() -> builtins.list[str]:
    """Every IANA time zone name a schedule accepts, sorted."""
    return sorted(available_timezones())
