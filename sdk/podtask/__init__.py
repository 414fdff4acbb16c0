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
    from podtask import errors, hooks, metadata, runs, tasks, wait
    from podtask._trigger import BatchItem, TriggerOptions
    from podtask.aio import AsyncBatchHandle, AsyncClient, AsyncRunHandle
    from podtask.client import BatchHandle, Client, RunHandle, TaskRunResult
    from podtask.context import TaskContext, TaskInfo
    from podtask.errors import (
        AbortTaskRunError,
        BatchTriggerError,
        ClusterUnreachableError,
        CompleteTaskWithOutput,
        PayloadValidationError,
        PodtaskError,
        RunNotFoundError,
        SubtaskUnwrapError,
        TaskNotDeployedError,
    )
    from podtask.hooks import RetryDecision, RunResult
    from podtask.protocol import RunInfo
    from podtask.subtasks import BatchResult, Result
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
    "Client": ("podtask.client", "Client"),
    "RunHandle": ("podtask.client", "RunHandle"),
    "BatchHandle": ("podtask.client", "BatchHandle"),
    "TaskRunResult": ("podtask.client", "TaskRunResult"),
    "AsyncClient": ("podtask.aio", "AsyncClient"),
    "AsyncRunHandle": ("podtask.aio", "AsyncRunHandle"),
    "AsyncBatchHandle": ("podtask.aio", "AsyncBatchHandle"),
    "TriggerOptions": ("podtask._trigger", "TriggerOptions"),
    "BatchItem": ("podtask._trigger", "BatchItem"),
    "BatchTriggerError": ("podtask.errors", "BatchTriggerError"),
    "ClusterUnreachableError": ("podtask.errors", "ClusterUnreachableError"),
    "PayloadValidationError": ("podtask.errors", "PayloadValidationError"),
    "RunNotFoundError": ("podtask.errors", "RunNotFoundError"),
    "TaskNotDeployedError": ("podtask.errors", "TaskNotDeployedError"),
    "errors": ("podtask.errors", None),
    "hooks": ("podtask.hooks", None),
    "metadata": ("podtask.metadata", None),
    "runs": ("podtask.runs", None),
    "tasks": ("podtask.tasks", None),
    "wait": ("podtask.wait", None),
    "Result": ("podtask.subtasks", "Result"),
    "BatchResult": ("podtask.subtasks", "BatchResult"),
    "SubtaskUnwrapError": ("podtask.errors", "SubtaskUnwrapError"),
}

__all__ = [
    "AbortTaskRunError",
    "AsyncBatchHandle",
    "AsyncClient",
    "AsyncRunHandle",
    "BatchHandle",
    "BatchItem",
    "BatchResult",
    "BatchTriggerError",
    "Client",
    "ClusterUnreachableError",
    "CompleteTaskWithOutput",
    "Context",
    "PayloadValidationError",
    "PodtaskError",
    "Result",
    "RetryDecision",
    "RunHandle",
    "RunInfo",
    "RunNotFoundError",
    "RunResult",
    "SubtaskUnwrapError",
    "Task",
    "TaskContext",
    "TaskInfo",
    "TaskNotDeployedError",
    "TaskRunResult",
    "TriggerOptions",
    "__version__",
    "errors",
    "hooks",
    "metadata",
    "runs",
    "schema_task",
    "task",
    "tasks",
    "wait",
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
