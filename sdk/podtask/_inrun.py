"""Triggering and following runs from inside a run, through the run API.

A run pod has no Kubernetes credentials by default.  While a task function runs
(the runner has installed its :class:`~podtask._waits.WaitSession`), a client made
without explicit credentials sends, for the run's own namespace:

* plain ``trigger``/``batch_trigger`` as ``POST …/trigger`` (``detached``): the
  operator creates the children, linked to this run.  Each call takes the next
  position of the attempt's journal, as ``trigger_and_wait`` does, and is journalled
  with what it made; so a resent request, an infrastructure re-run of the attempt and a
  replay after a checkpoint all return the same runs and create none twice (children
  without an idempotency key are named by that position);
* ``subscribe`` and ``retrieve`` of this run or one of its children as
  ``GET …/events`` (Server-Sent Events fed from the operator's cache).

Everything else (other namespaces, other runs, lists, cancels) stays on the
Kubernetes API, which needs a ServiceAccount in a pod.

No ``kubernetes`` import: this module runs in every run pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any

from podtask import _waits, protocol
from podtask._runenv import CurrentRun
from podtask._runview import change_key, is_final
from podtask._trigger import (
    ANNOTATION_BATCH_INDEX,
    LABEL_BATCH,
    RunPlan,
    new_batch_id,
)
from podtask.api.v1alpha1 import JournalEntry, RunError, TaskRunSpec
from podtask.errors import (
    KubernetesApiError,
    PodtaskError,
    ReplayDivergedError,
    TaskNotDeployedError,
    TriggerUnavailableError,
)
from podtask.protocol import RunTriggerRequest, RunTriggerResponse, TriggerChild, TriggeredRun
from podtask.runapi import EVENTS_READ_TIMEOUT, RunApiError, RunEvent

__all__ = [
    "NotFollowable",
    "Outcome",
    "afollow",
    "follow",
    "parent",
    "session_for",
    "trigger",
]

_FIRST_RETRY_SECONDS = 0.25
_MAX_RETRY_SECONDS = 5.0


class NotFollowable(PodtaskError):  # noqa: N818 - a signal to the client, never raised to users
    """The run API will not stream this run (neither the run itself nor its child)."""


def session_for(explicit: bool, namespace: str) -> _waits.WaitSession | None:
    """The session whose run API serves a call in ``namespace``, or None: the call goes
    to the Kubernetes API (outside a run, another namespace, or a client given its own
    credentials)."""
    if explicit:
        return None
    session = _waits.active()
    if session is None or session.namespace != namespace:
        return None
    return session


def parent(session: _waits.WaitSession) -> CurrentRun:
    return CurrentRun(session.namespace, session.run, session.attempt)


# --------------------------------------------------------------------------- triggering


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run of a plain trigger: its name (made or found), or why there is none."""

    name: str
    cached: bool = False
    error: PodtaskError | None = None


def _batch_id(session: _waits.WaitSession, position: int) -> str:
    # Derived, not random: a replay of the attempt labels nothing new and reports the
    # same id as the first execution did.
    parts = ("podtask-batch-in-run", session.namespace, session.run, session.attempt, position)
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:16]
    return f"batch-{digest}"


def _child(plan: RunPlan, batch: tuple[str, int] | None) -> TriggerChild:
    metadata = plan.body["metadata"]
    labels = dict(metadata.get("labels") or {})
    annotations = dict(metadata.get("annotations") or {})
    if batch is not None:
        labels[LABEL_BATCH] = batch[0]
        annotations[ANNOTATION_BATCH_INDEX] = str(batch[1])
    return TriggerChild(
        spec=TaskRunSpec.model_validate(plan.body["spec"]), labels=labels, annotations=annotations
    )


def _error(item: TriggeredRun, plan: RunPlan) -> PodtaskError | None:
    error = item.error
    if error is None:
        return None
    if error.type == "TaskNotDeployedError":
        return TaskNotDeployedError(error.message, task_id=plan.task, namespace=plan.namespace)
    return KubernetesApiError(error.message, item.status or 0)


def _journalled(items: Sequence[TriggeredRun]) -> dict[str, Any] | None:
    """What the journal keeps besides the names: which runs were cached, which refused."""
    cached = [i for i, item in enumerate(items) if item.cached]
    errors = [
        {"index": i, "type": item.error.type, "message": item.error.message, "status": item.status}
        for i, item in enumerate(items)
        if item.error is not None
    ]
    kept: dict[str, Any] = {}
    if cached:
        kept["cached"] = cached
    if errors:
        kept["errors"] = errors
    return kept or None


def _replayed(entry: JournalEntry) -> list[TriggeredRun] | str:
    """The items a journal entry recorded, or the message of the failure it recorded."""
    kept = entry.output if isinstance(entry.output, dict) else {}
    if "failed" in kept:
        return str(kept["failed"])
    names = list(entry.runs or [])
    cached = set(kept.get("cached") or [])
    items = [TriggeredRun(name=name, cached=i in cached) for i, name in enumerate(names)]
    for error in kept.get("errors") or []:
        refused = RunError(type=error["type"], message=error["message"])
        items[error["index"]] = TriggeredRun(error=refused, status=error.get("status"))
    return items


def _unavailable(session: _waits.WaitSession, error: RunApiError) -> str:
    hint = (
        " (an operator older than this SDK refuses plain triggers from runs)"
        if error.status == 422
        else ""
    )
    where = f"{session.namespace}/{session.run}"
    return f"run {where} could not trigger through the run API{hint}: {error}"


def trigger(
    session: _waits.WaitSession,
    call: str,
    name: str | None,
    plans: Sequence[tuple[int, RunPlan]],
    *,
    verify_tasks: bool,
    batch: bool = False,
    batch_key: str | None = None,
) -> tuple[str | None, list[Outcome]]:
    """Make the runs of ``plans`` (index, plan) at the next journal position, or read
    them from the journal; the batch id (for a batch) and one outcome per plan.

    A run API that cannot be reached for the journalled call's whole retry deadline
    makes every outcome a :class:`~podtask.errors.TriggerUnavailableError`; that failure
    is journalled too, so the journal's positions stay those of the code.
    """
    with session.exclusive(call):
        position, entry = session.next("Trigger", name)
        batch_id = None
        if batch:
            batch_id = new_batch_id(batch_key, session.namespace) if batch_key else None
            batch_id = batch_id or _batch_id(session, position)
        if entry is not None:
            replayed = _replayed(entry)
            if not isinstance(replayed, str) and len(replayed) != len(plans):
                raise session.diverged(
                    ReplayDivergedError(
                        f"the replay of run {session.run} diverged from its journal at position "
                        f"{position}: {call} made {len(replayed)} runs there, and now asks for "
                        f"{len(plans)}. Nothing was done twice; the run fails."
                    )
                )
            items: list[TriggeredRun] | str = replayed
        else:
            request = RunTriggerRequest(
                attempt=session.attempt,
                position=position,
                runs=[_child(plan, (batch_id, i) if batch_id else None) for i, plan in plans],
                detached=True,
                verify_tasks=verify_tasks,
            )
            try:
                answer = session.call(lambda: session.api.trigger_detached(request), "trigger runs")
                items = _items(answer, len(plans))
            except RunApiError as error:
                items = _unavailable(session, error)
                failed = JournalEntry(kind="Trigger", name=name, output={"failed": items})
                session.record(position, failed)
            else:
                names = [item.name for item in items]
                session.record(
                    position,
                    JournalEntry(kind="Trigger", name=name, runs=names, output=_journalled(items)),
                )
    if isinstance(items, str):
        return batch_id, [Outcome("", error=TriggerUnavailableError(items)) for _ in plans]
    return batch_id, [
        Outcome(item.name, item.cached, _error(item, plan))
        for item, (_, plan) in zip(items, plans, strict=True)
    ]


def _items(answer: RunTriggerResponse, count: int) -> list[TriggeredRun]:
    items = answer.items
    if len(items) != count:
        raise RunApiError(
            f"the run API answered a trigger of {count} runs with {len(items)}", transient=False
        )
    return items


# --------------------------------------------------------------------------- following


@dataclass
class _Follow:
    """The reconnecting state of one subscription (sync and async share it)."""

    session: _waits.WaitSession
    target: str
    close_on_complete: bool
    deadline: float | None
    clock: Callable[[], float]
    last: str = ""
    uid: str | None = None
    connected: bool = False
    give_up: float | None = None
    delay: float = _FIRST_RETRY_SECONDS

    @property
    def child(self) -> str | None:
        return None if self.target == self.session.run else self.target

    def read_timeout(self) -> float | None:
        """How long the next connection may stay silent; None: the deadline has passed."""
        if self.deadline is None:
            return EVENTS_READ_TIMEOUT
        left = self.deadline - self.clock()
        return min(left, EVENTS_READ_TIMEOUT) if left > 0 else None

    def take(self, event: RunEvent | None) -> tuple[dict[str, Any] | None, bool]:
        """(the run to yield, whether the subscription is over) for one event."""
        over = self.deadline is not None and self.clock() >= self.deadline
        if event is None:
            return None, over
        self.connected = True
        if event.kind == protocol.EVENT_DELETED:
            return None, True
        if event.kind != protocol.EVENT_RUN:
            return None, over
        self.give_up, self.delay = None, _FIRST_RETRY_SECONDS
        run = event.data
        uid = (run.get("metadata") or {}).get("uid")
        self.uid = self.uid or uid
        if uid != self.uid:
            # A new run under the same name (its idempotency key was released and used
            # again): the run followed is gone, as when it is deleted.
            return None, True
        key = change_key(run)
        fresh = run if key != self.last else None
        self.last = key
        return fresh, over or (self.close_on_complete and is_final(run))

    def pause(self, error: RunApiError | None) -> float | None:
        """Seconds to wait before connecting again (None: the deadline has passed).

        Raises :class:`NotFollowable` when the first connection is refused (not this
        run's to follow), and the error when it will not pass or lasted too long.
        """
        if error is not None and not self.connected and error.status in (403, 404):
            raise NotFollowable(str(error))
        if error is not None and not error.transient:
            raise error
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            return None
        self.give_up = self.give_up or now + self.session.call_deadline
        if now >= self.give_up:
            raise error or RunApiError(
                f"the run API kept ending the events of {self.target} without a final phase"
            )
        pause, self.delay = self.delay, min(self.delay * 2, _MAX_RETRY_SECONDS)
        return pause


def _start(
    session: _waits.WaitSession,
    target: str,
    close_on_complete: bool,
    timeout: float | None,
    clock: Callable[[], float],
) -> _Follow:
    deadline = None if timeout is None else clock() + timeout
    return _Follow(session, target, close_on_complete, deadline, clock)


def follow(
    session: _waits.WaitSession,
    target: str,
    *,
    close_on_complete: bool = True,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[dict[str, Any]]:
    """``target`` (this run or its child) now, then at every change, through the run API;
    reconnects after a dropped stream (an operator restart) and yields nothing twice."""
    state = _start(session, target, close_on_complete, timeout, clock)
    while (read_timeout := state.read_timeout()) is not None:
        failure: RunApiError | None = None
        events = session.api.events(
            state.child, close_on_complete=close_on_complete, read_timeout=read_timeout
        )
        try:
            with closing(events):
                for event in events:
                    run, over = state.take(event)
                    if run is not None:
                        yield run
                    if over:
                        return
        except RunApiError as error:
            failure = error
        pause = state.pause(failure)
        if pause is None:
            return
        time.sleep(pause)


async def afollow(
    session: _waits.WaitSession,
    target: str,
    *,
    close_on_complete: bool = True,
    # Ends the stream quietly, as the sync form; asyncio.timeout would raise.
    timeout: float | None = None,  # noqa: ASYNC109
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[dict[str, Any]]:
    """:func:`follow` for async code."""
    state = _start(session, target, close_on_complete, timeout, clock)
    while (read_timeout := state.read_timeout()) is not None:
        failure: RunApiError | None = None
        events = session.api.aevents(
            state.child, close_on_complete=close_on_complete, read_timeout=read_timeout
        )
        try:
            # Closed at once, not whenever the collector finds it: it holds a connection.
            async with aclosing(events):
                async for event in events:
                    run, over = state.take(event)
                    if run is not None:
                        yield run
                    if over:
                        return
        except RunApiError as error:
            failure = error
        pause = state.pause(failure)
        if pause is None:
            return
        await asyncio.sleep(pause)
