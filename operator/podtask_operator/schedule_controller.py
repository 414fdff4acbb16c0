"""The Schedule controller: caches, one work queue, and the executor of ``schedules.decide``.

Why one loop and not a kopf timer per Schedule: a kopf timer fires at a fixed
interval, so a tick would start up to a whole interval late (or every schedule
would poll every second), and each timer is its own task with its own error
handling.  Here each reconcile computes the schedule's next tick and asks the
work queue to wake that key exactly then (``add_after``); watch events on the
Schedule, its TaskRuns and its Task wake it earlier.  The queue runs a key on
one worker at a time, so a schedule's status has a single writer, and a burst of
events collapses into one reconcile.

Everything decided comes from the caches, which mirror the API server (primed
by a list at start, then kept by kopf's watch events): after a restart the same
objects give the same plan, and a tick's TaskRun name is deterministic, so a
create that answers 409 means "already fired", never a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from podtask.api.v1alpha1 import API_VERSION
from podtask_operator import kube as k
from podtask_operator.kube import ApiError, Kube
from podtask_operator.schedules import (
    SCHEDULE_LABEL,
    Event,
    Plan,
    decide,
    owned_by,
)
from podtask_operator.workqueue import WorkQueue

log = logging.getLogger("podtask.schedules")

Key = tuple[str, str]
WORKERS = 4
ERROR_RETRY_SECONDS = 2.0
MAX_SLEEP_SECONDS = 300.0
"""Re-decide at least this often, so a wall-clock jump is noticed within minutes."""
WAKE_SLACK_SECONDS = 0.005
"""The loop's timers run on the monotonic clock; waking a hair after the tick keeps
a reconcile from seeing the wall clock just short of it."""


def schedules_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"{k.GROUP_PATH}/namespaces/{namespace}/schedules"
    return f"{path}/{name}/{sub}".rstrip("/") if name else path


def _key(body: dict[str, Any]) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _version(body: dict[str, Any] | None) -> int:
    try:
        return int((body or {})["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return -1


def _owner(body: dict[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the Schedule owning a TaskRun."""
    for owner in body["metadata"].get("ownerReferences") or []:
        if owner.get("kind") == "Schedule" and owner.get("apiVersion") == API_VERSION:
            return str(owner["name"]), str(owner["uid"])
    return None


class ScheduleController:
    def __init__(
        self, kube: Kube, namespaces: tuple[str, ...] = (), workers: int = WORKERS
    ) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.workers = workers
        self.schedules: dict[Key, dict[str, Any]] = {}
        # Runs by the uid of the Schedule that owns them; a deleted and re-created
        # Schedule of the same name never sees its predecessor's runs.
        self.runs: dict[str, dict[str, dict[str, Any]]] = {}
        self.tasks: set[Key] = set()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.primed = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ cache

    async def prime(self) -> None:
        """List everything once, so no decision sees a half-filled cache."""
        for namespace in self.namespaces or ("",):
            prefix = f"/namespaces/{namespace}" if namespace else ""
            tasks = await self.kube.list(f"{k.GROUP_PATH}{prefix}/tasks")
            runs = await self.kube.list(
                f"{k.GROUP_PATH}{prefix}/taskruns", labelSelector=SCHEDULE_LABEL
            )
            schedules = await self.kube.list(f"{k.GROUP_PATH}{prefix}/schedules")
            for item in tasks.get("items", []):
                self.on_task("ADDED", item)
            for item in runs.get("items", []):
                self.on_run("ADDED", item)
            for item in schedules.get("items", []):
                self.on_schedule("ADDED", item)
        self.primed.set()

    def on_schedule(self, event: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if event == "DELETED":
            self.schedules.pop(key, None)
            self.queue.forget(key)
            return
        old = self.schedules.get(key)
        if _version(body) < _version(old):
            return
        self.schedules[key] = body
        # Our own status write comes back from the watch with the version we already
        # hold: nothing new to decide.
        if _version(body) != _version(old) or old is None:
            self.queue.add(key)

    def on_run(self, event: str | None, body: dict[str, Any]) -> None:
        owner = _owner(body)
        if owner is None:
            return
        name, uid = owner
        runs = self.runs.setdefault(uid, {})
        run_name = body["metadata"]["name"]
        if event == "DELETED":
            runs.pop(run_name, None)
            if not runs:
                self.runs.pop(uid, None)
        else:
            if _version(body) < _version(runs.get(run_name)):
                return
            runs[run_name] = body
        self.queue.add((body["metadata"]["namespace"], name))

    def on_task(self, event: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if event == "DELETED":
            self.tasks.discard(key)
        elif key in self.tasks:
            return
        else:
            self.tasks.add(key)
        namespace, task = key
        for schedule_key, schedule in self.schedules.items():
            if schedule_key[0] == namespace and (schedule.get("spec") or {}).get("task") == task:
                self.queue.add(schedule_key)

    # ------------------------------------------------------------------ workers

    def start(self) -> None:
        for _ in range(self.workers):
            self._workers.append(asyncio.create_task(self._work()))

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for task in list(self._background):
            task.cancel()

    def healthy(self) -> dict[str, Any]:
        return {"primed": self.primed.is_set(), "schedules": len(self.schedules)}

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except Exception:
                log.exception("reconcile of schedule %s/%s failed; retrying", *key)
                self.queue.add_after(key, ERROR_RETRY_SECONDS)
            finally:
                self.queue.done(key)

    async def reconcile(self, key: Key) -> None:
        schedule = self.schedules.get(key)
        if schedule is None:
            return
        uid = schedule["metadata"].get("uid", "")
        runs = [r for r in self.runs.get(uid, {}).values() if owned_by(r, uid)]
        task = (schedule.get("spec") or {}).get("task", "")
        now = datetime.now(UTC)
        plan = decide(schedule, runs, now, task_exists=(key[0], task) in self.tasks)
        await self._execute(key, schedule, plan)

    # ------------------------------------------------------------------ executor

    async def _execute(self, key: Key, schedule: dict[str, Any], plan: Plan) -> None:
        namespace, name = key
        for run in plan.cancel:
            # Replace: the old run is canceled (and kept in history), not deleted.
            try:
                await self.kube.merge_patch(k.runs_path(namespace, run), {"spec": {"cancel": True}})
            except ApiError as error:
                if error.status != 404:
                    raise
        if plan.create is not None and not await self._create(key, schedule, plan):
            return
        if plan.status:
            # The resourceVersion makes the write conditional: a status computed from a
            # stale copy (another writer, an edit in flight) is refused, not applied.
            patch = {
                "metadata": {"resourceVersion": schedule["metadata"]["resourceVersion"]},
                "status": plan.status,
            }
            try:
                updated = await self.kube.merge_patch(
                    schedules_path(namespace, name, "status"), patch
                )
            except ApiError as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise
                await self._refresh(key)
                return
            if _version(updated) > _version(self.schedules.get(key)):
                # Our own write: what it says was just decided, so no new reconcile.
                self.schedules[key] = updated
        # Only after the status holds the ticks these runs were made for: deleting a run
        # first could let a lost status write fire its tick again.
        for run_view in plan.delete:
            try:
                await self.kube.delete(k.runs_path(namespace, run_view.name), uid=run_view.uid)
            except ApiError as error:
                if error.status != 409:  # a precondition miss: someone replaced it
                    raise
        for event in plan.events:
            self._spawn(self._post_event(schedule, event))
        if plan.wake_at is not None:
            delay = (plan.wake_at - datetime.now(UTC)).total_seconds() + WAKE_SLACK_SECONDS
            self.queue.add_after(key, min(max(delay, 0.0), MAX_SLEEP_SECONDS))

    async def _create(self, key: Key, schedule: dict[str, Any], plan: Plan) -> bool:
        """Create the tick's run; True when it exists now (made here or before)."""
        assert plan.create is not None
        namespace, name = key
        run_name = plan.create["metadata"]["name"]
        try:
            created = await self.kube.create(k.runs_path(namespace), plan.create)
        except ApiError as error:
            if error.status == 409:
                # Fired before a restart, or by another operator: one run per tick.
                existing = await self._get(k.runs_path(namespace, run_name))
                if existing is not None:
                    if not owned_by(existing, schedule["metadata"]["uid"]):
                        log.warning("run %s/%s exists but is not %s's", namespace, run_name, name)
                    self.on_run("ADDED", existing)
                return True
            if error.status in (400, 403, 422):
                self._spawn(
                    self._post_event(
                        schedule,
                        Event("Warning", "RunCreateFailed", f"cannot create {run_name}: {error}"),
                    )
                )
                self.queue.add_after(key, ERROR_RETRY_SECONDS)
                return False
            raise
        self.on_run("ADDED", created)
        log.info("schedule %s/%s fired %s", namespace, name, run_name)
        return True

    async def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def _refresh(self, key: Key) -> None:
        current = await self._get(schedules_path(*key))
        if current is None:
            self.on_schedule("DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        else:
            self.schedules[key] = current
            self.queue.add(key)

    async def _post_event(self, schedule: dict[str, Any], event: Event) -> None:
        meta = schedule["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": "Schedule",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "podtask-operator"},
            "reportingComponent": "podtask.dev/operator",
            "reportingInstance": "podtask-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except ApiError as error:
            log.debug("could not post event on schedule %s: %s", meta["name"], error)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
