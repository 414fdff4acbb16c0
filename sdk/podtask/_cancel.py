"""Delivering a cancel (SIGTERM) to the user code that runs when it arrives.

Python runs signal handlers in the main thread, between bytecodes of whatever
code runs there.  The task's code runs on the main thread too, so:

* while synchronous user code runs (a sync function, a sync hook), the handler
  raises :class:`~podtask.errors.RunCanceled` right there, which also breaks a
  blocking ``time.sleep`` or socket read;
* while the event loop waits for async user code, raising would tear the loop
  apart, so the handler asks the loop to cancel the attempt's task instead, and
  the coroutine sees ``CancelledError`` at its ``await``;
* while podtask's own code runs (reporting the outcome), the cancel is only
  recorded, so a report is never cut in half.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from podtask.errors import RunCanceled


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Canceller:
    """Where a cancel request goes; ``request`` is called from the signal handler."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.raise_anywhere = False
        """Set while nothing needs protecting (starting up): raise wherever the main thread is."""
        self._user_depth = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None

    def request(self) -> None:
        self.requested.set()
        if self.raise_anywhere or self._user_depth > 0:
            raise RunCanceled()
        if self._loop is not None and self._task is not None:
            # Not task.cancel() directly: the handler may have interrupted the loop's
            # own bookkeeping; call_soon_threadsafe only appends and wakes it.
            self._loop.call_soon_threadsafe(self._task.cancel)

    def raise_if_requested(self) -> None:
        if self.requested.is_set():
            raise RunCanceled()

    @contextmanager
    def user_code(self) -> Iterator[None]:
        """Mark synchronous user code on the main thread as interruptible."""
        if not _on_main_thread():
            yield
            return
        self.raise_if_requested()
        self._user_depth += 1
        try:
            yield
        finally:
            self._user_depth -= 1

    @contextmanager
    def attempt_task(self, task: asyncio.Task[object]) -> Iterator[None]:
        """Route cancels to ``task`` (the attempt's coroutine) while it runs."""
        self._loop, self._task = task.get_loop(), task
        try:
            yield
        finally:
            self._loop = self._task = None
