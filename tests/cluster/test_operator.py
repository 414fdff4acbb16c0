"""Operator core on the real control plane: a TaskRun becomes a pod per attempt,
the runner really runs the example task code, and the outcome lands in status."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient

from podtask import runs
from podtask.api.v1alpha1 import RetryPolicy
from podtask_operator.backoff import delay_bounds
from tests.cluster.harness import (
    OperatorProcess,
    apply_task,
    create_run,
    get_run,
    phase_of,
    pods_of,
    wait_final,
    wait_for,
    wait_for_phase,
)

KUBECTL = Path(sys.executable).with_name("kubectl")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def core(kube_api: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_kubectl_applied_run_completes_with_output(
    operator: OperatorProcess,
    kube_api: ApiClient,
    namespace: str,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    manifest = {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": "greet-ada", "namespace": namespace},
        "spec": {"task": "hello.world", "payload": {"name": "Ada"}},
    }
    subprocess.run(
        [str(KUBECTL), "apply", "-f", "-"],
        input=json.dumps(manifest).encode(),
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path), "PATH": ""},
        check=True,
    )
    run = wait_final(kube_api, namespace, "greet-ada")
    status = run["status"]
    assert status["phase"] == "Completed", status
    assert status["output"] == {"greeting": "Hello, Ada!"}
    assert status["attempt"] == 1
    assert status["taskSnapshot"]["entrypoint"] == "examples.tasks.hello:hello_world"
    assert status["attempts"][0]["pod"] == "greet-ada-1"
    assert status["metadata"]["progress"] == 1
    # The finished pod is kept for `kubectl logs` (stopped, it holds no slot), and the
    # slot's Lease is deleted once no other run has taken it over.
    leases = client.CoordinationV1Api(kube_api)

    def settled(_: dict[str, Any]) -> bool:
        pods = pods_of(kube_api, namespace)
        held = leases.list_namespaced_lease(namespace, label_selector="podtask.dev/run-uid")
        return [(p.metadata.name, p.status.phase) for p in pods] == [
            ("greet-ada-1", "Succeeded")
        ] and not held.items

    wait_for(kube_api, namespace, "greet-ada", settled, 30, "the pod kept, the Lease released")


def test_large_output_goes_to_secrets_and_reads_back_exactly(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "big.output", "examples.tasks.big_output:big_output")
    size = 3 * 1024 * 1024
    name = create_run(kube_api, namespace, "big.output", {"bytes": size, "seed": 7})
    run = wait_final(kube_api, namespace, name)
    status = run["status"]
    assert status["phase"] == "Completed", status
    assert "output" not in status
    ref = status["outputRef"]
    assert ref["kind"] == "Secret" and len(ref["names"]) >= 4
    output = runs.output(runs.retrieve(name, namespace, api=kube_api), api=kube_api)
    # The same bytes the task produced: regenerate them from the seed.
    from examples.tasks.big_output import generate

    assert output == generate(7, size)


def test_retries_with_backoff_then_completes(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(
        kube_api,
        namespace,
        "flaky",
        "examples.tasks.flaky:flaky",
        retry={
            "maxAttempts": 5,
            "minTimeout": "1s",
            "maxTimeout": "4s",
            "factor": 2,
            "randomize": False,
        },
    )
    name = create_run(kube_api, namespace, "flaky", {"succeed_on": 3})
    status = wait_final(kube_api, namespace, name)["status"]
    assert status["phase"] == "Completed", status
    assert status["output"] == {"attempt": 3}
    attempts = status["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [a["reason"] for a in attempts] == ["Error", "Error", "Completed"]
    policy = RetryPolicy(
        max_attempts=5, min_timeout="1s", max_timeout="4s", factor=2, randomize=False
    )
    for failed, following in itertools.pairwise(attempts):
        waited = (_time(following["startedAt"]) - _time(failed["finishedAt"])).total_seconds()
        low, high = delay_bounds(policy, failed["number"])
        # Upper slack: pod creation and process start on a 2-core machine.
        assert low <= waited <= high + 10, (failed["number"], waited, low, high)


def test_abort_fails_without_retrying(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "abort", "examples.tasks.abort:abort", retry={"maxAttempts": 5})
    name = create_run(kube_api, namespace, "abort", {})
    status = wait_final(kube_api, namespace, name)["status"]
    assert status["phase"] == "Failed", status
    assert len(status["attempts"]) == 1
    assert status["error"]["type"] == "AbortTaskRunError"


def test_max_duration_times_out(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    name = create_run(kube_api, namespace, "sleeper", {"seconds": 120}, maxDuration="5s")
    status = wait_final(kube_api, namespace, name, timeout=90)["status"]
    assert status["phase"] == "TimedOut", status
    assert status["error"]["type"] == "MAX_DURATION_EXCEEDED"


def test_oom_killed_attempt_retries_on_bigger_machine(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(
        kube_api,
        namespace,
        "memory.hog",
        "examples.tasks.memory_hog:memory_hog",
        machine="micro",
        retry={"maxAttempts": 3, "minTimeout": "1s", "outOfMemory": {"machine": "small-2x"}},
    )
    name = create_run(kube_api, namespace, "memory.hog", {"mb": 600, "retry_mb": 10})
    status = wait_final(kube_api, namespace, name)["status"]
    assert status["phase"] == "Completed", status
    first, second = status["attempts"]
    assert (first["reason"], first["machine"]) == ("OOMKilled", "micro")
    assert second["machine"] == "small-2x"


def test_pod_deleted_behind_the_operators_back_is_retried_for_free(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, core: client.CoreV1Api
) -> None:
    apply_task(
        kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper", retry={"maxAttempts": 1}
    )
    name = create_run(kube_api, namespace, "sleeper", {"seconds": 8})
    wait_for_phase(kube_api, namespace, name, {"Executing"})
    core.delete_namespaced_pod(f"{name}-1", namespace, grace_period_seconds=0)
    status = wait_final(kube_api, namespace, name, timeout=120)["status"]
    # maxAttempts is 1, so only a retry that does not count can have saved it.
    assert status["phase"] == "Completed", status
    assert status["attempt"] == 1
    assert [a["counted"] for a in status["attempts"]] == [False, True]
    assert status["attempts"][1]["pod"] == f"{name}-1-r1"


def test_cancel_executing_run_runs_on_cancel(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, tmp_path: Path
) -> None:
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    marker = tmp_path / "canceled"
    name = create_run(kube_api, namespace, "sleeper", {"seconds": 120, "marker": str(marker)})
    wait_for_phase(kube_api, namespace, name, {"Executing"})
    # on_cancel runs for a run whose function is executing (as Trigger.dev's onCancel):
    # wait until the function has started, as its log shows.
    core = client.CoreV1Api(kube_api)
    deadline = time.monotonic() + 60
    while "sleeping" not in core.read_namespaced_pod_log(f"{name}-1", namespace):
        assert time.monotonic() < deadline, "the task function never started"
        time.sleep(0.2)
    runs.cancel(name, namespace, api=kube_api)
    status = wait_final(kube_api, namespace, name)["status"]
    assert status["phase"] == "Canceled"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.read_text() == "canceled"


def test_replay_creates_a_linked_run_with_the_same_payload(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    original = create_run(kube_api, namespace, "hello.world", {"name": "Grace"})
    wait_final(kube_api, namespace, original)
    replay = runs.replay(original, namespace, api=kube_api)
    assert replay.spec.replay_of == original
    assert replay.spec.payload == {"name": "Grace"}
    name = replay.metadata.name
    assert name is not None
    status = wait_final(kube_api, namespace, name)["status"]
    assert status["output"] == {"greeting": "Hello, Grace!"}


def test_unknown_task_fails_with_a_clear_reason(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    name = create_run(kube_api, namespace, "no.such.task", {})
    status = wait_final(kube_api, namespace, name, timeout=60)["status"]
    assert status["phase"] == "Failed"
    assert status["error"]["type"] == "COULD_NOT_FIND_TASK"
    assert "no.such.task" in status["error"]["message"]


def test_pod_is_restricted_and_has_no_token(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, core: client.CoreV1Api
) -> None:
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    name = create_run(kube_api, namespace, "sleeper", {"seconds": 3})
    wait_for_phase(kube_api, namespace, name, {"Executing", "Completed"})
    pod = core.read_namespaced_pod(f"{name}-1", namespace)
    assert pod.spec.automount_service_account_token is False
    assert not any(v.projected or v.secret for v in pod.spec.volumes or [])
    assert wait_final(kube_api, namespace, name)["status"]["phase"] == "Completed"


def test_run_api_rejects_foreign_missing_and_oversized(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str, core: client.CoreV1Api
) -> None:
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    first = create_run(kube_api, namespace, "sleeper", {"seconds": 20})
    second = create_run(kube_api, namespace, "sleeper", {"seconds": 20})
    for name in (first, second):
        wait_for_phase(kube_api, namespace, name, {"Executing"})
    tokens = {}
    for name in (first, second):
        env = core.read_namespaced_pod(f"{name}-1", namespace).spec.containers[0].env
        tokens[name] = next(v.value for v in env if v.name == "PODTASK_RUN_TOKEN")
    url = f"{operator.url}/v1/runs/{namespace}/{first}"
    own = {"Authorization": f"Bearer {tokens[first]}"}
    foreign = {"Authorization": f"Bearer {tokens[second]}"}
    assert httpx.get(f"{url}/context?attempt=1", headers=own).status_code == 200
    assert httpx.get(f"{url}/context?attempt=1", headers=foreign).status_code == 403
    assert httpx.get(f"{url}/context?attempt=1").status_code == 401
    huge = b'{"attempt": 1, "output": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    answer = httpx.post(
        f"{url}/complete", headers={**own, "Content-Type": "application/json"}, content=huge
    )
    assert answer.status_code == 413
    for name in (first, second):
        runs.cancel(name, namespace, api=kube_api)


def _watch_pods(
    kube_api: ApiClient, namespace: str, seen: dict[str, set[str]], stop: list[bool]
) -> None:
    stream = watch.Watch()
    for event in stream.stream(
        client.CoreV1Api(kube_api).list_namespaced_pod, namespace, timeout_seconds=5
    ):
        pod = event["object"]
        seen.setdefault(pod.metadata.name, set()).add(pod.metadata.uid)
        if stop:
            stream.stop()


def test_operator_killed_mid_flight_recovers_without_duplicates(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    import threading

    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    apply_task(
        kube_api,
        namespace,
        "flaky",
        "examples.tasks.flaky:flaky",
        retry={"maxAttempts": 3, "minTimeout": "4s", "maxTimeout": "4s", "randomize": False},
    )
    seen: dict[str, set[str]] = {}
    stop: list[bool] = []

    def watch_all() -> None:
        while not stop:
            _watch_pods(kube_api, namespace, seen, stop)

    watcher = threading.Thread(target=watch_all, daemon=True)
    watcher.start()
    executing = create_run(kube_api, namespace, "sleeper", {"seconds": 6})
    between = create_run(kube_api, namespace, "flaky", {"succeed_on": 2})
    wait_for_phase(kube_api, namespace, executing, {"Executing"})
    # `between` is in its retry backoff: attempt 1 failed, attempt 2 not started.
    wait_for(
        kube_api,
        namespace,
        between,
        lambda r: phase_of(r) == "Queued" and (r["status"].get("attempt") == 1),
        60,
        "retry backoff",
    )
    operator.kill()
    dequeued = create_run(kube_api, namespace, "sleeper", {"seconds": 2})
    time.sleep(3)
    operator.start()
    results = {
        name: wait_final(kube_api, namespace, name, timeout=120)["status"]
        for name in (executing, between, dequeued)
    }
    stop.append(True)
    watcher.join(10)
    assert {name: s["phase"] for name, s in results.items()} == dict.fromkeys(results, "Completed")
    assert results[between]["attempt"] == 2
    for name, uids in seen.items():
        assert len(uids) == 1, f"pod {name} was created {len(uids)} times"
    expected = {f"{executing}-1", f"{between}-1", f"{between}-2", f"{dequeued}-1"}
    assert expected <= set(seen), seen
    extra = set(seen) - expected
    # A pod killed with the operator may be re-run for free (-r1), never as a new attempt.
    assert all("-r" in name for name in extra), extra


def test_status_survives_reads_as_the_model(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world")
    name = create_run(kube_api, namespace, "hello.world", {"name": "Linus"}, tags=["a", "b"])
    wait_final(kube_api, namespace, name)
    parsed = runs.retrieve(name, namespace, api=kube_api)
    assert parsed.status is not None and parsed.status.phase == "Completed"
    assert parsed.status.duration is not None
    raw: dict[str, Any] = get_run(kube_api, namespace, name)
    assert raw["status"]["queue"].startswith("task-hello-world-")
