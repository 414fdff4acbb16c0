"""An exception as the run reports it: type, message and a trimmed stack.

The stack goes into the TaskRun's status, so it is cut to about 8 KB (keeping
the end, where the error was raised) and podtask's own frames are left out:
the user wants to see their code, not the runner's plumbing.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from podtask.api.v1alpha1 import RunError
from podtask.errors import error_type_of

MAX_STACK_CHARS = 8 * 1024
MAX_MESSAGE_CHARS = 4 * 1024
_PODTASK_DIR = str(Path(__file__).resolve().parent)


def run_error(error: BaseException) -> RunError:
    return RunError(
        type=error_type_of(error),
        message=_trim_head(str(error), MAX_MESSAGE_CHARS),
        stack=_trim_tail(format_stack(error), MAX_STACK_CHARS),
    )


def format_stack(error: BaseException) -> str:
    summary = traceback.TracebackException.from_exception(error)
    _drop_own_frames(summary, seen=set())
    return "".join(summary.format())


def _drop_own_frames(summary: traceback.TracebackException, seen: set[int]) -> None:
    if id(summary) in seen:
        return
    seen.add(id(summary))
    theirs = [frame for frame in summary.stack if not frame.filename.startswith(_PODTASK_DIR)]
    # An error raised by podtask itself keeps its frames: they are the whole story.
    if theirs:
        summary.stack = traceback.StackSummary.from_list(theirs)
    for linked in (summary.__cause__, summary.__context__):
        if linked is not None:
            _drop_own_frames(linked, seen)


def _trim_head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trim_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"… ({cut} characters trimmed)\n" + text[cut:]
