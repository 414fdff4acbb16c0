"""The triggering SDK and runs API against the real API server, with the operator running:
runs are triggered by object and by id, every option lands in the TaskRun, a subscriber
sees metadata change while the task runs, cancel and replay work end to end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from pydantic import BaseModel

from examples.tasks.hello import hello_world
from podtask import AsyncClient, Client, runs, schema_task, tasks
from podtask.api.v1alpha1 import Phase
from podtask.errors import PayloadValidationError, RunFailedError, TaskNotDeployedError
from tests.cluster.harness import OperatorProcess, apply_task, get_run, wait_for_phase


@pytest.fixture
def sdk(kube_api: ApiClient, namespace: str) -> Client:
    return Client(kube_api, namespace=namespace)


class Signup(BaseModel):
    email: str


@schema_task(id="sdk.cluster.signup", schema=Signup)
def signup(payload: Signup) -> str:
    return payload.email


def test_trigger_by_object_and_by_id_complete_with_output(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    by_object = hello_world.trigger({"name": "Ada"}, client=sdk)
    by_id = tasks.trigger("hello.world", {"name": "Grace"}, client=sdk)
    assert by_object.namespace == namespace and by_object.task_identifier == "hello.world"
    assert by_object.result(timeout=90).unwrap() == {"greeting": "Hello, Ada!"}
    result = by_id.result(timeout=90)
    assert result.ok and result.phase == Phase.COMPLETED
    assert result.output == {"greeting": "Hello, Grace!"}
    listed = sdk.list(task="hello.world", status="COMPLETED")
    assert {r.metadata.name for r in listed} == {by_object.id, by_id.id}


def test_every_option_reaches_the_taskrun(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    handle = sdk.trigger(
        "hello.world",
        {"name": "Later"},
        idempotency_key="opts-1",
        idempotency_key_ttl="1h",
        concurrency_key="tenant-1",
        queue="opts-queue",
        delay="1h",
        ttl="2h",
        tags=["sdk", "options"],
        metadata={"stage": "delayed"},
        machine="small-2x",
        max_attempts=4,
        max_duration="30s",
        priority=15,
        labels={"team": "sdk"},
    )
    stored = wait_for_phase(kube_api, namespace, handle.id, {"Delayed"})
    assert stored["spec"] == {
        "task": "hello.world",
        "payload": {"name": "Later"},
        "idempotencyKey": "opts-1",
        "idempotencyKeyScope": "global",
        "idempotencyKeyTTL": "1h",
        "concurrencyKey": "tenant-1",
        "queue": "opts-queue",
        "delay": "1h",
        "ttl": "2h",
        "tags": ["sdk", "options"],
        "metadata": {"stage": "delayed"},
        "machine": "small-2x",
        "maxAttempts": 4,
        "maxDuration": "30s",
        "priority": 15,
    }
    assert stored["metadata"]["labels"]["team"] == "sdk"
    assert stored["metadata"]["labels"]["podtask.dev/task"] == "hello.world"
    again = sdk.trigger("hello.world", {"name": "Other"}, idempotency_key="opts-1")
    assert again.is_cached and again.uid == handle.uid
    assert sdk.retrieve(handle).spec.payload == {"name": "Later"}
    sdk.cancel(handle)
    assert sdk.poll(handle, timeout=60).status.phase == Phase.CANCELED  # type: ignore[union-attr]


def test_subscribe_sees_metadata_change_while_the_task_runs(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    apply_task(
        kube_api,
        namespace,
        "metadata.report.progress",
        "examples.tasks.metadata_progress:metadata_progress",
    )
    handle = sdk.trigger("metadata.report.progress", {"steps": 6, "step_seconds": 1.0})
    seen: list[tuple[Phase | None, Any]] = []
    for run in runs.subscribe(handle, timeout=120, api=kube_api):
        status = run.status
        seen.append(
            (
                status.phase if status else None,
                (status.metadata or {}).get("progress") if status else None,
            )
        )
    phases = [phase for phase, _ in seen]
    assert phases[-1] == Phase.COMPLETED
    live = [p for phase, p in seen if phase == Phase.EXECUTING and p is not None]
    # Several distinct values arrived while the task was still executing, in order.
    assert len(set(live)) >= 3, seen
    assert live == sorted(live)
    assert len([p for p in live if 0 < p < 1]) >= 2, seen
    assert sdk.result(handle).unwrap() == {"steps": 6}


def test_cancel_and_replay(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, sdk: Client, tmp_path: Path
) -> None:
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    marker = tmp_path / "canceled"
    sleeping = sdk.trigger("sleeper", {"seconds": 120, "marker": str(marker)})
    for line in sdk.logs(sleeping, follow=True):
        if "sleeping" in line:  # the function runs: on_cancel will run on cancel
            break
    sleeping.cancel()
    ended = sleeping.result(timeout=90)
    assert ended.phase == Phase.CANCELED and not ended.ok
    with pytest.raises(RunFailedError, match="ended Canceled"):
        ended.unwrap()
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "canceled"

    original = sdk.trigger("hello.world", {"name": "Replay"}, tags=["first"])
    assert original.result(timeout=90).ok
    replayed = runs.replay(original.id, namespace, api=kube_api)
    assert replayed.spec.replay_of == original.id and replayed.spec.tags == ["first"]
    assert replayed.metadata.name is not None
    assert sdk.result(replayed, timeout=90).unwrap() == {"greeting": "Hello, Replay!"}


def test_schema_task_rejects_a_bad_payload_before_any_taskrun(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    with pytest.raises(PayloadValidationError, match="email"):
        signup.trigger({"mail": "a@b.c"}, client=sdk)
    with pytest.raises(PayloadValidationError):
        tasks.trigger("sdk.cluster.signup", {"email": ["x"]}, client=sdk)
    with pytest.raises(TaskNotDeployedError, match=r"no task 'no\.such\.task'"):
        sdk.trigger("no.such.task", {})
    assert sdk.list() == []


def test_async_client(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, kubeconfig: Path
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")

    async def scenario() -> None:
        async with AsyncClient(kubeconfig=kubeconfig, namespace=namespace) as client:
            handles = await asyncio.gather(
                *(
                    client.trigger("hello.world", {"name": "Async"}, idempotency_key="async")
                    for _ in range(10)
                )
            )
            assert len({h.uid for h in handles}) == 1
            assert sum(not h.is_cached for h in handles) == 1
            phases = [
                r.status.phase if r.status else None async for r in client.subscribe(handles[0])
            ]
            assert phases[-1] == Phase.COMPLETED and Phase.EXECUTING in phases
            result = await handles[0].result()
            assert result.unwrap() == {"greeting": "Hello, Async!"}
            batch = await hello_world.batch_trigger_async(
                [{"payload": {"name": str(i)}} for i in range(3)], client=client
            )
            assert batch.run_count == 3
            async with asyncio.timeout(90):
                outputs = [(await h.result()).unwrap() for h in batch.runs]
            assert outputs == [{"greeting": f"Hello, {i}!"} for i in range(3)]
            assert len(await client.list(batch_id=batch.batch_id)) == 3

    asyncio.run(scenario())


def test_list_filters_by_tag_status_and_time(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    eu = sdk.trigger("hello.world", {"name": "eu"}, tags=["eu"])
    us = sdk.trigger("hello.world", {"name": "us"}, tags=["us"], delay="1h")
    eu.poll(timeout=90)
    wait_for_phase(kube_api, namespace, us.id, {"Delayed"})
    assert [r.metadata.name for r in sdk.list(tag="eu")] == [eu.id]
    assert [r.metadata.name for r in sdk.list(status="DELAYED")] == [us.id]
    assert {r.metadata.name for r in sdk.list(period="1h")} == {us.id, eu.id}
    assert sdk.list(created_before=datetime.now(UTC) - timedelta(hours=1)) == []
    assert sdk.list(task="other.task") == []
    # Everything listed is what the API server holds.
    assert get_run(kube_api, namespace, eu.id)["status"]["phase"] == "Completed"
    k8s.CustomObjectsApi(kube_api).delete_collection_namespaced_custom_object(
        "podtask.dev", "v1alpha1", namespace, "taskruns"
    )
