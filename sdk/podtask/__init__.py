"""podtask: Trigger.dev-style background tasks for Python, run natively on Kubernetes.

::

    from podtask import task, metadata, AbortTaskRunError

    @task(id="email.send.welcome", retry={"max_attempts": 5})
    def send_welcome(payload: dict, ctx) -> dict: ...

Names are imported on first use: the runner starts in every run pod, and
``import podtask`` should cost next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from podtask import errors, hooks, metadata, tasks
    from podtask.context import TaskContext, TaskInfo
    from podtask.errors import AbortTaskRunError, CompleteTaskWithOutput, PodtaskError
    from podtask.hooks import RetryDecision, RunResult
    from podtask.protocol import RunInfo
    from podtask.tasks import Task, schema_task, task

    Context = TaskContext

_EXPORTS: dict[str, tuple[str, str | None]] = {
    "task": ("podtask.tasks", "task"),
    "schema_task": ("podtask.tasks", "schema_task"),
    "Task": ("podtask.tasks", "Task"),
    "AbortTaskRunError": ("podtask.errors", "AbortTaskRunError"),
    "CompleteTaskWithOutput": ("podtask.errors", "CompleteTaskWithOutput"),
    "PodtaskError": ("podtask.errors", "PodtaskError"),
    "TaskContext": ("podtask.context", "TaskContext"),
    "Context": ("podtask.context", "TaskContext"),
    "TaskInfo": ("podtask.context", "TaskInfo"),
    "RunInfo": ("podtask.protocol", "RunInfo"),
    "RetryDecision": ("podtask.protocol", "RetryDecision"),
    "RunResult": ("podtask.hooks", "RunResult"),
    "errors": ("podtask.errors", None),
    "hooks": ("podtask.hooks", None),
    "metadata": ("podtask.metadata", None),
    "tasks": ("podtask.tasks", None),
}

__all__ = [
    "AbortTaskRunError",
    "CompleteTaskWithOutput",
    "Context",
    "PodtaskError",
    "RetryDecision",
    "RunInfo",
    "RunResult",
    "Task",
    "TaskContext",
    "TaskInfo",
    "__version__",
    "errors",
    "hooks",
    "metadata",
    "schema_task",
    "task",
    "tasks",
]


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'podtask' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
