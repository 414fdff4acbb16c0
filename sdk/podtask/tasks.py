"""Task definitions: ``@task``, ``schema_task`` and the process-wide registry.

::

    from podtask import task

    @task(id="email.send.welcome", machine="small-1x", retry={"max_attempts": 5})
    def send_welcome(payload: dict, ctx) -> dict: ...

The decorated function stays callable as before; the :class:`Task` it becomes
also carries the options (``to_spec`` turns them into a Task resource), the
task's hooks, and for a ``schema_task`` the payload schema.  A task id names a
Kubernetes object, so it is a lowercase DNS subdomain such as
``domain.action.target``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

from pydantic import TypeAdapter, ValidationError

from podtask._callables import UserCallable
from podtask.api.base import DNS_SUBDOMAIN_PATTERN
from podtask.api.durations import format_duration
from podtask.api.machines import MachineName
from podtask.api.v1alpha1 import RetryPolicy, TaskSpec
from podtask.errors import (
    DuplicateTaskIdError,
    InvalidTaskDefinitionError,
    PayloadValidationError,
    TaskNotFoundError,
)
from podtask.hooks import HookFn, HookKind, HookSet, duration_seconds
from podtask.subtasks import (
    BatchResult,
    Result,
    SubtaskMethods,
    batch_trigger_and_wait,
    batch_trigger_and_wait_async,
    batch_trigger_by_task_and_wait,
    batch_trigger_by_task_and_wait_async,
    trigger_and_wait,
    trigger_and_wait_async,
)

if TYPE_CHECKING:
    # Only for annotations: triggering imports the Kubernetes client on first use, so the
    # runner (which imports this module in every pod) never loads it.
    from podtask._trigger import BatchItem, TriggerOptions
    from podtask.aio import AsyncBatchHandle, AsyncClient, AsyncRunHandle
    from podtask.client import BatchHandle, Client, RunHandle

__all__ = [
    "BatchResult",
    "Result",
    "Task",
    "all",
    "batch_trigger",
    "batch_trigger_and_wait",
    "batch_trigger_and_wait_async",
    "batch_trigger_async",
    "batch_trigger_by_task_and_wait",
    "batch_trigger_by_task_and_wait_async",
    "get",
    "schema_task",
    "task",
    "trigger",
    "trigger_and_wait",
    "trigger_and_wait_async",
    "trigger_async",
    "validate_task_id",
]

P = ParamSpec("P")
R = TypeVar("R")
G = TypeVar("G")

MAX_TASK_ID_LENGTH = 253
_TASK_ID = re.compile(DNS_SUBDOMAIN_PATTERN)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DESCRIPTION = 1024
# Any valid image and entrypoint: options are checked against TaskSpec before the
# real ones are known (at `podtask deploy`).
_PLACEHOLDER = {"image": "placeholder", "entrypoint": "placeholder:placeholder"}

_RETRY_DURATIONS = frozenset({"min_timeout", "max_timeout", "minTimeout", "maxTimeout"})

RetryOption = RetryPolicy | Mapping[str, Any]
DurationOption = str | float | timedelta


class TaskHooks(TypedDict, total=False):
    """Hooks given to ``task()`` by name; see :mod:`podtask.hooks`."""

    init: Callable[..., Any]
    on_start: Callable[..., Any]
    on_start_attempt: Callable[..., Any]
    on_success: Callable[..., Any]
    on_failure: Callable[..., Any]
    on_complete: Callable[..., Any]
    on_cancel: Callable[..., Any]
    catch_error: Callable[..., Any]
    middleware: Callable[..., Any]


def validate_task_id(task_id: str) -> str:
    """Return ``task_id`` if it can name a Task resource; raise a ValueError saying why not."""
    if not isinstance(task_id, str) or not task_id:
        raise InvalidTaskDefinitionError(f"a task id must be a non-empty string, not {task_id!r}")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise InvalidTaskDefinitionError(
            f"task id {task_id[:40]!r}… is {len(task_id)} characters; the limit is "
            f"{MAX_TASK_ID_LENGTH} (it names a Kubernetes object)"
        )
    if not _TASK_ID.fullmatch(task_id):
        raise InvalidTaskDefinitionError(
            f"task id {task_id!r} is not a valid Kubernetes object name: use lowercase letters, "
            "digits, '-' and '.', starting and ending each dot-separated part with a letter or "
            "digit, e.g. 'email.send.welcome'"
        )
    return task_id


class Task(SubtaskMethods[R], Generic[P, R]):
    """A task: the function, its run options, its hooks and, optionally, a payload schema."""

    # Copied from the function (functools.update_wrapper), so the task reads as it.
    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        id: str,
        machine: MachineName | None = None,
        retry: RetryOption | None = None,
        queue: str | None = None,
        max_duration: DurationOption | None = None,
        ttl: DurationOption | None = None,
        description: str | None = None,
        schema: Any = None,
        init: Callable[..., Any] | None = None,
        on_start: Callable[..., Any] | None = None,
        on_start_attempt: Callable[..., Any] | None = None,
        on_success: Callable[..., Any] | None = None,
        on_failure: Callable[..., Any] | None = None,
        on_complete: Callable[..., Any] | None = None,
        on_cancel: Callable[..., Any] | None = None,
        catch_error: Callable[..., Any] | None = None,
        middleware: Callable[..., Any] | None = None,
        register: bool = True,
    ) -> None:
        self.id = validate_task_id(id)
        self.fn = fn
        self.function = UserCallable.of(fn, ("payload", "ctx"), "task function")
        functools.update_wrapper(self, fn)
        self.machine = machine
        self.retry = _retry_policy(self.id, retry)
        self.queue = queue
        self.max_duration = _duration(max_duration)
        self.ttl = _duration(ttl)
        self.description = description if description is not None else _summary(fn)
        self.schema = schema
        self._adapter: TypeAdapter[Any] | None = TypeAdapter(schema) if schema is not None else None
        self.hooks = HookSet()
        given: dict[HookKind, Callable[..., Any] | None] = {
            "init": init,
            "on_start": on_start,
            "on_start_attempt": on_start_attempt,
            "on_success": on_success,
            "on_failure": on_failure,
            "on_complete": on_complete,
            "on_cancel": on_cancel,
            "catch_error": catch_error,
            "middleware": middleware,
        }
        for kind, hook in given.items():
            if hook is not None:
                self.hooks.add(kind, hook)
        self._check_options()
        if register:
            _register(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.entrypoint}>"

    # ------------------------------------------------------------------ identity

    @property
    def entrypoint(self) -> str:
        """Where the runner finds the task: ``module:qualname``."""
        module = getattr(self.fn, "__module__", None) or "?"
        name = getattr(self.fn, "__qualname__", None) or getattr(self.fn, "__name__", "?")
        return f"{module}:{name}"

    # ------------------------------------------------------------------ payloads

    @property
    def payload_schema(self) -> dict[str, Any] | None:
        """The payload's JSON Schema, for a ``schema_task``."""
        return self._adapter.json_schema() if self._adapter is not None else None

    def validate_payload(self, payload: Any) -> Any:
        """The payload as the function receives it: parsed by the schema, if any.

        Raises :class:`~podtask.errors.PayloadValidationError` when it does not fit.
        """
        if self._adapter is None:
            return payload
        try:
            return self._adapter.validate_python(payload)
        except ValidationError as error:
            raise PayloadValidationError(
                f"the payload of task {self.id!r} does not match its schema: {error}"
            ) from error

    def payload_to_json(self, payload: Any) -> Any:
        """Validate ``payload`` and return it as JSON data (what a TaskRun carries)."""
        if self._adapter is None:
            return payload
        return self._adapter.dump_python(self.validate_payload(payload), mode="json")

    # ------------------------------------------------------------------ resources

    def to_spec(self, image: str, version: str | None = None) -> TaskSpec:
        """The Task resource's spec for this task built into ``image``."""
        self._check_importable()
        try:
            return TaskSpec.model_validate(
                {
                    **self._spec_fields(),
                    "image": image,
                    "entrypoint": self.entrypoint,
                    "version": version,
                }
            )
        except ValidationError as error:
            raise InvalidTaskDefinitionError(f"task {self.id!r}: {error}") from error

    def _spec_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "machine": self.machine,
            "retry": self.retry,
            "queue": self.queue,
            "max_duration": self.max_duration,
            "ttl": self.ttl,
            "description": self.description,
            "payload_schema": self.payload_schema,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def _check_options(self) -> None:
        try:
            TaskSpec.model_validate({**self._spec_fields(), **_PLACEHOLDER})
        except ValidationError as error:
            raise InvalidTaskDefinitionError(
                f"task {self.id!r} has invalid options: {error}"
            ) from error

    def _check_importable(self) -> None:
        module, _, name = self.entrypoint.partition(":")
        if module == "__main__":
            raise InvalidTaskDefinitionError(
                f"task {self.id!r} is defined in a script run as __main__; define it in a module "
                "the runner can import"
            )
        if not _IDENTIFIER.fullmatch(name):
            raise InvalidTaskDefinitionError(
                f"task {self.id!r} is defined as {name!r}, inside a function or class; define it "
                "at the top level of its module so the runner can import it"
            )

    # ------------------------------------------------------------------ triggering

    def trigger(
        self,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        client: Client | None = None,
        **options: Unpack[TriggerOptions],
    ) -> RunHandle[R]:
        """Create a run of this task; see :meth:`podtask.Client.trigger`.

        The payload is validated (a ``schema_task``'s schema) before anything is
        created.  ``client`` defaults to the process-wide one (kubeconfig or
        in-cluster credentials).
        """
        from podtask.client import default_client

        return (client or default_client()).trigger(self, payload, namespace=namespace, **options)

    def batch_trigger(
        self,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: DurationOption | None = None,
        concurrency: int | None = None,
        client: Client | None = None,
    ) -> BatchHandle[R]:
        """Up to 1,000 runs of this task, one per ``{"payload": ..., "options": {...}}``;
        see :meth:`podtask.Client.batch_trigger`."""
        from podtask.client import default_client

        return (client or default_client()).batch_trigger(
            self,
            items,
            namespace=namespace,
            idempotency_key=idempotency_key,
            idempotency_key_ttl=idempotency_key_ttl,
            concurrency=concurrency,
        )

    async def trigger_async(
        self,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        client: AsyncClient | None = None,
        **options: Unpack[TriggerOptions],
    ) -> AsyncRunHandle[R]:
        """:meth:`trigger` with the async client (``kubernetes_asyncio``)."""
        from podtask.aio import using_client

        async with using_client(client) as active:
            return await active.trigger(self, payload, namespace=namespace, **options)

    async def batch_trigger_async(
        self,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: DurationOption | None = None,
        concurrency: int | None = None,
        client: AsyncClient | None = None,
    ) -> AsyncBatchHandle[R]:
        """:meth:`batch_trigger` with the async client."""
        from podtask.aio import using_client

        async with using_client(client) as active:
            return await active.batch_trigger(
                self,
                items,
                namespace=namespace,
                idempotency_key=idempotency_key,
                idempotency_key_ttl=idempotency_key_ttl,
                concurrency=concurrency,
            )

    # ------------------------------------------------------------------ hooks

    def init(self, fn: HookFn) -> HookFn:
        self.hooks.add("init", fn)
        return fn

    def on_start(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_start", fn)
        return fn

    def on_start_attempt(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_start_attempt", fn)
        return fn

    def on_success(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_success", fn)
        return fn

    def on_failure(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_failure", fn)
        return fn

    def on_complete(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_complete", fn)
        return fn

    def on_cancel(self, fn: HookFn) -> HookFn:
        self.hooks.add("on_cancel", fn)
        return fn

    def catch_error(self, fn: HookFn) -> HookFn:
        self.hooks.add("catch_error", fn)
        return fn

    def middleware(self, fn: HookFn) -> HookFn:
        self.hooks.add("middleware", fn)
        return fn


def task(
    *,
    id: str,
    machine: MachineName | None = None,
    retry: RetryOption | None = None,
    queue: str | None = None,
    max_duration: DurationOption | None = None,
    ttl: DurationOption | None = None,
    description: str | None = None,
    **hooks: Unpack[TaskHooks],
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task.

    ``retry`` takes a :class:`RetryPolicy` or a dict with its snake_case keys
    (``max_attempts``, ``factor``, ``min_timeout``, ``max_timeout``, ``randomize``,
    ``out_of_memory={"machine": "large-1x"}``); durations are strings like
    ``"10m"`` or seconds.  Hooks may be given by name (``on_success=...``).
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(
            fn,
            id=id,
            machine=machine,
            retry=retry,
            queue=queue,
            max_duration=max_duration,
            ttl=ttl,
            description=description,
            **hooks,
        )

    return decorate


def schema_task(
    *,
    id: str,
    schema: Any,
    machine: MachineName | None = None,
    retry: RetryOption | None = None,
    queue: str | None = None,
    max_duration: DurationOption | None = None,
    ttl: DurationOption | None = None,
    description: str | None = None,
    **hooks: Unpack[TaskHooks],
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task whose payload is validated by ``schema`` (a pydantic model or any type
    pydantic can validate) before the function gets it, parsed."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(
            fn,
            id=id,
            schema=schema,
            machine=machine,
            retry=retry,
            queue=queue,
            max_duration=max_duration,
            ttl=ttl,
            description=description,
            **hooks,
        )

    return decorate


# ---------------------------------------------------------------------- registry

_REGISTRY: dict[str, Task[..., Any]] = {}


def _register(new: Task[..., Any]) -> None:
    existing = _REGISTRY.get(new.id)
    # The same definition seen again (a module reloaded) replaces the old one.
    if existing is not None and existing.entrypoint != new.entrypoint:
        raise DuplicateTaskIdError(
            f"task id {new.id!r} is already used by {existing.entrypoint}; "
            f"{new.entrypoint} needs another id"
        )
    _REGISTRY[new.id] = new


def get(task_id: str) -> Task[..., Any]:
    """The task registered under ``task_id`` in this process."""
    try:
        return _REGISTRY[task_id]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise TaskNotFoundError(
            f"no task {task_id!r} is registered in this process (known: {known}); "
            "import the module that defines it"
        ) from None


def all() -> list[Task[..., Any]]:
    """Every task registered in this process, by id."""
    return [_REGISTRY[task_id] for task_id in sorted(_REGISTRY)]


def find_by_function(fn: Callable[..., Any]) -> Task[..., Any] | None:
    """The registered task wrapping ``fn``, if any."""
    return next((t for t in _REGISTRY.values() if t.fn is fn), None)


# ---------------------------------------------------------------------- triggering by id


@overload
def trigger(
    task: Task[..., G],
    payload: Any = None,
    /,
    *,
    namespace: str | None = None,
    client: Client | None = None,
    **options: Unpack[TriggerOptions],
) -> RunHandle[G]: ...


@overload
def trigger(
    task: str,
    payload: Any = None,
    /,
    *,
    namespace: str | None = None,
    client: Client | None = None,
    **options: Unpack[TriggerOptions],
) -> RunHandle[Any]: ...


def trigger(
    task: Task[..., Any] | str,
    payload: Any = None,
    /,
    *,
    namespace: str | None = None,
    client: Client | None = None,
    **options: Unpack[TriggerOptions],
) -> RunHandle[Any]:
    """Trigger a task by id (or object) from any process with access to the cluster;
    the code defining it need not be importable here.  See
    :meth:`podtask.Client.trigger`."""
    from podtask.client import default_client

    return (client or default_client()).trigger(task, payload, namespace=namespace, **options)


def batch_trigger(
    task: Task[..., Any] | str,
    items: Iterable[BatchItem],
    /,
    *,
    namespace: str | None = None,
    idempotency_key: str | None = None,
    idempotency_key_ttl: DurationOption | None = None,
    concurrency: int | None = None,
    client: Client | None = None,
) -> BatchHandle[Any]:
    """A batch of runs of a task given by id or object; see :meth:`podtask.Client.batch_trigger`."""
    from podtask.client import default_client

    return (client or default_client()).batch_trigger(
        task,
        items,
        namespace=namespace,
        idempotency_key=idempotency_key,
        idempotency_key_ttl=idempotency_key_ttl,
        concurrency=concurrency,
    )


async def trigger_async(
    task: Task[..., Any] | str,
    payload: Any = None,
    /,
    *,
    namespace: str | None = None,
    client: AsyncClient | None = None,
    **options: Unpack[TriggerOptions],
) -> AsyncRunHandle[Any]:
    """:func:`trigger` with the async client."""
    from podtask.aio import using_client

    async with using_client(client) as active:
        return await active.trigger(task, payload, namespace=namespace, **options)


async def batch_trigger_async(
    task: Task[..., Any] | str,
    items: Iterable[BatchItem],
    /,
    *,
    namespace: str | None = None,
    idempotency_key: str | None = None,
    idempotency_key_ttl: DurationOption | None = None,
    concurrency: int | None = None,
    client: AsyncClient | None = None,
) -> AsyncBatchHandle[Any]:
    """:func:`batch_trigger` with the async client."""
    from podtask.aio import using_client

    async with using_client(client) as active:
        return await active.batch_trigger(
            task,
            items,
            namespace=namespace,
            idempotency_key=idempotency_key,
            idempotency_key_ttl=idempotency_key_ttl,
            concurrency=concurrency,
        )


# ---------------------------------------------------------------------- options


def _retry_policy(task_id: str, retry: RetryOption | None) -> RetryPolicy | None:
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if not isinstance(retry, Mapping):
        raise InvalidTaskDefinitionError(
            f"task {task_id!r}: retry must be a RetryPolicy or a dict, not {type(retry).__name__}"
        )
    fields = {
        key: _duration(value) if key in _RETRY_DURATIONS and value is not None else value
        for key, value in retry.items()
    }
    try:
        return RetryPolicy.model_validate(fields)
    except ValidationError as error:
        raise InvalidTaskDefinitionError(
            f"task {task_id!r} has an invalid retry policy: {error}"
        ) from error


def _duration(value: DurationOption | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    seconds = duration_seconds(value)
    # Zero means "no limit", as Trigger.dev's ttl: 0.
    return format_duration(seconds) if seconds > 0 else None


def _summary(fn: Callable[..., Any]) -> str | None:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0][:_MAX_DESCRIPTION] if doc else None
