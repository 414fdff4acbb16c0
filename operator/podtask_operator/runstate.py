"""The run state machine: what to do next with one TaskRun, as a pure function.

``decide`` reads the run as stored in the API server, its Task, its pods and
what its pod reported over the run API, and returns the actions that move the
run on: a status patch, a pod to create, pods to delete, Events, a time to look
again.  It performs no I/O, so the whole life of a run is unit-tested without a
cluster, and after an operator restart the same inputs give the same decision
(level-triggered: nothing here depends on having seen an earlier event).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from podtask import outputs
from podtask._trigger import DEFAULT_IDEMPOTENCY_KEY_TTL
from podtask.api.base import Condition
from podtask.api.durations import format_duration, parse_duration
from podtask.api.v1alpha1 import (
    FINAL_PHASES,
    Attempt,
    Journal,
    OutputRef,
    Phase,
    RunError,
    TaskRunSpec,
    TaskRunStatus,
    TaskSpec,
    WaitingFor,
)
from podtask.protocol import (
    EXIT_CANCELED,
    Checkpoint,
    Completion,
    Failure,
    JournalUpdate,
    TerminationReport,
)
from podtask_operator import backoff, naming
from podtask_operator.settings import Settings

# Trigger.dev's error codes, so errors read the same on both platforms.
OOM_KILLED = "TASK_PROCESS_OOM_KILLED"
MAX_DURATION_EXCEEDED = "MAX_DURATION_EXCEEDED"
HEARTBEAT_TIMEOUT = "TASK_RUN_HEARTBEAT_TIMEOUT"
PROCESS_EXITED = "TASK_PROCESS_EXITED"
COULD_NOT_FIND_TASK = "COULD_NOT_FIND_TASK"
INVALID_SPEC = "INVALID_SPEC"
OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
INFRA_RETRIES_EXHAUSTED = "INFRASTRUCTURE_RETRIES_EXHAUSTED"
NO_OUTCOME_REPORTED = "NO_OUTCOME_REPORTED"

CHECKPOINTED = "Checkpointed"
"""``Attempt.reason`` of a pod that checkpointed: the attempt goes on in a new pod."""

# A pod may outlive maxDuration by this much before the operator stops it itself
# (the node enforces activeDeadlineSeconds first; this covers a node that doesn't).
DEADLINE_SLACK = 30.0
DELETING_RECHECK = 5.0
STUCK_DELETE_SLACK = 60.0
CHECKPOINT_EXIT_GRACE = 30.0
"""A pod that checkpointed exits by itself within moments; after this long it is deleted."""
WAITING_RECHECK = 300.0
"""Children and tokens wake a waiting run when they change; this is only a safety net."""


@dataclass(frozen=True, slots=True)
class PodView:
    """The facts about one attempt pod that decisions depend on."""

    name: str
    phase: str
    deleting: bool = False
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    disrupted: bool = False
    report: TerminationReport | None = None
    """The runner's outcome from the termination message, if it left one."""
    waiting: str | None = None
    """Why a pod that has not started is waiting (unschedulable, image pull), if it says."""
    delete_by: datetime | None = None
    """A deleting pod's deletionTimestamp: when its grace period ends."""

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def running(self) -> bool:
        return self.phase == "Running"

    @classmethod
    def from_pod(cls, pod: dict[str, Any], run_token: str | None = None) -> PodView:
        """The view of ``pod``; its termination report counts only if signed with the
        run's token (``run_token``; without it, no report is read)."""
        status = pod.get("status") or {}
        terminated: dict[str, Any] = {}
        running_since = None
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            if "terminated" in state:
                terminated = state["terminated"]
            if "running" in state:
                running_since = state["running"].get("startedAt")
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        reason = status.get("reason") or terminated.get("reason")
        waiting = [
            (w.get("reason"), w.get("message"))
            for c in status.get("containerStatuses") or []
            if (w := (c.get("state") or {}).get("waiting")) and w.get("reason")
        ] + [
            (c.get("reason"), c.get("message"))
            for c in status.get("conditions") or []
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason")
        ]
        report = TerminationReport.decode(terminated.get("message"), run_token)
        return cls(
            name=pod["metadata"]["name"],
            phase=status.get("phase") or "Pending",
            deleting=bool(pod["metadata"].get("deletionTimestamp")),
            delete_by=_time(pod["metadata"].get("deletionTimestamp")),
            exit_code=terminated.get("exitCode"),
            reason=reason,
            # A report is no message for people: the attempt's record would quote JSON.
            message=status.get("message") or (None if report else terminated.get("message")),
            started_at=_time(terminated.get("startedAt") or running_since),
            finished_at=_time(terminated.get("finishedAt")),
            disrupted=conditions.get("DisruptionTarget") == "True" or reason == "Evicted",
            report=report,
            waiting=next((f"{r}: {m}" if m else str(r) for r, m in waiting), None),
        )


@dataclass(slots=True)
class Reports:
    """What the run's pod said over the run API and is not yet in the status."""

    started: int | None = None
    completion: Completion | None = None
    failure: Failure | None = None
    metadata: dict[str, Any] | None = None
    last_heartbeat: datetime | None = None
    checkpoint: Checkpoint | None = None
    journal: JournalUpdate | None = None


@dataclass(frozen=True, slots=True)
class ChildView:
    """What a waiting parent needs to know of one child run."""

    phase: str | None
    queue: str | None = None

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


@dataclass(frozen=True, slots=True)
class TokenView:
    """What a waiting run needs to know of one WaitToken."""

    completed: bool
    timed_out: bool = False
    expires_at: datetime | None = None


def wait_over(
    waiting_for: WaitingFor | None,
    children: Mapping[str, ChildView | None],
    tokens: Mapping[str, TokenView | None],
    now: datetime,
) -> tuple[bool, float | None]:
    """Whether a wait is over, and if not, in how many seconds it ends by itself.

    A child run or token that no longer exists ends the wait too (its result then
    says so): waiting on something deleted would wait forever.  A token past its
    ``expiresAt`` ends the wait even before the operator marks it timed out.
    """
    if waiting_for is None:
        return True, None
    if waiting_for.kind == "Duration":
        until = _aware(waiting_for.until)
        if until is None or until <= now:
            return True, None
        return False, (until - now).total_seconds()
    if waiting_for.kind == "Token":
        token = tokens.get(waiting_for.token or "")
        if token is None or token.completed:
            return True, None
        expires = _aware(token.expires_at)
        if expires is None:
            return False, None
        if expires <= now:
            return True, None
        return False, (expires - now).total_seconds()
    pending = [n for n in waiting_for.runs if (child := children.get(n)) and not child.final]
    return not pending, None


def _aware(moment: datetime | None) -> datetime | None:
    # A zone-less date-time (the CRD's format admits one) is UTC, as in Go.
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def describe_wait(waiting_for: WaitingFor) -> str:
    if waiting_for.kind == "Duration":
        return f"a timed wait until {waiting_for.until.isoformat() if waiting_for.until else '?'}"
    if waiting_for.kind == "Token":
        return f"wait token {waiting_for.token}"
    if len(waiting_for.runs) == 1:
        return f"child run {waiting_for.runs[0]}"
    return f"{len(waiting_for.runs)} child runs"


@dataclass(frozen=True, slots=True)
class PodPlan:
    name: str
    attempt: int
    machine: str
    queue: str
    max_duration: str | None
    snapshot: TaskSpec


ROUTINE_PHASES = frozenset(
    {Phase.DELAYED, Phase.QUEUED, Phase.DEQUEUED, Phase.EXECUTING, Phase.COMPLETED}
)
"""Phases every run passes through: their Events are posted only with the
``phase_events`` setting (Kubernetes' own controllers post none for routine steps)."""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    reason: str
    message: str
    routine: bool = False
    """A phase change on the way every run goes (posted only with ``phase_events``);
    retries, failures, cancels, waits and resumes are not routine."""


@dataclass(slots=True)
class Decision:
    status_patch: dict[str, Any] = field(default_factory=dict)
    """What changed, as a JSON merge patch of /status (empty: nothing to write)."""
    status: dict[str, Any] | None = None
    """The whole new status when anything changed.  It is written whole (a JSON Patch
    ``add /status``), not as the merge patch: in a merge patch a null means "delete",
    which would drop the nulls inside outputs and metadata."""
    create_pod: PodPlan | None = None
    delete_pods: list[str] = field(default_factory=list)
    output_chunks: list[tuple[str, bytes]] = field(default_factory=list)
    """Secrets to write (name, bytes) before the status that names them."""
    events: list[Event] = field(default_factory=list)
    cancel_runs: list[str] = field(default_factory=list)
    """Child runs to cancel (set ``spec.cancel``): the run was canceled."""
    requeue_after: float | None = None
    delete_run: bool = False
    wants_slot: bool = False
    """The run is Queued and eligible: the dispatcher should admit it."""
    queue: str | None = None
    """The run's queue as of this decision (a new run gets it in this very decision)."""
    holds_slot: bool = False
    """The run occupies a queue slot after this decision (Dequeued/Executing)."""
    confirm_pods: bool = False
    """The decision gives up on a pod that went silent: the controller first re-reads the
    run's pods from the API server, since a watch that broke (an API server restart) never
    reports a pod deleted meanwhile, and decides again if they were not as cached."""

    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


@dataclass(slots=True)
class RunFacts:
    """Everything ``decide`` reads, gathered by the controller."""

    run: dict[str, Any]
    task: TaskSpec | None
    pods: dict[str, PodView]
    reports: Reports
    now: datetime
    slot_granted: bool = False
    operator_started: datetime | None = None
    default_queue: str | None = None
    children: dict[str, ChildView | None] = field(default_factory=dict)
    """For a Waiting run, the child runs ``waitingFor`` names (None: it does not
    exist); for a canceled one, every run whose ``parentRun`` it is."""
    tokens: dict[str, TokenView | None] = field(default_factory=dict)
    """The WaitToken ``waitingFor`` names (None: it does not exist)."""


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


class _Run:
    """One decision in the making: the run's spec, a mutable copy of its status."""

    def __init__(self, facts: RunFacts, settings: Settings, rng: random.Random) -> None:
        self.facts = facts
        self.settings = settings
        self.rng = rng
        self.now = facts.now
        self.name: str = facts.run["metadata"]["name"]
        self.created = _time(facts.run["metadata"].get("creationTimestamp")) or self.now
        self.old_status = facts.run.get("status") or {}
        self.status = TaskRunStatus.model_validate(self.old_status)
        self.decision = Decision()
        self.spec: TaskRunSpec | None = None
        self.spec_error: str | None = None
        try:
            self.spec = TaskRunSpec.model_validate(facts.run.get("spec") or {})
        except ValidationError as error:
            self.spec_error = "; ".join(
                f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )

    # ------------------------------------------------------------------ helpers

    def set_phase(
        self, phase: Phase, message: str = "", warning: bool = False, notable: bool = False
    ) -> None:
        if self.status.phase != phase:
            self.status.phase = phase
            routine = phase in ROUTINE_PHASES and not warning and not notable
            self.decision.events.append(
                Event(
                    "Warning" if warning else "Normal", phase.value, message or phase.value, routine
                )
            )
        if phase.is_final:
            self.status.finished_at = self.status.finished_at or self.now
            self.status.next_attempt_at = None
            if self.status.started_at:
                self.status.duration = format_duration(
                    (self.status.finished_at - self.status.started_at).total_seconds() // 1
                )

    def current(self) -> Attempt | None:
        attempts = self.status.attempts
        return attempts[-1] if attempts and attempts[-1].finished_at is None else None

    def end_attempt(
        self,
        *,
        reason: str,
        exit_code: int | None = None,
        message: str | None = None,
        counted: bool = True,
        finished_at: datetime | None = None,
    ) -> None:
        attempt = self.current()
        if attempt is None:
            return
        attempt.finished_at = finished_at or self.now
        attempt.reason = reason
        attempt.exit_code = exit_code
        attempt.message = message[:1024] if message else None
        attempt.counted = counted

    @property
    def max_attempts(self) -> int:
        assert self.spec is not None and self.status.task_snapshot is not None
        return self.spec.max_attempts or self.status.task_snapshot.retry.max_attempts

    def fail(self, phase: Phase, error_type: str, message: str) -> None:
        self.status.error = RunError(type=error_type, message=message)
        self.set_phase(phase, message, warning=True)

    def retry_later(self, delay: float, why: str) -> None:
        self.status.next_attempt_at = self.now + timedelta(seconds=delay)
        self.status.phase = Phase.QUEUED  # no Event: the Retrying Event says it
        self.decision.events.append(Event("Normal", "Retrying", f"{why}; retry in {delay:.1f}s"))
        self.decision.wake_in(delay)

    def patch(self) -> dict[str, Any]:
        return _merge_diff(self.old_status, self.status.to_wire())


def _merge_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``.

    A merge patch merges objects key by key, so an object that lost keys (an
    error without the previous stack, metadata with a key removed) must list
    them as null; sending the new object whole would keep the old keys.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = _merge_diff(before, value)
            if inner:
                patch[key] = inner
        elif before != value:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch


def decide(facts: RunFacts, settings: Settings, rng: random.Random | None = None) -> Decision:
    run = _Run(facts, settings, rng or random.Random())
    phase = run.status.phase
    if phase is not None and phase.is_final:
        _finished(run)
    elif run.spec is None:
        _invalid(run)
    elif run.spec.cancel:
        _cancel(run)
    elif phase is None or phase == Phase.DELAYED:
        _admit_to_queue(run)
    elif phase == Phase.QUEUED:
        _queued(run)
    elif phase in (Phase.DEQUEUED, Phase.EXECUTING):
        _in_flight(run)
    else:
        _waiting(run)
    if run.status.phase is not None and run.status.phase.is_final and phase != run.status.phase:
        _finished(run)
    run.decision.status_patch = run.patch()
    if run.decision.status_patch:
        run.decision.status = run.status.to_wire()
    # A slot is held while the run is in flight and, after that, until its pod has
    # stopped: a pod still exiting counts against the queue (and its quota) too.
    run.decision.holds_slot = run.status.phase in (Phase.DEQUEUED, Phase.EXECUTING) or any(
        not pod.terminal for pod in facts.pods.values()
    )
    run.decision.queue = run.status.queue
    return run.decision


# ---------------------------------------------------------------------- phases


def _invalid(run: _Run) -> None:
    message = f"invalid TaskRun: {run.spec_error}"
    run.status.conditions = [
        Condition(
            type="Valid",
            status="False",
            reason="InvalidSpec",
            message=message[:1024],
            last_transition_time=run.now.isoformat(),
        )
    ]
    run.fail(Phase.FAILED, INVALID_SPEC, message)


def _cancel(run: _Run) -> None:
    run.end_attempt(reason="Canceled")
    run.set_phase(Phase.CANCELED, "canceled by spec.cancel")
    # As in Trigger.dev, canceling a run cancels its children still in progress (for a
    # canceled run, the controller gathers every run whose parentRun it is).
    run.decision.cancel_runs = [
        name for name, child in run.facts.children.items() if child is not None and not child.final
    ]


def _admit_to_queue(run: _Run) -> None:
    spec = run.spec
    assert spec is not None
    run.status.created_at = run.status.created_at or run.created
    if spec.idempotency_key and run.status.idempotency_key_expires_at is None:
        # The SDK decides from the run's creation time too (podtask._trigger); written
        # here so that `kubectl get -o yaml` shows when the key stops deduplicating.
        key_ttl = _seconds(spec.idempotency_key_ttl) if spec.idempotency_key_ttl else None
        run.status.idempotency_key_expires_at = run.created + timedelta(
            seconds=DEFAULT_IDEMPOTENCY_KEY_TTL.total_seconds() if key_ttl is None else key_ttl
        )
    delay_until = spec.delay_until or (
        run.created + timedelta(seconds=_seconds(spec.delay)) if spec.delay else None
    )
    if delay_until is not None and delay_until.tzinfo is None:
        # A zone-less date-time (the CRD's format admits one) is UTC, as in Go;
        # comparing it with the aware clock would raise on every reconcile.
        delay_until = delay_until.replace(tzinfo=UTC)
    if delay_until is not None and delay_until > run.now:
        run.set_phase(Phase.DELAYED, f"delayed until {delay_until.isoformat()}")
        run.status.next_attempt_at = delay_until
        run.decision.wake_in((delay_until - run.now).total_seconds())
        return
    task = run.facts.task
    if task is None:
        waited = (run.now - run.created).total_seconds()
        if waited < run.settings.task_grace:
            run.decision.wake_in(run.settings.task_grace - waited)
            return
        run.fail(Phase.FAILED, COULD_NOT_FIND_TASK, f"Task {spec.task!r} does not exist")
        return
    run.status.task_snapshot = task
    run.status.machine = spec.machine or task.machine
    run.status.queue = (
        spec.queue or task.queue or run.facts.default_queue or naming.default_queue(spec.task)
    )
    run.status.queued_at = run.now
    run.status.next_attempt_at = None
    ttl = spec.ttl or task.ttl
    if ttl:
        run.status.expires_at = run.now + timedelta(seconds=_seconds(ttl))
    if spec.metadata is not None and run.status.metadata is None:
        run.status.metadata = spec.metadata
    run.set_phase(Phase.QUEUED, f"queued in {run.status.queue}")
    _queued(run)


def _queued(run: _Run) -> None:
    status = run.status
    if status.expires_at and status.attempt is None and status.expires_at <= run.now:
        run.fail(Phase.EXPIRED, "EXPIRED", "ttl passed before the run started")
        return
    if status.next_attempt_at and status.next_attempt_at > run.now:
        run.decision.wake_in((status.next_attempt_at - run.now).total_seconds())
        return
    live = [
        name
        for name, pod in run.facts.pods.items()
        if not pod.terminal
        # A pod on a lost node keeps its deletionTimestamp for ever; past its grace (and
        # some slack) it is taken for gone, as the node lifecycle controller would.
        and not (pod.delete_by and (run.now - pod.delete_by).total_seconds() > STUCK_DELETE_SLACK)
    ]
    if live:
        # Never two pods of one run: a pod given up on (it never started) could still
        # start its runner, and a re-run attempt has the same number.
        run.decision.delete_pods = [n for n in live if not run.facts.pods[n].deleting]
        run.decision.wake_in(DELETING_RECHECK)
        return
    if not run.facts.slot_granted:
        run.decision.wants_slot = True
        if status.expires_at and status.attempt is None:
            run.decision.wake_in((status.expires_at - run.now).total_seconds())
        return
    _start_attempt(run)


def _start_attempt(run: _Run) -> None:
    status = run.status
    assert run.spec is not None and status.task_snapshot is not None
    last = status.attempts[-1] if status.attempts else None
    if last is not None and last.reason == CHECKPOINTED:
        number = last.number  # the attempt goes on after its wait, in a new pod
        segment = sum(1 for a in status.attempts if a.number == number)
        pod = naming.resumed_pod_name(run.name, number, segment)
    elif last is not None and not last.counted:
        number = last.number  # an infrastructure failure re-runs the same attempt
        reruns = sum(1 for a in status.attempts if a.number == number)
        pod = naming.pod_name(run.name, number, reruns)
    else:
        number = (status.attempt or 0) + 1
        pod = naming.pod_name(run.name, number)
        status.journal = None  # a new attempt starts the function afresh
    machine = status.machine or status.task_snapshot.machine
    status.attempt = number
    status.next_attempt_at = None
    attempt = Attempt(number=number, pod=pod, machine=machine, dequeued_at=run.now)
    status.attempts.append(attempt)
    max_duration = _remaining_max_duration(run, number)
    if max_duration is not None and max_duration <= 0:
        # Earlier pods of this attempt used up its compute time (waits excluded).
        run.end_attempt(reason="DeadlineExceeded", message="maxDuration exceeded")
        run.fail(Phase.TIMED_OUT, MAX_DURATION_EXCEEDED, "ran longer than its maxDuration")
        return
    run.set_phase(Phase.DEQUEUED, f"attempt {number}: creating pod {pod}")
    run.decision.create_pod = _pod_plan(run, attempt)


def _pod_plan(run: _Run, attempt: Attempt) -> PodPlan:
    status = run.status
    assert status.task_snapshot is not None
    limit = _max_duration(run)
    if limit is not None and _used_seconds(status, attempt.number) > 0:
        # A resumed pod gets what earlier pods of the attempt left of maxDuration.
        remaining = _remaining_max_duration(run, attempt.number) or 0.0
        limit = format_duration(max(math.ceil(remaining), 1))
    return PodPlan(
        name=attempt.pod,
        attempt=attempt.number,
        machine=attempt.machine or status.task_snapshot.machine,
        queue=status.queue or "",
        max_duration=limit,
        snapshot=status.task_snapshot,
    )


def _max_duration(run: _Run) -> str | None:
    assert run.spec is not None and run.status.task_snapshot is not None
    return run.spec.max_duration or run.status.task_snapshot.max_duration


def _used_seconds(status: TaskRunStatus, number: int) -> float:
    """Compute time earlier pods of attempt ``number`` used before they checkpointed."""
    return sum(
        (a.finished_at - a.started_at).total_seconds()
        for a in status.attempts
        if a.number == number and a.reason == CHECKPOINTED and a.started_at and a.finished_at
    )


def _remaining_max_duration(run: _Run, number: int) -> float | None:
    """maxDuration left for attempt ``number``: it counts compute time, not waits."""
    limit = _max_duration(run)
    if limit is None:
        return None
    return _seconds(limit) - _used_seconds(run.status, number)


def _in_flight(run: _Run) -> None:
    attempt = run.current()
    reports = run.facts.reports
    if reports.metadata is not None:
        run.status.metadata = reports.metadata
    if attempt is None:  # status and pods disagree (should not happen): requeue cleanly
        run.status.phase = Phase.QUEUED
        run.decision.wake_in(0)
        return
    pod = run.facts.pods.get(attempt.pod)
    if reports.journal is not None and reports.journal.attempt == attempt.number:
        run.status.journal = Journal(attempt=attempt.number, entries=reports.journal.journal)
    if reports.completion is not None and reports.completion.attempt == attempt.number:
        _complete(run, reports.completion, pod)
        return
    if reports.failure is not None and reports.failure.attempt == attempt.number:
        _failed(run, reports.failure)
        return
    if reports.checkpoint is not None and reports.checkpoint.attempt == attempt.number:
        _checkpoint(run, reports.checkpoint)
        return
    if pod is not None and pod.terminal:
        if pod.report is not None and pod.report.attempt == attempt.number:
            _reported_on_exit(run, pod.report, pod)
            return
        _pod_ended(run, pod)
        return
    if pod is None:
        if run.status.phase == Phase.DEQUEUED and attempt.started_at is None:
            # Not created yet, or the create was lost in a restart: same name, so
            # creating again is harmless (409 if it is there after all).
            run.decision.create_pod = _pod_plan(run, attempt)
            return
        _infra_failure(run, "the pod disappeared (deleted behind the operator's back)")
        return
    if pod.deleting:
        run.decision.wake_in(DELETING_RECHECK)
        return
    # Executing means the runner is running the attempt: it fetched its context, or
    # (after an operator restart lost that report) it sends heartbeats.  A pod that
    # is merely Running may still be importing the user's code.
    started = reports.started == attempt.number or reports.last_heartbeat is not None
    if started and run.status.phase == Phase.DEQUEUED:
        attempt.started_at = run.now
        run.status.started_at = run.status.started_at or attempt.started_at
        run.set_phase(Phase.EXECUTING, f"attempt {attempt.number} running in {attempt.pod}")
    if run.status.phase == Phase.EXECUTING:
        _watch_liveness(run, attempt, pod)
    else:
        _watch_start(run, attempt, pod)


def _watch_start(run: _Run, attempt: Attempt, pod: PodView) -> None:
    """A pod that never starts (unschedulable, an image that cannot be pulled) gives its
    slot back after ``start_timeout`` and the attempt is re-run; after too many such
    failures the run ends SystemFailure, saying why the pods waited."""
    started = run.facts.operator_started
    timeout = run.settings.start_timeout
    since = attempt.dequeued_at or started or run.now
    give_up_at = since + timedelta(seconds=timeout)
    if pod.running and started:
        # A restarted operator has forgotten that the runner called in (if it did); a
        # live runner heartbeats within an interval, which moves the run to Executing.
        heard_by = started + timedelta(seconds=2 * run.settings.heartbeat_interval)
        give_up_at = max(give_up_at, heard_by)
    if run.now <= give_up_at:
        run.decision.wake_in((give_up_at - run.now).total_seconds() + 1)
        return
    run.decision.confirm_pods = True
    run.decision.delete_pods.append(pod.name)
    why = pod.waiting or f"pod phase {pod.phase}"
    _infra_failure(run, f"pod {pod.name} did not start within {format_duration(timeout)} ({why})")


def _watch_liveness(run: _Run, attempt: Attempt, pod: PodView) -> None:
    settings = run.settings
    beat = run.facts.reports.last_heartbeat
    # An operator restart forgets heartbeats, so its start time counts as one.
    candidates = [t for t in (beat, attempt.started_at, run.facts.operator_started) if t]
    since = max(candidates, default=run.now)
    silent = (run.now - since).total_seconds()
    if silent > settings.heartbeat_timeout:
        run.decision.confirm_pods = True
        run.end_attempt(reason="HeartbeatTimeout", message=f"no heartbeat for {silent:.0f}s")
        run.fail(Phase.CRASHED, HEARTBEAT_TIMEOUT, f"no heartbeat for {silent:.0f}s")
        return
    run.decision.wake_in(settings.heartbeat_timeout - silent + 1)
    max_duration = _max_duration(run)
    remaining = _remaining_max_duration(run, attempt.number)
    if max_duration and remaining is not None and attempt.started_at:
        over = (run.now - attempt.started_at).total_seconds() - remaining
        if over > DEADLINE_SLACK:
            run.end_attempt(reason="DeadlineExceeded", message="maxDuration exceeded")
            run.fail(Phase.TIMED_OUT, MAX_DURATION_EXCEEDED, f"ran longer than {max_duration}")
            return
        run.decision.wake_in(DEADLINE_SLACK - over + 1)


def _complete(run: _Run, completion: Completion, pod: PodView | None) -> None:
    data = outputs.encode(completion.output)
    status = run.status
    if len(data) > outputs.MAX_OUTPUT_BYTES:
        run.end_attempt(reason="Error", message="output too large")
        run.fail(
            Phase.FAILED,
            OUTPUT_TOO_LARGE,
            f"output is {len(data)} bytes; the limit is {outputs.MAX_OUTPUT_BYTES}",
        )
        return
    if len(data) > run.settings.output_inline_limit:
        chunks = outputs.split(data)
        names = [naming.output_secret(run.name, i) for i in range(len(chunks))]
        run.decision.output_chunks = list(zip(names, chunks, strict=True))
        status.output_ref = OutputRef(
            kind="Secret", names=names, size=len(data), sha256=outputs.digest(data)
        )
        status.output = None
    else:
        status.output = completion.output
        status.output_ref = None
    status.error = None
    run.end_attempt(reason="Completed", exit_code=0)
    run.set_phase(Phase.COMPLETED, f"completed on attempt {status.attempt}")


def _failed(run: _Run, failure: Failure) -> None:
    run.end_attempt(reason="Error", exit_code=None, message=failure.error.message)
    run.status.error = failure.error
    number = run.status.attempt or 1
    if failure.retry.skip:
        run.fail(Phase.FAILED, failure.error.type, failure.error.message)
        run.status.error = failure.error
        return
    if number >= run.max_attempts:
        run.set_phase(
            Phase.FAILED,
            f"{failure.error.type}: {failure.error.message} (attempt {number} "
            f"of {run.max_attempts})",
            warning=True,
        )
        return
    assert run.status.task_snapshot is not None
    delay = failure.retry.delay_seconds
    if delay is None:
        delay = backoff.retry_delay(run.status.task_snapshot.retry, number, run.rng)
    run.retry_later(delay, f"attempt {number} failed: {failure.error.type}")


def _reported_on_exit(run: _Run, report: TerminationReport, pod: PodView) -> None:
    """The runner could not reach the run API, but left its outcome in the pod's status."""
    if report.failure is not None:
        _failed(run, report.failure)
        return
    assert report.completion is not None
    if report.output_omitted:
        _infra_failure(
            run,
            f"attempt {report.completion.attempt} succeeded, but its output was too large for "
            "the termination message and the run API could not be reached to report it",
        )
        return
    _complete(run, report.completion, pod)


def _pod_ended(run: _Run, pod: PodView) -> None:
    """The pod ended without reporting an outcome over the run API."""
    assert run.status.task_snapshot is not None
    number = run.status.attempt or 1
    detail = f"exit code {pod.exit_code}" + (f" ({pod.reason})" if pod.reason else "")

    def end(reason: str) -> None:
        run.end_attempt(
            reason=reason, exit_code=pod.exit_code, message=pod.message, finished_at=pod.finished_at
        )

    # First: activeDeadlineSeconds stops the container with SIGTERM (exit 143),
    # which is maxDuration at work, not the cluster stopping the pod.
    if pod.reason == "DeadlineExceeded":
        end("DeadlineExceeded")
        max_duration = run.spec.max_duration if run.spec else None
        limit = max_duration or run.status.task_snapshot.max_duration
        run.fail(Phase.TIMED_OUT, MAX_DURATION_EXCEEDED, f"ran longer than maxDuration {limit}")
        return
    if pod.disrupted or (pod.exit_code == EXIT_CANCELED and pod.reason != "OOMKilled"):
        _infra_failure(run, f"pod {pod.name} was stopped by the cluster: {detail}")
        return
    if pod.reason == "OOMKilled":
        end("OOMKilled")
        policy = run.status.task_snapshot.retry.out_of_memory
        if policy is not None and number < run.max_attempts:
            run.status.machine = policy.machine
            delay = backoff.retry_delay(run.status.task_snapshot.retry, number, run.rng)
            run.retry_later(delay, f"attempt {number} was OOMKilled; retrying on {policy.machine}")
            return
        run.fail(Phase.CRASHED, OOM_KILLED, f"attempt {number} ran out of memory ({detail})")
        return
    if pod.exit_code == 0:
        end("Completed")
        run.fail(
            Phase.SYSTEM_FAILURE,
            NO_OUTCOME_REPORTED,
            "the runner exited without reporting an outcome",
        )
        return
    end(pod.reason or "Error")
    run.fail(Phase.CRASHED, PROCESS_EXITED, f"the task process crashed: {detail}")


def _infra_failure(run: _Run, why: str) -> None:
    run.end_attempt(reason="InfrastructureFailure", message=why, counted=False)
    uncounted = sum(1 for a in run.status.attempts if not a.counted)
    if uncounted > run.settings.infra_retry_limit:
        run.fail(
            Phase.SYSTEM_FAILURE,
            INFRA_RETRIES_EXHAUSTED,
            f"{why}; gave up after {uncounted} infrastructure failures",
        )
        return
    run.retry_later(0, why + " (not counted as an attempt)")


def _checkpoint(run: _Run, report: Checkpoint) -> None:
    """The runner stopped at a wait that will take a while; its pod is exiting."""
    status = run.status
    status.journal = Journal(attempt=report.attempt, entries=report.journal)
    status.waiting_for = report.waiting_for.model_copy(update={"since": run.now})
    what = describe_wait(status.waiting_for)
    run.end_attempt(reason=CHECKPOINTED, exit_code=None, message=f"waiting for {what}")
    run.set_phase(Phase.WAITING, f"checkpointed; waiting for {what}")
    _waiting(run)


def _waiting(run: _Run) -> None:
    """Waiting: no pod, no slot.  Resume (back to Queued) once the wait is over."""
    status = run.status
    last = status.attempts[-1] if status.attempts else None
    checkpointed_at = last.finished_at if last and last.finished_at else run.now
    overdue = (run.now - checkpointed_at).total_seconds() >= CHECKPOINT_EXIT_GRACE
    live = False
    for name, pod in run.facts.pods.items():
        live = live or not pod.terminal
        # A live pod gets a moment to exit by itself after checkpointing; one that has
        # stopped holds nothing and is kept (see _finished).
        if _to_delete(run, pod, stop=overdue):
            run.decision.delete_pods.append(name)
    over, ends_in = wait_over(status.waiting_for, run.facts.children, run.facts.tokens, run.now)
    if live and over:
        # Never two pods of one run: resume once the old one has stopped, and stop it
        # now rather than after the grace (it reported everything it had to).
        run.decision.delete_pods = [
            n for n, p in run.facts.pods.items() if _to_delete(run, p, stop=True)
        ]
        run.decision.wake_in(DELETING_RECHECK)
        return
    if live:
        run.decision.wake_in(
            DELETING_RECHECK
            if overdue
            else CHECKPOINT_EXIT_GRACE - (run.now - checkpointed_at).total_seconds()
        )
    if not over:
        run.decision.wake_in(WAITING_RECHECK if ends_in is None else ends_in)
        return
    what = describe_wait(status.waiting_for) if status.waiting_for else "nothing"
    status.waiting_for = None
    run.set_phase(Phase.QUEUED, f"resumed: {what} is over", notable=True)
    _queued(run)


def _to_delete(run: _Run, pod: PodView, *, stop: bool) -> bool:
    """Whether to delete ``pod`` now: a live one when ``stop``; one that has stopped
    only with the ``delete_finished_pods`` setting."""
    if pod.deleting:
        return False  # on its way already: never delete twice
    return run.settings.delete_finished_pods if pod.terminal else stop


def _finished(run: _Run) -> None:
    """A final run's pods.  Those that have stopped are kept by default: they use no
    resources, count against no ResourceQuota (so hold no slot), keep ``kubectl logs``
    working, and go with the run (ownerReference) after ``ttl_after_finished``; deleting
    each would cost a write per run.  Live ones are stopped, except that a runner which
    reported its outcome gets a moment to exit by itself."""
    status = run.status
    finished = status.finished_at or run.now
    last_pod = status.attempts[-1].pod if status.attempts else None
    keep_last = run.settings.keep_failed_pods and status.phase != Phase.COMPLETED
    reported = status.phase in (Phase.COMPLETED, Phase.FAILED)
    exiting_for = (run.now - finished).total_seconds()
    for name, pod in run.facts.pods.items():
        if pod.terminal and keep_last and name == last_pod:
            continue
        if _to_delete(run, pod, stop=not reported or exiting_for >= CHECKPOINT_EXIT_GRACE):
            run.decision.delete_pods.append(name)
        elif not pod.terminal and not pod.deleting:
            run.decision.wake_in(CHECKPOINT_EXIT_GRACE - exiting_for)
    remaining = (finished - run.now).total_seconds() + run.settings.ttl_after_finished
    if remaining <= 0:
        run.decision.delete_run = True
    else:
        run.decision.wake_in(remaining)


def utcnow() -> datetime:
    return datetime.now(UTC)
