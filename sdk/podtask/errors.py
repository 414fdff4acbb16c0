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
