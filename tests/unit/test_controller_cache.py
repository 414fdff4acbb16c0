"""The controller's pod cache and executor, without a cluster: pod events that change
nothing a decision reads wake no reconcile; a pod the executor deleted shows as
deleting at once (never deleted twice, never taken for gone); routine phase Events
are posted only when asked for."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from podtask.api.v1alpha1 import TaskSpec
from podtask_operator.controller import Controller
from podtask_operator.kube import ApiError
from podtask_operator.metrics import OperatorMetrics
from podtask_operator.runstate import Decision, Event, PodPlan, PodView
from podtask_operator.settings import Settings
from podtask_operator.tokens import RunTokens

NS, RUN = "team-a", "run-a"
KEY = (NS, RUN)


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: ApiError | None = None

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path))
        if self.refuse is not None:
            raise self.refuse
        return body

    async def delete(self, path: str, **_: Any) -> None:
        self.calls.append(("DELETE", path))


def controller(**settings: Any) -> tuple[Controller, RecordingKube]:
    kube = RecordingKube()
    made = Controller(
        kube,  # type: ignore[arg-type]
        Settings(**settings),
        RunTokens(b"k" * 32),
        OperatorMetrics(CollectorRegistry()),
    )
    return made, kube


def pod(version: int, phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{RUN}-1",
            "namespace": NS,
            "resourceVersion": str(version),
            "ownerReferences": [
                {"apiVersion": "podtask.dev/v1alpha1", "kind": "TaskRun", "name": RUN}
            ],
        },
        "status": {"phase": phase, **status},
    }


def run() -> dict[str, Any]:
    return {
        "metadata": {"name": RUN, "namespace": NS, "uid": "uid-a"},
        "spec": {"task": "t"},
        "status": {"phase": "Canceled", "queue": "q"},
    }


async def drain(made: Controller) -> int:
    """How many keys were waiting to be reconciled (and forget them)."""
    count = len(made.queue)
    for _ in range(count):
        key = await made.queue.get()
        made.queue.done(key)
    return count


async def test_pod_events_that_change_no_decision_wake_no_reconcile() -> None:
    made, _ = controller()
    made.on_pod("ADDED", pod(1))
    assert await drain(made) == 1
    made.on_pod("MODIFIED", pod(2, podIP="10.0.0.7", hostIP="10.0.0.1"))
    assert await drain(made) == 0, "an IP is nothing a decision reads"
    assert made.pods[KEY][f"{RUN}-1"]["status"]["podIP"] == "10.0.0.7", "the cache is current"
    made.on_pod("MODIFIED", pod(1, phase="Succeeded"))
    assert await drain(made) == 0, "an older version is ignored"
    made.on_pod("MODIFIED", pod(3, phase="Succeeded"))
    assert await drain(made) == 1
    made.on_pod("DELETED", pod(4, phase="Succeeded"))
    assert await drain(made) == 1 and made.pods[KEY] == {}


async def test_a_deleted_pod_shows_as_deleting_until_its_own_events_arrive() -> None:
    made, kube = controller()
    made.on_pod("ADDED", pod(1))
    await made._execute(KEY, run(), Decision(delete_pods=[f"{RUN}-1"]))
    assert kube.calls == [("DELETE", f"/api/v1/namespaces/{NS}/pods/{RUN}-1")]
    view = PodView.from_pod(made.pods[KEY][f"{RUN}-1"])
    assert view.deleting and not view.terminal, "not gone: it may still be running"
    # As the API server has it: the end of its grace period (the setting's default 30 s).
    assert view.delete_by is not None
    grace = (view.delete_by - datetime.now(UTC)).total_seconds()
    assert 25 < grace <= 30
    made.on_pod("MODIFIED", pod(1))
    assert PodView.from_pod(made.pods[KEY][f"{RUN}-1"]).deleting, "a stale echo changes nothing"
    made.on_pod("MODIFIED", pod(2, phase="Failed"))
    assert PodView.from_pod(made.pods[KEY][f"{RUN}-1"]).terminal


async def test_routine_phase_events_are_posted_only_when_asked_for() -> None:
    events = [
        Event("Normal", "Queued", "queued", routine=True),
        Event("Normal", "Retrying", "retry in 1s"),
        Event("Warning", "Failed", "boom"),
    ]
    for phase_events, expected in ((False, 2), (True, 3)):
        made, kube = controller(phase_events=phase_events)
        await made._execute(KEY, run(), Decision(events=list(events)))
        await asyncio.gather(*made._background)
        posted = [call for call in kube.calls if call[1].endswith("/events")]
        assert len(posted) == expected, (phase_events, posted)


async def test_the_cache_keeps_a_pods_metadata_and_status_only() -> None:
    made, _ = controller()
    body = pod(1, phase="Succeeded")
    body["spec"] = {"containers": [{"name": "main", "env": [{"name": "A", "value": "x" * 100}]}]}
    body["metadata"]["managedFields"] = [{"manager": "podtask-operator", "fieldsV1": {}}]
    made.on_pod("ADDED", body)
    cached = made.pods[KEY][f"{RUN}-1"]
    assert set(cached) == {"metadata", "status"} and "managedFields" not in cached["metadata"]
    assert PodView.from_pod(cached) == PodView.from_pod(body)
    assert "spec" in body, "the watch event's own body is left as it was"


async def test_a_pod_the_quota_refused_is_tried_again_soon_then_less_often() -> None:
    made, kube = controller()
    quota = ApiError(403, {"message": 'pods "x" is forbidden: exceeded quota: podtask-queue-q'})
    plan = PodPlan(
        name=f"{RUN}-1",
        attempt=1,
        machine="micro",
        queue="q",
        max_duration=None,
        snapshot=TaskSpec(image="app:1", entrypoint="app.tasks:run"),
    )
    decision = Decision(create_pod=plan)
    loop = asyncio.get_running_loop()
    waits = []
    kube.refuse = quota
    for _ in range(8):
        assert not await made._create_pod(KEY, run(), decision)
        waits.append(round(made.queue._timers[KEY].when() - loop.time(), 1))
        made.queue.forget(KEY)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    kube.refuse = None
    assert await made._create_pod(KEY, run(), decision)
    kube.refuse = quota
    assert not await made._create_pod(KEY, run(), decision)
    assert made.queue._timers[KEY].when() - loop.time() <= 0.1, "a created pod starts afresh"


class GettingKube(RecordingKube):
    """Answers GETs of pods from ``pods`` (absent: 404), as the API server would."""

    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.pods = pods

    async def request(self, method: str, path: str, *_: Any, **__: Any) -> dict[str, Any]:
        self.calls.append((method, path))
        name = path.rsplit("/", 1)[-1]
        if name not in self.pods:
            raise ApiError(404, {"reason": "NotFound", "message": f"pods {name!r} not found"})
        return self.pods[name]


def test_a_pod_gone_while_the_watch_was_down_is_dropped_before_giving_up_on_it() -> None:
    # The API server restarted while the pod was deleted: the watch never said DELETED.
    made, _ = controller()
    kube = GettingKube({})
    made.kube = kube  # type: ignore[assignment]
    made.on_pod("ADDED", pod(1))
    assert asyncio.run(made._refresh_pods(KEY)) is True
    assert made.pods[KEY] == {}
    assert ("GET", f"/api/v1/namespaces/{NS}/pods/{RUN}-1") in kube.calls


def test_a_pod_as_cached_is_confirmed() -> None:
    made, _ = controller()
    made.kube = GettingKube({f"{RUN}-1": pod(1)})  # type: ignore[assignment]
    made.on_pod("ADDED", pod(1))
    assert asyncio.run(made._refresh_pods(KEY)) is False
    assert f"{RUN}-1" in made.pods[KEY]


def test_a_newer_pod_replaces_the_cached_one() -> None:
    made, _ = controller()
    made.kube = GettingKube({f"{RUN}-1": pod(2, "Failed")})  # type: ignore[assignment]
    made.on_pod("ADDED", pod(1))
    assert asyncio.run(made._refresh_pods(KEY)) is True
    assert PodView.from_pod(made.pods[KEY][f"{RUN}-1"]).terminal
