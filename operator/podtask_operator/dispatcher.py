"""The dispatcher: admits Queued runs into their queue's slots.

A run is admitted when its queue has a free slot, its concurrency key is under
``perKeyLimit``, the queue's rate limit allows another start, its machine fits
the queue's CPU/memory ceiling, and the namespace-wide cap (a setting) is not
reached; among eligible runs, priority then age decides.

One in-memory ``QueueState`` per queue, rebuilt from the API server on start
(level-triggered).  Two durable records make the limit hold even across
crashes or a doubled operator:

* a **Lease** per occupied slot (``<queue>-<n>``, holder = the run's UID),
  taken *before* the run is marked Dequeued, so after a restart the holders are
  known from the API server: by create-if-absent, or, while a released slot's
  Lease still lingers (``LEASE_LINGER_SECONDS``), by a resourceVersion-checked
  update that hands it to the next run (one write instead of a delete and a
  create); and
* a **ResourceQuota** per queue, scoped to the queue's PriorityClass with
  ``pods`` = the limit: the API server itself refuses a pod over the limit,
  whatever any operator believes.  Its 403 means "try later", never failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from podtask.api.base import Condition
from podtask.api.v1alpha1 import API_VERSION, Phase, QueueSpec, QueueStatus
from podtask_operator import kube as k
from podtask_operator.kube import ApiError, Kube
from podtask_operator.naming import fit, label_value
from podtask_operator.queues import Limits, QueueState, RunKey, Usage
from podtask_operator.settings import Settings

log = logging.getLogger("podtask.dispatcher")

QueueId = tuple[str, str]
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
QUOTAS = "/api/v1/namespaces/{namespace}/resourcequotas"
PRIORITY_CLASSES = "/apis/scheduling.k8s.io/v1/priorityclasses"
QUEUES = k.GROUP_PATH + "/namespaces/{namespace}/queues"
LABEL_QUEUE = "podtask.dev/queue"
LABEL_HOLDER = "podtask.dev/run-uid"
HELD_PHASES = (Phase.DEQUEUED.value, Phase.EXECUTING.value)
STATUS_INTERVAL = 5.0
LEASE_LINGER_SECONDS = 5.0
"""How long a released slot's Lease is kept (naming its last holder) before it is
deleted.  A run admitted to the slot meanwhile takes it over with one update: in a
busy queue every run costs one Lease write instead of a create and a delete.  A
restart in between is harmless: the last holder is admitted again at start and its
first reconcile releases the slot."""
LEASE_TAKE_ROUNDS = 3
LEASE_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A Lease as this operator last wrote or read it."""

    resource_version: str
    holder: str


def priority_class_name(namespace: str, queue: str) -> str:
    # A quota's scope selector holds the name as a label value: at most 63 characters.
    return fit(f"podtask-{namespace}-{queue}", 63)


def quota_name(queue: str) -> str:
    return fit(f"podtask-queue-{queue}", 253)


def lease_name(queue: str, slot: int) -> str:
    return fit(f"podtask-{queue}", 240) + f"-{slot}"


def _rank(run: dict[str, Any]) -> float:
    created = run["metadata"].get("creationTimestamp")
    stamp = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else 0
    return float(stamp) - float(run.get("spec", {}).get("priority") or 0)


class Dispatcher:
    def __init__(self, kube: Kube, settings: Settings, wake: Callable[[RunKey], None]) -> None:
        self.kube = kube
        self.settings = settings
        self.wake = wake
        self.specs: dict[QueueId, QueueSpec] = {}
        self.states: dict[QueueId, QueueState] = {}
        self.run_queue: dict[RunKey, QueueId] = {}
        self.uids: dict[RunKey, str] = {}
        self.ensured: dict[QueueId, tuple[Any, ...]] = {}
        self.written: dict[QueueId, dict[str, Any]] = {}
        # Queues whose current spec cannot be used, and why (their status says so).
        self.invalid: dict[QueueId, str] = {}
        # Per queue: two workers must not pick the same free slot at once.
        self._locks: dict[QueueId, asyncio.Lock] = {}
        # Leases by (namespace, name), as last written or listed: a takeover is then
        # one update guarded by the resourceVersion, with no read first.
        self.leases: dict[tuple[str, str], LeaseRecord] = {}
        self._lingering: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ queues

    def _limits(self, qid: QueueId) -> Limits:
        spec = self.specs.get(qid)
        if spec is not None:
            return Limits.from_spec(spec)
        if qid in self.invalid:
            return Limits(0)  # never had a usable spec: admit nothing until it is fixed
        return Limits(self.settings.default_queue_limit)

    def state(self, qid: QueueId) -> QueueState:
        state = self.states.get(qid)
        if state is None:
            state = self.states[qid] = QueueState(self._limits(qid))
        return state

    def on_queue(self, event: str | None, body: dict[str, Any]) -> None:
        qid = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event == "DELETED":
            self.specs.pop(qid, None)
            self.invalid.pop(qid, None)
        else:
            try:
                spec = QueueSpec.model_validate(body.get("spec") or {})
                Limits.from_spec(spec)  # its quantities and period must be usable too
            except (ValidationError, ValueError, ArithmeticError) as error:
                # Never raise here: this also runs at start-up, for every listed Queue.
                log.warning("queue %s/%s has an invalid spec: %s", *qid, error)
                self.invalid[qid] = _spec_problem(error) + (
                    "; the last valid spec stays in force"
                    if qid in self.specs
                    else "; no run of this queue starts until it is fixed"
                )
            else:
                self.specs[qid] = spec
                self.invalid.pop(qid, None)
        state = self.state(qid)
        state.limits = self._limits(qid)
        self.ensured.pop(qid, None)  # the quota follows the new limit on next admission
        for key in state.next_in_line(state.free):
            self.wake(key)

    def pod_priority_class(self, namespace: str, queue: str) -> str:
        return priority_class_name(namespace, queue)

    # ------------------------------------------------------------------ start-up

    async def prime(self, runs: dict[RunKey, dict[str, Any]]) -> None:
        """Rebuild who holds which slot from run statuses and Leases."""
        slots: dict[str, tuple[str, int]] = {}
        namespaces = self.settings.namespaces or ("",)
        for namespace in namespaces:
            path = (
                LEASES.format(namespace=namespace)
                if namespace
                else "/apis/coordination.k8s.io/v1/leases"
            )
            leases = await self.kube.list(path, labelSelector=LABEL_HOLDER)
            for lease in leases.get("items", []):
                meta = lease["metadata"]
                self._note_lease(meta["namespace"], lease)
                holder = meta.get("labels", {}).get(LABEL_HOLDER, "")
                slot = meta.get("annotations", {}).get("podtask.dev/slot")
                if holder and slot is not None:
                    slots[holder] = (meta["name"], int(slot))
        without_lease: list[tuple[RunKey, dict[str, Any]]] = []
        for key, run in runs.items():
            status = run.get("status") or {}
            if not status.get("queue"):
                continue
            # A final run may still hold its Lease while its pod exits (or its released
            # Lease lingered); its first reconcile releases it.
            if run["metadata"]["uid"] in slots:
                self._admit_primed(key, run, slots[run["metadata"]["uid"]][1])
            elif status.get("phase") in HELD_PHASES:
                without_lease.append((key, run))
        # Runs in flight whose Lease is missing take slots no Lease names.
        for key, run in without_lease:
            queue = run["status"]["queue"]
            self._admit_primed(key, run, self.state((key[0], queue)).lowest_free_slot())
        log.info(
            "dispatcher primed: %d queues, %d slots held",
            len(self.states),
            sum(len(s.holders) for s in self.states.values()),
        )

    def _admit_primed(self, key: RunKey, run: dict[str, Any], slot: int) -> None:
        status = run.get("status") or {}
        qid = (key[0], status["queue"])
        self.state(qid).admit(
            key,
            slot,
            run.get("spec", {}).get("concurrencyKey"),
            0.0,
            Usage.of_machine(status.get("machine")),
        )
        self.run_queue[key] = qid
        self.uids[key] = run["metadata"]["uid"]

    # ------------------------------------------------------------------ admission

    def _namespace_full(self, namespace: str) -> bool:
        cap = self.settings.namespace_concurrency_limit
        if not cap:
            return False
        held = sum(len(s.holders) for qid, s in self.states.items() if qid[0] == namespace)
        return held >= cap

    async def acquire(
        self, key: RunKey, run: dict[str, Any], queue: str, machine: str | None = None
    ) -> bool:
        qid = (key[0], queue)
        state = self.state(qid)
        usage = Usage.of_machine(machine)
        concurrency_key = run.get("spec", {}).get("concurrencyKey")
        self.run_queue[key] = qid
        if key in state.holders:
            return True
        state.wait(key, _rank(run), concurrency_key)
        now = time.monotonic()
        async with self._locks.setdefault(qid, asyncio.Lock()):
            if self._namespace_full(key[0]) or not state.may_admit(key, now, usage):
                reopen = state.rate_reopens_in(now)
                if reopen > 0:
                    asyncio.get_running_loop().call_later(reopen + 0.01, self.wake, key)
                return False
            await self._ensure_queue(qid, state.limits)
            slot = state.lowest_free_slot()
            # Reserved at once: other workers pick other slots while its Lease is
            # written, so admissions to one queue do not wait for each other's writes.
            state.admit(key, slot, concurrency_key, now, usage)
            self.uids[key] = run["metadata"]["uid"]
        try:
            taken = await self._take_lease(qid, slot, run)
        except BaseException:
            self._unreserve(key, qid, run, now)
            raise
        if not taken:
            self._unreserve(key, qid, run, now)
            # Not woken by a release: look again in a moment.
            asyncio.get_running_loop().call_later(LEASE_RETRY_SECONDS, self.wake, key)
            return False
        return True

    def _unreserve(self, key: RunKey, qid: QueueId, run: dict[str, Any], started: float) -> None:
        """Give back a slot reserved for ``key`` whose Lease could not be taken."""
        state = self.state(qid)
        state.release(key, started=started)
        self.uids.pop(key, None)
        state.wait(key, _rank(run), run.get("spec", {}).get("concurrencyKey"))
        self._wake_next(qid, state, besides=key)

    async def release(self, key: RunKey, run: dict[str, Any] | None) -> None:
        qid = self.run_queue.pop(key, None)
        if qid is None:
            return
        state = self.states[qid]
        slot = state.release(key)
        uid = self.uids.pop(key, None)
        if slot is not None:
            # No write here: the Lease lingers for the next run (woken now) to take
            # over, and is deleted only if none does.
            self._linger(qid, slot, uid)
            self._wake_next(qid, state)

    def _wake_next(self, qid: QueueId, state: QueueState, besides: RunKey | None = None) -> None:
        for waiting in state.next_in_line(state.free):
            if waiting != besides:
                self.wake(waiting)
        if self.settings.namespace_concurrency_limit:
            # A namespace-wide cap may have held back runs of other queues too.
            for other_qid, other in self.states.items():
                if other_qid[0] == qid[0] and other is not state:
                    for waiting in other.next_in_line(other.free):
                        self.wake(waiting)

    # ------------------------------------------------------------------ durable records

    def _note_lease(self, namespace: str, lease: dict[str, Any]) -> None:
        self.leases[(namespace, lease["metadata"]["name"])] = LeaseRecord(
            str(lease["metadata"]["resourceVersion"]),
            str((lease.get("spec") or {}).get("holderIdentity") or ""),
        )

    async def _take_lease(self, qid: QueueId, slot: int, run: dict[str, Any]) -> bool:
        """Make ``run`` the holder of the slot's Lease.  The caller has reserved the slot
        in memory, so whoever the Lease names has let go of it (or is gone)."""
        namespace, queue = qid
        meta = run["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        name = lease_name(queue, slot)
        self._stop_lingering((namespace, name))
        lease: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {LABEL_QUEUE: label_value(queue), LABEL_HOLDER: meta["uid"]},
                "annotations": {"podtask.dev/slot": str(slot), "podtask.dev/run": meta["name"]},
                # The holder's deletion garbage-collects its Lease.
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "TaskRun",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    }
                ],
            },
            "spec": {"holderIdentity": meta["uid"], "acquireTime": now},
        }
        path = LEASES.format(namespace=namespace)
        known = self.leases.get((namespace, name))
        for _ in range(LEASE_TAKE_ROUNDS):
            try:
                if known is None:
                    written = await self.kube.create(path, lease)
                else:
                    # Its last holder let go: hand it over, unless it changed since.
                    lease["metadata"]["resourceVersion"] = known.resource_version
                    written = await self.kube.request("PUT", f"{path}/{name}", lease)
                self._note_lease(namespace, written)
                return True
            except ApiError as error:
                if error.status not in (404, 409):
                    raise
            # Not as we knew it (created, changed or deleted by someone else): read it.
            try:
                existing = await self.kube.request("GET", f"{path}/{name}")
            except ApiError as error:
                if error.status != 404:
                    raise
                self.leases.pop((namespace, name), None)
                lease["metadata"].pop("resourceVersion", None)
                known = None  # gone (with its holder, or after lingering): create it
                continue
            self._note_lease(namespace, existing)
            known = self.leases[(namespace, name)]
            if known.holder == meta["uid"]:
                return True  # ours, taken before a restart
        return False

    def _linger(self, qid: QueueId, slot: int, holder: str | None) -> None:
        key = (qid[0], lease_name(qid[1], slot))
        self._stop_lingering(key)

        def drop() -> None:
            self._lingering.pop(key, None)
            task = asyncio.ensure_future(self._drop_lease(qid, slot, holder))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        self._lingering[key] = asyncio.get_running_loop().call_later(LEASE_LINGER_SECONDS, drop)

    def _stop_lingering(self, key: tuple[str, str]) -> None:
        timer = self._lingering.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _drop_lease(self, qid: QueueId, slot: int, holder: str | None) -> None:
        """Delete a released slot's Lease that nobody took over while it lingered."""
        namespace, queue = qid
        name = lease_name(queue, slot)
        state = self.states.get(qid)
        if state is not None and slot in state.holders.values():
            return  # taken again meanwhile
        known = self.leases.get((namespace, name))
        if known is None or (holder is not None and known.holder != holder):
            return  # never written or listed by us, or someone else's now
        try:
            # Exactly the version we know: a takeover racing with this delete wins.
            await self.kube.delete(
                f"{LEASES.format(namespace=namespace)}/{name}",
                resource_version=known.resource_version,
            )
        except ApiError as error:
            if error.status != 409:  # 409: taken over or changed since; not ours to delete
                log.warning("could not delete lease %s/%s: %s", namespace, name, error)
            return
        except Exception:  # a background task: log, and leave the Lease to the next holder
            log.exception("could not delete lease %s/%s", namespace, name)
            return
        if self.leases.get((namespace, name)) is known:
            del self.leases[(namespace, name)]

    async def _ensure_queue(self, qid: QueueId, limits: Limits) -> None:
        """The queue's PriorityClass and ResourceQuota, created or updated once per limit."""
        spec = self.specs.get(qid)
        resources = spec.resources if spec else None
        wanted = (
            limits.concurrency,
            resources.cpu if resources else None,
            resources.memory if resources else None,
        )
        if self.ensured.get(qid) == wanted:
            return
        namespace, queue = qid
        priority_class = priority_class_name(namespace, queue)
        try:
            await self.kube.create(
                PRIORITY_CLASSES,
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {
                        "name": priority_class,
                        "labels": {
                            "app.kubernetes.io/managed-by": "podtask",
                            LABEL_QUEUE: label_value(queue),
                        },
                    },
                    # Equal values and no preemption: the class only scopes the quota.
                    "value": 0,
                    "preemptionPolicy": "Never",
                    "globalDefault": False,
                    "description": f"podtask queue {namespace}/{queue}",
                },
            )
        except ApiError as error:
            if error.status != 409:
                raise
        hard: dict[str, str] = {"pods": str(limits.concurrency)}
        if resources and resources.cpu is not None:
            hard["limits.cpu"] = str(resources.cpu)
        if resources and resources.memory is not None:
            hard["limits.memory"] = str(resources.memory)
        quota = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {
                "name": quota_name(queue),
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "podtask",
                    LABEL_QUEUE: label_value(queue),
                },
            },
            "spec": {
                "hard": hard,
                "scopeSelector": {
                    "matchExpressions": [
                        {"scopeName": "PriorityClass", "operator": "In", "values": [priority_class]}
                    ]
                },
            },
        }
        path = QUOTAS.format(namespace=namespace)
        try:
            await self.kube.create(path, quota)
        except ApiError as error:
            if error.status != 409:
                raise
            await self.kube.merge_patch(f"{path}/{quota_name(queue)}", {"spec": {"hard": hard}})
        self.ensured[qid] = wanted

    # ------------------------------------------------------------------ Queue status

    async def write_statuses(self) -> None:
        """Queue status (running, queued) for Queue objects, written only on change."""
        for qid in list({*self.specs, *self.invalid}):
            state = self.state(qid)
            problem = self.invalid.get(qid)
            conditions = (
                [
                    Condition(
                        type="Ready", status="False", reason="InvalidSpec", message=problem[:1024]
                    )
                ]
                if problem
                else []
            )
            status = QueueStatus(
                running=len(state.holders), queued=len(state.waiting), conditions=conditions
            ).to_wire()
            if self.written.get(qid) == status:
                continue
            try:
                await self.kube.merge_patch(
                    f"{QUEUES.format(namespace=qid[0])}/{qid[1]}/status", {"status": status}
                )
                self.written[qid] = status
            except ApiError as error:
                if error.status != 404:
                    log.warning("could not write status of queue %s/%s: %s", *qid, error)

    async def status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            try:
                await self.write_statuses()
            except Exception:  # the loop must outlive an API outage or a bad queue
                log.exception("writing queue statuses failed")


def _spec_problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
    return f"spec: {error}"
