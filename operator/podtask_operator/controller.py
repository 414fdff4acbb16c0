"""The run controller: a cache of runs, tasks and pods, a work queue, and the
executor that carries out what ``runstate.decide`` says.

It is also the run API's backend: reports from pods are held per run until a
worker has written them to the TaskRun's status; ``complete`` and ``fail`` answer
the pod only after that write, so a runner that got 200 can exit knowing its
outcome is durable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from podtask.api.v1alpha1 import API_VERSION, Phase, TaskRunSpec, TaskRunStatus, TaskSpec
from podtask.protocol import (
    Completion,
    Failure,
    Heartbeat,
    MetadataUpdate,
    RunContext,
    RunInfo,
)
from podtask_operator import kube as k
from podtask_operator.kube import ApiError, Kube
from podtask_operator.metrics import OperatorMetrics
from podtask_operator.podspec import build_pod
from podtask_operator.runapi import RunFinishedError, StaleAttemptError, UnknownRunError
from podtask_operator.runstate import Decision, PodView, Reports, RunFacts, decide
from podtask_operator.settings import Settings
from podtask_operator.tokens import RunTokens
from podtask_operator.workqueue import WorkQueue

log = logging.getLogger("podtask.controller")

RunKey = tuple[str, str]
REPORT_WAIT_SECONDS = 60.0
QUOTA_RETRY_SECONDS = 1.0
ERROR_RETRY_SECONDS = 2.0


class Admission(Protocol):
    """Decides whether a Queued run may take a slot now (the dispatcher)."""

    async def acquire(
        self, key: RunKey, run: dict[str, Any], queue: str, machine: str | None = None
    ) -> bool: ...

    async def release(self, key: RunKey, run: dict[str, Any] | None) -> None: ...

    def pod_priority_class(self, namespace: str, queue: str) -> str | None: ...


class AdmitAll:
    """No queue limits: every eligible run starts at once."""

    async def acquire(
        self, key: RunKey, run: dict[str, Any], queue: str, machine: str | None = None
    ) -> bool:
        return True

    async def release(self, key: RunKey, run: dict[str, Any] | None) -> None:
        return None

    def pod_priority_class(self, namespace: str, queue: str) -> str | None:
        return None


def _newer(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether ``new`` is not older than ``old`` (resourceVersions are etcd revisions)."""
    if old is None:
        return True
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return True


def _key(body: dict[str, Any]) -> RunKey:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _owner_run(pod: dict[str, Any]) -> str | None:
    for owner in pod["metadata"].get("ownerReferences") or []:
        if owner.get("kind") == "TaskRun" and owner.get("apiVersion") == API_VERSION:
            return str(owner["name"])
    return None


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        tokens: RunTokens,
        metrics: OperatorMetrics,
        admission: Admission | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.tokens = tokens
        self.metrics = metrics
        self.admission: Admission = admission or AdmitAll()
        self.runs: dict[RunKey, dict[str, Any]] = {}
        self.tasks: dict[RunKey, dict[str, Any]] = {}
        self.pods: dict[RunKey, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.reports: dict[RunKey, Reports] = defaultdict(Reports)
        # complete/fail callers wait until the report they sent is written.
        self.waiters: dict[RunKey, list[tuple[object, asyncio.Future[None]]]] = defaultdict(list)
        self.queue: WorkQueue[RunKey] = WorkQueue()
        self.started_at = datetime.now(UTC)
        self.last_tick = time.monotonic()
        self.rng = random.Random()
        self._workers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.primed = asyncio.Event()

    # ------------------------------------------------------------------ cache

    async def prime(self) -> None:
        """List everything once so decisions never see a half-filled cache."""
        namespaces = self.settings.namespaces or ("",)
        for namespace in namespaces:
            prefix = f"/namespaces/{namespace}" if namespace else ""
            tasks = await self.kube.list(f"{k.GROUP_PATH}{prefix}/tasks")
            runs = await self.kube.list(f"{k.GROUP_PATH}{prefix}/taskruns")
            pods = await self.kube.list(
                f"/api/v1{prefix}/pods", labelSelector="app.kubernetes.io/managed-by=podtask"
            )
            for item in tasks.get("items", []):
                self.on_task("ADDED", item)
            for item in pods.get("items", []):
                self.on_pod("ADDED", item)
            for item in runs.get("items", []):
                self.on_run("ADDED", item)
        self.primed.set()

    def on_run(self, event: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if event == "DELETED":
            self.runs.pop(key, None)
            self.queue.forget(key)
            self.queue.add(key)  # to release its slot and drop its reports
            return
        if _newer(self.runs.get(key), body):
            self.runs[key] = body
            self.queue.add(key)

    def on_task(self, event: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if event == "DELETED":
            self.tasks.pop(key, None)
        elif _newer(self.tasks.get(key), body):
            self.tasks[key] = body
            # Runs waiting for this Task to appear should look again now.
            for run_key, run in self.runs.items():
                same_task = (run_key[0], run.get("spec", {}).get("task")) == key
                if same_task and not (run.get("status") or {}).get("phase"):
                    self.queue.add(run_key)

    def on_pod(self, event: str | None, body: dict[str, Any]) -> None:
        run = _owner_run(body)
        if run is None:
            return
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        key = (namespace, run)
        if event == "DELETED":
            self.pods[key].pop(name, None)
        elif _newer(self.pods[key].get(name), body):
            self.pods[key][name] = body
        self.queue.add(key)

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        for _ in range(self.settings.workers):
            self._workers.append(asyncio.create_task(self._work()))

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def refresh_gauges(self) -> None:
        phases = [(run.get("status") or {}).get("phase") for run in self.runs.values()]
        held = (Phase.DEQUEUED.value, Phase.EXECUTING.value)
        self.metrics.running.set(sum(phase in held for phase in phases))
        self.metrics.queued.set(sum(phase == Phase.QUEUED.value for phase in phases))

    def healthy(self) -> dict[str, Any]:
        return {"primed": self.primed.is_set(), "runs": len(self.runs), "queued": len(self.queue)}

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self.last_tick = time.monotonic()
            started = time.perf_counter()
            try:
                await self.reconcile(key)
            except Exception:
                log.exception("reconcile of %s/%s failed; retrying", *key)
                self.queue.add_after(key, ERROR_RETRY_SECONDS)
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                self.queue.done(key)

    async def reconcile(self, key: RunKey) -> None:
        run = self.runs.get(key)
        if run is None:
            await self.admission.release(key, None)
            self.reports.pop(key, None)
            self.pods.pop(key, None)
            gone = UnknownRunError(f"run {key[0]}/{key[1]} was deleted")
            for _, future in self.waiters.pop(key, []):
                if not future.done():
                    future.set_exception(gone)
            return
        reports = self.reports[key]
        seen = Reports(
            started=reports.started,
            completion=reports.completion,
            failure=reports.failure,
            metadata=reports.metadata,
            last_heartbeat=reports.last_heartbeat,
        )
        facts = RunFacts(
            run=run,
            task=self._task_spec(key[0], run),
            pods={name: PodView.from_pod(pod) for name, pod in self.pods[key].items()},
            reports=seen,
            now=datetime.now(UTC),
            operator_started=self.started_at,
        )
        decision = decide(facts, self.settings, self.rng)
        if (
            decision.wants_slot
            and decision.queue
            and await self.admission.acquire(
                key,
                run,
                decision.queue,
                (decision.status or run.get("status") or {}).get("machine"),
            )
        ):
            facts.slot_granted = True
            decision = decide(facts, self.settings, self.rng)
        await self._execute(key, run, decision)
        # Forget exactly the reports this decision saw; newer ones stay for the next.
        for name in ("started", "completion", "failure", "metadata"):
            if getattr(reports, name) is getattr(seen, name):
                setattr(reports, name, None)
        self._resolve_waiters(key, {id(seen.completion), id(seen.failure)})
        if not decision.holds_slot and not decision.wants_slot:
            await self.admission.release(key, run)

    def _task_spec(self, namespace: str, run: dict[str, Any]) -> TaskSpec | None:
        body = self.tasks.get((namespace, run.get("spec", {}).get("task", "")))
        if body is None:
            return None
        try:
            return TaskSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return None

    def _resolve_waiters(self, key: RunKey, written: set[int]) -> None:
        pending = []
        for report, future in self.waiters.pop(key, []):
            if id(report) in written:
                if not future.done():
                    future.set_result(None)
            else:
                pending.append((report, future))
        if pending:
            self.waiters[key] = pending

    # ------------------------------------------------------------------ executor

    async def _execute(self, key: RunKey, run: dict[str, Any], decision: Decision) -> None:
        namespace, name = key
        for secret_name, chunk in decision.output_chunks:
            await self._write_output_chunk(run, secret_name, chunk)
        if decision.status is not None:
            try:
                updated = await self.kube.request(
                    "PATCH",
                    k.runs_path(namespace, name, "status"),
                    [{"op": "add", "path": "/status", "value": decision.status}],
                    content_type=k.JSON_PATCH,
                )
            except ApiError as error:
                self.metrics.api_errors.labels("patch", str(error.status)).inc()
                if error.status == 404:
                    self.runs.pop(key, None)
                    return
                raise
            self._note_transition(run, updated, decision)
            if _newer(self.runs.get(key), updated):
                self.runs[key] = updated
            run = updated
        if decision.create_pod is not None and not await self._create_pod(key, run, decision):
            return
        for pod_name in decision.delete_pods:
            grace = self.settings.cancel_grace_seconds
            pod = self.pods[key].get(pod_name)
            if pod is not None and PodView.from_pod(pod).terminal:
                grace = 0
            await self.kube.delete(k.pods_path(namespace, pod_name), grace_seconds=grace)
        for event in decision.events:
            self._spawn(self._post_event(run, event.type, event.reason, event.message))
        if decision.delete_run:
            await self.kube.delete(k.runs_path(namespace, name))
            return
        if decision.requeue_after is not None:
            self.queue.add_after(key, decision.requeue_after)

    async def _create_pod(self, key: RunKey, run: dict[str, Any], decision: Decision) -> bool:
        plan = decision.create_pod
        assert plan is not None
        namespace, name = key
        pod = build_pod(
            run=run,
            snapshot=plan.snapshot,
            pod_name=plan.name,
            attempt=plan.attempt,
            machine=plan.machine,
            queue=plan.queue,
            max_duration=plan.max_duration,
            token=self.tokens.issue(namespace, name, run["metadata"]["uid"]),
            settings=self.settings,
            priority_class=self.admission.pod_priority_class(namespace, plan.queue)
            if plan.queue
            else None,
        )
        try:
            created = await self.kube.create(k.pods_path(namespace), pod)
        except ApiError as error:
            self.metrics.api_errors.labels("create", str(error.status)).inc()
            if error.status == 409:
                return True  # created before a restart: the deterministic name makes it one pod
            if error.is_quota:
                # The API server's own ceiling: try later, never fail the run.
                self.queue.add_after(key, QUOTA_RETRY_SECONDS)
                return False
            raise
        self.on_pod("ADDED", created)
        # A new attempt starts silent: the last attempt's heartbeats say nothing about it.
        self.reports[key].last_heartbeat = None
        if plan.attempt == 1 and "-r" not in plan.name[len(name) :]:
            created_at = run["metadata"].get("creationTimestamp")
            if created_at:
                started = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
                self.metrics.trigger_to_start.observe((datetime.now(UTC) - started).total_seconds())
        return True

    async def _write_output_chunk(self, run: dict[str, Any], name: str, chunk: bytes) -> None:
        namespace = run["metadata"]["namespace"]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "podtask"},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "TaskRun",
                        "name": run["metadata"]["name"],
                        "uid": run["metadata"]["uid"],
                    }
                ],
            },
            "type": "podtask.dev/output",
            "data": {"chunk": base64.b64encode(chunk).decode()},
        }
        try:
            await self.kube.create(k.secrets_path(namespace), secret)
        except ApiError as error:
            if error.status != 409:
                raise
            await self.kube.merge_patch(k.secrets_path(namespace, name), {"data": secret["data"]})

    def _note_transition(
        self, old: dict[str, Any], new: dict[str, Any], decision: Decision
    ) -> None:
        status = new.get("status") or {}
        task = new["spec"].get("task", "")
        phases = {phase.value for phase in Phase}
        # One decision may pass through several phases (Queued then Dequeued at once).
        for event in decision.events:
            if event.reason in phases:
                self.metrics.runs.labels(task, status.get("queue") or "", event.reason).inc()
        before = (old.get("status") or {}).get("phase")
        after = status.get("phase")
        if after is None or after == before:
            return
        if Phase(after).is_final and status.get("startedAt") and status.get("finishedAt"):
            parsed = TaskRunStatus.model_validate(status)
            if parsed.started_at and parsed.finished_at:
                seconds = (parsed.finished_at - parsed.started_at).total_seconds()
                self.metrics.run_duration.labels(task).observe(seconds)

    async def _post_event(self, run: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = run["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": "TaskRun",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "podtask-operator"},
            "reportingComponent": "podtask.dev/operator",
            "reportingInstance": "podtask-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except ApiError as error:
            self.metrics.api_errors.labels("create", str(error.status)).inc()
            log.debug("could not post event on %s: %s", meta["name"], error)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ run API backend

    def run_uid(self, namespace: str, name: str) -> str | None:
        run = self.runs.get((namespace, name))
        return None if run is None else str(run["metadata"]["uid"])

    def _in_flight(self, namespace: str, name: str, attempt: int) -> dict[str, Any]:
        run = self.runs.get((namespace, name))
        if run is None:
            raise UnknownRunError(f"no run {namespace}/{name}")
        status = run.get("status") or {}
        phase = status.get("phase")
        if phase and Phase(phase).is_final:
            raise RunFinishedError(f"run {name} already ended {phase}")
        if status.get("attempt") != attempt or phase not in (
            Phase.DEQUEUED.value,
            Phase.EXECUTING.value,
        ):
            raise StaleAttemptError(f"attempt {attempt} of {name} is not the current attempt")
        return run

    async def context(self, namespace: str, name: str, attempt: int) -> RunContext:
        run = self._in_flight(namespace, name, attempt)
        spec = TaskRunSpec.model_validate(run["spec"])
        status = TaskRunStatus.model_validate(run.get("status") or {})
        assert status.task_snapshot is not None
        payload = spec.payload
        if spec.payload_from is not None:
            payload = await self._read_payload(namespace, spec)
        key = (namespace, name)
        self.reports[key].started = attempt
        self.reports[key].last_heartbeat = datetime.now(UTC)
        self.queue.add(key)
        return RunContext(
            run=RunInfo(
                namespace=namespace,
                name=name,
                uid=run["metadata"]["uid"],
                task=spec.task,
                attempt=attempt,
                max_attempts=spec.max_attempts or status.task_snapshot.retry.max_attempts,
                machine=status.machine or status.task_snapshot.machine,
                queue=status.queue,
                tags=spec.tags,
                parent_run=spec.parent_run,
                idempotency_key=spec.idempotency_key,
                concurrency_key=spec.concurrency_key,
                created_at=run["metadata"].get("creationTimestamp"),
            ),
            task=status.task_snapshot,
            payload=payload,
            metadata=status.metadata or {},
            heartbeat_interval_seconds=self.settings.heartbeat_interval,
        )

    async def _read_payload(self, namespace: str, spec: TaskRunSpec) -> Any:
        source = spec.payload_from
        assert source is not None
        ref = source.config_map_key_ref or source.secret_key_ref
        assert ref is not None
        kind = "configmaps" if source.config_map_key_ref else "secrets"
        body = await self.kube.request("GET", f"/api/v1/namespaces/{namespace}/{kind}/{ref.name}")
        if kind == "secrets":
            raw = base64.b64decode(body.get("data", {})[ref.key]).decode()
        else:
            raw = body.get("data", {})[ref.key]
        return json.loads(raw)

    async def heartbeat(self, namespace: str, name: str, body: Heartbeat) -> None:
        self._in_flight(namespace, name, body.attempt)
        self.reports[(namespace, name)].last_heartbeat = datetime.now(UTC)

    async def metadata(self, namespace: str, name: str, body: MetadataUpdate) -> None:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        self.reports[key].metadata = body.metadata
        self.queue.add(key)

    async def complete(self, namespace: str, name: str, body: Completion) -> None:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        self.reports[key].completion = body
        await self._until_written(key, body)

    async def fail(self, namespace: str, name: str, body: Failure) -> None:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        self.reports[key].failure = body
        await self._until_written(key, body)

    async def _until_written(self, key: RunKey, report: object) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[key].append((report, future))
        self.queue.add(key)
        await asyncio.wait_for(future, REPORT_WAIT_SECONDS)
