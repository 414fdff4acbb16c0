"""``ctx``: what a running task knows about its run.

A task function that takes a second parameter gets a :class:`TaskContext`::

    @task(id="report.build.daily")
    def build(payload: dict, ctx: TaskContext) -> dict:
        ctx.metadata.set("stage", "fetch")
        return {"run": ctx.run.name, "attempt": ctx.attempt}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from podtask.metadata import RunMetadata
from podtask.protocol import RunInfo

__all__ = ["RunInfo", "TaskContext", "TaskInfo"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The task being run, as deployed."""

    id: str
    entrypoint: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The run, the task and the run's live metadata.

    ``locals`` is a per-attempt scratch space shared by middleware, hooks and
    the function (Trigger.dev's middleware ``locals``).  ``resumed`` is true when
    this pod continues the attempt after a checkpoint (``docs/waits.md``): the
    function replays from the start, and ``on_start`` hooks do not run again.
    """

    run: RunInfo
    task: TaskInfo
    metadata: RunMetadata
    locals: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    @overload
    def step(self, key: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> Awaitable[T]: ...

    @overload
    def step(self, key: str, fn: Callable[[], T]) -> T: ...

    def step(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` once per run attempt and journal its (JSON) result.

        A replay after a checkpoint returns the journalled result without calling
        ``fn`` again: put side effects that must not repeat here (sending an email,
        charging a card) and anything non-deterministic (time, randomness, reading
        a database).  ``key`` names the step for the replay check.  With an async
        ``fn`` this returns an awaitable: ``await ctx.step("send", send_async)``.
        """
        from podtask import _waits
        from podtask._callables import is_async_callable

        if is_async_callable(fn):
            return _waits.run_step_async(key, fn)
        return _waits.run_step(key, fn)

    async def step_async(self, key: str, fn: Callable[[], T | Awaitable[T]]) -> T:
        """:meth:`step` awaited in ``async def`` code; ``fn`` may be sync or async."""
        from podtask import _waits

        result: T = await _waits.run_step_async(key, fn)
        return result

    @property
    def attempt(self) -> int:
        """The attempt number, from 1."""
        return self.run.attempt

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure of this attempt ends the run (attempts are used up)."""
        return self.run.attempt >= self.run.max_attempts
