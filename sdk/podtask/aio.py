"""The async client (``kubernetes_asyncio``): everything :class:`podtask.Client` does, awaited.

::

    from podtask import AsyncClient

    async with AsyncClient() as client:
        handle = await client.trigger("email.send.welcome", {"to": "a@b.c"})
        async for run in client.subscribe(handle):
            print(run.status.phase if run.status else None)
        async with asyncio.timeout(300):
            print((await handle.result()).unwrap())

The idempotency and batch rules are the sync client's, shared through
:mod:`podtask._trigger`.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, cast, overload

from podtask import _inrun, _runview, outputs
from podtask._akube import AsyncBackend, AsyncKubeBackend, load_async_api_client
from podtask._kube import namespace_from_config
from podtask._runenv import current_run
from podtask._trigger import (
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
from podtask.api.v1alpha1 import OutputRef, Phase, TaskRun, WaitToken
from podtask.client import (
    DEFAULT_BATCH_CONCURRENCY,
    TASKRUNS,
    TASKS,
    WAITTOKENS,
    TaskRunResult,
    _json_value,
    _podtask_error,
    _result,
    _selector,
    batch_items,
    batch_items_error,
    batch_name,
    in_run_unavailable,
    item_parts,
    replay_body,
    run_name,
    task_identity,
    token_completion,
)
from podtask.errors import (
    BatchItemError,
    ClusterUnreachableError,
    KubernetesApiError,
    PodtaskError,
    RunNotFoundError,
    TaskNotDeployedError,
)

if TYPE_CHECKING:
    from podtask.tasks import Task

__all__ = ["AsyncBatchHandle", "AsyncClient", "AsyncRunHandle", "using_client"]

R = TypeVar("R")
G = TypeVar("G")

_TASK_CHECK_SECONDS = 30.0
_WATCH_SECONDS = 50


@dataclass(frozen=True, slots=True)
class AsyncRunHandle(Generic[R]):
    """A triggered run, for the async client; see :class:`podtask.RunHandle`."""

    id: str
    namespace: str
    task_identifier: str
    is_cached: bool = False
    uid: str = ""
    batch_id: str | None = None
    client: AsyncClient = field(repr=False, compare=False, kw_only=True)

    @property
    def name(self) -> str:
        return self.id

    def __str__(self) -> str:
        return self.id

    async def retrieve(self) -> TaskRun:
        return await self.client.retrieve(self.id, self.namespace)

    def subscribe(
        self, *, close_on_complete: bool = True, timeout: float | None = None
    ) -> AsyncIterator[TaskRun]:
        return self.client.subscribe(
            self.id, self.namespace, close_on_complete=close_on_complete, timeout=timeout
        )

    async def poll(self) -> TaskRun:
        """Wait for the run to end (bound it with ``asyncio.timeout``)."""
        return await self.client.poll(self.id, self.namespace)

    async def result(self) -> TaskRunResult[R]:
        """Wait for the run to end; its outcome (bound it with ``asyncio.timeout``)."""
        return cast(TaskRunResult[R], await self.client.result(self.id, self.namespace))

    async def cancel(self) -> TaskRun:
        return await self.client.cancel(self.id, self.namespace)


@dataclass(frozen=True, slots=True)
class AsyncBatchHandle(Generic[R]):
    """A triggered batch, for the async client; see :class:`podtask.BatchHandle`."""

    batch_id: str
    namespace: str
    items: list[AsyncRunHandle[R] | BatchItemError]

    @property
    def runs(self) -> list[AsyncRunHandle[R]]:
        return [item for item in self.items if isinstance(item, AsyncRunHandle)]

    @property
    def errors(self) -> list[BatchItemError]:
        return [item for item in self.items if isinstance(item, BatchItemError)]

    @property
    def run_count(self) -> int:
        return len(self.runs)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> AsyncBatchHandle[R]:
        if self.errors:
            raise batch_items_error(self)
        return self


def _in_run_handle(
    client: AsyncClient, outcome: _inrun.Outcome, plan: RunPlan, batch_id: str | None
) -> AsyncRunHandle[Any]:
    if outcome.error is not None:
        raise outcome.error
    return AsyncRunHandle(
        id=outcome.name,
        namespace=plan.namespace,
        task_identifier=plan.task,
        is_cached=outcome.cached,
        batch_id=batch_id,
        client=client,
    )


def _handle(client: AsyncClient, triggered: Triggered, plan: RunPlan) -> AsyncRunHandle[Any]:
    meta = triggered.run.get("metadata") or {}
    return AsyncRunHandle(
        id=str(meta.get("name")),
        namespace=str(meta.get("namespace") or plan.namespace),
        task_identifier=plan.task,
        is_cached=triggered.cached,
        uid=str(meta.get("uid") or ""),
        batch_id=plan.batch_id,
        client=client,
    )


class AsyncClient:
    """Triggers tasks and works with runs, async; see :class:`podtask.Client`.

    Use it as ``async with AsyncClient() as client`` (or call :meth:`close`): it
    holds an HTTP session bound to the running event loop.
    """

    def __init__(
        self,
        api: Any = None,
        *,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        verify_tasks: bool = True,
        batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        backend: AsyncBackend | None = None,
    ) -> None:
        self._api = api
        self._kubeconfig = kubeconfig
        self._context = context
        self._backend = backend
        self._namespace = namespace
        self._owns_api = False
        # As the sync client: without a way of its own, a running task's calls about its
        # own namespace go through the run API.
        self._explicit = any(x is not None for x in (api, kubeconfig, context, backend))
        self.verify_tasks = verify_tasks
        self.batch_concurrency = max(1, batch_concurrency)
        self._lock = asyncio.Lock()
        self._task_checks: dict[tuple[str, str], float] = {}

    async def backend(self) -> AsyncBackend:
        async with self._lock:
            if self._backend is None:
                run = current_run()
                try:
                    if self._api is None:
                        self._api = await load_async_api_client(self._kubeconfig, self._context)
                        self._owns_api = True
                except ClusterUnreachableError as error:
                    if run is not None:
                        raise in_run_unavailable(error, run) from error
                    raise
                self._backend = AsyncKubeBackend(self._api)
            return self._backend

    @property
    def namespace(self) -> str:
        if self._namespace is None:
            run = current_run()
            self._namespace = (
                run.namespace
                if run is not None
                else namespace_from_config(self._kubeconfig, self._context)
            )
        return self._namespace

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    async def close(self) -> None:
        if self._owns_api and self._backend is not None:
            await self._backend.close()
            self._backend = None
            self._api = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _drive(self, flow: Any) -> Triggered:
        backend = await self.backend()
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
                    value = await backend.create(TASKRUNS, op.namespace, op.body)
                elif isinstance(op, GetRun):
                    value = await backend.get(TASKRUNS, op.namespace, op.name)
                elif isinstance(op, DeleteRun):
                    await backend.delete(TASKRUNS, op.namespace, op.name, op.uid)
                elif isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
            except PodtaskError as failed:
                error = failed

    async def check_task(self, task_id: str, namespace: str | None = None) -> None:
        ns = self._ns(namespace)
        checked = self._task_checks.get((ns, task_id))
        if checked is not None and time.monotonic() - checked < _TASK_CHECK_SECONDS:
            return
        backend = await self.backend()
        try:
            await backend.get(TASKS, ns, task_id)
        except KubernetesApiError as error:
            if error.status == 403:
                return
            if error.status != 404:
                raise
            try:
                items, _ = await backend.list(TASKS, ns)
                known = sorted(str((t.get("metadata") or {}).get("name")) for t in items)
            except PodtaskError:
                known = []
            raise TaskNotDeployedError(
                f"no task {task_id!r} is deployed in namespace {ns!r} (deployed: "
                f"{', '.join(known[:20]) or 'none'}); run `podtask deploy --apply` or check "
                "the namespace",
                task_id=task_id,
                namespace=ns,
            ) from None
        self._task_checks[(ns, task_id)] = time.monotonic()

    # ------------------------------------------------------------------ triggering

    @overload
    async def trigger(
        self,
        task: Task[..., G],
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> AsyncRunHandle[G]: ...

    @overload
    async def trigger(
        self,
        task: str,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> AsyncRunHandle[Any]: ...

    async def trigger(
        self,
        task: Task[..., Any] | str,
        payload: Any = None,
        /,
        *,
        namespace: str | None = None,
        **options: Unpack[TriggerOptions],
    ) -> AsyncRunHandle[Any]:
        """See :meth:`podtask.Client.trigger`."""
        task_id, validate = task_identity(task)
        ns = self._ns(namespace)
        session = _inrun.session_for(self._explicit, ns)
        parent = _inrun.parent(session) if session is not None else current_run()
        plan = plan_run(task_id, payload, options, namespace=ns, parent=parent, validate=validate)
        if session is not None:
            _, [outcome] = await asyncio.to_thread(
                _inrun.trigger,
                session,
                "trigger_async",
                task_id,
                [(0, plan)],
                verify_tasks=self.verify_tasks,
            )
            return _in_run_handle(self, outcome, plan, None)
        if self.verify_tasks:
            await self.check_task(task_id, ns)
        return _handle(self, await self._drive(trigger_flow(plan)), plan)

    @overload
    async def batch_trigger(
        self,
        task: Task[..., G],
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> AsyncBatchHandle[G]: ...

    @overload
    async def batch_trigger(
        self,
        task: str,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> AsyncBatchHandle[Any]: ...

    async def batch_trigger(
        self,
        task: Task[..., Any] | str,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> AsyncBatchHandle[Any]:
        """See :meth:`podtask.Client.batch_trigger`."""
        return await self._batch(
            items, task, namespace, idempotency_key, idempotency_key_ttl, concurrency
        )

    async def batch_trigger_by_task(
        self,
        items: Iterable[BatchItem],
        /,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        idempotency_key_ttl: str | float | timedelta | None = None,
        concurrency: int | None = None,
    ) -> AsyncBatchHandle[Any]:
        """See :meth:`podtask.Client.batch_trigger_by_task`."""
        return await self._batch(
            items, None, namespace, idempotency_key, idempotency_key_ttl, concurrency
        )

    async def _batch(
        self,
        items: Iterable[BatchItem],
        task: Any,
        namespace: str | None,
        batch_key: str | None,
        batch_ttl: Any,
        concurrency: int | None,
    ) -> AsyncBatchHandle[Any]:
        entries = batch_items(items)
        ns = self._ns(namespace)
        batch_id = new_batch_id(batch_key, ns)
        session = _inrun.session_for(self._explicit, ns)
        parent = _inrun.parent(session) if session is not None else current_run()
        results: list[AsyncRunHandle[Any] | BatchItemError | None] = [None] * len(entries)
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
                made_id, outcomes = await asyncio.to_thread(
                    _inrun.trigger,
                    session,
                    "batch_trigger_async",
                    batch_name(plans),
                    plans,
                    verify_tasks=self.verify_tasks,
                    batch=True,
                    batch_key=batch_key,
                )
                batch_id = made_id or batch_id
                for (index, plan), outcome in zip(plans, outcomes, strict=True):
                    try:
                        results[index] = _in_run_handle(self, outcome, plan, batch_id)
                    except PodtaskError as error:
                        results[index] = BatchItemError(index, plan.task, error)
            made = [r for r in results if r is not None]
            return AsyncBatchHandle(batch_id=batch_id, namespace=ns, items=made)
        if self.verify_tasks:
            missing: dict[str, PodtaskError] = {}
            for task_id in sorted({plan.task for _, plan in plans}):
                try:
                    await self.check_task(task_id, ns)
                except TaskNotDeployedError as error:
                    missing[task_id] = error
            for index, plan in plans:
                if plan.task in missing:
                    results[index] = BatchItemError(index, plan.task, missing[plan.task])
            plans = [(i, p) for i, p in plans if p.task not in missing]
        if plans:
            await self.backend()
            gate = asyncio.Semaphore(concurrency or self.batch_concurrency)

            async def create(index: int, plan: RunPlan) -> None:
                async with gate:
                    try:
                        results[index] = _handle(self, await self._drive(trigger_flow(plan)), plan)
                    except PodtaskError as error:
                        results[index] = BatchItemError(index, plan.task, error)

            await asyncio.gather(*(create(i, p) for i, p in plans))
        done = [r for r in results if r is not None]
        return AsyncBatchHandle(batch_id=batch_id, namespace=ns, items=done)

    # ------------------------------------------------------------------ runs

    async def _get_run(self, name: str, namespace: str) -> dict[str, Any]:
        backend = await self.backend()
        try:
            return await backend.get(TASKRUNS, namespace, name)
        except KubernetesApiError as error:
            if error.status == 404:
                raise RunNotFoundError(
                    f"no run {name!r} in namespace {namespace!r}", name, namespace
                ) from None
            raise

    async def retrieve(
        self, run: str | AsyncRunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRun:
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        session = _inrun.session_for(self._explicit, ns)
        if session is not None:
            try:
                async with aclosing(_inrun.afollow(session, name)) as found:
                    async for current in found:
                        return TaskRun.model_validate(current)
                raise RunNotFoundError(f"no run {name!r} in namespace {ns!r}", name, ns)
            except _inrun.NotFollowable:
                pass  # neither this run nor its child: the Kubernetes API may serve it
        return TaskRun.model_validate(await self._get_run(name, ns))

    async def list(
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
        """See :meth:`podtask.Client.list`."""
        selected = _runview.RunFilter.build(
            task=task,
            status=status,
            tag=tag,
            created_after=created_after,
            created_before=created_before,
            period=period,
        )
        backend = await self.backend()
        items, _ = await backend.list(
            TASKRUNS,
            None if all_namespaces else self._ns(namespace),
            label_selector=_selector(label_selector, batch_id),
        )
        matching = [r for r in _runview.newest_first(items) if selected.matches(r)]
        return [TaskRun.model_validate(r) for r in matching[:limit]]

    async def output(
        self, run: TaskRun | str | AsyncRunHandle[Any], namespace: str | None = None
    ) -> Any:
        found = run if isinstance(run, TaskRun) else await self.retrieve(run, namespace)
        status = found.status
        if status is None:
            return None
        if status.output_ref is None:
            return status.output
        return await self.read_output_ref(
            status.output_ref, found.metadata.namespace or self._ns(namespace)
        )

    async def read_output_ref(self, ref: OutputRef, namespace: str) -> Any:
        backend = await self.backend()
        chunks = [
            base64.b64decode((await backend.secret_data(namespace, name))[outputs.CHUNK_KEY])
            for name in ref.names
        ]
        return outputs.assemble(chunks, ref.size, ref.sha256)

    async def cancel(
        self, run: str | AsyncRunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRun:
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        backend = await self.backend()
        try:
            patched = await backend.patch(TASKRUNS, ns, name, {"spec": {"cancel": True}})
        except KubernetesApiError as error:
            if error.status == 404:
                raise RunNotFoundError(f"no run {name!r} in namespace {ns!r}", name, ns) from None
            raise
        return TaskRun.model_validate(patched)

    async def replay(
        self, run: str | AsyncRunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRun:
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        original = TaskRun.model_validate(await self._get_run(name, ns))
        backend = await self.backend()
        return TaskRun.model_validate(
            await backend.create(TASKRUNS, ns, replay_body(original, name))
        )

    async def subscribe(
        self,
        run: str | AsyncRunHandle[Any] | TaskRun,
        namespace: str | None = None,
        *,
        close_on_complete: bool = True,
        # Ends the stream quietly, as the sync client's; asyncio.timeout would raise.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[TaskRun]:
        """See :meth:`podtask.Client.subscribe`."""
        name, ns = run_name(run)
        ns = namespace or ns or self.namespace
        session = _inrun.session_for(self._explicit, ns)
        if session is not None:
            try:
                async with aclosing(
                    _inrun.afollow(
                        session, name, close_on_complete=close_on_complete, timeout=timeout
                    )
                ) as found:
                    async for current in found:
                        yield TaskRun.model_validate(current)
                return
            except _inrun.NotFollowable:
                pass  # neither this run nor its child: the Kubernetes API may serve it
        async with aclosing(self._watch(name, ns, close_on_complete, timeout)) as watched:
            async for seen in watched:
                yield seen

    async def _watch(
        self,
        name: str,
        ns: str,
        close_on_complete: bool,
        timeout: float | None,  # noqa: ASYNC109 - as subscribe's
    ) -> AsyncGenerator[TaskRun]:
        deadline = None if timeout is None else time.monotonic() + timeout
        current = await self._get_run(name, ns)
        backend = await self.backend()
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
                async for kind, obj in backend.watch(
                    TASKRUNS,
                    ns,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=max(1, int(min(left, _WATCH_SECONDS))),
                ):
                    if kind == "BOOKMARK":
                        meta = {**(current.get("metadata") or {})}
                        meta["resourceVersion"] = (obj.get("metadata") or {}).get("resourceVersion")
                        current = {**current, "metadata": meta}
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
                if error.status != 410:
                    raise
                current = await self._get_run(name, ns)

    async def poll(
        self, run: str | AsyncRunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRun:
        """Wait until the run ends; bound the wait with ``asyncio.timeout``."""
        last: TaskRun | None = None
        async for seen in self.subscribe(run, namespace):
            last = seen
        if (
            last is None
            or last.status is None
            or last.status.phase is None
            or not (last.status.phase.is_final)
        ):
            name, _ = run_name(run)
            raise RunNotFoundError(f"run {name} was deleted before it ended", name)
        return last

    async def result(
        self, run: str | AsyncRunHandle[Any] | TaskRun, namespace: str | None = None
    ) -> TaskRunResult[Any]:
        """Wait until the run ends; its outcome with the output."""
        ended = await self.poll(run, namespace)
        ok = ended.status is not None and ended.status.phase == Phase.COMPLETED
        return _result(ended, await self.output(ended) if ok else None)

    async def complete_token(
        self, name: str, output: Any = None, namespace: str | None = None
    ) -> WaitToken:
        """See :meth:`podtask.Client.complete_token`."""
        ns = self._ns(namespace)
        data = _json_value(output)
        backend = await self.backend()
        for _ in range(10):
            try:
                token = await backend.get(WAITTOKENS, ns, name)
            except KubernetesApiError as error:
                if error.status == 404:
                    raise KubernetesApiError(
                        f"no wait token {name!r} in namespace {ns!r}", 404, "NotFound"
                    ) from None
                raise
            body = token_completion(token, data, datetime.now(UTC))
            try:
                return WaitToken.model_validate(
                    await backend.replace_status(WAITTOKENS, ns, name, body)
                )
            except KubernetesApiError as error:
                if error.status != 409:
                    raise
        raise KubernetesApiError(f"wait token {ns}/{name} kept changing", 409, "Conflict")


@asynccontextmanager
async def using_client(client: AsyncClient | None) -> AsyncIterator[AsyncClient]:
    """``client``, or a temporary one closed afterwards (its session belongs to this loop)."""
    if client is not None:
        yield client
        return
    temporary = AsyncClient()
    try:
        yield temporary
    finally:
        await temporary.close()
