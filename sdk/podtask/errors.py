"""Typed errors of the podtask SDK.

Every error the SDK raises derives from :class:`PodtaskError`, so callers can catch
them all at once.  Errors that describe a bad argument also derive from
``ValueError`` (or ``TypeError``), so code written against the standard
exceptions keeps working.  ``error_type`` is what a run reports as its error type
when the error ends an attempt.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PodtaskError(Exception):
    """Base class of every podtask SDK error."""

    error_type: ClassVar[str] = "PodtaskError"


class AbortTaskRunError(PodtaskError):
    """Fail the run at once: no further attempts, whatever the retry policy says."""

    error_type = "AbortTaskRunError"


class CompleteTaskWithOutput(PodtaskError):  # noqa: N818 (Trigger.dev's name)
    """End the run successfully with ``output``, from anywhere inside the task."""

    error_type = "CompleteTaskWithOutput"

    def __init__(self, output: Any = None) -> None:
        super().__init__("the task completed early with an output")
        self.output = output


class InvalidTaskDefinitionError(PodtaskError, ValueError):
    """A task id or option that cannot become a Task resource."""

    error_type = "InvalidTaskDefinition"


class DuplicateTaskIdError(InvalidTaskDefinitionError):
    """Two different functions were registered under the same task id."""

    error_type = "DuplicateTaskId"


class TaskNotFoundError(PodtaskError, LookupError):
    """No task is registered under an id, or an entrypoint cannot be imported."""

    error_type = "TaskNotFound"


class PayloadValidationError(PodtaskError, ValueError):
    """A payload does not satisfy the task's schema; retrying cannot help."""

    error_type = "PayloadInvalid"


class OutputNotSerializableError(PodtaskError, TypeError):
    """The task returned something that is not JSON."""

    error_type = "OutputNotSerializable"


class OutputTooLargeError(PodtaskError, ValueError):
    """The task returned more JSON than a run may store."""

    error_type = "OutputTooLarge"


class CatchErrorFailedError(PodtaskError):
    """A ``catch_error`` hook raised while deciding about another error."""

    error_type = "CatchErrorFailed"


class MetadataError(PodtaskError, TypeError):
    """A metadata operation that does not fit the value it targets."""

    error_type = "MetadataError"


class MetadataTooLargeError(MetadataError, ValueError):
    """Run metadata over the size limit (256 KiB as JSON)."""

    error_type = "MetadataTooLarge"


class RunCanceled(BaseException):
    """The run was canceled (SIGTERM) while this code ran.

    A ``BaseException``, like ``KeyboardInterrupt``: an ``except Exception`` in task
    code must not swallow a cancel.
    """


def error_type_of(error: BaseException) -> str:
    """The type a run reports for ``error``: podtask's stable name or the class name."""
    if isinstance(error, PodtaskError):
        return error.error_type
    return type(error).__name__


# --------------------------------------------------------------------------- triggering and runs


class InvalidTriggerOptionsError(PodtaskError, ValueError):
    """Trigger options that cannot make a TaskRun (a bad duration, too many tags, ...)."""

    error_type = "InvalidTriggerOptions"


class TaskNotDeployedError(TaskNotFoundError):
    """A trigger names a task that has no Task resource in the namespace."""

    error_type = "TaskNotDeployed"

    def __init__(self, message: str, task_id: str = "", namespace: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.namespace = namespace


class ClusterError(PodtaskError):
    """Talking to the Kubernetes API failed."""

    error_type = "ClusterError"


class ClusterUnreachableError(ClusterError, ConnectionError):
    """No answer from the API server, or no credentials to ask it with."""

    error_type = "ClusterUnreachable"


class KubernetesApiError(ClusterError):
    """The API server answered with an error; ``status`` is its HTTP status."""

    error_type = "KubernetesApiError"

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class RunNotFoundError(KubernetesApiError, LookupError):
    """No TaskRun with that name in the namespace."""

    error_type = "RunNotFound"

    def __init__(self, message: str, name: str = "", namespace: str = "") -> None:
        super().__init__(message, 404, "NotFound")
        self.name = name
        self.namespace = namespace


class TriggerUnavailableError(PodtaskError):
    """Triggering from inside a run needs a path to the cluster that this pod lacks."""

    error_type = "TriggerUnavailable"


class RunFailedError(PodtaskError):
    """A run ended without completing; ``unwrap()`` of its result raises this."""

    error_type = "RunFailed"

    def __init__(self, message: str, run_id: str = "", task_id: str = "", phase: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id
        self.task_id = task_id
        self.phase = phase


class RunTimeoutError(PodtaskError, TimeoutError):
    """A run did not reach a final phase within the time a caller allowed."""

    error_type = "RunTimeout"


class BatchItemError:
    """Why one item of a batch made no run: its index, its task and the error."""

    __slots__ = ("error", "index", "task")

    def __init__(self, index: int, task: str, error: PodtaskError) -> None:
        self.index = index
        self.task = task
        self.error = error

    @property
    def type(self) -> str:
        return error_type_of(self.error)

    @property
    def message(self) -> str:
        return str(self.error)

    def __repr__(self) -> str:
        return f"BatchItemError(index={self.index}, task={self.task!r}, error={self.error!r})"


class BatchTriggerError(PodtaskError):
    """A batch that could not be triggered whole, or whose items partly failed.

    ``phase`` is ``"create"`` when nothing was created (too many items, no
    cluster) and ``"items"`` when some items failed; ``errors`` has one entry per
    failed item and ``handle`` (for ``"items"``) the runs that were made.
    """

    error_type = "BatchTriggerError"

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None = None,
        phase: str = "create",
        errors: list[BatchItemError] | None = None,
        item_count: int = 0,
        handle: Any = None,
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.phase = phase
        self.errors = errors or []
        self.item_count = item_count
        self.handle = handle


class TokenAlreadyCompletedError(PodtaskError):
    """A WaitToken that was completed (or timed out) before."""

    error_type = "TokenAlreadyCompleted"


# --------------------------------------------------------------------------- waits and child runs


class WaitOutsideRunError(PodtaskError, RuntimeError):
    """A wait (or ``trigger_and_wait``, ``ctx.step``) called outside a run's function."""

    error_type = "WaitOutsideRun"


class ConcurrentWaitError(AbortTaskRunError):
    """Two waits at once in one run (``asyncio.gather`` of two ``trigger_and_wait``s,
    Trigger.dev's ``Promise.all`` pitfall).  A run waits for one thing at a time: a
    checkpoint records one position in the journal.  The run fails at once."""

    error_type = "TASK_DID_CONCURRENT_WAIT"


class ReplayDivergedError(AbortTaskRunError):
    """A replay reached a different call than the journal recorded at that position:
    the code changed, or is not deterministic.  The run fails at once rather than
    triggering, waiting or running a step a second time."""

    error_type = "REPLAY_DIVERGED"


class StepOutputError(AbortTaskRunError):
    """A ``ctx.step`` result that cannot be journalled (not JSON, or too large)."""

    error_type = "STEP_OUTPUT_INVALID"


class SubtaskUnwrapError(PodtaskError):
    """``Result.unwrap()`` of a child run that did not complete; ``cause`` is its error."""

    error_type = "SubtaskUnwrapError"

    def __init__(self, message: str, *, task_id: str, run_id: str, cause: Any = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.run_id = run_id
        self.cause = cause


class WaitpointTimeoutError(PodtaskError, TimeoutError):
    """A WaitToken timed out before anyone completed it (``TokenResult.unwrap()``)."""

    error_type = "WaitpointTimeoutError"
