"""Checkpoint by replay, the runner's side: the journal of one attempt and its waits.

Every call that a replay must not repeat (a child trigger, a wait, a token, a
step) takes the next *position* of the attempt's journal.  Executed for the first
time, it does its work and records an entry at that position; replayed (the
journal came back in the run's context after a checkpoint), it checks that the
code calls the same thing there and returns what the entry says, without doing
the work again.  A wait that will take a while raises :class:`Suspend`, which
unwinds the task function to the runner; the runner sends the journal with a
checkpoint and the pod exits.  See ``docs/waits.md``.

Positions only mean something if journalled calls happen one at a time, so a
second one while another is in progress raises
:class:`~podtask.errors.ConcurrentWaitError` (Trigger.dev's ``Promise.all`` pitfall).

No ``kubernetes`` import: this module runs in every run pod.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from podtask.api.v1alpha1 import JournalEntry, JournalKind, WaitingFor, WaitKind
from podtask.errors import (
    AbortTaskRunError,
    ConcurrentWaitError,
    ReplayDivergedError,
    StepOutputError,
    WaitOutsideRunError,
)
from podtask.protocol import (
    Checkpoint,
    ChildResult,
    ChildRun,
    CreateToken,
    JournalUpdate,
    TokenInfo,
    TokenResult,
    TriggerRequest,
    WaitRequest,
    WaitResponse,
)

if TYPE_CHECKING:
    from podtask.runapi import RunApi

__all__ = [
    "Suspend",
    "Suspended",
    "WaitSession",
    "active",
    "current",
    "installed",
    "run_step",
    "run_step_async",
]

logger = logging.getLogger("podtask.runner")

T = TypeVar("T")

CALL_DEADLINE_SECONDS = 120.0
"""How long a journalled call retries a run API that does not answer (an operator
restart takes a few seconds; a lost answer must not fail the run)."""


class Suspend(BaseException):
    """Raised at a wait that checkpoints; unwinds the task function to the runner.

    A ``BaseException`` like ``RunCanceled``: an ``except Exception`` in task code
    must not swallow it.
    """

    def __init__(self, waiting_for: WaitingFor) -> None:
        super().__init__(f"checkpoint: waiting for {waiting_for.kind}")
        self.waiting_for = waiting_for


@dataclass(frozen=True, slots=True)
class Suspended:
    """The attempt's outcome when it checkpointed: what the runner reports."""

    checkpoint: Checkpoint


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _describe(kind: str, name: str | None) -> str:
    calls = {
        "Run": "trigger_and_wait",
        "Batch": "batch_trigger_and_wait",
        "Trigger": "trigger",
        "Duration": "wait.for_/wait.until",
        "CreateToken": "wait.create_token",
        "Token": "wait.for_token",
        "Step": "ctx.step",
    }
    call = calls.get(kind, kind)
    return f"{call}({name!r})" if name is not None else f"{call}()"


class WaitSession:
    """The journal of one attempt and the calls that extend or replay it."""

    def __init__(
        self,
        api: RunApi,
        *,
        namespace: str,
        run: str,
        attempt: int,
        journal: list[JournalEntry],
        threshold: float,
        clock: Callable[[], datetime] = _utcnow,
        call_deadline: float = CALL_DEADLINE_SECONDS,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.run = run
        self.attempt = attempt
        self.entries: list[JournalEntry] = list(journal)
        self.threshold = threshold
        self.position = 0
        self.suspended: Suspend | None = None
        self.broken: AbortTaskRunError | None = None
        """A concurrent wait or a diverged replay: the journal cannot be trusted, and
        the attempt fails with this error whatever the function does with it."""
        self._clock = clock
        self._call_deadline = call_deadline
        self._busy: str | None = None
        self._in_step: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one at a time

    @contextmanager
    def exclusive(self, call: str) -> Iterator[None]:
        """Hold the journal for one call; a second call meanwhile is a concurrent wait."""
        with self._lock:
            if self.broken is not None:
                raise self.broken
            if self.suspended is not None:
                # The function caught the checkpoint and went on: stop it again.
                raise self.suspended
            if self._in_step is not None:
                raise self._break(
                    ConcurrentWaitError(
                        f"{call} was called inside ctx.step({self._in_step!r}); a step's "
                        "result is journalled as a whole, so it cannot contain waits, child "
                        "runs or other steps: call them outside the step"
                    )
                )
            if self._busy is not None:
                raise self._break(
                    ConcurrentWaitError(
                        f"{call} was called while {self._busy} was still in progress in the "
                        "same run (e.g. asyncio.gather of two trigger_and_wait calls). A run "
                        "waits for one thing at a time: to wait for several child runs "
                        "together use batch_trigger_and_wait (or "
                        "tasks.batch_trigger_by_task_and_wait for several tasks)"
                    )
                )
            self._busy = call
        try:
            yield
        finally:
            with self._lock:
                self._busy = None

    @contextmanager
    def step_body(self, key: str) -> Iterator[None]:
        """While a step's function runs, journalled calls are refused (see ``exclusive``)."""
        self._in_step = key
        try:
            yield
        finally:
            self._in_step = None

    # ------------------------------------------------------------------ positions

    def next(self, kind: JournalKind, name: str | None) -> tuple[int, JournalEntry | None]:
        """The next position, with its journal entry when this call was made before."""
        position = self.position
        self.position += 1
        if position >= len(self.entries):
            return position, None
        entry = self.entries[position]
        if entry.kind != kind or entry.name != name:
            raise self._break(
                ReplayDivergedError(
                    f"the replay of run {self.run} diverged from its journal at position "
                    f"{position}: the journal recorded {_describe(entry.kind, entry.name)} there, "
                    f"but the code now calls {_describe(kind, name)}. The code changed since the "
                    "run checkpointed, or it is not deterministic (see docs/waits.md: branch only "
                    "on the payload, on results of waits and steps, and put time, randomness and "
                    "I/O in ctx.step). Nothing was done twice; the run fails."
                )
            )
        return position, entry

    def _break(self, error: AbortTaskRunError) -> AbortTaskRunError:
        self.broken = self.broken or error
        return error

    def diverged(self, error: ReplayDivergedError) -> AbortTaskRunError:
        """A replay found the journal at odds with the code: the attempt fails with ``error``."""
        return self._break(error)

    @property
    def call_deadline(self) -> float:
        """How long a journalled call retries a run API that does not answer."""
        return self._call_deadline

    def record(self, position: int, entry: JournalEntry) -> None:
        assert position == len(self.entries), "journal positions are taken in order"
        self.entries.append(entry)

    # ------------------------------------------------------------------ operations

    def trigger(
        self, kind: JournalKind, name: str | None, runs: list[ChildRun]
    ) -> tuple[int, list[str]]:
        """Create the child runs of the next position (or find them in the journal)."""
        position, entry = self.next(kind, name)
        if entry is not None:
            return position, list(entry.runs or [])
        request = TriggerRequest(attempt=self.attempt, position=position, runs=runs)
        answer = self.call(lambda: self.api.trigger(request), "trigger child runs")
        self.record(position, JournalEntry(kind=kind, name=name, runs=answer.runs))
        return position, answer.runs

    def wait_for_runs(self, kind: JournalKind, position: int, runs: list[str]) -> list[ChildResult]:
        wait_kind: WaitKind = "Batch" if kind == "Batch" else "Run"
        return self._wait(WaitingFor(kind=wait_kind, runs=runs, position=position)).runs

    def duration(self, until: datetime) -> float:
        """Seconds to sleep in the pod for a wait until ``until`` (the journal's time
        on a replay); raises :class:`Suspend` when the wait is longer than the threshold."""
        position, entry = self.next("Duration", None)
        if entry is None:
            entry = JournalEntry(kind="Duration", until=until)
            self.record(position, entry)
        end = entry.until or until
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        left = (end - self._clock()).total_seconds()
        if left <= 0:
            return 0.0
        if left <= self.threshold:
            return left
        raise self._suspend(WaitingFor(kind="Duration", until=end, position=position))

    def create_token(self, timeout: str | None, tags: list[str]) -> TokenInfo:
        position, entry = self.next("CreateToken", None)
        if entry is not None and entry.token:
            return TokenInfo(name=entry.token)
        request = CreateToken(attempt=self.attempt, position=position, timeout=timeout, tags=tags)
        info = self.call(lambda: self.api.create_token(request), "create a wait token")
        self.record(position, JournalEntry(kind="CreateToken", token=info.name))
        return info

    def wait_for_token(self, token: str) -> TokenResult:
        position, entry = self.next("Token", token)
        if entry is None:
            self.record(position, JournalEntry(kind="Token", name=token, token=token))
        answer = self._wait(WaitingFor(kind="Token", token=token, position=position))
        assert answer.token is not None, "the run API answered a token wait without its result"
        return answer.token

    def step_replay(self, key: str) -> tuple[int, JournalEntry | None]:
        return self.next("Step", key)

    def step_record(self, position: int, key: str, value: Any) -> Any:
        """Journal a step's result durably; return it as JSON, as a replay will."""
        try:
            output = json.loads(json.dumps(to_jsonable_python(value), allow_nan=False))
        except (PydanticSerializationError, TypeError, ValueError) as error:
            raise StepOutputError(
                f"ctx.step({key!r}) returned a {type(value).__name__} that is not JSON: {error}"
            ) from error
        self.record(position, JournalEntry(kind="Step", name=key, output=output))
        try:
            update = JournalUpdate(attempt=self.attempt, journal=self.entries)
        except ValidationError as error:
            self.entries.pop()
            raise StepOutputError(f"ctx.step({key!r}): {error.errors()[0]['msg']}") from None
        self.call(lambda: self.api.journal(update), "journal a step")
        return output

    def checkpoint(self) -> Checkpoint:
        """The checkpoint report of the wait that suspended the attempt."""
        assert self.suspended is not None
        return Checkpoint(
            attempt=self.attempt, waiting_for=self.suspended.waiting_for, journal=self.entries
        )

    # ------------------------------------------------------------------ plumbing

    def _wait(self, waiting_for: WaitingFor) -> WaitResponse:
        # Wait in the pod for up to the threshold (a long poll), then checkpoint; the
        # operator answers at once when the wait is over, or when it sees that waiting
        # here only keeps a slot a child needs.
        request = WaitRequest(
            attempt=self.attempt, waiting_for=waiting_for, block_seconds=min(self.threshold, 60)
        )
        answer = self.call(lambda: self.api.wait(request), "wait")
        if answer.resolved:
            return answer
        raise self._suspend(waiting_for)

    def _suspend(self, waiting_for: WaitingFor) -> Suspend:
        if self.broken is not None:
            raise self.broken  # a concurrent call broke the journal meanwhile
        try:
            Checkpoint(attempt=self.attempt, waiting_for=waiting_for, journal=self.entries)
        except ValidationError as error:
            raise StepOutputError(
                f"the run cannot checkpoint: {error.errors()[0]['msg']}"
            ) from None
        self.suspended = Suspend(waiting_for)
        logger.info("checkpointing: waiting for %s", waiting_for.kind)
        return self.suspended

    def call(self, call: Callable[[], T], what: str) -> T:
        """``call()``, tried again on transient errors until the deadline."""
        # Imported here: defining a task imports this module, and needs no HTTP client.
        from podtask.runapi import RunApiError

        give_up = time.monotonic() + self._call_deadline
        delay = 0.25
        while True:
            try:
                return call()
            except RunApiError as error:
                left = give_up - time.monotonic()
                if not error.transient or left <= 0:
                    raise
                logger.warning("could not %s, retrying: %s", what, error)
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)


# --------------------------------------------------------------------------- the current session

_CURRENT: WaitSession | None = None


def current(call: str) -> WaitSession:
    """The session of the attempt this process runs; raises outside a run's function."""
    if _CURRENT is None:
        raise WaitOutsideRunError(
            f"{call} works only inside a task function running as a podtask run (the runner "
            "records it in the run's journal); outside a run, trigger the task and wait for "
            "its handle's result() instead"
        )
    return _CURRENT


def active() -> WaitSession | None:
    return _CURRENT


@contextmanager
def installed(session: WaitSession) -> Iterator[WaitSession]:
    """Make ``session`` the current one while the attempt's function runs."""
    global _CURRENT
    previous, _CURRENT = _CURRENT, session
    try:
        yield session
    finally:
        _CURRENT = previous


# --------------------------------------------------------------------------- steps


def run_step(key: str, fn: Callable[[], T]) -> T:
    """``ctx.step`` for a sync ``fn``: run it once, journal its JSON result, and return
    that result (the journalled one on a replay, without running ``fn``)."""
    session = current("ctx.step")
    with session.exclusive(f"ctx.step({key!r})"):
        position, entry = session.step_replay(key)
        if entry is not None:
            return entry.output  # type: ignore[no-any-return]
        with session.step_body(key):
            value = fn()
        if inspect.isawaitable(value):
            raise TypeError(
                f"ctx.step({key!r}): the function returned an awaitable; in async code "
                "await ctx.step(...) with an async function, or use ctx.step_async"
            )
        return session.step_record(position, key, value)  # type: ignore[no-any-return]


async def run_step_async(key: str, fn: Callable[[], Any]) -> Any:
    """``ctx.step`` for async code: ``fn`` may be sync or async."""
    session = current("ctx.step")
    with session.exclusive(f"ctx.step({key!r})"):
        position, entry = session.step_replay(key)
        if entry is not None:
            return entry.output
        with session.step_body(key):
            value = fn()
            if inspect.isawaitable(value):
                value = await value
        return await asyncio.to_thread(session.step_record, position, key, value)
