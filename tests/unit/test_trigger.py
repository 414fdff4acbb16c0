"""Triggering and runs, against an in-memory API server with the real one's rules:
deterministic names collide (409), delete preconditions are checked, merge patches
merge.  Idempotency, expiry, batches, in-run triggers, subscriptions, the async client
and the public API's typing."""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import podtask
from podtask import AsyncClient, Client, protocol, runs, schema_task, task
from podtask._runenv import CurrentRun
from podtask._trigger import (
    DEFAULT_IDEMPOTENCY_KEY_TTL,
    LABEL_BATCH,
    LABEL_PARENT,
    LABEL_TASK,
    CreateRun,
    DeleteRun,
    GetRun,
    Sleep,
    idempotency_run_name,
    key_release_reason,
    plan_run,
    trigger_flow,
)
from podtask.api.v1alpha1 import Phase
from podtask.errors import (
    BatchTriggerError,
    ClusterUnreachableError,
    InvalidTriggerOptionsError,
    KubernetesApiError,
    PayloadValidationError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    TaskNotDeployedError,
    TokenAlreadyCompletedError,
    TriggerUnavailableError,
)

REPO = Path(__file__).resolve().parents[2]
NS = "team-a"


# --------------------------------------------------------------------------- the fake API


def _api_error(status: int, message: str) -> KubernetesApiError:
    reasons = {404: "NotFound", 409: "Conflict", 403: "Forbidden"}
    return KubernetesApiError(message, status, reasons.get(status, ""))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube:
    """The API calls of :class:`podtask._kube.Backend`, in memory and thread-safe."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.deleted_pods: list[str] = []
        self.lock = threading.RLock()
        self.version = itertools.count(1)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.creates = 0
        self.unreachable = False
        self.forbid_tasks = False
        self.on_watch: Callable[[FakeKube], None] | None = None
        self.before_delete: Callable[[FakeKube, str, str, str], None] | None = None

    # -------------------------------------------------------------- helpers for tests

    def add_task(self, name: str, namespace: str = NS) -> None:
        self.create(
            "tasks",
            namespace,
            {
                "apiVersion": "podtask.dev/v1alpha1",
                "kind": "Task",
                "metadata": {"name": name},
                "spec": {"image": "i", "entrypoint": "m:f"},
            },
        )

    def runs(self, namespace: str = NS) -> list[dict[str, Any]]:
        return [o for (p, n, _), o in self.objects.items() if p == "taskruns" and n == namespace]

    def set_status(self, namespace: str, name: str, **status: Any) -> None:
        with self.lock:
            obj = self.objects[("taskruns", namespace, name)]
            _merge(obj.setdefault("status", {}), status)
            self._record("taskruns", namespace, "MODIFIED", obj)

    def _check(self) -> None:
        if self.unreachable:
            raise ClusterUnreachableError("the Kubernetes API server did not answer")

    def _record(self, plural: str, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        version = next(self.version)
        obj["metadata"]["resourceVersion"] = str(version)
        self.events.append((version, plural, namespace, kind, copy.deepcopy(obj)))

    # -------------------------------------------------------------- Backend

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        with self.lock:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if "name" not in meta:
                meta["name"] = meta.pop("generateName") + uuid.uuid4().hex[:5]
            key = (plural, namespace, meta["name"])
            if key in self.objects:
                raise _api_error(409, f"{plural} {meta['name']!r} already exists")
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=self.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.objects[key] = obj
            self.creates += 1
            self._record(plural, namespace, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        self._check()
        if plural == "tasks" and self.forbid_tasks:
            raise _api_error(403, "tasks is forbidden")
        with self.lock:
            try:
                return copy.deepcopy(self.objects[(plural, namespace, name)])
            except KeyError:
                raise _api_error(404, f"{plural} {name!r} not found") from None

    def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        self._check()
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (p, n, _), o in self.objects.items()
                if p == plural
                and (namespace is None or n == namespace)
                and _selected(o, label_selector)
            ]
            return items, str(next(self.version))

    def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None:
        self._check()
        if self.before_delete is not None:
            self.before_delete(self, plural, namespace, name)
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                raise _api_error(404, f"{plural} {name!r} not found")
            if uid and obj["metadata"]["uid"] != uid:
                raise _api_error(409, "Precondition failed: UID in precondition does not match")
            del self.objects[(plural, namespace, name)]
            self._record(plural, namespace, "DELETED", obj)

    def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        self._check()
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                raise _api_error(404, f"{plural} {name!r} not found")
            _merge(obj, patch)
            self._record(plural, namespace, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def replace(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self._check()
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                raise _api_error(404, f"{plural} {name!r} not found")
            given = (body.get("metadata") or {}).get("resourceVersion")
            if given and given != obj["metadata"]["resourceVersion"]:
                raise _api_error(409, "the object has been modified")
            new = copy.deepcopy(body)
            new["metadata"] = {**obj["metadata"], **new.get("metadata", {})}
            new["status"] = obj.get("status")
            if new["status"] is None:
                new.pop("status")
            self.objects[(plural, namespace, name)] = new
            self._record(plural, namespace, "MODIFIED", new)
            return copy.deepcopy(new)

    def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self._check()
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                raise _api_error(404, f"{plural} {name!r} not found")
            given = (body.get("metadata") or {}).get("resourceVersion")
            if given and given != obj["metadata"]["resourceVersion"]:
                raise _api_error(409, "the object has been modified")
            obj["status"] = copy.deepcopy(body.get("status"))
            self._record(plural, namespace, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self._check()
        if self.on_watch is not None:
            self.on_watch(self)
        name = field_selector.partition("=")[2] if field_selector else None
        since = int(resource_version or 0)
        for version, p, n, kind, obj in list(self.events):
            if (
                version > since
                and p == plural
                and n == namespace
                and (name is None or obj["metadata"]["name"] == name)
            ):
                yield kind, copy.deepcopy(obj)

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            return dict(self.secrets[(namespace, name)])
        except KeyError:
            raise _api_error(404, f"secret {name!r} not found") from None

    def config_map_data(self, namespace: str, name: str) -> dict[str, str]:
        raise _api_error(404, f"configmap {name!r} not found")

    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        return [copy.deepcopy(p) for (n, _), p in self.pods.items() if n == namespace], "1"

    def watch_pods(
        self,
        namespace: str,
        *,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(())

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.pods[(namespace, name)])
        except KeyError:
            raise _api_error(404, f"pod {name!r} not found") from None

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        self.deleted_pods.append(name)
        self.pods.pop((namespace, name), None)

    def pod_log(
        self, namespace: str, name: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        self.get_pod(namespace, name)
        return iter(self.logs.get(name, []))


class AsyncFakeKube:
    """The same fake, awaited (:class:`podtask._akube.AsyncBackend`)."""

    def __init__(self, sync: FakeKube) -> None:
        self.sync = sync

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # let concurrent triggers interleave
        return self.sync.create(plural, namespace, body)

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return self.sync.get(plural, namespace, name)

    async def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        return self.sync.list(plural, namespace, label_selector=label_selector)

    async def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None:
        await asyncio.sleep(0)
        self.sync.delete(plural, namespace, name, uid)

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self.sync.patch(plural, namespace, name, patch)

    async def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self.sync.replace_status(plural, namespace, name, body)

    async def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for event in self.sync.watch(
            plural, namespace, field_selector=field_selector, resource_version=resource_version
        ):
            yield event

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return self.sync.secret_data(namespace, name)

    async def close(self) -> None:
        pass


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _outside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (protocol.ENV_RUN_NAME, protocol.ENV_NAMESPACE, protocol.ENV_ATTEMPT):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    for name in ("email.send.welcome", "test.trigger.signup", "test.trigger.report"):
        fake.add_task(name)
    return fake


@pytest.fixture
def client(kube: FakeKube) -> Client:
    return Client(backend=kube, namespace=NS)


def _in_run(
    monkeypatch: pytest.MonkeyPatch, name: str = "parent-run", attempt: int = 2, namespace: str = NS
) -> None:
    monkeypatch.setenv(protocol.ENV_RUN_NAME, name)
    monkeypatch.setenv(protocol.ENV_NAMESPACE, namespace)
    monkeypatch.setenv(protocol.ENV_ATTEMPT, str(attempt))


class Signup(BaseModel):
    email: str
    plan: str = "free"


@schema_task(id="test.trigger.signup", schema=Signup)
def signup(payload: Signup) -> dict[str, str]:
    return {"email": payload.email}


@task(id="test.trigger.report")
def report(payload: dict[str, Any]) -> list[int]:
    return [1, 2]


# --------------------------------------------------------------------------- options


def test_every_option_reaches_the_spec(client: Client, kube: FakeKube) -> None:
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    handle = client.trigger(
        "email.send.welcome",
        {"to": "a@b.c"},
        idempotency_key=["user", "42"],
        idempotency_key_ttl=timedelta(hours=2),
        concurrency_key="tenant-7",
        queue="email",
        delay=until,
        ttl=600,
        tags=["signup", "eu", "signup"],
        metadata={"step": "queued"},
        machine="small-2x",
        max_attempts=7,
        max_duration="10m",
        priority=30,
        labels={"team": "growth"},
    )
    run = kube.get("taskruns", NS, handle.id)
    assert run["spec"] == {
        "task": "email.send.welcome",
        "payload": {"to": "a@b.c"},
        "idempotencyKey": "user:42",
        "idempotencyKeyScope": "global",
        "idempotencyKeyTTL": "2h",
        "concurrencyKey": "tenant-7",
        "queue": "email",
        "delayUntil": "2030-01-02T03:04:05Z",
        "ttl": "10m",
        "machine": "small-2x",
        "maxAttempts": 7,
        "maxDuration": "10m",
        "tags": ["signup", "eu"],
        "metadata": {"step": "queued"},
        "priority": 30,
    }
    assert run["metadata"]["labels"] == {LABEL_TASK: "email.send.welcome", "team": "growth"}
    assert handle.namespace == NS and handle.task_identifier == "email.send.welcome"
    assert not handle.is_cached and handle.uid == run["metadata"]["uid"]


def test_a_relative_delay_and_no_key_make_a_generated_name(client: Client, kube: FakeKube) -> None:
    handle = client.trigger("email.send.welcome", None, delay="90s")
    run = kube.get("taskruns", NS, handle.id)
    assert handle.id.startswith("email-send-welcome-")
    assert run["spec"] == {"task": "email.send.welcome", "delay": "90s"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "soon"}, "is not a duration"),
        ({"ttl": -1}, "cannot be negative"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"tags": ["x" * 129]}, "tags.0"),
        ({"machine": "huge-9x"}, "machine"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_duration": "2s"}, "at least 5s"),
        ({"priority": -1}, "priority"),
        ({"idempotency_key_ttl": "1h"}, "needs an idempotency_key"),
        ({"idempotency_key": "k", "idempotency_key_scope": "world"}, "global, run or attempt"),
        ({"idempotency_key": "x" * 2049}, "the limit is 2048"),
        ({"metadata": {"blob": "x" * 300_000}}, "metadata"),
        ({"colour": "red"}, "unknown trigger option"),
    ],
)
def test_bad_options_fail_before_anything_is_created(
    client: Client, kube: FakeKube, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidTriggerOptionsError, match=message):
        client.trigger("email.send.welcome", {}, **options)
    assert kube.runs() == []


def test_schema_task_rejects_a_bad_payload_before_any_cr(client: Client, kube: FakeKube) -> None:
    with pytest.raises(PayloadValidationError, match="email"):
        signup.trigger({"plan": "pro"}, client=client)
    # By id too: the task is known in this process, so its schema applies.
    with pytest.raises(PayloadValidationError):
        client.trigger("test.trigger.signup", {"email": 3})
    assert kube.creates == 3  # the three Tasks of the fixture, no run
    handle = signup.trigger(Signup(email="a@b.c"), client=client)
    assert kube.get("taskruns", NS, handle.id)["spec"]["payload"] == {
        "email": "a@b.c",
        "plan": "free",
    }


def test_payloads_must_be_json(client: Client, kube: FakeKube) -> None:
    with pytest.raises(PayloadValidationError, match="not JSON"):
        client.trigger("email.send.welcome", {"what": object()})
    with pytest.raises(PayloadValidationError, match="not JSON"):
        client.trigger("email.send.welcome", {"x": float("nan")})
    with pytest.raises(PayloadValidationError, match="inline"):
        client.trigger("email.send.welcome", "x" * (600 * 1024))
    handle = client.trigger("email.send.welcome", {"at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert kube.get("taskruns", NS, handle.id)["spec"]["payload"] == {"at": "2026-01-01T00:00:00Z"}
    assert len(kube.runs()) == 1


def test_an_undeployed_task_is_refused_with_the_deployed_ones_named(
    client: Client, kube: FakeKube
) -> None:
    with pytest.raises(
        TaskNotDeployedError, match=r"'no\.such\.task'.*email\.send\.welcome"
    ) as info:
        client.trigger("no.such.task", {})
    assert info.value.task_id == "no.such.task" and info.value.namespace == NS
    assert kube.runs() == []
    # Without the right to read Tasks the operator is left to judge.
    kube.forbid_tasks = True
    assert client.trigger("no.such.task", {}).id
    unchecked = Client(backend=kube, namespace=NS, verify_tasks=False)
    kube.forbid_tasks = False
    assert unchecked.trigger("another.missing", {}).id


def test_unreachable_cluster_is_a_typed_error(client: Client, kube: FakeKube) -> None:
    kube.unreachable = True
    with pytest.raises(ClusterUnreachableError):
        client.trigger("email.send.welcome", {})
    with pytest.raises(ClusterUnreachableError):
        client.list()


# --------------------------------------------------------------------------- idempotency


def test_idempotent_names_hash_namespace_task_scope_and_key() -> None:
    parent = CurrentRun(NS, "parent", 1)
    base = idempotency_run_name(NS, "email.send", "k")
    assert base == idempotency_run_name(NS, "email.send", "k")
    assert base.startswith("email-send-") and len(base) <= 63
    others = {
        idempotency_run_name("other", "email.send", "k"),
        idempotency_run_name(NS, "email.sent", "k"),
        idempotency_run_name(NS, "email.send", "k2"),
        idempotency_run_name(NS, "email.send", "k", "run", parent),
        idempotency_run_name(NS, "email.send", "k", "attempt", parent),
        idempotency_run_name(NS, "email.send", "k", "attempt", CurrentRun(NS, "parent", 2)),
        idempotency_run_name(NS, "email.send", "k", "run", CurrentRun(NS, "other", 1)),
    }
    assert base not in others and len(others) == 7
    # Outside a run every scope is global.
    assert idempotency_run_name(NS, "email.send", "k", "run") == base
    assert idempotency_run_name(NS, "email.send", "k", "global", parent) == base


def test_a_repeated_key_returns_the_existing_run_as_cached(client: Client, kube: FakeKube) -> None:
    first = client.trigger("email.send.welcome", {"n": 1}, idempotency_key="welcome-42")
    second = client.trigger("email.send.welcome", {"n": 2}, idempotency_key="welcome-42")
    assert (first.is_cached, second.is_cached) == (False, True)
    assert first.id == second.id and first.uid == second.uid
    assert kube.get("taskruns", NS, first.id)["spec"]["payload"] == {"n": 1}
    assert len(kube.runs()) == 1


def test_fifty_concurrent_triggers_with_one_key_make_one_run(
    client: Client, kube: FakeKube
) -> None:
    barrier = threading.Barrier(50)
    handles = []

    def fire() -> None:
        barrier.wait()
        handles.append(client.trigger("email.send.welcome", {}, idempotency_key="once"))

    threads = [threading.Thread(target=fire) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kube.runs()) == 1
    assert len({h.uid for h in handles}) == 1
    assert sum(not h.is_cached for h in handles) == 1


def test_the_key_expires_after_its_ttl(client: Client, kube: FakeKube) -> None:
    kube.now = datetime.now(UTC) - timedelta(minutes=59)
    first = client.trigger("email.send.welcome", {}, idempotency_key="k", idempotency_key_ttl="1h")
    again = client.trigger("email.send.welcome", {"n": 2}, idempotency_key="k")
    assert again.is_cached and again.uid == first.uid
    # The run's own TTL counts, from its creation: make it 61 minutes old.
    created = (datetime.now(UTC) - timedelta(minutes=61)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.objects[("taskruns", NS, first.id)]["metadata"]["creationTimestamp"] = created
    fresh = client.trigger("email.send.welcome", {"again": True}, idempotency_key="k")
    assert not fresh.is_cached and fresh.id == first.id and fresh.uid != first.uid
    assert [r["spec"]["payload"] for r in kube.runs()] == [{"again": True}]


def test_default_key_ttl_is_thirty_days() -> None:
    assert timedelta(days=30) == DEFAULT_IDEMPOTENCY_KEY_TTL
    run = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {}}
    assert key_release_reason(run, datetime(2026, 1, 30, 23, 59, tzinfo=UTC)) is None
    assert key_release_reason(run, datetime(2026, 1, 31, 0, 0, 1, tzinfo=UTC)) is not None


@pytest.mark.parametrize("phase", ["Failed", "Crashed", "SystemFailure", "TimedOut", "Expired"])
def test_a_run_that_failed_releases_its_key(client: Client, kube: FakeKube, phase: str) -> None:
    first = client.trigger("email.send.welcome", {}, idempotency_key="retry-me")
    kube.set_status(NS, first.id, phase=phase)
    second = client.trigger("email.send.welcome", {}, idempotency_key="retry-me")
    assert not second.is_cached and second.id == first.id and second.uid != first.uid
    assert len(kube.runs()) == 1


@pytest.mark.parametrize("phase", ["Completed", "Canceled", "Executing", "Queued"])
def test_completed_canceled_and_live_runs_keep_their_key(
    client: Client, kube: FakeKube, phase: str
) -> None:
    first = client.trigger("email.send.welcome", {}, idempotency_key="keep")
    kube.set_status(NS, first.id, phase=phase)
    again = client.trigger("email.send.welcome", {}, idempotency_key="keep")
    assert again.is_cached and again.uid == first.uid


def test_concurrent_triggers_converge_after_a_failed_run(client: Client, kube: FakeKube) -> None:
    first = client.trigger("email.send.welcome", {}, idempotency_key="k")
    kube.set_status(NS, first.id, phase="Failed")
    barrier = threading.Barrier(20)
    handles = []

    def fire() -> None:
        barrier.wait()
        handles.append(client.trigger("email.send.welcome", {}, idempotency_key="k"))

    threads = [threading.Thread(target=fire) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kube.runs()) == 1
    survivor = kube.runs()[0]["metadata"]["uid"]
    assert survivor != first.uid
    assert {h.uid for h in handles} == {survivor}
    assert sum(not h.is_cached for h in handles) == 1


def test_delete_precondition_spares_a_newer_run(client: Client, kube: FakeKube) -> None:
    first = client.trigger("email.send.welcome", {}, idempotency_key="k")
    kube.set_status(NS, first.id, phase="Failed")
    newer: dict[str, str] = {}

    def swap(fake: FakeKube, plural: str, namespace: str, name: str) -> None:
        # Another trigger released the key and made a new run between our read and delete.
        fake.before_delete = None
        with fake.lock:
            old = fake.objects.pop((plural, namespace, name))
        created = fake.create(
            plural, namespace, {**old, "status": {"phase": "Queued"}, "metadata": {"name": name}}
        )
        newer["uid"] = created["metadata"]["uid"]

    kube.before_delete = swap
    handle = client.trigger("email.send.welcome", {}, idempotency_key="k")
    assert handle.is_cached and handle.uid == newer["uid"]
    assert [r["metadata"]["uid"] for r in kube.runs()] == [newer["uid"]]


def test_flow_waits_for_a_run_being_deleted() -> None:
    plan = plan_run("t", {}, {"idempotency_key": "k"}, namespace=NS)
    flow = trigger_flow(plan)
    op = next(flow)
    assert isinstance(op, CreateRun)
    op = flow.throw(_api_error(409, "exists"))
    assert isinstance(op, GetRun) and op.name == plan.name
    deleting = {
        "metadata": {
            "name": plan.name,
            "uid": "u1",
            "deletionTimestamp": "x",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {},
    }
    assert isinstance(flow.send(deleting), Sleep)
    assert isinstance(flow.send(None), CreateRun)
    with pytest.raises(StopIteration) as done:
        flow.send({"metadata": {"name": plan.name, "uid": "u2"}})
    assert not done.value.value.cached


def test_flow_retries_a_generated_name_collision() -> None:
    plan = plan_run("t", {}, {}, namespace=NS)
    flow = trigger_flow(plan)
    assert isinstance(next(flow), CreateRun)
    # No idempotency key: a 409 means the server's 5 random characters met a twin.
    assert isinstance(flow.throw(_api_error(409, "exists")), CreateRun)
    with pytest.raises(KubernetesApiError):
        flow.throw(_api_error(422, "invalid"))


def test_flow_deletes_only_the_exact_run() -> None:
    plan = plan_run("t", {}, {"idempotency_key": "k"}, namespace=NS)
    flow = trigger_flow(plan, lambda: datetime(2026, 6, 1, tzinfo=UTC))
    next(flow)
    flow.throw(_api_error(409, "exists"))
    failed = {
        "metadata": {"name": plan.name, "uid": "u1", "creationTimestamp": "2026-05-31T00:00:00Z"},
        "spec": {},
        "status": {"phase": "Crashed"},
    }
    op = flow.send(failed)
    assert op == DeleteRun(NS, str(plan.name), "u1")


# --------------------------------------------------------------------------- in a run


def test_inside_a_run_the_child_links_to_its_parent(
    monkeypatch: pytest.MonkeyPatch, kube: FakeKube
) -> None:
    _in_run(monkeypatch, "parent-run", attempt=2)
    client = Client(backend=kube)
    assert client.namespace == NS
    child = client.trigger("email.send.welcome", {}, idempotency_key="child")
    run = kube.get("taskruns", NS, child.id)
    assert run["spec"]["parentRun"] == "parent-run"
    assert run["spec"]["idempotencyKeyScope"] == "run"
    assert run["metadata"]["labels"][LABEL_PARENT] == "parent-run"
    assert child.id == idempotency_run_name(
        NS, "email.send.welcome", "child", "run", CurrentRun(NS, "parent-run", 2)
    )
    # attempt scope: a retry of the parent makes a new child, a global key does not.
    per_attempt = client.trigger(
        "email.send.welcome", {}, idempotency_key="c", idempotency_key_scope="attempt"
    )
    _in_run(monkeypatch, "parent-run", attempt=3)
    assert (
        client.trigger(
            "email.send.welcome", {}, idempotency_key="c", idempotency_key_scope="attempt"
        ).id
        != per_attempt.id
    )


def test_inside_a_run_without_credentials_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import podtask.client as client_module

    def no_credentials(*_: Any) -> Any:
        raise ClusterUnreachableError("no Kubernetes credentials")

    monkeypatch.setattr(client_module, "load_api_client", no_credentials)
    _in_run(monkeypatch)
    with pytest.raises(TriggerUnavailableError, match="serviceAccountName"):
        Client().trigger("email.send.welcome", {})
    # Outside a run the same problem is the plain connection error.
    monkeypatch.delenv(protocol.ENV_RUN_NAME)
    with pytest.raises(ClusterUnreachableError):
        Client(namespace=NS).trigger("email.send.welcome", {})


# --------------------------------------------------------------------------- batches


def test_batch_makes_one_run_per_item_with_its_own_options(client: Client, kube: FakeKube) -> None:
    items: list[podtask.BatchItem] = [
        {"payload": {"i": i}, "options": {"tags": [f"item-{i}"], "priority": i}} for i in range(30)
    ]
    batch = report.batch_trigger(items, client=client)
    assert batch.ok and batch.run_count == 30 and batch.batch_id.startswith("batch-")
    made = {r["spec"]["payload"]["i"]: r for r in kube.runs()}
    assert sorted(made) == list(range(30))
    for i, run in made.items():
        assert run["spec"]["tags"] == [f"item-{i}"] and run["spec"]["priority"] == i
        assert run["metadata"]["labels"][LABEL_BATCH] == batch.batch_id
        assert run["metadata"]["annotations"]["podtask.dev/batch-index"] == str(i)
    assert [h.id for h in batch.runs] == [
        kube.runs()[[r["spec"]["payload"]["i"] for r in kube.runs()].index(i)]["metadata"]["name"]
        for i in range(30)
    ]
    assert {r.metadata.name for r in client.list(batch_id=batch.batch_id)} == {
        h.id for h in batch.runs
    }


def test_batch_reports_per_item_errors_without_losing_the_rest(
    client: Client, kube: FakeKube
) -> None:
    items: list[Any] = [
        {"payload": {"ok": 0}},
        {"payload": {}, "options": {"delay": "later"}},
        "not an item",
        {"options": {}},
        {"payload": {"ok": 4}, "options": {"tags": [f"t{i}" for i in range(11)]}},
        {"payload": {"ok": 5}},
    ]
    batch = client.batch_trigger("email.send.welcome", items)
    assert [type(i).__name__ for i in batch.items] == [
        "RunHandle",
        "BatchItemError",
        "BatchItemError",
        "BatchItemError",
        "BatchItemError",
        "RunHandle",
    ]
    assert [(e.index, e.type) for e in batch.errors] == [
        (1, "InvalidTriggerOptions"),
        (2, "InvalidTriggerOptions"),
        (3, "InvalidTriggerOptions"),
        (4, "InvalidTriggerOptions"),
    ]
    assert "not a duration" in batch.errors[0].message
    assert len(kube.runs()) == 2
    with pytest.raises(BatchTriggerError) as info:
        batch.raise_for_errors()
    assert info.value.phase == "items" and len(info.value.errors) == 4


def test_batch_by_task_reports_undeployed_tasks_per_item(client: Client, kube: FakeKube) -> None:
    batch = client.batch_trigger_by_task(
        [
            {"task": "email.send.welcome", "payload": 1},
            {"task": "no.such.task", "payload": 2},
            {"task": "test.trigger.signup", "payload": {"email": None}},
            {"task": "test.trigger.signup", "payload": {"email": "a@b.c"}},
        ]
    )
    assert [e.index for e in batch.errors] == [1, 2]
    assert isinstance(batch.errors[0].error, TaskNotDeployedError)
    assert isinstance(batch.errors[1].error, PayloadValidationError)
    assert sorted(r["spec"]["task"] for r in kube.runs()) == [
        "email.send.welcome",
        "test.trigger.signup",
    ]


def test_batch_limit_is_a_thousand_items(client: Client, kube: FakeKube) -> None:
    with pytest.raises(BatchTriggerError, match="at most 1000") as info:
        client.batch_trigger("email.send.welcome", ({"payload": i} for i in range(1001)))
    assert info.value.phase == "create" and kube.runs() == []
    assert (
        client.batch_trigger(
            "email.send.welcome", [{"payload": i} for i in range(1000)], concurrency=32
        ).run_count
        == 1000
    )


def test_batch_idempotency_key_covers_its_items(client: Client, kube: FakeKube) -> None:
    items: list[podtask.BatchItem] = [{"payload": i} for i in range(5)]
    items.append({"payload": 5, "options": {"idempotency_key": "own"}})
    first = client.batch_trigger("email.send.welcome", items, idempotency_key="nightly")
    again = client.batch_trigger("email.send.welcome", items, idempotency_key="nightly")
    assert first.batch_id == again.batch_id
    assert [h.is_cached for h in again.runs] == [True] * 6
    assert [h.id for h in again.runs] == [h.id for h in first.runs]
    run = kube.get("taskruns", NS, first.runs[2].id)
    assert run["spec"]["idempotencyKey"] == "nightly:2"
    assert kube.get("taskruns", NS, first.runs[5].id)["spec"]["idempotencyKey"] == "own"


def test_batch_api_errors_are_per_item(client: Client, kube: FakeKube) -> None:
    original = kube.create
    calls = itertools.count()

    def flaky(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if plural == "taskruns" and next(calls) % 2:
            raise _api_error(422, "admission webhook said no")
        return original(plural, namespace, body)

    kube.create = flaky  # type: ignore[method-assign]
    batch = client.batch_trigger(
        "email.send.welcome", [{"payload": i} for i in range(10)], concurrency=1
    )
    assert batch.run_count == 5 and len(batch.errors) == 5
    assert all(e.type == "KubernetesApiError" and "said no" in e.message for e in batch.errors)


# --------------------------------------------------------------------------- runs


def _run(
    kube: FakeKube,
    name: str,
    task_id: str,
    phase: str | None,
    *,
    minutes_ago: int = 0,
    tags: list[str] | None = None,
) -> None:
    kube.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC) - timedelta(minutes=minutes_ago)
    kube.create(
        "taskruns", NS, {"metadata": {"name": name}, "spec": {"task": task_id, "tags": tags or []}}
    )
    if phase:
        kube.set_status(NS, name, phase=phase)


def test_list_filters_by_task_status_tag_and_time(client: Client, kube: FakeKube) -> None:
    _run(kube, "a", "email.send", "Completed", minutes_ago=1, tags=["eu"])
    _run(kube, "b", "email.send", "Failed", minutes_ago=2, tags=["us"])
    _run(kube, "c", "report.build", "Failed", minutes_ago=30, tags=["eu", "big"])
    _run(kube, "d", "report.build", None, minutes_ago=90)

    def names(**filters: Any) -> list[str]:
        return [r.metadata.name or "" for r in client.list(**filters)]

    assert names() == ["a", "b", "c", "d"]  # newest first
    assert names(task="report.build") == ["c", "d"]
    assert names(status="FAILED") == ["b", "c"]
    assert names(status=["completed", Phase.QUEUED]) == ["a", "d"]  # no phase yet: queued
    assert names(tag="eu") == ["a", "c"]
    assert names(tag=["us", "big"]) == ["b", "c"]
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert names(created_after=now - timedelta(minutes=45)) == ["a", "b", "c"]
    assert names(created_before=now - timedelta(minutes=1)) == ["b", "c", "d"]
    assert names(created_before=now - timedelta(minutes=2)) == ["c", "d"]  # before, not at
    assert names(limit=2) == ["a", "b"]
    assert names(period="1000d") == ["a", "b", "c", "d"]
    with pytest.raises(InvalidTriggerOptionsError, match="not a run status"):
        client.list(status="Done")


def test_retrieve_cancel_replay_and_output(client: Client, kube: FakeKube) -> None:
    handle = client.trigger("email.send.welcome", {"to": "x"}, idempotency_key="k", tags=["t"])
    assert handle.retrieve().spec.payload == {"to": "x"}
    canceled = handle.cancel()
    assert canceled.spec.cancel is True
    replay = client.replay(handle.id)
    assert replay.spec.replay_of == handle.id and replay.spec.payload == {"to": "x"}
    assert replay.spec.idempotency_key is None and replay.spec.cancel is None
    assert replay.spec.tags == ["t"]
    with pytest.raises(RunNotFoundError):
        client.retrieve("gone")
    with pytest.raises(RunNotFoundError):
        client.cancel("gone")
    import base64

    from podtask import outputs

    data = outputs.encode({"big": "x" * 10})
    kube.secrets[(NS, "r-output-0")] = {outputs.CHUNK_KEY: base64.b64encode(data).decode()}
    kube.set_status(
        NS,
        handle.id,
        phase="Completed",
        outputRef={
            "kind": "Secret",
            "names": ["r-output-0"],
            "size": len(data),
            "sha256": outputs.digest(data),
        },
    )
    assert client.output(handle.id) == {"big": "x" * 10}


def test_subscribe_yields_each_change_and_ends_when_final(client: Client, kube: FakeKube) -> None:
    handle = client.trigger("email.send.welcome", {})
    script = iter(
        [
            {"phase": "Executing", "metadata": {"progress": 0.5}},
            {"metadata": {"progress": 0.5}},  # no change: no yield
            {"metadata": {"progress": 1.0}},
            {"phase": "Completed", "output": {"ok": True}},
            {"metadata": {"after": "end"}},
        ]
    )

    def advance(fake: FakeKube) -> None:
        for change in script:
            fake.set_status(NS, handle.id, **change)
            if change.get("phase") == "Completed":
                return

    kube.on_watch = advance
    seen = [
        (
            r.status.phase if r.status else None,
            (r.status.metadata or {}).get("progress") if r.status else None,
        )
        for r in client.subscribe(handle)
    ]
    assert seen == [
        (None, None),
        (Phase.EXECUTING, 0.5),
        (Phase.EXECUTING, 1.0),
        (Phase.COMPLETED, 1.0),
    ]
    result = handle.result(timeout=5)
    assert result.ok and result.phase == Phase.COMPLETED
    assert result.unwrap() == {"ok": True}


def test_result_of_a_failed_run_raises_on_unwrap(client: Client, kube: FakeKube) -> None:
    handle = report.trigger({}, client=client)
    kube.set_status(
        NS, handle.id, phase="Failed", error={"type": "ValueError", "message": "bad input"}
    )
    result = handle.result()
    assert not result.ok and result.output is None and result.error is not None
    with pytest.raises(RunFailedError, match="ended Failed: ValueError: bad input") as info:
        result.unwrap()
    assert info.value.run_id == handle.id and info.value.phase == "Failed"


def test_poll_times_out_with_the_last_phase(client: Client, kube: FakeKube) -> None:
    handle = client.trigger("email.send.welcome", {})
    kube.set_status(NS, handle.id, phase="Executing")
    with pytest.raises(RunTimeoutError, match="last phase: Executing"):
        handle.poll(timeout=0.3)


def test_logs_read_the_latest_attempts_pod(client: Client, kube: FakeKube) -> None:
    handle = client.trigger("email.send.welcome", {})
    kube.set_status(
        NS,
        handle.id,
        phase="Executing",
        attempt=2,
        attempts=[{"number": 1, "pod": f"{handle.id}-1"}, {"number": 2, "pod": f"{handle.id}-2"}],
    )
    kube.pods[(NS, f"{handle.id}-2")] = {"status": {"phase": "Running"}}
    kube.logs[f"{handle.id}-2"] = ["hello", "world"]
    assert list(client.logs(handle)) == ["hello", "world"]
    with pytest.raises(KubernetesApiError, match="is gone"):
        list(client.logs(handle, attempt=1))


def test_complete_token_once(client: Client, kube: FakeKube) -> None:
    kube.create("waittokens", NS, {"metadata": {"name": "approve"}, "spec": {}})
    token = client.complete_token("approve", {"approved": True})
    assert token.status is not None and token.status.completed
    stored = kube.get("waittokens", NS, "approve")["status"]
    assert stored["output"] == {"approved": True} and stored["completedAt"].endswith("Z")
    with pytest.raises(TokenAlreadyCompletedError):
        client.complete_token("approve", {})
    with pytest.raises(KubernetesApiError, match="no wait token") as info:
        client.complete_token("missing", {})
    assert info.value.status == 404


# --------------------------------------------------------------------------- async


def test_async_client_triggers_batches_and_subscribes(kube: FakeKube) -> None:
    async def scenario() -> None:
        client = AsyncClient(backend=AsyncFakeKube(kube), namespace=NS)
        handles = await asyncio.gather(
            *(
                client.trigger("email.send.welcome", {}, idempotency_key="async-once")
                for _ in range(25)
            )
        )
        assert len({h.uid for h in handles}) == 1 and sum(not h.is_cached for h in handles) == 1
        with pytest.raises(PayloadValidationError):
            await signup.trigger_async({"email": 1}, client=client)
        with pytest.raises(TaskNotDeployedError):
            await client.trigger("no.such", {})
        batch = await report.batch_trigger_async(
            [{"payload": i} for i in range(20)] + [{"payload": 0, "options": {"ttl": "x"}}],
            client=client,
        )
        assert batch.run_count == 20 and [e.index for e in batch.errors] == [20]
        handle = batch.runs[0]

        def finish(fake: FakeKube) -> None:
            fake.on_watch = None
            fake.set_status(NS, handle.id, phase="Executing", metadata={"progress": 0.5})
            fake.set_status(NS, handle.id, phase="Completed", output=[1, 2])

        kube.on_watch = finish
        phases = [r.status.phase if r.status else None async for r in client.subscribe(handle)]
        assert phases == [None, Phase.EXECUTING, Phase.COMPLETED]
        result = await handle.result()
        assert result.unwrap() == [1, 2]
        assert [r.metadata.name for r in await client.list(task="test.trigger.report", limit=1)]
        assert (await client.cancel(handle.id)).spec.cancel is True
        assert (await client.replay(handle.id)).spec.replay_of == handle.id
        await client.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- packaging


def test_importing_podtask_and_the_runner_does_not_load_kubernetes() -> None:
    code = (
        "import sys, podtask, podtask.runner, podtask.tasks, podtask._trigger\n"
        "from podtask import task\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'kubernetes_asyncio', 'typer', 'urllib3')]\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "[]"


def test_public_names_resolve() -> None:
    for name in podtask.__all__:
        assert getattr(podtask, name) is not None, name


def test_runner_in_a_dev_session_only_stands_in_until_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        protocol.ENV_DEV_SESSION: "s1",
        protocol.ENV_RUN_NAME: "r",
        protocol.ENV_ATTEMPT: "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "podtask.runner"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "podtask dev session s1" in line
    assert process.poll() is None  # it waits: the attempt runs on the developer's machine
    process.terminate()
    assert process.wait(10) == protocol.EXIT_CANCELED


USER_CODE = """
from typing import Any

import podtask
from podtask import AsyncClient, Client, runs, task


@task(id="typed.example")
def build(payload: dict[str, Any]) -> list[int]:
    return [1]


def use() -> int:
    handle: podtask.RunHandle[list[int]] = build.trigger({}, delay="1m", tags=["a"],
                                                         idempotency_key="k")
    total: int = sum(handle.result(timeout=5).unwrap())
    other = podtask.tasks.trigger("any.task", {"x": 1}, priority=3)
    _ = other.is_cached, other.id
    batch = build.batch_trigger([{"payload": {}, "options": {"ttl": "1h"}}])
    for run in runs.list(task="typed.example", status="FAILED", period="1d"):
        _ = run.status.phase if run.status else None
    for run in Client().subscribe(batch.runs[0]):
        _ = run.spec.task
    return total


async def use_async(client: AsyncClient) -> list[int]:
    handle = await build.trigger_async({}, client=client, machine="micro")
    return (await handle.result()).unwrap()
"""

BAD_USER_CODE = """
from typing import Any

from podtask import task


@task(id="typed.example")
def build(payload: dict[str, Any]) -> list[int]:
    return [1]


def use() -> str:
    build.trigger({}, delay=["no"])
    return build.trigger({}).result().unwrap()
"""


def test_user_code_is_mypy_strict_clean_and_mistakes_are_caught(tmp_path: Path) -> None:
    from mypy import api as mypy_api

    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent(USER_CODE))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent(BAD_USER_CODE))
    args = ["--strict", "--no-incremental", "--config-file", os.devnull, "--python-version", "3.11"]
    # An editable install is invisible to mypy (an import hook): point it at the sources,
    # as a regular install's site-packages would.
    os.environ["MYPYPATH"] = str(REPO / "sdk")
    try:
        out, err, status = mypy_api.run([*args, str(good)])
        bad_out, _, bad_status = mypy_api.run([*args, str(bad)])
    finally:
        del os.environ["MYPYPATH"]
    assert status == 0, out + err
    assert bad_status == 1
    assert 'Argument "delay" to "trigger" of "Task"' in bad_out
    assert 'Incompatible return value type (got "list[int]", expected "str")' in bad_out


def test_module_functions_use_the_default_client(
    monkeypatch: pytest.MonkeyPatch, client: Client, kube: FakeKube
) -> None:
    import podtask.client

    monkeypatch.setattr(podtask.client, "_DEFAULT", client)
    handle = podtask.tasks.trigger("email.send.welcome", {"x": 1}, tags=["m"])
    assert runs.retrieve(handle.id).spec.payload == {"x": 1}
    assert [r.metadata.name for r in runs.list(tag="m")] == [handle.id]
    assert runs.cancel(handle).spec.cancel is True
    assert runs.replay(handle.id).spec.replay_of == handle.id
    batch = podtask.tasks.batch_trigger("email.send.welcome", [{"payload": 1}])
    assert batch.run_count == 1
