"""Queues on the real control plane: limits sampled from the API server (never from
the operator's memory), the ResourceQuota backstop, per-key and rate limits,
priority, delay and ttl."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from podtask.api.v1alpha1 import API_VERSION
from podtask_operator.dispatcher import priority_class_name
from tests.cluster.harness import (
    GROUP,
    VERSION,
    OperatorProcess,
    apply_task,
    create_run,
    get_run,
    phase_of,
    wait_final,
    wait_for,
    wait_for_phase,
)

HELD = ("Dequeued", "Executing")


def make_queue(api: ApiClient, namespace: str, name: str, **spec: Any) -> None:
    body = {"apiVersion": API_VERSION, "kind": "Queue", "metadata": {"name": name}, "spec": spec}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "queues", body
    )


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _live_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    pods = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/managed-by=podtask"
    ).items
    return [
        p
        for p in pods
        if p.status.phase in ("Pending", "Running") and p.metadata.deletion_timestamp is None
    ]


@contextmanager
def sampled(api: ApiClient, namespace: str, interval: float = 0.1) -> Iterator[dict[str, int]]:
    """Peak live pods and peak slot-holding runs, listed from the API server."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    peaks = {"pods": 0, "runs": 0, "samples": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pods = len(_live_pods(core, namespace))
            runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "taskruns")
            held = sum(1 for r in runs["items"] if phase_of(r) in HELD)
            peaks["pods"] = max(peaks["pods"], pods)
            peaks["runs"] = max(peaks["runs"], held)
            peaks["samples"] += 1
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join(10)


@contextmanager
def pod_creations(api: ApiClient, namespace: str) -> Iterator[dict[str, set[str]]]:
    """Every pod name seen in the namespace, with the UIDs it had (a re-create adds one)."""
    seen: dict[str, set[str]] = {}
    stop = threading.Event()

    def run() -> None:
        core = client.CoreV1Api(api)
        while not stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=2):
                pod = event["object"]
                seen.setdefault(pod.metadata.name, set()).add(pod.metadata.uid)
                if stop.is_set():
                    stream.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def _burst(api: ApiClient, namespace: str, count: int) -> list[str]:
    return [create_run(api, namespace, "burst.hello", {"name": f"r{i}"}) for i in range(count)]


def _wait_all(
    api: ApiClient, namespace: str, names: list[str], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [wait_final(api, namespace, n, max(1.0, deadline - time.monotonic())) for n in names]


def test_burst_of_200_never_exceeds_the_limit(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "five", concurrencyLimit=5)
    apply_task(kube_api, namespace, "burst.hello", "examples.tasks.hello:hello_world", queue="five")
    with pod_creations(kube_api, namespace) as seen, sampled(kube_api, namespace) as peaks:
        names = _burst(kube_api, namespace, 200)
        runs = _wait_all(kube_api, namespace, names, timeout=600)
    assert peaks["samples"] > 50
    assert peaks["pods"] <= 5, peaks
    assert peaks["runs"] <= 5, peaks
    assert [r["status"]["phase"] for r in runs] == ["Completed"] * 200
    assert all(len(uids) == 1 for uids in seen.values()), "a pod was created twice"
    assert {f"{n}-1" for n in names} == set(seen)


def test_burst_survives_two_operator_kills(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "five", concurrencyLimit=5)
    apply_task(kube_api, namespace, "burst.hello", "examples.tasks.hello:hello_world", queue="five")
    with pod_creations(kube_api, namespace) as seen, sampled(kube_api, namespace) as peaks:
        names = _burst(kube_api, namespace, 200)
        for _ in range(2):
            time.sleep(8)
            operator.kill()
            time.sleep(2)
            operator.start()
        runs = _wait_all(kube_api, namespace, names, timeout=600)
    assert peaks["pods"] <= 5, peaks
    assert peaks["runs"] <= 5, peaks
    phases = [r["status"]["phase"] for r in runs]
    assert phases == ["Completed"] * 200, {p: phases.count(p) for p in set(phases)}
    assert all(len(uids) == 1 for uids in seen.values()), "a pod was created twice"
    # No run executed twice: one counted attempt each, and its pod is <run>-1.
    assert all(r["status"]["attempt"] == 1 for r in runs)
    extra = set(seen) - {f"{n}-1" for n in names}
    assert all("-r" in name for name in extra), extra


def test_the_quota_refuses_a_pod_beyond_the_limit(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "single", concurrencyLimit=1)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", queue="single")
    name = create_run(kube_api, namespace, "sleeper", {"seconds": 30})
    wait_for_phase(kube_api, namespace, name, {"Executing"})
    intruder = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "by-hand"},
        "spec": {
            "priorityClassName": priority_class_name(namespace, "single"),
            "containers": [
                {"name": "c", "image": "python:3.11", "command": ["python", "-c", "print(1)"]}
            ],
        },
    }
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(kube_api).create_namespaced_pod(namespace, intruder)
    assert refused.value.status == 403
    assert "exceeded quota" in str(refused.value.body)
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns", name, {"spec": {"cancel": True}}
    )


def test_per_key_limit_holds_per_key_while_other_keys_proceed(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "tenants", concurrencyLimit=4, perKeyLimit=1)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", queue="tenants")
    busy = [
        create_run(kube_api, namespace, "sleeper", {"seconds": 3}, concurrencyKey="a")
        for _ in range(3)
    ]
    other = create_run(kube_api, namespace, "sleeper", {"seconds": 1}, concurrencyKey="b")
    runs = {name: wait_final(kube_api, namespace, name) for name in [*busy, other]}
    assert all(r["status"]["phase"] == "Completed" for r in runs.values())
    spans = sorted(
        (
            _time(r["status"]["attempts"][0]["startedAt"]),
            _time(r["status"]["attempts"][0]["finishedAt"]),
        )
        for n, r in runs.items()
        if n in busy
    )
    for (_, first_end), (second_start, _) in itertools.pairwise(spans):
        assert second_start >= first_end, "two runs of key a overlapped"
    # Key b did not wait behind key a's queue.
    b_start = _time(runs[other]["status"]["attempts"][0]["startedAt"])
    assert b_start < spans[1][0]


def test_rate_limit_spaces_starts(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(
        kube_api, namespace, "rated", concurrencyLimit=10, rateLimit={"limit": 2, "period": "4s"}
    )
    apply_task(
        kube_api, namespace, "rated.hello", "examples.tasks.hello:hello_world", queue="rated"
    )
    names = [create_run(kube_api, namespace, "rated.hello", {"name": str(i)}) for i in range(6)]
    runs = [wait_final(kube_api, namespace, n, timeout=120) for n in names]
    # The limit is on admissions (a run "starts" when its slot and pod are granted); when
    # the runner process then comes up varies with the machine's load.
    starts = sorted(_time(r["status"]["attempts"][0]["dequeuedAt"]) for r in runs)
    # At most 2 per 4 s: any three admissions span at least the period (less clock slack
    # between the dispatcher's monotonic clock and the recorded wall-clock time).
    for first, third in zip(starts, starts[2:], strict=False):
        assert (third - first).total_seconds() >= 4 - 0.2, starts


def test_higher_priority_starts_first(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "single", concurrencyLimit=1)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", queue="single")
    blocker = create_run(kube_api, namespace, "sleeper", {"seconds": 4})
    wait_for_phase(kube_api, namespace, blocker, {"Executing"})
    low = create_run(kube_api, namespace, "sleeper", {"seconds": 0})
    time.sleep(1)
    high = create_run(kube_api, namespace, "sleeper", {"seconds": 0}, priority=60)
    finished = {n: wait_final(kube_api, namespace, n) for n in (blocker, low, high)}
    start = {n: _time(r["status"]["attempts"][0]["startedAt"]) for n, r in finished.items()}
    assert start[high] < start[low]


def test_delayed_run_starts_no_earlier_and_holds_no_slot(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "single", concurrencyLimit=1)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", queue="single")
    delayed = create_run(kube_api, namespace, "sleeper", {"seconds": 0}, delay="6s")
    wait_for_phase(kube_api, namespace, delayed, {"Delayed"})
    # While it is delayed, another run gets the queue's only slot.
    other = create_run(kube_api, namespace, "sleeper", {"seconds": 0})
    assert wait_final(kube_api, namespace, other, timeout=30)["status"]["phase"] == "Completed"
    assert phase_of(get_run(kube_api, namespace, delayed)) == "Delayed"
    run = wait_final(kube_api, namespace, delayed)
    created = _time(run["metadata"]["creationTimestamp"])
    started = _time(run["status"]["attempts"][0]["startedAt"])
    assert (started - created).total_seconds() >= 6


def test_expired_run_never_starts(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "single", concurrencyLimit=1)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", queue="single")
    blocker = create_run(kube_api, namespace, "sleeper", {"seconds": 8})
    wait_for_phase(kube_api, namespace, blocker, {"Executing"})
    doomed = create_run(kube_api, namespace, "sleeper", {"seconds": 0}, ttl="2s")
    run = wait_for(kube_api, namespace, doomed, lambda r: phase_of(r) == "Expired", 30, "Expired")
    assert not run["status"].get("attempts")
    assert wait_final(kube_api, namespace, blocker)["status"]["phase"] == "Completed"


def test_resource_ceiling_limits_concurrency_by_machine_size(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    # Room for 2 small-1x pods (0.5 CPU each) although 10 slots are free.
    make_queue(
        kube_api, namespace, "sized", concurrencyLimit=10, resources={"cpu": "1", "memory": "4Gi"}
    )
    apply_task(
        kube_api,
        namespace,
        "sleeper",
        "examples.tasks.sleeper:sleeper",
        queue="sized",
        machine="small-1x",
    )
    with sampled(kube_api, namespace) as peaks:
        names = [create_run(kube_api, namespace, "sleeper", {"seconds": 2}) for _ in range(5)]
        runs = [wait_final(kube_api, namespace, n) for n in names]
    assert all(r["status"]["phase"] == "Completed" for r in runs)
    assert peaks["runs"] == 2, peaks
    assert peaks["pods"] <= 2, peaks
