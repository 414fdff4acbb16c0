"""The run controller: a cache of runs, tasks and pods, a work queue, and the
executor that carries out what ``runstate.decide`` says.

It is also the run API's backend: reports from pods are held per run until a
worker has written them to the TaskRun's status; ``complete``, ``fail``,
``checkpoint`` and ``journal`` answer the pod only after that write, so a runner
that got 200 can exit knowing its outcome (or its journal) is durable.

Waits (``docs/waits.md``): ``trigger`` creates child runs under deterministic
names, ``wait`` long-polls until children or a token are done, ``token`` and
``complete_token`` create and complete WaitTokens.  A child that ends wakes its
parent; a token that completes or times out (the controller keeps a timer per
token) wakes the runs waiting for it.
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
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from podtask import outputs
from podtask.api.v1alpha1 import (
    API_VERSION,
    FINAL_PHASES,
    OutputRef,
    Phase,
    TaskRunSpec,
    TaskRunStatus,
    TaskSpec,
    WaitingFor,
)
from podtask.protocol import (
    Checkpoint,
    ChildResult,
    CompleteToken,
    Completion,
    CreateToken,
    Failure,
    Heartbeat,
    JournalUpdate,
    MetadataUpdate,
    RunContext,
    RunInfo,
    RunTriggerRequest,
    RunTriggerResponse,
    TokenInfo,
    TriggerRequest,
    TriggerResponse,
    WaitRequest,
    WaitResponse,
)
from podtask_operator import detached, naming, waits
from podtask_operator import kube as k
from podtask_operator.kube import ApiError, Kube
from podtask_operator.metrics import OperatorMetrics
from podtask_operator.podspec import build_pod
from podtask_operator.runapi import (
    RejectedError,
    RunFinishedError,
    StaleAttemptError,
    TokenCompletedError,
    UnknownRunError,
    UnknownTokenError,
)
from podtask_operator.runstate import (
    CHECKPOINTED,
    ChildView,
    Decision,
    PodView,
    Reports,
    RunFacts,
    TokenView,
    decide,
    wait_over,
)
from podtask_operator.settings import Settings
from podtask_operator.tokens import RunTokens
from podtask_operator.workqueue import WorkQueue

log = logging.getLogger("podtask.controller")

RunKey = tuple[str, str]
REPORT_WAIT_SECONDS = 60.0
QUOTA_RETRY_SECONDS = (0.1, 5.0)
"""A pod the queue's ResourceQuota refused is tried again after the first, doubling up to
the second.  The usual refusal is brief: the quota controller subtracts a pod that has
stopped (and so freed its slot) only some moments after it stopped."""
ERROR_RETRY_SECONDS = 2.0
CHILD_CREATES_AT_ONCE = 16
BLOCKED_CHILD_SECONDS = 1.0
"""A child Queued this long in its parent's own queue makes a polling parent checkpoint."""
TOKEN_WRITE_ROUNDS = 5


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


def _cached_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a pod: its metadata and status.  Stopped pods are kept
    until their run is deleted, so the cache holds many: without the spec and the
    managedFields, one takes about a third of the memory."""
    meta = {k: v for k, v in pod["metadata"].items() if k != "managedFields"}
    return {"metadata": meta, "status": pod.get("status") or {}}


def _same_version(old: dict[str, Any], new: dict[str, Any]) -> bool:
    version = new["metadata"].get("resourceVersion")
    return version is not None and old["metadata"].get("resourceVersion") == version


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
        self.wait_tokens: dict[RunKey, dict[str, Any]] = {}
        self._token_timers: dict[RunKey, asyncio.TimerHandle] = {}
        # Pod creates the ResourceQuota refused in a row, by run: the next try backs off.
        self._quota_refusals: dict[RunKey, int] = {}
        # Runs whose pod long-polls POST …/wait: set when a child or token changes.
        self._pollers: dict[RunKey, asyncio.Event] = {}

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
            tokens = await self.kube.list(f"{k.GROUP_PATH}{prefix}/waittokens")
            for item in tokens.get("items", []):
                self.on_token("ADDED", item)
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
            self._wake_parent(key, body, ended=True)
            return
        old = self.runs.get(key)
        if _newer(old, body):
            self.runs[key] = body
            self.queue.add(key)
            was_ended = old is not None and _phase_final(old)
            self._wake_parent(key, body, ended=_phase_final(body) and not was_ended)

    def _wake_parent(self, key: RunKey, body: dict[str, Any], *, ended: bool) -> None:
        parent = (body.get("spec") or {}).get("parentRun")
        if not parent:
            return
        parent_key = (key[0], str(parent))
        poller = self._pollers.get(parent_key)
        if poller is not None:
            poller.set()  # a long poll re-checks on any change of a child
        if ended:
            # Whatever phase the cache shows: the parent may be writing Waiting right now.
            self.queue.add(parent_key)

    def on_token(self, event: str | None, body: dict[str, Any]) -> None:
        """A WaitToken changed: keep its timeout timer and wake the runs waiting on it."""
        key = _key(body)
        timer = self._token_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if event == "DELETED":
            self.wait_tokens.pop(key, None)
        elif _newer(self.wait_tokens.get(key), body):
            self.wait_tokens[key] = body
            if waits.with_expiry(body) is not None:
                self._spawn(self._write_token(key, waits.with_expiry))
            view = waits.token_view(body)
            if view is not None and not view.completed and view.expires_at is not None:
                delay = (view.expires_at - datetime.now(UTC)).total_seconds()
                self._token_timers[key] = asyncio.get_running_loop().call_later(
                    max(delay, 0.0), lambda: self._spawn(self._expire_token(key))
                )
        else:
            return
        for event_ in self._pollers.values():
            event_.set()
        namespace, name = key
        for run_key, run in self.runs.items():
            pending = self.reports.get(run_key)
            pending_token = (
                pending.checkpoint.waiting_for.token
                if pending is not None and pending.checkpoint is not None
                else None
            )
            if run_key[0] == namespace and name in (waits.waited_token(run), pending_token):
                self.queue.add(run_key)

    async def _expire_token(self, key: RunKey) -> None:
        now = datetime.now(UTC)

        def expire(token: dict[str, Any]) -> dict[str, Any] | None:
            view = waits.token_view(token)
            if view is None or view.completed or view.expires_at is None:
                return None
            return waits.timed_out_token(token, now) if view.expires_at <= now else None

        await self._write_token(key, expire)

    async def _write_token(
        self, key: RunKey, change: Any, *, missing: Exception | None = None
    ) -> dict[str, Any] | None:
        """Write ``change(token)`` to the token's status, guarded by its resourceVersion;
        a conflict reads the token again and asks ``change`` again.  None: nothing to do."""
        namespace, name = key
        token = self.wait_tokens.get(key)
        for _ in range(TOKEN_WRITE_ROUNDS):
            if token is None:
                try:
                    token = await self.kube.request("GET", waits.tokens_path(namespace, name))
                except ApiError as error:
                    if error.status == 404 and missing is not None:
                        raise missing from None
                    if error.status == 404:
                        return None
                    raise
            updated = change(token)
            if updated is None:
                return None
            try:
                written = await self.kube.request(
                    "PUT", waits.tokens_path(namespace, name, "status"), updated
                )
            except ApiError as error:
                if error.status == 404 and missing is not None:
                    raise missing from None
                if error.status not in (404, 409):
                    raise
                if error.status == 404:
                    return None
                token = None  # changed meanwhile: read it again
                continue
            self.on_token("MODIFIED", written)
            return written
        raise ApiError(409, f"wait token {namespace}/{name} kept changing")

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
        pods = self.pods[key]
        old = pods.get(name)
        if event == "DELETED":
            pods.pop(name, None)
        elif old is not None and (_same_version(old, body) or not _newer(old, body)):
            return  # a version the cache holds (maybe marked deleting by us) or an older one
        else:
            pods[name] = body = _cached_pod(body)
            if old is not None and PodView.from_pod(old) == PodView.from_pod(body):
                return  # nothing a decision reads changed (scheduled, an IP, our own echo)
        self.queue.add(key)

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        for _ in range(self.settings.workers):
            self._workers.append(asyncio.create_task(self._work()))

    async def stop(self) -> None:
        for timer in self._token_timers.values():
            timer.cancel()
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
            self._quota_refusals.pop(key, None)
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
            checkpoint=reports.checkpoint,
            journal=reports.journal,
        )
        children, tokens = self._wait_facts(key[0], run, seen)
        # The token signs what the runner left in its pod's termination message.
        run_token = self.tokens.issue(key[0], key[1], run["metadata"]["uid"])
        facts = RunFacts(
            run=run,
            task=self._task_spec(key[0], run),
            pods={
                name: PodView.from_pod(pod, run_token=run_token)
                for name, pod in self.pods[key].items()
            },
            reports=seen,
            now=datetime.now(UTC),
            operator_started=self.started_at,
            children=children,
            tokens=tokens,
        )
        decision = decide(facts, self.settings, self.rng)
        if decision.confirm_pods and await self._refresh_pods(key):
            self.queue.add(key)  # the cache was stale: decide again on what is there
            return
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
        for name in ("started", "completion", "failure", "metadata", "checkpoint", "journal"):
            if getattr(reports, name) is getattr(seen, name):
                setattr(reports, name, None)
        written = (seen.completion, seen.failure, seen.checkpoint, seen.journal)
        self._resolve_waiters(key, {id(report) for report in written if report is not None})
        if not decision.holds_slot and not decision.wants_slot:
            await self.admission.release(key, run)

    async def _refresh_pods(self, key: RunKey) -> bool:
        """Re-read the run's cached pods; whether any was not as cached (gone or newer)."""
        changed = False
        for name, cached in list(self.pods[key].items()):
            try:
                fresh = await self.kube.request("GET", k.pods_path(key[0], name))
            except ApiError as error:
                if error.status != 404:
                    raise
                self.pods[key].pop(name, None)
                changed = True
                continue
            if not _same_version(cached, fresh):
                self.on_pod("MODIFIED", fresh)
                changed = True
        return changed

    def _wait_facts(
        self, namespace: str, run: dict[str, Any], reports: Reports
    ) -> tuple[dict[str, ChildView | None], dict[str, TokenView | None]]:
        """The children and token a run waits on, or the children a canceled run must
        cancel, from the cache."""
        status = run.get("status") or {}
        if (run.get("spec") or {}).get("cancel") and not _phase_final(run):
            # Rare enough for a scan: every child, waited on or triggered and forgotten.
            name = run["metadata"]["name"]
            return {
                key[1]: waits.child_view(child)
                for key, child in self.runs.items()
                if key[0] == namespace and (child.get("spec") or {}).get("parentRun") == name
            }, {}
        checkpoint = reports.checkpoint
        if status.get("phase") != Phase.WAITING.value and checkpoint is None:
            return {}, {}
        waiting = [waits.waiting_for_of(run)] + ([checkpoint.waiting_for] if checkpoint else [])
        names = [n for w in waiting if w is not None for n in w.runs]
        token_names = [w.token for w in waiting if w is not None and w.token]
        children = {n: waits.child_view(self.runs.get((namespace, n))) for n in names}
        tokens = {t: waits.token_view(self.wait_tokens.get((namespace, t))) for t in token_names}
        return children, tokens

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
            # The watch event of this write will find the cache already updated: wake
            # a waiting parent now.
            self._wake_parent(key, updated, ended=_phase_final(updated) and not _phase_final(run))
            run = updated
        if decision.create_pod is not None and not await self._create_pod(key, run, decision):
            return
        for pod_name in decision.delete_pods:
            grace = self.settings.cancel_grace_seconds
            pod = self.pods[key].get(pod_name)
            if pod is not None and PodView.from_pod(pod).terminal:
                grace = 0
            await self.kube.delete(k.pods_path(namespace, pod_name), grace_seconds=grace)
            self._mark_deleting(key, pod_name, grace)
        for child in decision.cancel_runs:
            try:
                await self.kube.merge_patch(
                    k.runs_path(namespace, child), {"spec": {"cancel": True}}
                )
            except ApiError as error:
                if error.status != 404:
                    raise
        for event in decision.events:
            if event.routine and not self.settings.phase_events:
                continue
            self._spawn(self._post_event(run, event.type, event.reason, event.message))
        if decision.delete_run:
            await self.kube.delete(k.runs_path(namespace, name))
            return
        if decision.requeue_after is not None:
            self.queue.add_after(key, decision.requeue_after)

    def _mark_deleting(self, key: RunKey, pod_name: str, grace: int) -> None:
        """Until the pod's own events say so, the cache shows it deleting (as the API
        server does: its deletionTimestamp is when its grace period ends): the next
        reconcile must neither delete it again nor take it for gone (and create a pod
        under its name again).  Its events, all newer, replace this copy."""
        pod = self.pods[key].get(pod_name)
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            until = datetime.now(UTC) + timedelta(seconds=grace)
            self.pods[key][pod_name] = {
                **pod,
                "metadata": {
                    **pod["metadata"],
                    "deletionTimestamp": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            }

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
            if error.status == 409 and error.reason == "AlreadyExists":
                self._quota_refusals.pop(key, None)
                return True  # created before a restart: the deterministic name makes it one pod
            if error.status == 409 or error.is_quota:
                # 403: the queue's ResourceQuota, the API server's own ceiling. 409 Conflict:
                # its quota admission lost a race updating that quota, and made no pod.
                # Either way: try later, never fail the run.
                self.queue.add_after(key, self._quota_retry_in(key))
                return False
            raise
        self._quota_refusals.pop(key, None)
        self.on_pod("ADDED", created)
        # A new attempt starts silent: the last attempt's heartbeats say nothing about it.
        self.reports[key].last_heartbeat = None
        if plan.attempt == 1 and plan.name == naming.pod_name(name, 1):
            created_at = run["metadata"].get("creationTimestamp")
            if created_at:
                started = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
                self.metrics.trigger_to_start.observe((datetime.now(UTC) - started).total_seconds())
        return True

    def _quota_retry_in(self, key: RunKey) -> float:
        refusals = self._quota_refusals[key] = self._quota_refusals.get(key, 0) + 1
        first, most = QUOTA_RETRY_SECONDS
        return float(min(most, first * 2 ** min(refusals - 1, 16)))

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
        journal = status.journal if status.journal and status.journal.attempt == attempt else None
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
            journal=journal.entries if journal else [],
            resumed=any(a.number == attempt and a.reason == CHECKPOINTED for a in status.attempts),
            wait_checkpoint_seconds=self.settings.wait_checkpoint_threshold,
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

    # ------------------------------------------------------------------ waits and children

    async def trigger(self, namespace: str, name: str, body: TriggerRequest) -> TriggerResponse:
        run = self._in_flight(namespace, name, body.attempt)
        names = [
            naming.child_run_name(name, body.attempt, body.position, index)
            for index in range(len(body.runs))
        ]
        limit = asyncio.Semaphore(CHILD_CREATES_AT_ONCE)

        async def create(child_name: str, manifest: dict[str, Any]) -> None:
            async with limit:
                try:
                    created = await self.kube.create(k.runs_path(namespace), manifest)
                except ApiError as error:
                    self.metrics.api_errors.labels("create", str(error.status)).inc()
                    if error.status in (400, 422):
                        raise RejectedError(f"child run {child_name}: {error}") from None
                    if error.status != 409:
                        raise
                    # Created before (a replay, a resent request): the same child.
                    created = await self.kube.request("GET", k.runs_path(namespace, child_name))
                    if (created.get("spec") or {}).get("parentRun") != name:
                        raise RejectedError(
                            f"a run named {child_name} exists and is not a child of {name}"
                        ) from None
                self.on_run("ADDED", created)

        manifests = [
            waits.child_body(run, child_name, child)
            for child_name, child in zip(names, body.runs, strict=True)
        ]
        await asyncio.gather(*(create(n, m) for n, m in zip(names, manifests, strict=True)))
        return TriggerResponse(runs=names)

    async def trigger_detached(
        self, namespace: str, name: str, body: RunTriggerRequest
    ) -> RunTriggerResponse:
        """A plain trigger/batch_trigger inside the run: children nobody waits for."""
        run = self._in_flight(namespace, name, body.attempt)
        return await detached.trigger(
            self.kube,
            run,
            body,
            tasks=self.tasks,
            on_created=lambda child: self.on_run("ADDED", child),
            on_api_error=lambda status: self.metrics.api_errors.labels("create", str(status)).inc(),
        )

    async def wait(self, namespace: str, name: str, body: WaitRequest) -> WaitResponse:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.block_seconds
        event = self._pollers[key] = asyncio.Event()
        try:
            while True:
                event.clear()  # before looking: a change while we look wakes the next wait
                run = self._in_flight(namespace, name, body.attempt)
                over, ends_in, blocked = self._wait_state(namespace, run, body.waiting_for)
                if over:
                    return await self._wait_results(namespace, body.waiting_for)
                left = deadline - loop.time()
                if blocked or left <= 0:
                    return WaitResponse(resolved=False, checkpoint_now=blocked)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, ends_in or left))
        finally:
            if self._pollers.get(key) is event:
                del self._pollers[key]

    def _wait_state(
        self, namespace: str, run: dict[str, Any], waiting_for: WaitingFor
    ) -> tuple[bool, float | None, bool]:
        """(over, seconds until it may end by itself or a blocked child counts as
        blocked, whether a child is blocked behind this run's own slot)."""
        now = datetime.now(UTC)
        found = {n: self.runs.get((namespace, n)) for n in waiting_for.runs}
        children = {n: waits.child_view(child) for n, child in found.items()}
        token = waiting_for.token or ""
        tokens = {token: waits.token_view(self.wait_tokens.get((namespace, token)))}
        over, ends_in = wait_over(waiting_for, children, tokens, now)
        queue = (run.get("status") or {}).get("queue")
        blocked = not over and any(
            waits.blocked_behind_parent(queue, child, now, BLOCKED_CHILD_SECONDS)
            for child in found.values()
        )
        queued_here = (
            not over
            and not blocked
            and any(waits.blocked_behind_parent(queue, child, now, 0.0) for child in found.values())
        )
        if queued_here:  # look again when such a child would count as blocked
            ends_in = min(ends_in or BLOCKED_CHILD_SECONDS, BLOCKED_CHILD_SECONDS)
        return over, ends_in, blocked

    async def _wait_results(self, namespace: str, waiting_for: WaitingFor) -> WaitResponse:
        if waiting_for.kind == "Duration":
            return WaitResponse(resolved=True)
        if waiting_for.kind == "Token":
            token = waiting_for.token or ""
            found = self.wait_tokens.get((namespace, token))
            result = waits.token_result(token, found, datetime.now(UTC))
            return WaitResponse(resolved=True, token=result)
        results: list[ChildResult] = []
        for child in waiting_for.runs:
            run = self.runs.get((namespace, child))
            output = None
            ref = ((run or {}).get("status") or {}).get("outputRef")
            if run is not None and ref and (run.get("status") or {}).get("phase") == "Completed":
                output = await self._read_output(namespace, OutputRef.model_validate(ref))
            results.append(waits.child_result(child, run, output))
        return WaitResponse(resolved=True, runs=results)

    async def _read_output(self, namespace: str, ref: OutputRef) -> Any:
        chunks = []
        for secret in ref.names:
            body = await self.kube.request("GET", k.secrets_path(namespace, secret))
            chunks.append(base64.b64decode(body.get("data", {}).get(outputs.CHUNK_KEY, "")))
        return outputs.assemble(chunks, ref.size, ref.sha256)

    async def checkpoint(self, namespace: str, name: str, body: Checkpoint) -> None:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        self.reports[key].checkpoint = body
        await self._until_written(key, body)

    async def journal(self, namespace: str, name: str, body: JournalUpdate) -> None:
        self._in_flight(namespace, name, body.attempt)
        key = (namespace, name)
        self.reports[key].journal = body
        await self._until_written(key, body)

    async def create_token(self, namespace: str, name: str, body: CreateToken) -> TokenInfo:
        run = self._in_flight(namespace, name, body.attempt)
        token_name = naming.run_token_name(name, body.attempt, body.position)
        manifest = waits.token_body(run, token_name, body.timeout, body.tags)
        try:
            created = await self.kube.create(waits.tokens_path(namespace), manifest)
        except ApiError as error:
            self.metrics.api_errors.labels("create", str(error.status)).inc()
            if error.status in (400, 422):
                raise RejectedError(f"wait token {token_name}: {error}") from None
            if error.status != 409:
                raise
            created = await self.kube.request("GET", waits.tokens_path(namespace, token_name))
        self.on_token("ADDED", created)
        return TokenInfo(name=token_name, expires_at=waits.token_expiry(created))

    async def complete_token(self, namespace: str, name: str, body: CompleteToken) -> None:
        self._in_flight(namespace, name, body.attempt)
        now = datetime.now(UTC)

        def complete(token: dict[str, Any]) -> dict[str, Any] | None:
            status = token.get("status") or {}
            if status.get("completed"):
                how = "timed out" if status.get("timedOut") else "was completed"
                raise TokenCompletedError(f"wait token {body.token} {how} already")
            return waits.completed_token(token, body.output, now)

        missing = UnknownTokenError(f"no wait token {body.token!r} in namespace {namespace!r}")
        await self._write_token((namespace, body.token), complete, missing=missing)


def _phase_final(run: dict[str, Any]) -> bool:
    return (run.get("status") or {}).get("phase") in FINAL_PHASES
