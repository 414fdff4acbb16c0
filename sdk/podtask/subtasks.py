"""Child runs a run waits for: ``trigger_and_wait`` and ``batch_trigger_and_wait``.

::

    from podtask import task
    from podtask.tasks import trigger_and_wait

    @task(id="order.process")
    def process(payload: dict, ctx) -> dict:
        charge = charge_card.trigger_and_wait({"order": payload["id"]})   # by object
        receipt = trigger_and_wait("email.receipt", {"to": payload["email"]})  # by id
        labels = print_label.batch_trigger_and_wait(
            [{"payload": {"item": item}} for item in payload["items"]]
        )
        return {"charge": charge.unwrap(), "labels": [r.output for r in labels if r.ok]}

Inside a run only: the children are created by the operator (the run's pod needs
no Kubernetes credentials) under names derived from the parent's journal, so a
replay after a checkpoint, or a resent request, never creates a child twice.
While the children run the parent checkpoints (its pod exits and its queue slot
is freed), so a parent and its child in a queue of limit 1 never deadlock.

One wait at a time: ``asyncio.gather`` of two ``trigger_and_wait_async`` calls raises
:class:`~podtask.errors.ConcurrentWaitError`; use the batch form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack, cast, overload

from podtask import _waits
from podtask._runenv import CurrentRun
from podtask.api.v1alpha1 import MAX_BATCH_WAIT_RUNS, Phase, RunError, TaskRunSpec
from podtask.errors import InvalidTriggerOptionsError, SubtaskUnwrapError
from podtask.protocol import ChildResult, ChildRun

if TYPE_CHECKING:
    from podtask._trigger import BatchItem, TriggerOptions
    from podtask.tasks import Task

__all__ = [
    "BatchResult",
    "Result",
    "SubtaskMethods",
    "batch_trigger_and_wait",
    "batch_trigger_and_wait_async",
    "batch_trigger_by_task_and_wait",
    "batch_trigger_by_task_and_wait_async",
    "trigger_and_wait",
    "trigger_and_wait_async",
]

R = TypeVar("R")
G = TypeVar("G")

# Children are deduplicated by their position in the parent's journal; a second,
# global key would dedupe across runs, which trigger_and_wait does not promise.
_REFUSED_OPTIONS = frozenset({"idempotency_key", "idempotency_key_ttl", "idempotency_key_scope"})


@dataclass(frozen=True, slots=True)
class Result(Generic[R]):
    """A child run's outcome: Trigger.dev's ``{ok, id, taskIdentifier, output, error}``."""

    ok: bool
    id: str
    """The child run's name."""
    task_identifier: str
    output: R | None = None
    error: RunError | None = None
    phase: Phase | None = None

    def unwrap(self) -> R:
        """The output; raises :class:`~podtask.errors.SubtaskUnwrapError` (with the
        child's error as ``cause``) when the child did not complete."""
        if not self.ok:
            error = self.error
            what = f"{error.type}: {error.message}" if error else "no error recorded"
            raise SubtaskUnwrapError(
                f"child run {self.id} of task {self.task_identifier!r} ended "
                f"{self.phase.value if self.phase else 'without completing'}: {what}",
                task_id=self.task_identifier,
                run_id=self.id,
                cause=error,
            )
        return cast(R, self.output)


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[R]):
    """The results of a batch, in the order of its items."""

    id: str
    runs: list[Result[R]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Result[R]]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, index: int) -> Result[R]:
        return self.runs[index]

    @property
    def ok(self) -> bool:
        """Whether every child completed."""
        return all(run.ok for run in self.runs)

    def unwrap(self) -> list[R]:
        """Every output, in order; raises for the first child that did not complete."""
        return [run.unwrap() for run in self.runs]


def _result(child: ChildResult) -> Result[Any]:
    return Result(
        ok=child.ok,
        id=child.name,
        task_identifier=child.task,
        output=child.output if child.ok else None,
        error=child.error,
        phase=child.phase,
    )


# --------------------------------------------------------------------------- planning


def _task_id(task: Task[..., Any] | str) -> str:
    from podtask.tasks import Task

    if isinstance(task, Task):
        return task.id
    if isinstance(task, str) and task:
        return task
    raise TypeError(f"a task is a Task or its id, not {task!r}")


def _child(
    session: _waits.WaitSession,
    task: Task[..., Any] | str,
    payload: Any,
    options: Mapping[str, Any],
) -> ChildRun:
    """The child's spec, checked by the same rules as any trigger (``_trigger.plan_run``)."""
    from podtask._trigger import plan_run
    from podtask.tasks import Task

    refused = sorted(_REFUSED_OPTIONS & set(options))
    if refused:
        raise InvalidTriggerOptionsError(
            f"{', '.join(refused)} cannot be given to trigger_and_wait: its children are "
            "already created exactly once per position in the parent's journal"
        )
    task_id = _task_id(task)
    plan = plan_run(
        task_id,
        payload,
        options,
        namespace=session.namespace,
        parent=CurrentRun(session.namespace, session.run, session.attempt),
        validate=task.payload_to_json if isinstance(task, Task) else None,
    )
    metadata = plan.body["metadata"]
    return ChildRun(
        spec=TaskRunSpec.model_validate(plan.body["spec"]), labels=dict(metadata["labels"])
    )


def _batch(
    session: _waits.WaitSession,
    default: Task[..., Any] | str | None,
    items: Iterable[BatchItem],
) -> tuple[str | None, list[ChildRun]]:
    children: list[ChildRun] = []
    ids: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "payload" not in item:
            raise InvalidTriggerOptionsError(
                f"batch item {index} must be a dict with a 'payload' (and optional 'options')"
            )
        task = item.get("task") or default
        if task is None:
            raise InvalidTriggerOptionsError(f"batch item {index} names no task")
        children.append(_child(session, task, item["payload"], item.get("options") or {}))
        ids.append(_task_id(task))
        if len(children) > MAX_BATCH_WAIT_RUNS:
            raise InvalidTriggerOptionsError(
                f"a batch holds at most {MAX_BATCH_WAIT_RUNS} items; this one has more"
            )
    name = ",".join(dict.fromkeys(ids)) if default is None else _task_id(default)
    return name, children


def _batch_id(session: _waits.WaitSession, position: int) -> str:
    return f"{session.run}-a{session.attempt}p{position}"


# --------------------------------------------------------------------------- sync


@overload
def trigger_and_wait(
    task: Task[..., G], payload: Any = None, /, **options: Unpack[TriggerOptions]
) -> Result[G]: ...


@overload
def trigger_and_wait(
    task: str, payload: Any = None, /, **options: Unpack[TriggerOptions]
) -> Result[Any]: ...


def trigger_and_wait(
    task: Task[..., Any] | str, payload: Any = None, /, **options: Unpack[TriggerOptions]
) -> Result[Any]:
    """Trigger a child run of ``task`` (a Task or its id) and wait for its result.

    The options are :func:`podtask.tasks.trigger`'s, except idempotency keys.  Inside
    a run only; the parent checkpoints while the child runs.
    """
    session = _waits.current("trigger_and_wait")
    child = _child(session, task, payload, options)
    with session.exclusive("trigger_and_wait"):
        position, names = session.trigger("Run", _task_id(task), [child])
        return _result(session.wait_for_runs("Run", position, names)[0])


def batch_trigger_and_wait(
    task: Task[..., Any] | str, items: Iterable[BatchItem], /
) -> BatchResult[Any]:
    """Trigger up to 1,000 child runs of ``task``, one per ``{"payload": ...,
    "options": {...}}``, and wait for all of them; results come in item order."""
    session = _waits.current("batch_trigger_and_wait")
    return _batch_and_wait(session, *_batch(session, task, items))


def batch_trigger_by_task_and_wait(items: Iterable[BatchItem], /) -> BatchResult[Any]:
    """:func:`batch_trigger_and_wait` for items that each name their ``"task"``."""
    session = _waits.current("batch_trigger_by_task_and_wait")
    return _batch_and_wait(session, *_batch(session, None, items))


def _batch_and_wait(
    session: _waits.WaitSession, name: str | None, children: list[ChildRun]
) -> BatchResult[Any]:
    if not children:
        return BatchResult(id="")
    with session.exclusive("batch_trigger_and_wait"):
        position, names = session.trigger("Batch", name, children)
        results = session.wait_for_runs("Batch", position, names)
    return BatchResult(_batch_id(session, position), [_result(r) for r in results])


# --------------------------------------------------------------------------- async


async def trigger_and_wait_async(
    task: Task[..., Any] | str, payload: Any = None, /, **options: Unpack[TriggerOptions]
) -> Result[Any]:
    """:func:`trigger_and_wait` for ``async def`` tasks."""
    session = _waits.current("trigger_and_wait_async")
    child = _child(session, task, payload, options)
    with session.exclusive("trigger_and_wait_async"):
        position, names = await asyncio.to_thread(session.trigger, "Run", _task_id(task), [child])
        results = await asyncio.to_thread(session.wait_for_runs, "Run", position, names)
    return _result(results[0])


async def batch_trigger_and_wait_async(
    task: Task[..., Any] | str, items: Iterable[BatchItem], /
) -> BatchResult[Any]:
    """:func:`batch_trigger_and_wait` for ``async def`` tasks."""
    session = _waits.current("batch_trigger_and_wait_async")
    return await _batch_and_wait_async(session, *_batch(session, task, items))


async def batch_trigger_by_task_and_wait_async(items: Iterable[BatchItem], /) -> BatchResult[Any]:
    """:func:`batch_trigger_by_task_and_wait` for ``async def`` tasks."""
    session = _waits.current("batch_trigger_by_task_and_wait_async")
    return await _batch_and_wait_async(session, *_batch(session, None, items))


async def _batch_and_wait_async(
    session: _waits.WaitSession, name: str | None, children: list[ChildRun]
) -> BatchResult[Any]:
    if not children:
        return BatchResult(id="")
    with session.exclusive("batch_trigger_and_wait_async"):
        position, names = await asyncio.to_thread(session.trigger, "Batch", name, children)
        results = await asyncio.to_thread(session.wait_for_runs, "Batch", position, names)
    return BatchResult(_batch_id(session, position), [_result(r) for r in results])


# --------------------------------------------------------------------------- on Task


class SubtaskMethods(Generic[R]):
    """``trigger_and_wait`` and friends as methods of :class:`~podtask.tasks.Task`."""

    def trigger_and_wait(
        self, payload: Any = None, /, **options: Unpack[TriggerOptions]
    ) -> Result[R]:
        """Trigger a child run of this task and wait for its result (inside a run)."""
        return trigger_and_wait(cast("Task[..., R]", self), payload, **options)

    def batch_trigger_and_wait(self, items: Iterable[BatchItem], /) -> BatchResult[R]:
        """Trigger child runs of this task, one per item, and wait for all of them."""
        return batch_trigger_and_wait(cast("Task[..., R]", self), items)

    async def trigger_and_wait_async(
        self, payload: Any = None, /, **options: Unpack[TriggerOptions]
    ) -> Result[R]:
        """:meth:`trigger_and_wait` for ``async def`` tasks."""
        return await trigger_and_wait_async(cast("Task[..., R]", self), payload, **options)

    async def batch_trigger_and_wait_async(self, items: Iterable[BatchItem], /) -> BatchResult[R]:
        """:meth:`batch_trigger_and_wait` for ``async def`` tasks."""
        return await batch_trigger_and_wait_async(cast("Task[..., R]", self), items)
