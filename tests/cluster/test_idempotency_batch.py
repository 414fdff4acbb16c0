"""Idempotency keys and batch triggers against the real API server (no operator: what is
tested is which TaskRuns exist; the API server's create-if-absent does the work).

Runs here sit in a paused queue, so an operator watching the cluster would not start them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from podtask import Client
from podtask.api.v1alpha1 import API_VERSION
from podtask.errors import (
    InvalidTriggerOptionsError,
    KubernetesApiError,
    PayloadValidationError,
    TaskNotDeployedError,
)

GROUP, VERSION = "podtask.dev", "v1alpha1"
TASK = "batch.item.process"


@pytest.fixture
def sdk(kube_api: ApiClient, namespace: str) -> Iterator[Client]:
    custom = k8s.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "queues",
        {
            "apiVersion": API_VERSION,
            "kind": "Queue",
            "metadata": {"name": "paused"},
            "spec": {"concurrencyLimit": 0},
        },
    )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "tasks",
        {
            "apiVersion": API_VERSION,
            "kind": "Task",
            "metadata": {"name": TASK},
            "spec": {
                "image": "podtask/runner:dev",
                "entrypoint": "examples.tasks.hello:hello_world",
                "queue": "paused",
            },
        },
    )
    yield Client(kube_api, namespace=namespace)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "taskruns")


def _runs(kube_api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns"
    )["items"]
    return items


def _fire(count: int, trigger: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            results.append(trigger())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_fifty_concurrent_triggers_with_one_key_make_exactly_one_run(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    handles = _fire(50, lambda: sdk.trigger(TASK, {"n": 1}, idempotency_key="order-1"))
    made = _runs(kube_api, namespace)
    assert len(made) == 1
    assert {h.uid for h in handles} == {made[0]["metadata"]["uid"]}
    assert sum(not h.is_cached for h in handles) == 1
    assert made[0]["spec"]["idempotencyKey"] == "order-1"


def test_after_the_ttl_the_key_makes_a_new_run(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    first = sdk.trigger(TASK, {"n": 1}, idempotency_key="ttl", idempotency_key_ttl="2s")
    assert sdk.trigger(TASK, {"n": 2}, idempotency_key="ttl").is_cached
    time.sleep(3.2)  # creationTimestamp has whole seconds
    fresh = sdk.trigger(TASK, {"n": 3}, idempotency_key="ttl")
    assert not fresh.is_cached and fresh.id == first.id and fresh.uid != first.uid
    made = _runs(kube_api, namespace)
    assert [r["spec"]["payload"] for r in made] == [{"n": 3}]


def test_a_failed_run_no_longer_blocks_its_key_but_a_completed_one_does(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    custom = k8s.CustomObjectsApi(kube_api)

    def end(name: str, phase: str) -> None:  # as the operator would write it
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "taskruns", name, {"status": {"phase": phase}}
        )

    failed = sdk.trigger(TASK, {}, idempotency_key="charge-7")
    end(failed.id, "Crashed")
    retried = _fire(20, lambda: sdk.trigger(TASK, {}, idempotency_key="charge-7"))
    made = _runs(kube_api, namespace)
    assert len(made) == 1 and made[0]["metadata"]["uid"] != failed.uid
    assert {h.uid for h in retried} == {made[0]["metadata"]["uid"]}
    assert sum(not h.is_cached for h in retried) == 1
    end(made[0]["metadata"]["name"], "Completed")
    assert sdk.trigger(TASK, {}, idempotency_key="charge-7").is_cached


def test_a_batch_of_a_thousand_makes_a_thousand_runs(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    started = time.monotonic()
    batch = sdk.batch_trigger(
        TASK, [{"payload": {"i": i}, "options": {"tags": [f"i{i % 7}"]}} for i in range(1000)]
    )
    elapsed = time.monotonic() - started
    assert batch.ok and batch.run_count == 1000, batch.errors[:3]
    made = _runs(kube_api, namespace)
    assert len(made) == 1000
    assert {r["metadata"]["labels"]["podtask.dev/batch-id"] for r in made} == {batch.batch_id}
    assert sorted(r["spec"]["payload"]["i"] for r in made) == list(range(1000))
    assert len(sdk.list(batch_id=batch.batch_id, tag="i3")) == len(range(3, 1000, 7))
    print(f"1000 runs created in {elapsed:.1f}s")


def test_a_batch_reports_per_item_errors_and_makes_the_rest(
    kube_api: ApiClient, namespace: str, sdk: Client
) -> None:
    items: list[Any] = [{"payload": {"i": i}} for i in range(6)]
    items[1] = {"payload": {}, "options": {"delay": "whenever"}}
    items[3] = {"payload": {}, "options": {"labels": {"not a label key!": "x"}}}
    items[4] = {"task": "no.such.task", "payload": {}}
    items.append({"task": "sdk.cluster.missing", "payload": {"x": float("inf")}})
    batch = sdk.batch_trigger_by_task(
        [{"task": TASK, **i} if "task" not in i else i for i in items]
    )
    errors = {e.index: e.error for e in batch.errors}
    assert sorted(errors) == [1, 3, 4, 6]
    assert isinstance(errors[1], InvalidTriggerOptionsError)
    assert isinstance(errors[3], KubernetesApiError) and errors[3].status == 422
    assert isinstance(errors[4], TaskNotDeployedError)
    assert isinstance(errors[6], PayloadValidationError)
    made = _runs(kube_api, namespace)
    assert sorted(r["spec"]["payload"]["i"] for r in made) == [0, 2, 5]
    assert [h.id for h in batch.runs] == [
        next(r["metadata"]["name"] for r in made if r["spec"]["payload"]["i"] == i)
        for i in (0, 2, 5)
    ]
