"""``ctx``: what a running task knows about its run.

A task function that takes a second parameter gets a :class:`TaskContext`::

    @task(id="report.build.daily")
    def build(payload: dict, ctx: TaskContext) -> dict:
        ctx.metadata.set("stage", "fetch")
        return {"run": ctx.run.name, "attempt": ctx.attempt}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from podtask.metadata import RunMetadata
from podtask.protocol import RunInfo

__all__ = ["RunInfo", "TaskContext", "TaskInfo"]


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
    the function (Trigger.dev's middleware ``locals``).
    """

    run: RunInfo
    task: TaskInfo
    metadata: RunMetadata
    locals: dict[str, Any] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        """The attempt number, from 1."""
        return self.run.attempt

    @property
    def is_last_attempt(self) -> bool:
        """Whether a failure of this attempt ends the run (attempts are used up)."""
        return self.run.attempt >= self.run.max_attempts
