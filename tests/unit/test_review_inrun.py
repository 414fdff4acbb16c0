"""Review findings on plain triggers and events inside a run (see test_in_run.py for the
fixture: the SDK, the real run API over HTTP, the Controller and an in-memory API server)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from podtask import _inrun, _waits, protocol, runs
from podtask.api.v1alpha1 import Phase, TaskRunSpec
from podtask.protocol import ChildRun, RunTriggerRequest, TriggerChild, TriggerRequest
from podtask.runapi import RunApiError, RunEvent
from podtask_operator.runevents import RunWatchers, sse

# Imported under the name pytest gives the module (tests/ is its import root), so that
# its tasks are registered once.
from unit.test_in_run import (
    NS,
    PARENT,
    Pod,
    ScriptedEvents,
    _in_the_pods_environment,
    _until_followed,
    child,
    pod,
)

__all__ = ["_in_the_pods_environment", "pod"]  # the fixtures


async def test_a_keyed_child_that_failed_is_not_replaced_by_a_resend_of_its_trigger(
    pod: Pod,
) -> None:
    # The journal of a plain trigger becomes durable only with a later step or
    # checkpoint: a pod of the same attempt started again (eviction) sends the trigger
    # again.  Its keyed child meanwhile failed, releasing the key; still the trigger that
    # made it must get it back, not delete it and make a second one.
    first = await pod.call(lambda: child.trigger({"n": 1}, idempotency_key="once"))
    pod.set_status(first.id, phase="Failed")
    stored = pod.kube.runs()[first.id]
    stored["status"] = {"phase": "Failed"}
    pod.session.entries.clear()  # the journal was not durable yet
    session = pod.resume()
    assert session.entries == []
    again = await pod.call(lambda: child.trigger({"n": 1}, idempotency_key="once"))
    assert (again.id, again.is_cached) == (first.id, False)
    assert pod.kube.deletes == []
    assert pod.kube.runs()[first.id]["metadata"]["uid"] == stored["metadata"]["uid"]


async def test_a_run_cannot_have_its_children_read_a_secret_as_their_payload(pod: Pod) -> None:
    # payloadFrom makes the operator read the Secret (with its own rights) and hand it
    # to the child's pod: a run pod, which has no Kubernetes credentials, must not be
    # able to point it at the namespace's Secrets and ConfigMaps.
    spec = TaskRunSpec.model_validate(
        {"task": "inrun.child", "payloadFrom": {"secretKeyRef": {"name": "db", "key": "creds"}}}
    )
    detached = RunTriggerRequest(
        attempt=1, position=0, runs=[TriggerChild(spec=spec)], detached=True
    )
    waited = TriggerRequest(attempt=1, position=1, runs=[ChildRun(spec=spec)])
    for send in (
        lambda: pod.api.trigger_detached(detached),
        lambda: pod.api.trigger(waited),
    ):
        with pytest.raises(RunApiError) as refused:
            await asyncio.to_thread(send)
        assert refused.value.status == 422
        assert "payloadFrom" in str(refused.value)
    assert set(pod.kube.runs()) == {PARENT}


async def test_a_subscription_ends_when_its_run_is_replaced_under_the_same_name(
    pod: Pod,
) -> None:
    # A keyed child whose key was released is deleted and made again under the same
    # name, maybe by another run; the cache may show the new run before the follower
    # looks again.  The follower must not take it for the run it followed.
    handle = await pod.call(lambda: child.trigger({"n": 1}, idempotency_key="k"))
    pod.set_status(handle.id, phase="Failed")
    followed = asyncio.ensure_future(
        pod.call(
            lambda: [
                r.status.phase for r in runs.subscribe(handle, close_on_complete=False) if r.status
            ]
        )
    )
    await _until_followed(pod, handle.id)
    stranger = copy.deepcopy(pod.controller.runs[(NS, handle.id)])
    stranger["metadata"].update(uid="uid-stranger", resourceVersion="999")
    stranger["spec"]["parentRun"] = "another-run"
    stranger["status"] = {"phase": "Completed", "output": {"theirs": True}}
    pod.controller.on_run("DELETED", pod.controller.runs[(NS, handle.id)])
    pod.controller.on_run("ADDED", stranger)
    pod.watchers.changed(NS, handle.id)
    assert await asyncio.wait_for(followed, 10) == [Phase.FAILED]


def test_a_reconnected_stream_of_another_run_under_the_same_name_ends_the_subscription() -> None:
    def run(uid: str, phase: str) -> RunEvent:
        return RunEvent(
            "run", {"metadata": {"name": "kid", "uid": uid}, "status": {"phase": phase}}
        )

    api = ScriptedEvents(
        [run("uid-1", "Failed")],  # then the stream drops
        [RunApiError("connection refused")],
        [run("uid-2", "Completed")],  # a new child of the same name (its key was reused)
    )
    session = _waits.WaitSession(
        api,  # type: ignore[arg-type]
        namespace=NS,
        run=PARENT,
        attempt=1,
        journal=[],
        threshold=10.0,
        call_deadline=5.0,
    )
    seen = [r["status"]["phase"] for r in _inrun.follow(session, "kid", close_on_complete=False)]
    assert seen == ["Failed"]


async def test_the_events_stream_never_sends_a_run_made_again_under_the_followed_name() -> None:
    mine = {"metadata": {"name": "kid", "uid": "uid-1"}, "status": {"phase": "Failed"}}
    cache: dict[tuple[str, str], dict[str, Any]] = {(NS, "kid"): mine}
    watchers = RunWatchers(cache, keepalive=5)
    stream = watchers.follow(NS, "kid", close_on_complete=False)
    first = await anext(stream)
    assert b'"uid-1"' in first
    cache[(NS, "kid")] = {
        "metadata": {"name": "kid", "uid": "uid-2"},
        "spec": {"parentRun": "another-run"},
        "status": {"phase": "Completed", "output": {"theirs": True}},
    }
    watchers.changed(NS, "kid")
    after = await asyncio.wait_for(anext(stream), 5)
    assert after == sse(protocol.EVENT_DELETED, {"namespace": NS, "name": "kid"})
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 5)
