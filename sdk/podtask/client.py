"""The sync client: trigger tasks and work with runs from any Python process.

::

    from podtask import Client

    client = Client()                      # kubeconfig, or in-cluster credentials
    handle = client.trigger("email.send.welcome", {"to": "a@b.c"}, idempotency_key="w-42")
    for run in client.subscribe(handle):   # live status and metadata
        print(run.status.phase, (run.status.metadata or {}).get("progress"))
    print(handle.result().unwrap())

``my_task.trigger(...)``, ``podtask.tasks.trigger(...)`` and the functions of
:mod:`podtask.runs` use a shared default client.  The async twin is
:class:`podtask.aio.AsyncClient`.
"""

from __future__ import annotations

import base64
import builtins
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, cast, overload

from podtask import _inrun, _runview, outputs
from podtask._kube import Backend, KubeBackend, load_api_client, namespace_from_config
from podtask._runenv import CurrentRun, current_run
from podtask._trigger import (
    MAX_BATCH_ITEMS,
    BatchItem,
    CreateRun,
    DeleteRun,
    GetRun,
    Op,
    RunPlan,
    Sleep,
    Triggered,
    TriggerOptions,
    new_batch_id,
    plan_run,
    trigger_flow,
)
from podtask.api.v1alpha1 import API_VERSION, OutputRef, Phase, RunError, TaskRun, WaitToken
from podtask.errors import (
    BatchItemError,
    BatchTriggerError,
    ClusterUnreachableError,
    InvalidTriggerOptionsError,
    KubernetesApiError,
    PodtaskError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    TaskNotDeployedError,
    TokenAlreadyCompletedError,
    TriggerUnavailableError,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from podtask.tasks import Task

__all__ = [
    "BatchHandle",
    "Client",
    "RunHandle",
    "TaskRunResult",
    "default_client",
]

R = TypeVar("R")
G = TypeVar("G")

TASKRUNS = "taskruns"
TASKS = "tasks"
WAITTOKENS = "waittokens"
DEFAULT_BATCH_CONCURRENCY = 16
# A deployed Task rarely disappears; re-checking it on every trigger would double the calls.
_TASK_CHECK_SECONDS = 30.0
_WATCH_SECONDS = 50


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class TaskRunResult(Generic[R]):
    """A finished run's outcome: Trigger.dev's ``{ok, id, taskIdentifier, output, error}``."""

    ok: bool
    id: str
    task_identifier: str
    phase: Phase
    output: R | None
    error: RunError | None
    run: TaskRun = field(repr=False)

    def unwrap(self) -> R:
        """The output; raises :class:`~podtask.errors.RunFailedError` for a run that
        did not complete."""
        if not self.ok:
            raise RunFailedError(
                f"run {self.id} of task {self.task_identifier!r} ended {self.phase.value}: "
                f"{_runview.error_text(self.error) or 'no error recorded'}",
                run_id=self.id,
                task_id=self.task_identifier,
                phase=self.phase.value,
            )
        return cast(R, self.output)


def _result(run: TaskRun, output: Any) -> TaskRunResult[Any]:
    status = run.status
    phase = status.phase if status and status.phase else Phase.QUEUED
    ok = phase == Phase.COMPLETED
    return TaskRunResult(
        ok=ok,
        id=run.metadata.name or "",
        task_identifier=run.spec.task,
        phase=phase,
        output=output if ok else None,
        error=status.error if status else None,
        run=run,
    )


# --------------------------------------------------------------------------- handles


@dataclass(frozen=True, slots=True)
class RunHandle(Generic[R]):
    """A triggered run: its id (the TaskRun's name), namespace and task.

    ``is_cached`` says the idempotency key found an existing run.  ``R`` is the
    task's output type when triggered through a :class:`~podtask.tasks.Task`.
    """

    id: str
    namespace: str
    task_identifier: str
    is_cached: bool = False
    uid: str = ""
    batch_id: str | None = None
    client: Client = field(repr=False, compare=False, kw_only=True)

    @property
    def name(self) -> str:
        return self.id

    def __str__(self) -> str:
        return self.id

    def retrieve(self) -> TaskRun:
        return self.client.retrieve(self.id, self.namespace)

    def subscribe(
        self, *, close_on_complete: bool = True, timeout: float | None = None
    ) -> Iterator[TaskRun]:
        return self.client.subscribe(
            self.id, self.namespace, close_on_complete=close_on_complete, timeout=timeout
        )

    def poll(self, *, timeout: float | None = None) -> TaskRun:
        """Wait for the run to end; the run as it ended."""
        return self.client.poll(self.id, self.namespace, timeout=timeout)

    def result(self, *, timeout: float | None = None) -> TaskRunResult[R]:
        """Wait for the run to end; its outcome, with the output typed as the task's."""
        return cast(TaskRunResult[R], self.client.result(self.id, self.namespace, timeout=timeout))

    def cancel(self) -> TaskRun:
        return self.client.cancel(self.id, self.namespace)


def _handle(client: Client, triggered: Triggered, plan: RunPlan) -> RunHandle[Any]:
    meta = triggered.run.get("metadata") or {}
    return RunHandle(
        id=str(meta.get("name")),
        namespace=str(meta.get("namespace") or plan.namespace),
        task_identifier=plan.task,
        is_cached=triggered.cached,
        uid=str(meta.get("uid") or ""),
        batch_id=plan.batch_id,
        client=client,
    )


@dataclass(frozen=True, slots=True)
class BatchHandle(Generic[R]):
    """A triggered batch: one entry per item, in order, a run handle or an error."""

    batch_id: str
    namespace: str
    items: list[RunHandle[R] | BatchItemError]

    @property
    def runs(self) -> list[RunHandle[R]]:
        """The runs made (or found, for cached items), in item order."""
        return [item for item in self.items if isinstance(item, RunHandle)]

    @property
    def errors(self) -> list[BatchItemError]:
        return [item for item in self.items if isinstance(item, BatchItemError)]

    @property
    def run_count(self) -> int:
        return len(self.runs)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> BatchHandle[R]:
        """Raise :class:`~podtask.errors.BatchTriggerError` if any item failed."""
        if self.errors:
            raise batch_items_error(self)
        return self


def batch_items_error(handle: BatchHandle[Any] | Any) -> BatchTriggerError:
    errors: list[BatchItemError] = handle.errors
    first = errors[0]
    return BatchTriggerError(
        f"{len(errors)} of {len(handle.items)} batch items failed; first: item "
        f"{first.index} ({first.task}): {first.message}",
        batch_id=handle.batch_id,
        phase="items",
        errors=errors,
        item_count=len(handle.items),
        handle=handle,
    )


# --------------------------------------------------------------------------- shared bits


def run_name(run: str | RunHandle[Any] | TaskRun | Any) -> tuple[str, str | None]:
    """(name, namespace or None) of anything that names a run."""
    if isinstance(run, str):
        return run, None
    if isinstance(run, TaskRun):
        return run.metadata.name or "", run.metadata.namespace
    name = getattr(run, "id", None)
    if isinstance(name, str):
        return name, getattr(run, "namespace", None)
    raise TypeError(f"a run is named by a string, a handle or a TaskRun, not {type(run).__name__}")


def task_identity(task: Any) -> tuple[str, Callable[[Any], Any] | None]:
    """The task id and, for a task known in this process, its payload validator."""
    from podtask import tasks

    if isinstance(task, tasks.Task):
        return task.id, task.payload_to_json if task.schema is not None else None
    if not isinstance(task, str):
        raise TypeError(f"a task is a Task or its id, not {type(task).__name__}")
    known = tasks._REGISTRY.get(task)
    if known is not None and known.schema is not None:
        return task, known.payload_to_json
    return task, None


def replay_body(original: TaskRun, name: str) -> dict[str, Any]:
    spec = original.spec.model_copy(
        update={
            "replay_of": name,
            "cancel": None,
            "idempotency_key": None,
            "idempotency_key_scope": None,
            "idempotency_key_ttl": None,
        }
    )
    labels = {k: v for k, v in original.metadata.labels.items() if k.startswith("podtask.dev/")}
    return {
        "apiVersion": API_VERSION,
        "kind": "TaskRun",
        "metadata": {"generateName": f"{name[:200]}-replay-", "labels": labels},
        "spec": spec.to_wire(),
    }


def batch_items(items: Iterable[BatchItem] | Any) -> builtins.list[Any]:
    materialised = builtins.list(items)
    if len(materialised) > MAX_BATCH_ITEMS:
        raise BatchTriggerError(
            f"a batch takes at most {MAX_BATCH_ITEMS} items, not {len(materialised)}",
            phase="create",
            item_count=len(materialised),
        )
    return materialised


def item_parts(
    item: Any, index: int, default_task: Any, batch_key: str | None, batch_ttl: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """(task, payload, options) of one batch item; InvalidTriggerOptionsError if malformed."""
    if not isinstance(item, Mapping):
        raise InvalidTriggerOptionsError(
            f"batch item {index} must be a dict {{'payload': ..., 'options': {{...}}}}, "
            f"not {type(item).__name__}"
        )
    if "payload" not in item:
        raise InvalidTriggerOptionsError(f"batch item {index} has no 'payload'")
    extra = set(item) - {"payload", "options", "task"}
    if extra:
        raise InvalidTriggerOptionsError(
            f"batch item {index} has unknown keys {', '.join(sorted(extra))}"
        )
    task = item.get("task", default_task)
    if task is None:
        raise InvalidTriggerOptionsError(f"batch item {index} names no task")
    options = dict(item.get("options") or {})
    if batch_key is not None and options.get("idempotency_key") is None:
        # Trigger.dev: items without their own key use the batch key and their index.
        options["idempotency_key"] = f"{batch_key}:{index}"
        if batch_ttl is not None and options.get("idempotency_key_ttl") is None:
            options["idempotency_key_ttl"] = batch_ttl
    return task, item["payload"], options


def token_completion(token: dict[str, Any], output: Any, now: datetime) -> dict[str, Any]:
    """The WaitToken with its status completed by ``output`` (refused if already done)."""
    status = dict(token.get("status") or {})
    name = (token.get("metadata") or {}).get("name")
    if status.get("completed"):
        how = "timed out" if status.get("timedOut") else "was completed"
        raise TokenAlreadyCompletedError(f"wait token {name} {how} already")
    status.update(
        {"completed": True, "output": output, "completedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    return {**token, "status": status}


def in_run_unavailable(error: PodtaskError, run: CurrentRun) -> TriggerUnavailableError:
    return TriggerUnavailableError(
        f"run {run.namespace}/{run.name} cannot reach the Kubernetes API ({error}). Run pods "
        "have no Kubernetes credentials by default. While a task runs, trigger and "
        "batch_trigger in its own namespace, and subscribe, poll, result and retrieve of the "
        "run itself and of its child runs, go through the run API; anything else (another "
        "namespace or run, list, cancel, replay, logs, outputs too large for the run's "
        "status) needs the Kubernetes API: give the Task a serviceAccountName whose Role "
        "allows it (e.g. create, get, list and watch taskruns, and get tasks)."
    )


def in_run_handle(
    client: Client, outcome: _inrun.Outcome, plan: RunPlan, batch_id: str | None
) -> RunHandle[Any]:
    if outcome.error is not None:
        raise outcome.error
    return RunHandle(
        id=outcome.name,
        namespace=plan.namespace,
        task_identifier=plan.task,
        is_cached=outcome.cached,
        batch_id=batch_id,
        client=client,
    )


def batch_name(plans: Sequence[tuple[int, RunPlan]]) -> str:
    """What a batch made inside a run is called in the journal: its task ids."""
    return ",".join(dict.fromkeys(plan.task for _, plan in plans))


# --------------------------------------------------------------------------- the client


class Client:
    """Triggers tasks and reads, watches, cancels and replays runs (sync).

    Credentials come from ``api`` (an official ``kubernetes`` ``ApiClient``), else
    from the cluster (in-cluster config), else from the kubeconfig (``kubeconfig``
    / ``context``, or ``$KUBECONFIG``).  They are loaded on first use.  The
    namespace defaults to the current run's, else the kubeconfig context's, else
    ``default``.  ``verify_tasks`` checks that a triggered task has a Task
    resource, so an unknown id fails at once with
    :class:`~podtask.errors.TaskNotDeployedError` (skipped when RBAC forbids
    reading Tasks).
    """

    def __init__(
        self,
        api: ApiClient | None = None,
        *,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        verify_tasks: bool = True,
        batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        backend: Backend | None = None,
    ) -> None:
        self._api = api
        self._kubeconfig = kubeconfig
        self._context = context
        self._backend = backend
        self._namespace = namespace
        self._owns_api = False
        # Given a way to the cluster, the client uses it even inside a run; otherwise a
        # running task's calls about its own namespace go through the run API.
        self._explicit = any(x is not None for x in (api, kubeconfig, context, backend))
        self.verify_tasks = verify_tasks
        self.batch_concurrency = max(1, batch_concurrency)
        self._lock = threading.Lock()
        self._task_checks: dict[tuple[str, str], float] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                run = current_run()
                try:
                    if self._api is None:
                        self._api = load_api_client(self._kubeconfig, self._context)
                        self._owns_api = True
                except ClusterUnreachableError as error:
                    if run is not None:
                        raise in_run_unavailable(error, run) from error
                    raise
                self._backend = KubeBackend(self._api)
            return self._backend

    @property
    def namespace(self) -> str:
        """Where runs are created and looked up unless a call names a namespace."""
        if self._namespace is None:
            run = current_run()
            if run is not None:
                self._namespace = run.namespace
            else:
                self._namespace = namespace_from_config(self._kubeconfig, self._context)
        return self._namespace

    def close(self) -> None:
        if self._owns_api and self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]
            self._api = None
            self._backend = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    def _drive(self, flow: Any) -> Triggered:
        backend = self.backend
        value: Any = None
        error: PodtaskError | None = None
        while True:
            try:
                op: Op = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return cast(Triggered, stop.value)
            value, error = None, None
            try:
                if isinstance(op, CreateRun):
                    value = backend.create(TASKRUNS, op.namespace, op.body)
                elif isinstance(op, GetRun):
                    value = backend.get(TASKRUNS, op.namespace, op.name)
                elif isinstance(op, DeleteRun):
                    backend.delete(TASKRUNS, op.namespace, op.name, op.uid)
                elif isinstance(op, Sleep):
                    time.sleep(op.seconds)
            except PodtaskError as failed:
                error = failed

    def check_task(self, task_id: str, namespace: str | None = None) -> None:
        """Raise :class:`TaskNotDeployedError` if ``task_id`` has no Task in the namespace."""
        ns = self._ns(namespace)
        checked = self._task_checks.get((ns, task_id))
        if checked is not None and time.monotonic() - checked < _TASK_CHECK_SECONDS:
            return
        try:
            self.backend.get(TASKS, ns, task_id)
        except KubernetesApiError as error:
            if error.status == 403:
                return  # may trigger but not read Tasks: let the operator judge
            if error.status != 404:
                raise
            raise self._not_deployed(task_id, ns) from None
        self._task_checks[(ns, task_id)] = time.monotonic()

    def _not_deployed(self, task_id: str, namespace: str) -> TaskNotDeployedError:
        try:
            items, _ = self.backend.list(TASKS, namespace)
            known = sorted(str((t.get("metadata") or {}).get("name")) for t in items)
        except PodtaskError:
            known = []
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
        return TaskNotDeployedError(
            f"no task {task_id!r} is deployed in namespace {namespace!r} (deployed: {listing}); "
            "run `podtask deploy --apply` or check the namespace",
            task_id=task_id,
            namespace=namespace,
        )

    # ------------------------------------------------------------------ triggering

    @overload
    def trigger(
        self,
        task: Task[..., G],
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> RunHandle[G]: ...

    @overload
    def trigger(
        self,
        task: str,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> RunHandle[Any]: ...

    def trigger(
        self,
        task: Task[..., Any] | str,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> RunHandle[Any]:
        """Create a run of ``task`` (a :class:`~podtask.tasks.Task` or its id).

        The payload is validated first (a ``schema_task``'s schema, or JSON), then
        the options; neither failure creates anything.  With an
        ``idempotency_key`` a repeated trigger returns the existing run with
        ``is_cached=True``.  Inside a run the new run is linked to it as its child, and
        in the run's namespace the operator creates it (through the run API).
        """
        task_id, validate = task_identity(task)
        ns = self._ns(namespace)
        session = _inrun.session_for(self._explicit, ns)
        parent = _inrun.parent(session) if session is not None else current_run()
        plan = plan_run(task_id, payload, options, namespace=ns, parent=parent, validate=validate)
        if session is not None:
            _, [outcome] = _inrun.trigger(
                session, "trigger", task_id, [(0, plan)], verify_tasks=self.verify_tasks
            )
            return in_run_handle(self, outcome, plan, None)
        if self.verify_tasks:
            self.check_task(task_id, ns)
        return _handle(self, self._drive(trigger_flow(plan)), plan)

    @overload
    def batch_trigger(
        self,
        task: Task[..., G],
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> BatchHandle[G]: ...

    @overload
    def batch_trigger(
        self,
        task: str,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> BatchHandle[Any]: ...

    def batch_trigger(
        self,
        task: Task[..., Any] | str,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> BatchHandle[Any]:
        """Up to 1,000 runs of ``task``, one per item ``{"payload": ..., "options": {...}}``.

        Items are created in parallel (``concurrency``, default 16), each its own
        run with its own options, all labelled with the batch id.  An item that
        fails (bad payload or options, API error) becomes a
        :class:`~podtask.errors.BatchItemError` in ``items``/``errors``; the
        others are made all the same.  More than 1,000 items raise
        :class:`~podtask.errors.BatchTriggerError` before anything is created.
        """
        return self._batch(
            items, task, namespace, idempotency_key, idempotency_key_ttl, concurrency
        )

    def batch_trigger_by_task(
        self,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> BatchHandle[Any]:
        """A batch mixing tasks: every item names its ``task``."""
        return self._batch(
            items, None, namespace, idempotency_key, idempotency_key_ttl, concurrency
        )

    def _batch(
        self,
        items: Iterable[BatchItem],
        task: Any,
        namespace: str | None,
        batch_key: str | None,
        batch_ttl: Any,
        concurrency: int | None,
    ) -> BatchHandle[Any]:
        entries = batch_items(items)
        ns = self._ns(namespace)
        batch_id = new_batch_id(batch_key, ns)
        session = _inrun.session_for(self._explicit, ns)
        parent = _inrun.parent(session) if session is not None else current_run()
        results: list[RunHandle[Any] | BatchItemError | None] = [None] * len(entries)
        plans: list[tuple[int, RunPlan]] = []
        for index, item in enumerate(entries):
            task_id = str(getattr(task, "id", task) or "?")
            try:
                item_task, payload, options = item_parts(item, index, task, batch_key, batch_ttl)
                task_id, validate = task_identity(item_task)
                plan = plan_run(
                    task_id,
                    payload,
                    options,
                    namespace=ns,
                    parent=parent,
                    # Inside a run the batch id comes from the journal position.
                    batch=(batch_id, index) if session is None else None,
                    validate=validate,
                )
            except (PodtaskError, TypeError) as error:
                results[index] = BatchItemError(index, task_id, _podtask_error(error))
                continue
            plans.append((index, plan))
        if session is not None:
            if plans:
                made_id, outcomes = _inrun.trigger(
                    session,
                    "batch_trigger",
                    batch_name(plans),
                    plans,
                    verify_tasks=self.verify_tasks,
                    batch=True,
                    batch_key=batch_key,
                )
                batch_id = made_id or batch_id
                for (index, plan), outcome in zip(plans, outcomes, strict=True):
                    try:
                        results[index] = in_run_handle(self, outcome, plan, batch_id)
                    except PodtaskError as error:
                        results[index] = BatchItemError(index, plan.task, error)
            made = [r for r in results if r is not None]
            return BatchHandle(batch_id=batch_id, namespace=ns, items=made)
        if self.verify_tasks:
            missing: dict[str, PodtaskError] = {}
            for task_id in sorted({plan.task for _, plan in plans}):
                try:
                    self.check_task(task_id, ns)
                except TaskNotDeployedError as error:
                    missing[task_id] = error
            for index, plan in plans:
                if plan.task in missing:
                    results[index] = BatchItemError(index, plan.task, missing[plan.task])
            plans = [(i, p) for i, p in plans if p.task not in missing]

        def create(entry: tuple[int, RunPlan]) -> None:
            index, plan = entry
            try:
                results[index] = _handle(self, self._drive(trigger_flow(plan)), plan)
            except PodtaskError as error:
                results[index] = BatchItemError(index, plan.task, error)

        if plans:
            self.backend  # noqa: B018 - load credentials once, not in every worker
            workers = min(concurrency or self.batch_concurrency, len(plans))
            with ThreadPoolExecutor(workers, thread_name_prefix="podtask-batch") as pool:
                builtins.list(pool.map(create, plans))
        done = [r for r in results if r is not None]
        assert len(done) == len(entries)
        return BatchHandle(batch_id=batch_id, namespace=ns, items=done)

    # ------------------------------------------------------------------ runs

    def _get_run(self, name: str, namespace: str) -> dict[str, Any]:
        try:
            return self.backend.get(TASKRUNS, namespace, name)
        except KubernetesApiError as error:
            if error.status == 404:
                raise RunNotFoundError(
                    f"no run {name!r} in namespace {namespace!r}", name, namespace
                ) from None
            raise

    def retrieve(
        self, run: str | RunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRun:
        """The run as stored now (spec and status)."""
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        session = _inrun.session_for(self._explicit, ns)
        if session is not None:
            try:
                for found in _inrun.follow(session, name):
                    return TaskRun.model_validate(found)
                raise RunNotFoundError(f"no run {name!r} in namespace {ns!r}", name, ns)
            except _inrun.NotFollowable:
                pass  # neither this run nor its child: the Kubernetes API may serve it
        return TaskRun.model_validate(self._get_run(name, ns))

    def list(
        self,
        *,
        task: str | Sequence[str] | None = None,
        status: str | Phase | Iterable[str | Phase] | None = None,
        tag: str | Sequence[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        period: str | float | timedelta | None = None,
        batch_id: str | None = None,
        label_selector: str | None = None,
        limit: int | None = None,
        namespace: str | None = None,
        all_namespaces: bool = False,
    ) -> builtins.list[TaskRun]:
        """Runs, newest first, that match every filter given.

        ``status`` takes podtask phases or Trigger.dev names (``"COMPLETED"``);
        ``tag`` matches runs carrying any of the tags; ``period`` (``"1h"``) keeps
        runs created within that long; ``batch_id`` the runs of one batch.
        """
        selected = _runview.RunFilter.build(
            task=task,
            status=status,
            tag=tag,
            created_after=created_after,
            created_before=created_before,
            period=period,
        )
        selector = _selector(label_selector, batch_id)
        ns = None if all_namespaces else self._ns(namespace)
        items, _ = self.backend.list(TASKRUNS, ns, label_selector=selector)
        matching = [r for r in _runview.newest_first(items) if selected.matches(r)]
        if limit is not None:
            matching = matching[:limit]
        return [TaskRun.model_validate(r) for r in matching]

    def output(self, run: TaskRun | str | RunHandle[Any], namespace: str | None = None) -> Any:
        """The run's output, read back from its Secrets when it was too large to inline."""
        found = run if isinstance(run, TaskRun) else self.retrieve(run, namespace)
        status = found.status
        if status is None:
            return None
        if status.output_ref is None:
            return status.output
        return self.read_output_ref(
            status.output_ref, found.metadata.namespace or self._ns(namespace)
        )

    def read_output_ref(self, ref: OutputRef, namespace: str) -> Any:
        chunks = [
            base64.b64decode(self.backend.secret_data(namespace, name)[outputs.CHUNK_KEY])
            for name in ref.names
        ]
        return outputs.assemble(chunks, ref.size, ref.sha256)

    def cancel(self, run: str | RunHandle[Any] | TaskRun, namespace: str | None = None) -> TaskRun:
        """Ask the operator to cancel the run (``spec.cancel: true``); a run that
        already ended is left as it is."""
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        try:
            patched = self.backend.patch(TASKRUNS, ns, name, {"spec": {"cancel": True}})
        except KubernetesApiError as error:
            if error.status == 404:
                raise RunNotFoundError(f"no run {name!r} in namespace {ns!r}", name, ns) from None
            raise
        return TaskRun.model_validate(patched)

    def replay(self, run: str | RunHandle[Any] | TaskRun, namespace: str | None = None) -> TaskRun:
        """A new run of the same task with the same payload and options, linked by
        ``spec.replayOf`` (its idempotency key is not carried over)."""
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        original = TaskRun.model_validate(self._get_run(name, ns))
        created = self.backend.create(TASKRUNS, ns, replay_body(original, name))
        return TaskRun.model_validate(created)

    def subscribe(
        self,
        run: str | RunHandle[Any] | TaskRun,
        namespace: str | None = None,
        *,
        close_on_complete: bool = True,
        timeout: float | None = None,
    ) -> Iterator[TaskRun]:
        """The run now, then again at every change of its status (phase, attempt,
        metadata, output, error) or tags, from a watch on the API server (inside a run,
        for the run itself and its children, from the run API's events).

        Ends after a final phase (unless ``close_on_complete`` is false), when the
        run is deleted, or after ``timeout`` seconds.
        """
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        session = _inrun.session_for(self._explicit, ns)
        if session is not None:
            try:
                for found in _inrun.follow(
                    session, name, close_on_complete=close_on_complete, timeout=timeout
                ):
                    yield TaskRun.model_validate(found)
                return
            except _inrun.NotFollowable:
                pass  # neither this run nor its child: the Kubernetes API may serve it
        yield from self._watch(name, ns, close_on_complete, timeout)

    def _watch(
        self, name: str, ns: str, close_on_complete: bool, timeout: float | None
    ) -> Iterator[TaskRun]:
        deadline = None if timeout is None else time.monotonic() + timeout
        current = self._get_run(name, ns)
        last = ""
        while True:
            key = _runview.change_key(current)
            if key != last:
                last = key
                yield TaskRun.model_validate(current)
            if close_on_complete and _runview.is_final(current):
                return
            left = _WATCH_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return
            version = str((current.get("metadata") or {}).get("resourceVersion") or "")
            try:
                for kind, obj in self.backend.watch(
                    TASKRUNS,
                    ns,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=max(1, int(min(left, _WATCH_SECONDS))),
                ):
                    if kind == "BOOKMARK":
                        current = {
                            **current,
                            "metadata": {
                                **(current.get("metadata") or {}),
                                "resourceVersion": (obj.get("metadata") or {}).get(
                                    "resourceVersion"
                                ),
                            },
                        }
                        continue
                    if kind == "DELETED":
                        return
                    current = obj
                    key = _runview.change_key(current)
                    if key != last:
                        last = key
                        yield TaskRun.model_validate(current)
                    if close_on_complete and _runview.is_final(current):
                        return
            except KubernetesApiError as error:
                if error.status != 410:  # 410 Gone: the watch expired; read afresh
                    raise
                current = self._get_run(name, ns)

    def poll(
        self,
        run: str | RunHandle[Any] | TaskRun,
        namespace: str | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskRun:
        """Wait until the run ends (watching it); the run as it ended.

        Raises :class:`~podtask.errors.RunTimeoutError` after ``timeout`` seconds.
        """
        last: TaskRun | None = None
        for seen in self.subscribe(run, namespace, timeout=timeout):
            last = seen
        if last is None or not _ended(last):
            name, _ = run_name(run)
            if timeout is None:
                raise RunNotFoundError(f"run {name} was deleted before it ended", name)
            phase = last.status.phase if last and last.status else None
            raise RunTimeoutError(
                f"run {name} did not end within {timeout:g}s (last phase: {phase or 'none'})"
            )
        return last

    def result(
        self,
        run: str | RunHandle[Any] | TaskRun,
        namespace: str | None = None,
        *,
        timeout: float | None = None,
    ) -> TaskRunResult[Any]:
        """Wait until the run ends; its outcome with the output (read back if large)."""
        ended = self.poll(run, namespace, timeout=timeout)
        ok = ended.status is not None and ended.status.phase == Phase.COMPLETED
        return _result(ended, self.output(ended) if ok else None)

    def logs(
        self,
        run: str | RunHandle[Any] | TaskRun,
        namespace: str | None = None,
        *,
        attempt: int | None = None,
        follow: bool = False,
        wait_seconds: float = 60.0,
    ) -> Iterator[str]:
        """Lines of the log of an attempt's pod (the latest attempt by default).

        With ``follow``, waits up to ``wait_seconds`` for the attempt's pod to
        start, then streams until it ends.  Pods of finished runs are deleted once
        their outcome is recorded (failed ones are kept): their logs are gone.
        """
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        deadline = time.monotonic() + (wait_seconds if follow else 0)
        while True:
            found = self.retrieve(name, ns)
            pod = _runview.attempt_pod(found, attempt)
            if pod is not None:
                try:
                    phase = (self.backend.get_pod(ns, pod).get("status") or {}).get("phase")
                except KubernetesApiError as error:
                    if error.status != 404:
                        raise
                    phase = None
                    ended = (
                        found.status is not None and (found.status.phase or Phase.QUEUED).is_final
                    )
                    if time.monotonic() >= deadline or ended:
                        raise KubernetesApiError(
                            f"the pod {pod} of run {name} is gone: pods of finished runs are "
                            "deleted once their outcome is recorded",
                            404,
                            "NotFound",
                        ) from None
                if phase is not None and (phase != "Pending" or time.monotonic() >= deadline):
                    yield from self.backend.pod_log(ns, pod, follow=follow)
                    return
            elif time.monotonic() >= deadline:
                which = f"attempt {attempt}" if attempt else "any attempt"
                raise KubernetesApiError(
                    f"run {name} has no pod for {which} yet (phase "
                    f"{(found.status.phase if found.status else None) or 'none'})",
                    404,
                    "NotFound",
                )
            time.sleep(0.5)

    # ------------------------------------------------------------------ wait tokens

    def complete_token(
        self, name: str, output: Any = None, namespace: str | None = None
    ) -> WaitToken:
        """Complete a WaitToken with ``output``: the runs waiting on it resume.

        Writes ``status.completed``, ``output`` and ``completedAt`` through the
        status subresource; a token completed or timed out before raises
        :class:`~podtask.errors.TokenAlreadyCompletedError`.
        """
        ns = self._ns(namespace)
        data = _json_value(output)
        for _ in range(10):
            try:
                token = self.backend.get(WAITTOKENS, ns, name)
            except KubernetesApiError as error:
                if error.status == 404:
                    raise KubernetesApiError(
                        f"no wait token {name!r} in namespace {ns!r}", 404, "NotFound"
                    ) from None
                raise
            body = token_completion(token, data, datetime.now(UTC))
            try:
                return WaitToken.model_validate(
                    self.backend.replace_status(WAITTOKENS, ns, name, body)
                )
            except KubernetesApiError as error:
                if error.status != 409:  # changed meanwhile: read it again
                    raise
        raise KubernetesApiError(f"wait token {ns}/{name} kept changing", 409, "Conflict")


# --------------------------------------------------------------------------- helpers


def _selector(label_selector: str | None, batch_id: str | None) -> str | None:
    from podtask._trigger import LABEL_BATCH

    parts = [p for p in (label_selector, f"{LABEL_BATCH}={batch_id}" if batch_id else None) if p]
    return ",".join(parts) or None


def _ended(run: TaskRun) -> bool:
    return run.status is not None and run.status.phase is not None and run.status.phase.is_final


def _podtask_error(error: BaseException) -> PodtaskError:
    if isinstance(error, PodtaskError):
        return error
    return InvalidTriggerOptionsError(str(error))


def _json_value(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise InvalidTriggerOptionsError(f"a wait token's output must be JSON: {error}") from error


_DEFAULT: Client | None = None
_DEFAULT_LOCK = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by ``Task.trigger``, ``tasks.trigger`` and ``runs``."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Client()
        return _DEFAULT


def client_for(api: ApiClient | None, client: Client | None = None) -> Client:
    """``client``, a client over ``api``, or the default one."""
    if client is not None:
        return client
    if api is not None:
        return Client(api)
    return default_client()
