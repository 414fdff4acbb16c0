"""Plain triggers and subscriptions inside a run, through the run API, end to end in one
process: the SDK (``Client``, ``AsyncClient``, ``runs``) with the runner's wait session
installed, the real ``HttpRunApi`` over HTTP, the operator's run API application and its
``Controller``, and an in-memory API server with the real one's naming rules.

Covers: every option reaches the child, which the operator links to its parent; a plain
trigger takes a journal position as trigger_and_wait does, so the two agree on names; a
lost answer resent makes no second child; a replay after a checkpoint makes nothing and
returns the same handles; idempotency keys dedupe (run scope, global scope, a released
key is replaced); batches with per-item errors (bad options here, an undeployed task at
the operator); a failed request is journalled; a client given credentials, another
namespace, or code outside a run keeps the Kubernetes API; subscribe, poll, result and
retrieve of a child follow the operator's cache live, and a run that is not a child is
refused (the Kubernetes API is tried instead).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from podtask import AsyncClient, Client, _inrun, _waits, protocol, runs, task, tasks
from podtask._runenv import CurrentRun
from podtask._trigger import (
    ANNOTATION_BATCH_INDEX,
    LABEL_BATCH,
    LABEL_PARENT,
    LABEL_TASK,
    idempotency_run_name,
)
from podtask.api.v1alpha1 import JournalEntry, Phase, TaskRunSpec
from podtask.errors import (
    ClusterUnreachableError,
    KubernetesApiError,
    ReplayDivergedError,
    TaskNotDeployedError,
    TriggerUnavailableError,
)
from podtask.protocol import ChildRun
from podtask.runapi import HttpRunApi, RunApiError, RunEvent
from podtask_operator.controller import Controller
from podtask_operator.detached import ANNOTATION_TRIGGER
from podtask_operator.kube import ApiError
from podtask_operator.metrics import OperatorMetrics
from podtask_operator.runapi import create_app
from podtask_operator.runevents import RunWatchers
from podtask_operator.settings import Settings
from podtask_operator.tokens import RunTokens

NS = "team-a"
PARENT = "parent-run"
PARENT_UID = "uid-parent"
KEY = b"k" * 32
T = TypeVar("T")


@task(id="inrun.child")
def child(payload: dict[str, Any]) -> dict[str, int]:
    return {"n": payload["n"]}


# --------------------------------------------------------------------------- the cluster


class MemoryKube:
    """The calls the controller makes to create, read and delete TaskRuns, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.creates: list[str] = []
        self.deletes: list[str] = []
        self.version = itertools.count(100)
        self.refuse: dict[str, ApiError] = {}
        """Names whose create the API server refuses with this error."""

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.creates.append(name)
        if name in self.refuse:
            raise self.refuse[name]
        if f"{path}/{name}" in self.objects:
            raise ApiError(409, {"reason": "AlreadyExists", "message": f"{name} exists"})
        stored = copy.deepcopy(body)
        stored["metadata"].update(
            uid=f"uid-{name}",
            resourceVersion=str(next(self.version)),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self.objects[f"{path}/{name}"] = stored
        return copy.deepcopy(stored)

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        assert method == "GET", method
        if path not in self.objects:
            raise ApiError(404, {"reason": "NotFound", "message": path})
        return copy.deepcopy(self.objects[path])

    async def delete(self, path: str, *, uid: str | None = None, **_: Any) -> None:
        found = self.objects.get(path)
        if found is None:
            return
        if uid and found["metadata"]["uid"] != uid:
            raise ApiError(409, {"reason": "Conflict", "message": "uid precondition"})
        self.deletes.append(path.rsplit("/", 1)[1])
        del self.objects[path]

    def runs(self) -> dict[str, dict[str, Any]]:
        return {
            path.rsplit("/", 1)[1]: obj
            for path, obj in self.objects.items()
            if "/taskruns/" in path
        }

    def add(self, run: dict[str, Any]) -> None:
        meta = run["metadata"]
        self.objects[f"/apis/podtask.dev/v1alpha1/namespaces/{NS}/taskruns/{meta['name']}"] = run


def parent_run(attempt: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": PARENT, "namespace": NS, "uid": PARENT_UID, "resourceVersion": "1"},
        "spec": {"task": "inrun.parent"},
        "status": {"phase": "Executing", "attempt": attempt, "queue": "task-inrun-parent"},
    }


def task_object(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "resourceVersion": "1"}, "spec": {}}


class LoseAnswers(httpx.BaseTransport):
    """Sends requests on, but loses the answers to the trigger calls numbered in ``lose``
    (from 1): the operator did the work, the runner never heard, and sends it again."""

    def __init__(self, lose: frozenset[int] = frozenset()) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = lose
        self.triggers = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/trigger"):
            self.triggers += 1
            if self.triggers in self.lose:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class Pod:
    """One parent run's attempt: the operator side and the runner's session."""

    controller: Controller
    watchers: RunWatchers
    kube: MemoryKube
    url: str
    api: HttpRunApi
    session: _waits.WaitSession

    async def call(self, fn: Callable[[], T]) -> T:
        """Run SDK code as the task function would: in its own thread, with the session."""

        def in_pod() -> T:
            with _waits.installed(self.session):
                return fn()

        return await asyncio.to_thread(in_pod)

    def resume(self, transport: httpx.BaseTransport | None = None) -> _waits.WaitSession:
        """A new pod of the same attempt, replaying the journal the last one left."""
        self.api.close()
        self.api = HttpRunApi(
            self.url,
            RunTokens(KEY).issue(NS, PARENT, PARENT_UID),
            NS,
            PARENT,
            transport=transport,
        )
        self.session = _waits.WaitSession(
            self.api,
            namespace=NS,
            run=PARENT,
            attempt=self.session.attempt,
            journal=self.session.entries,
            threshold=10.0,
            call_deadline=5.0,
        )
        return self.session

    def set_status(self, name: str, **status: Any) -> None:
        """A child changes, as the TaskRun watch reports it."""
        run = copy.deepcopy(self.controller.runs[(NS, name)])
        run["status"] = {**(run.get("status") or {}), **status}
        run["metadata"]["resourceVersion"] = str(int(run["metadata"]["resourceVersion"]) + 1)
        self.controller.on_run("MODIFIED", run)
        self.watchers.changed(NS, name)


@pytest.fixture(autouse=True)
def _in_the_pods_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(protocol.ENV_RUN_NAME, PARENT)
    monkeypatch.setenv(protocol.ENV_NAMESPACE, NS)
    monkeypatch.setenv(protocol.ENV_ATTEMPT, "1")

    def no_credentials(*_: Any) -> Any:
        raise ClusterUnreachableError("no Kubernetes credentials in this pod")

    import podtask.aio as aio_module
    import podtask.client as client_module

    monkeypatch.setattr(client_module, "load_api_client", no_credentials)
    monkeypatch.setattr(aio_module, "load_async_api_client", no_credentials)
    monkeypatch.setattr(client_module, "_DEFAULT", None)


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    kube = MemoryKube()
    controller = Controller(
        kube,  # type: ignore[arg-type]
        Settings(),
        RunTokens(KEY),
        OperatorMetrics(CollectorRegistry()),
    )
    kube.add(parent_run())
    controller.on_run("ADDED", parent_run())
    for name in ("inrun.child", "inrun.other"):
        controller.on_task("ADDED", task_object(name))
    watchers = RunWatchers(controller.runs, keepalive=0.2)
    server = TestServer(create_app(controller, RunTokens(KEY), watchers=watchers))
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    api = HttpRunApi(url, RunTokens(KEY).issue(NS, PARENT, PARENT_UID), NS, PARENT)
    session = _waits.WaitSession(
        api, namespace=NS, run=PARENT, attempt=1, journal=[], threshold=10.0, call_deadline=5.0
    )
    made = Pod(controller, watchers, kube, url, api, session)
    try:
        yield made
    finally:
        made.api.close()
        watchers.close()
        await server.close()


def name_at(position: int, index: int = 0, attempt: int = 1) -> str:
    return f"{PARENT}-a{attempt}p{position}-{index}"


# --------------------------------------------------------------------------- triggering


async def test_a_plain_trigger_goes_through_the_operator_with_every_option(pod: Pod) -> None:
    handle = await pod.call(
        lambda: child.trigger(
            {"n": 1},
            concurrency_key="tenant-1",
            queue="fast",
            delay="10m",
            ttl="1h",
            tags=["a", "b"],
            metadata={"source": "parent"},
            machine="small-2x",
            max_attempts=4,
            max_duration="30s",
            priority=15,
            labels={"team": "x"},
        )
    )
    assert (handle.id, handle.namespace, handle.task_identifier) == (name_at(0), NS, "inrun.child")
    assert not handle.is_cached
    made = pod.kube.runs()[handle.id]
    assert made["spec"] == {
        "task": "inrun.child",
        "payload": {"n": 1},
        "concurrencyKey": "tenant-1",
        "queue": "fast",
        "delay": "10m",
        "ttl": "1h",
        "tags": ["a", "b"],
        "metadata": {"source": "parent"},
        "machine": "small-2x",
        "maxAttempts": 4,
        "maxDuration": "30s",
        "priority": 15,
        "parentRun": PARENT,
    }
    assert made["metadata"]["labels"] == {
        LABEL_TASK: "inrun.child",
        LABEL_PARENT: PARENT,
        "team": "x",
    }
    assert made["metadata"]["annotations"] == {ANNOTATION_TRIGGER: name_at(0)}
    # Made through the cache too: the operator sees it before its watch event comes.
    assert (NS, handle.id) in pod.controller.runs
    [entry] = pod.session.entries
    assert entry == JournalEntry(kind="Trigger", name="inrun.child", runs=[name_at(0)])


async def test_plain_triggers_and_trigger_and_wait_share_the_journals_positions(
    pod: Pod,
) -> None:
    first = await pod.call(lambda: tasks.trigger("inrun.other", {"x": 1}))
    waited = ChildRun(spec=TaskRunSpec(task="inrun.child", payload={"n": 2}))
    position, names = await pod.call(
        lambda: pod.session.trigger("Run", "inrun.child", [waited])  # as trigger_and_wait does
    )
    second = await pod.call(lambda: child.trigger({"n": 3}))
    assert (first.id, position, names, second.id) == (name_at(0), 1, [name_at(1)], name_at(2))
    assert [e.kind for e in pod.session.entries] == ["Trigger", "Run", "Trigger"]
    assert set(pod.kube.runs()) == {PARENT, name_at(0), name_at(1), name_at(2)}


async def test_a_lost_answer_sent_again_makes_one_child(pod: Pod) -> None:
    lossy = LoseAnswers(lose=frozenset({1, 3}))
    pod.resume(transport=lossy)
    handle = await pod.call(lambda: child.trigger({"n": 1}))
    keyed = await pod.call(lambda: child.trigger({"n": 2}, idempotency_key="once"))
    assert lossy.triggers == 4  # each trigger's first answer was lost, and it was resent
    assert handle.id == name_at(0)
    assert not keyed.is_cached  # made by this very trigger, whatever the resend found
    assert pod.kube.creates.count(handle.id) == 2 and pod.kube.creates.count(keyed.id) == 2
    assert set(pod.kube.runs()) == {PARENT, handle.id, keyed.id}
    assert [e.runs for e in pod.session.entries] == [[handle.id], [keyed.id]]


async def test_a_replay_makes_nothing_and_returns_the_same_handles(pod: Pod) -> None:
    one = await pod.call(lambda: child.trigger({"n": 1}))
    cached_first = await pod.call(lambda: child.trigger({"n": 2}, idempotency_key="k"))
    cached = await pod.call(lambda: child.trigger({"n": 2}, idempotency_key="k"))
    batch = await pod.call(
        lambda: child.batch_trigger([{"payload": {"n": 3}}, {"payload": {"n": 4}}])
    )
    creates = len(pod.kube.creates)
    counting = LoseAnswers()
    pod.resume(transport=counting)  # the next pod of the attempt, after a checkpoint
    again = await pod.call(
        lambda: (
            child.trigger({"n": 1}),
            child.trigger({"n": 2}, idempotency_key="k"),
            child.trigger({"n": 2}, idempotency_key="k"),
            child.batch_trigger([{"payload": {"n": 3}}, {"payload": {"n": 4}}]),
        )
    )
    assert counting.triggers == 0 and len(pod.kube.creates) == creates
    assert [h.id for h in again[:3]] == [one.id, cached_first.id, cached.id]
    assert [h.is_cached for h in again[:3]] == [False, False, True]
    assert again[3].batch_id == batch.batch_id
    assert [h.id for h in again[3].runs] == [h.id for h in batch.runs]
    # Code that changed since: the replay fails the run instead of guessing.
    pod.resume()
    with pytest.raises(ReplayDivergedError):
        await pod.call(lambda: child.batch_trigger([{"payload": {"n": 1}}, {"payload": {"n": 2}}]))
    assert pod.session.broken is not None


async def test_idempotency_keys_dedupe_as_outside_a_run(pod: Pod) -> None:
    first = await pod.call(lambda: child.trigger({"n": 1}, idempotency_key=["order", "7"]))
    again = await pod.call(lambda: child.trigger({"n": 9}, idempotency_key="order:7"))
    assert (
        first.id
        == again.id
        == idempotency_run_name(NS, "inrun.child", "order:7", "run", CurrentRun(NS, PARENT, 1))
    )
    assert (first.is_cached, again.is_cached) == (False, True)
    stored = pod.kube.runs()[first.id]["spec"]
    assert (stored["idempotencyKey"], stored["idempotencyKeyScope"]) == ("order:7", "run")
    assert stored["payload"] == {"n": 1}
    # A global key finds a run another run (or anyone) made.
    made_elsewhere = idempotency_run_name(NS, "inrun.child", "g", "global")
    pod.kube.add(
        {
            "metadata": {"name": made_elsewhere, "namespace": NS, "uid": "uid-elsewhere"},
            "spec": {"task": "inrun.child", "idempotencyKey": "g"},
            "status": {"phase": "Executing"},
        }
    )
    found = await pod.call(
        lambda: child.trigger({"n": 1}, idempotency_key="g", idempotency_key_scope="global")
    )
    assert (found.id, found.is_cached) == (made_elsewhere, True)
    assert "parentRun" not in pod.kube.runs()[made_elsewhere]["spec"]


async def test_a_released_key_is_replaced_by_a_new_child(pod: Pod) -> None:
    name = idempotency_run_name(NS, "inrun.child", "g", "global")
    pod.kube.add(
        {
            "metadata": {"name": name, "namespace": NS, "uid": "uid-old"},
            "spec": {"task": "inrun.child", "idempotencyKey": "g"},
            "status": {"phase": "Failed"},
        }
    )
    handle = await pod.call(
        lambda: child.trigger({"n": 2}, idempotency_key="g", idempotency_key_scope="global")
    )
    assert (handle.id, handle.is_cached) == (name, False)
    assert pod.kube.deletes == [name]
    replaced = pod.kube.runs()[name]
    assert replaced["spec"]["parentRun"] == PARENT and replaced["metadata"]["uid"] != "uid-old"


async def test_a_batch_makes_its_runs_and_reports_each_failure_in_place(pod: Pod) -> None:
    # The operator sees the items that pass the SDK's checks: 0, 2, 3 and 4, as 0 to 3.
    pod.kube.refuse[name_at(0, 2)] = ApiError(
        422, {"reason": "Invalid", "message": "label value too long"}
    )
    batch = await pod.call(
        lambda: tasks.batch_trigger(
            "inrun.child",
            [
                {"payload": {"n": 0}, "options": {"tags": ["zero"], "priority": 5}},
                {"payload": {"n": 1}, "options": {"delay": "not a duration"}},
                {"payload": {"n": 2}, "task": "inrun.missing"},
                {"payload": {"n": 3}},
                {"payload": {"n": 4}, "options": {"idempotency_key": "four"}},
            ],
        )
    )
    assert [e.index for e in batch.errors] == [1, 2, 3]
    bad_option, missing, refused = (e.error for e in batch.errors)
    assert type(bad_option).__name__ == "InvalidTriggerOptionsError"
    assert isinstance(missing, TaskNotDeployedError) and missing.task_id == "inrun.missing"
    assert "inrun.child" in str(missing)  # names the tasks that are deployed
    assert isinstance(refused, KubernetesApiError) and refused.status == 422
    made = [pod.kube.runs()[h.id] for h in batch.runs]
    assert [r["spec"]["payload"] for r in made] == [{"n": 0}, {"n": 4}]
    assert made[0]["spec"]["tags"] == ["zero"] and made[0]["spec"]["priority"] == 5
    assert {r["metadata"]["labels"][LABEL_BATCH] for r in made} == {batch.batch_id}
    assert [r["metadata"]["annotations"][ANNOTATION_BATCH_INDEX] for r in made] == ["0", "4"]
    assert all(r["spec"]["parentRun"] == PARENT for r in made)
    assert all(h.batch_id == batch.batch_id for h in batch.runs)
    [entry] = pod.session.entries
    assert entry.runs == [name_at(0, 0), "", "", batch.runs[1].id]
    assert entry.output["errors"][0]["index"] == 1  # type: ignore[index]


async def test_the_operator_keeps_only_the_annotations_the_sdk_sets(pod: Pod) -> None:
    from podtask.protocol import RunTriggerRequest, TriggerChild

    request = RunTriggerRequest(
        attempt=1,
        position=0,
        runs=[
            TriggerChild(
                spec=TaskRunSpec(task="inrun.child", parent_run="someone-else"),
                labels={LABEL_PARENT: "someone-else", "team": "x"},
                annotations={ANNOTATION_BATCH_INDEX: "3", "example.com/anything": "x"},
            )
        ],
        detached=True,
    )
    answer = await asyncio.to_thread(pod.api.trigger_detached, request)
    made = pod.kube.runs()[answer.runs[0]]
    assert made["metadata"]["annotations"] == {
        ANNOTATION_BATCH_INDEX: "3",
        ANNOTATION_TRIGGER: name_at(0),
    }
    assert made["metadata"]["labels"][LABEL_PARENT] == PARENT
    assert made["spec"]["parentRun"] == PARENT


async def test_an_undeployed_task_fails_the_trigger_and_the_journal_stays_in_step(
    pod: Pod,
) -> None:
    with pytest.raises(TaskNotDeployedError, match=r"inrun\.nope"):
        await pod.call(lambda: tasks.trigger("inrun.nope", {}))
    handle = await pod.call(lambda: child.trigger({"n": 1}))
    assert handle.id == name_at(1)
    # verify_tasks=False leaves an unknown task to the operator, as outside a run.
    unchecked = await pod.call(lambda: Client(verify_tasks=False).trigger("inrun.nope", {}))
    assert unchecked.id == name_at(2)


async def test_a_failed_request_is_journalled_and_replays_as_the_same_error(pod: Pod) -> None:
    pod.controller.runs[(NS, PARENT)]["status"]["attempt"] = 2  # this attempt is stale now
    with pytest.raises(TriggerUnavailableError, match="409"):
        await pod.call(lambda: child.trigger({"n": 1}))
    batch = await pod.call(lambda: child.batch_trigger([{"payload": {"n": 1}}]))
    assert isinstance(batch.errors[0].error, TriggerUnavailableError)
    assert [e.kind for e in pod.session.entries] == ["Trigger", "Trigger"]
    pod.controller.runs[(NS, PARENT)]["status"]["attempt"] = 1
    pod.resume()
    with pytest.raises(TriggerUnavailableError, match="409"):
        await pod.call(lambda: child.trigger({"n": 1}))
    assert set(pod.kube.runs()) == {PARENT}


async def test_what_the_run_api_does_not_serve_stays_on_the_kubernetes_api(pod: Pod) -> None:
    # Another namespace, or a client given its own way to the cluster: the Kubernetes API
    # (which this pod cannot reach).
    with pytest.raises(TriggerUnavailableError, match="serviceAccountName"):
        await pod.call(lambda: child.trigger({"n": 1}, namespace="elsewhere"))
    with pytest.raises(TriggerUnavailableError, match="serviceAccountName"):
        await pod.call(lambda: Client(context="prod").trigger("inrun.child", {}))
    # No session: not inside the task function (e.g. a thread the runner does not know).
    with pytest.raises(TriggerUnavailableError):
        await asyncio.to_thread(lambda: child.trigger({"n": 1}))
    assert set(pod.kube.runs()) == {PARENT}
    assert pod.session.entries == []


async def test_concurrent_plain_triggers_are_refused_like_concurrent_waits(pod: Pod) -> None:
    from podtask.errors import ConcurrentWaitError

    with pod.session.exclusive("trigger_and_wait"), pytest.raises(ConcurrentWaitError):
        await pod.call(lambda: child.trigger({"n": 1}))
    assert pod.session.broken is not None


async def test_the_async_client_triggers_through_the_run_api_too(pod: Pod) -> None:
    async def in_task() -> tuple[Any, Any]:
        async with AsyncClient() as client:
            one = await child.trigger_async({"n": 1}, client=client, tags=["async"])
            batch = await client.batch_trigger("inrun.child", [{"payload": {"n": 2}}])
            return one, batch

    one, batch = await pod.call(lambda: asyncio.run(in_task()))
    assert (one.id, batch.runs[0].id) == (name_at(0), name_at(1, 0))
    assert pod.kube.runs()[one.id]["spec"]["tags"] == ["async"]
    assert pod.kube.runs()[batch.runs[0].id]["metadata"]["labels"][LABEL_BATCH] == batch.batch_id


# --------------------------------------------------------------------------- following


async def _until_followed(pod: Pod, name: str) -> None:
    for _ in range(250):
        if pod.watchers.followers(NS, name):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nobody follows {name}")


async def test_subscribe_to_a_child_sees_its_metadata_live_and_its_end(pod: Pod) -> None:
    handle = await pod.call(lambda: child.trigger({"n": 1}))
    pod.set_status(handle.id, phase="Executing")

    def watch() -> list[tuple[str | None, Any]]:
        return [
            (r.status.phase.value if r.status and r.status.phase else None, r.status.metadata)
            for r in runs.subscribe(handle)
            if r.status is not None
        ]

    seen = asyncio.ensure_future(pod.call(watch))
    await _until_followed(pod, handle.id)
    for step in (1, 2):
        pod.set_status(handle.id, metadata={"step": step})
        await asyncio.sleep(0.05)
    pod.set_status(handle.id, phase="Completed", output={"n": 1})
    assert await asyncio.wait_for(seen, 10) == [
        ("Executing", None),
        ("Executing", {"step": 1}),
        ("Executing", {"step": 2}),
        ("Completed", {"step": 2}),
    ]


async def test_poll_result_and_retrieve_of_a_child_read_the_operators_cache(pod: Pod) -> None:
    handle = await pod.call(lambda: child.trigger({"n": 5}))
    assert (await pod.call(handle.retrieve)).spec.payload == {"n": 5}
    result = asyncio.ensure_future(pod.call(lambda: handle.result(timeout=10)))
    await _until_followed(pod, handle.id)
    pod.set_status(handle.id, phase="Completed", output={"n": 5})
    finished = await asyncio.wait_for(result, 10)
    assert (finished.ok, finished.phase, finished.unwrap()) == (True, Phase.COMPLETED, {"n": 5})
    own = await pod.call(lambda: runs.retrieve(PARENT))
    assert own.status is not None and own.status.phase == Phase.EXECUTING


async def test_subscribe_ends_at_its_timeout_and_when_the_child_goes(pod: Pod) -> None:
    handle = await pod.call(lambda: child.trigger({"n": 1}))
    quiet = await pod.call(lambda: list(runs.subscribe(handle, timeout=0.5)))
    assert len(quiet) == 1
    first = threading.Event()

    def follow() -> list[Any]:
        seen = []
        for run in runs.subscribe(handle):
            seen.append(run)
            first.set()
        return seen

    gone = asyncio.ensure_future(pod.call(follow))
    # Deleted only once the stream has said where the run stands: a stream opened after
    # the run went is refused (the run is not there to follow) rather than told "deleted".
    assert await asyncio.to_thread(first.wait, 10)
    pod.controller.on_run("DELETED", pod.controller.runs[(NS, handle.id)])
    pod.watchers.changed(NS, handle.id)
    assert len(await asyncio.wait_for(gone, 10)) == 1


async def test_following_a_run_that_is_not_a_child_tries_the_kubernetes_api(pod: Pod) -> None:
    pod.controller.on_run(
        "ADDED",
        {
            "metadata": {"name": "stranger", "namespace": NS, "uid": "u", "resourceVersion": "1"},
            "spec": {"task": "inrun.child"},
            "status": {"phase": "Executing"},
        },
    )
    with pytest.raises(TriggerUnavailableError, match="child runs"):
        await pod.call(lambda: list(runs.subscribe("stranger")))
    with pytest.raises(TriggerUnavailableError):
        await pod.call(lambda: runs.retrieve("stranger"))


async def test_the_async_client_follows_a_child_live(pod: Pod) -> None:
    handle = await pod.call(lambda: child.trigger({"n": 1}))

    async def retrieve() -> Any:
        async with AsyncClient() as client:
            return await client.retrieve(handle.id)

    assert (await pod.call(lambda: asyncio.run(retrieve()))).spec.payload == {"n": 1}

    first = threading.Event()

    async def in_task() -> list[Any]:
        steps = []
        async with AsyncClient() as client:
            async for r in client.subscribe(handle.id):
                steps.append(r.status and (r.status.metadata or {}).get("step"))
                first.set()
        return steps

    seen = asyncio.ensure_future(pod.call(lambda: asyncio.run(in_task())))
    # Changed only once the first event (the run as it stands) has arrived.
    assert await asyncio.to_thread(first.wait, 10)
    pod.set_status(handle.id, phase="Executing", metadata={"step": 1})
    await asyncio.sleep(0.05)
    pod.set_status(handle.id, phase="Failed")
    assert await asyncio.wait_for(seen, 10) == [None, 1, 1]


class ScriptedEvents:
    """A run API whose events streams play a script, one list per connection."""

    def __init__(self, *streams: list[RunEvent | RunApiError | None]) -> None:
        self.streams = list(streams)
        self.connections: list[str | None] = []

    def events(self, run: str | None = None, **_: Any) -> Iterator[RunEvent | None]:
        self.connections.append(run)
        for item in self.streams.pop(0):
            if isinstance(item, RunApiError):
                raise item
            yield item


def seen(phase: str, **status: Any) -> RunEvent:
    return RunEvent("run", {"metadata": {"name": "kid"}, "status": {"phase": phase, **status}})


def follow(api: ScriptedEvents, target: str = "kid") -> list[Any]:
    session = _waits.WaitSession(
        api,  # type: ignore[arg-type]
        namespace=NS,
        run=PARENT,
        attempt=1,
        journal=[],
        threshold=10.0,
        call_deadline=5.0,
    )
    return [r["status"]["phase"] for r in _inrun.follow(session, target)]


def test_a_dropped_stream_reconnects_and_yields_nothing_twice() -> None:
    api = ScriptedEvents(
        [seen("Queued"), None, seen("Executing")],  # then the operator restarts
        [RunApiError("connection refused")],
        [seen("Executing"), seen("Executing", metadata={"a": 1}), seen("Completed")],
    )
    assert follow(api) == ["Queued", "Executing", "Executing", "Completed"]
    assert api.connections == ["kid", "kid", "kid"]


def test_following_is_refused_for_good_only_on_the_first_connection() -> None:
    with pytest.raises(_inrun.NotFollowable):
        follow(ScriptedEvents([RunApiError("HTTP 403", 403)]))
    # Refused after it was followed (e.g. this run's own token no longer counts): an error.
    with pytest.raises(RunApiError, match="403"):
        follow(ScriptedEvents([seen("Queued")], [RunApiError("HTTP 403", 403)]))
    # Following one's own run names no child.
    own = ScriptedEvents([seen("Completed")])
    assert follow(own, PARENT) == ["Completed"] and own.connections == [None]
