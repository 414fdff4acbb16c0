"""A fluent harness that walks one TaskRun through ``runstate.decide`` like the operator.

``RunBuilder`` holds a TaskRun dict as the API server stores it, the Task, the
run's pods and a clock.  ``step()`` calls ``decide`` and applies the decision's
status patch the way the API server applies a JSON merge patch (RFC 7386:
objects merge recursively, ``null`` removes a key), so a test sees exactly
what the next reconcile would read back.  ``step()`` can also play the cluster's
part for pods (a created pod appears Pending; a deleted pod disappears when it
had ended and is marked terminating otherwise).
"""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from podtask.api.v1alpha1 import API_VERSION, RunError, TaskRunStatus, TaskSpec
from podtask.protocol import Completion, Failure, RetryDecision
from podtask_operator.runstate import (
    ChildView,
    Decision,
    PodView,
    Reports,
    RunFacts,
    TokenView,
    decide,
)
from podtask_operator.settings import Settings

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NAMESPACE = "team-a"
RUN = "run-1"
UID = "0b5e7c1e-7f4e-4c57-9a39-3f1b0d0c0a11"
TASK = "email.send"
IMAGE = "registry.example/app:1"
ENTRYPOINT = "app.tasks:send"


def iso(moment: datetime) -> str:
    """A time as the API server stores it (and as pydantic writes it): RFC 3339, Z."""
    return moment.isoformat().replace("+00:00", "Z")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it to a custom resource."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def make_task(**fields: Any) -> TaskSpec:
    return TaskSpec.model_validate({"image": IMAGE, "entrypoint": ENTRYPOINT, **fields})


def failure(
    attempt: int, *, skip: bool = False, delay: float | None = None, **error: Any
) -> Failure:
    fields = {"type": "ValueError", "message": f"attempt {attempt} broke", **error}
    return Failure(
        attempt=attempt,
        error=RunError.model_validate(fields),
        retry=RetryDecision(skip=skip, delay_seconds=delay),
    )


def completion(attempt: int, output: Any = None) -> Completion:
    return Completion(attempt=attempt, output=output)


class RunBuilder:
    """One run, its Task, its pods and the time; ``step()`` is one reconcile."""

    def __init__(
        self,
        name: str = RUN,
        *,
        task: TaskSpec | None = None,
        settings: Settings | None = None,
        seed: int = 7,
        **spec: Any,
    ) -> None:
        self.run: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "TaskRun",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": UID,
                "creationTimestamp": iso(T0),
                "generation": 1,
            },
            "spec": {"task": TASK, **spec},
        }
        self.task: TaskSpec | None = task if task is not None else make_task()
        self.settings = settings or Settings()
        self.rng = random.Random(seed)
        self.pods: dict[str, PodView] = {}
        self.now = T0
        self.operator_started: datetime | None = None
        self.default_queue: str | None = None
        self.last: Decision | None = None
        self.last_facts: RunFacts | None = None
        self.children: dict[str, ChildView | None] = {}
        """Child runs as the controller would gather them (None: deleted)."""
        self.tokens: dict[str, TokenView | None] = {}

    # ------------------------------------------------------------------ setup

    def without_task(self) -> Self:
        self.task = None
        return self

    def with_task(self, task: TaskSpec | None = None) -> Self:
        self.task = task or make_task()
        return self

    def with_spec(self, **fields: Any) -> Self:
        """Edit the spec; a value of None removes the field."""
        for key, value in fields.items():
            if value is None:
                self.run["spec"].pop(key, None)
            else:
                self.run["spec"][key] = value
        return self

    def cancel(self) -> Self:
        return self.with_spec(cancel=True)

    def at(self, seconds: float) -> Self:
        """Set the clock to ``seconds`` after the run's creation."""
        self.now = at(seconds)
        return self

    def advance(self, seconds: float) -> Self:
        self.now += timedelta(seconds=seconds)
        return self

    def pod(self, name: str, phase: str = "Running", **fields: Any) -> Self:
        """Put a pod in the cluster (replacing one of the same name)."""
        if phase == "Running":
            fields.setdefault("started_at", self.now)
        self.pods[name] = PodView(name=name, phase=phase, **fields)
        return self

    def pod_update(self, name: str, **fields: Any) -> Self:
        self.pods[name] = replace(self.pods[name], **fields)
        return self

    def pod_ends(self, name: str, exit_code: int, **fields: Any) -> Self:
        phase = "Succeeded" if exit_code == 0 else "Failed"
        fields.setdefault("finished_at", self.now)
        current = self.pods.get(name) or PodView(name=name, phase="Running", started_at=self.now)
        self.pods[name] = replace(current, phase=phase, exit_code=exit_code, **fields)
        return self

    def pod_gone(self, name: str) -> Self:
        self.pods.pop(name, None)
        return self

    # ------------------------------------------------------------------ deciding

    def facts(
        self, *, slot: bool = False, reports: Reports | None = None, **report_fields: Any
    ) -> RunFacts:
        if reports is None:
            reports = Reports(**report_fields)
        return RunFacts(
            run=copy.deepcopy(self.run),
            task=self.task,
            pods=dict(self.pods),
            reports=reports,
            now=self.now,
            slot_granted=slot,
            operator_started=self.operator_started,
            default_queue=self.default_queue,
            children=dict(self.children),
            tokens=dict(self.tokens),
        )

    def decide(self, facts: RunFacts) -> Decision:
        """``decide`` with this run's settings and random source, nothing applied."""
        return decide(facts, self.settings, self.rng)

    def step(
        self,
        *,
        slot: bool = False,
        reports: Reports | None = None,
        cluster: bool = True,
        **report_fields: Any,
    ) -> Decision:
        """One reconcile: decide, write the status patch back, and (``cluster``) act on pods.

        ``report_fields`` are ``Reports`` fields: started, completion, failure,
        metadata, last_heartbeat.
        """
        facts = self.facts(slot=slot, reports=reports, **report_fields)
        decision = self.decide(facts)
        return self._apply(facts, decision, cluster=cluster)

    def reconcile(
        self, *, admit: bool = True, cluster: bool = True, **report_fields: Any
    ) -> Decision:
        """One reconcile exactly as the controller does it: decide without a slot and,
        when the run wants one and the dispatcher ``admit``s it, decide again on the
        same facts with the slot granted."""
        facts = self.facts(**report_fields)
        decision = self.decide(facts)
        if decision.wants_slot and admit:
            facts = replace(facts, slot_granted=True)
            decision = self.decide(facts)
        return self._apply(facts, decision, cluster=cluster)

    def _apply(self, facts: RunFacts, decision: Decision, *, cluster: bool) -> Decision:
        self.last, self.last_facts = decision, facts
        if decision.status is not None:
            # The controller writes the whole status (JSON Patch add /status).
            self.run = {**self.run, "status": copy.deepcopy(decision.status)}
        if cluster:
            if decision.create_pod is not None and decision.create_pod.name not in self.pods:
                self.pods[decision.create_pod.name] = PodView(
                    name=decision.create_pod.name, phase="Pending"
                )
            for name in decision.delete_pods:
                pod = self.pods.get(name)
                if pod is None or pod.terminal:
                    self.pods.pop(name, None)
                else:
                    self.pods[name] = replace(pod, deleting=True)
        return decision

    def redo(self) -> Decision:
        """``decide`` again on the last step's inputs, against the status it wrote."""
        assert self.last_facts is not None
        reports = self.last_facts.reports
        if self.last is not None and self.last.create_pod is not None:
            # As the controller does: a new attempt starts without heartbeats.
            reports = replace(reports, last_heartbeat=None)
        facts = replace(
            self.last_facts, run=copy.deepcopy(self.run), pods=dict(self.pods), reports=reports
        )
        return self.decide(facts)

    # ------------------------------------------------------------------ walking

    def queued(self) -> Self:
        self.step()
        assert self.phase == "Queued", self.status
        return self

    def dequeued(self) -> Self:
        if self.phase != "Queued":
            self.queued()
        decision = self.step(slot=True)
        assert self.phase == "Dequeued", self.status
        assert decision.create_pod is not None
        return self

    def executing(self, *, after: float = 1.0) -> Self:
        """Dequeue (if needed), then the pod runs and the runner fetches its context."""
        if self.phase != "Dequeued":
            self.dequeued()
        pod = self.current_pod
        self.advance(after)
        self.pod(pod, "Running", started_at=self.now)
        self.step(started=self.attempt, last_heartbeat=self.now)
        assert self.phase == "Executing", self.status
        return self

    def fails(self, **kwargs: Any) -> Decision:
        """The current attempt reports a failure, then its runner exits 0 (reported)."""
        number = self.attempt
        pod = self.current_pod
        decision = self.step(failure=failure(number, **kwargs))
        self.pod_ends(pod, 0)
        return decision

    def completes(self, output: Any = None) -> Decision:
        decision = self.step(completion=completion(self.attempt, output))
        return decision

    def retry_now(self) -> Self:
        """Move the clock to the retry time and start the next attempt."""
        next_at = self.model.next_attempt_at
        if next_at is not None and next_at > self.now:
            self.now = next_at
        decision = self.step(slot=True)
        assert self.phase == "Dequeued", self.status
        assert decision.create_pod is not None
        return self

    # ------------------------------------------------------------------ reading

    @property
    def status(self) -> dict[str, Any]:
        status = self.run.get("status") or {}
        assert isinstance(status, dict)
        return status

    @property
    def model(self) -> TaskRunStatus:
        return TaskRunStatus.model_validate(self.status)

    @property
    def phase(self) -> str | None:
        phase = self.status.get("phase")
        assert phase is None or isinstance(phase, str)
        return phase

    @property
    def attempt(self) -> int:
        number = self.status.get("attempt")
        assert isinstance(number, int)
        return number

    @property
    def attempts(self) -> list[dict[str, Any]]:
        attempts = self.status.get("attempts") or []
        assert isinstance(attempts, list)
        return attempts

    @property
    def current_pod(self) -> str:
        pod = self.attempts[-1]["pod"]
        assert isinstance(pod, str)
        return pod

    @property
    def error(self) -> dict[str, Any]:
        error = self.status.get("error")
        assert isinstance(error, dict), self.status
        return error
