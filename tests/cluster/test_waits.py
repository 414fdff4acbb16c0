"""Waits and child runs on the real control plane (issue #8, ``docs/waits.md``).

The operator runs with a checkpoint threshold of 2 s, so the waits here (5-8 s)
checkpoint: the pod exits, the slot is freed, and a new pod replays the function.

Covers: parent → child → grandchild with outputs flowing back; a batch of 100
children waited on; a failed child gives ``ok=False`` and ``unwrap()`` raises with
its error; a ``wait.for_`` above the threshold leaves no pod and frees the slot
for another run, then resumes the same attempt in a new pod; a token completed
with ``podtask tokens complete`` after the pod exited resumes the run with its
output, an expired one with a timeout; a token created and completed through the SDK
outside any run resumes the run waiting on it; a parent and its child in one queue of
limit 1 complete; canceling a waiting run cancels it and its children; the
operator SIGKILLed mid-wait changes nothing (no duplicate child, one resume).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient

from podtask import Client, wait
from podtask.api.v1alpha1 import API_VERSION
from podtask.errors import TokenAlreadyCompletedError
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

PODTASK = Path(sys.executable).with_name("podtask")
MODULE = "examples.tasks.waits"
THRESHOLD = "2s"


@pytest.fixture(scope="module")
def waits_operator(
    kubeconfig: Path, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with a short checkpoint threshold, one per module."""
    process = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("operator"),
        wait_checkpoint_threshold=THRESHOLD,
        task_grace="30s",
    )
    process.start()
    yield process
    process.stop()


def deploy(api: ApiClient, namespace: str, *names: str, **spec: Any) -> None:
    """Task CRs for example tasks, named by their ids (``waits.child`` → ``child``)."""
    for name in names:
        function = name.removeprefix("waits.").replace("-", "_")
        apply_task(api, namespace, name, f"{MODULE}:{function}", **spec)


def make_queue(api: ApiClient, namespace: str, name: str, limit: int) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"concurrencyLimit": limit},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "queues", body
    )


def runs_of(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns"
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def children_of(api: ApiClient, namespace: str, parent: str) -> list[dict[str, Any]]:
    return [r for r in runs_of(api, namespace) if r["spec"].get("parentRun") == parent]


def pods_of_run(api: ApiClient, namespace: str, run: str) -> list[Any]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"podtask.dev/run={run}"
    )
    return list(pods.items)


def live_pods_of_run(api: ApiClient, namespace: str, run: str) -> list[Any]:
    """The run's pods that have not stopped (stopped ones are kept for their logs)."""
    return [
        p for p in pods_of_run(api, namespace, run) if p.status.phase not in ("Succeeded", "Failed")
    ]


def completed(api: ApiClient, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    run = wait_final(api, namespace, name, timeout)
    assert phase_of(run) == "Completed", run.get("status")
    return run


def reasons(run: dict[str, Any]) -> list[str]:
    return [a.get("reason") for a in run["status"].get("attempts", [])]


def get_token(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    token: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "waittokens", name
    )
    return token


# --------------------------------------------------------------------------- children


def test_parent_child_grandchild_outputs_flow_back(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.parent", "waits.child", "waits.grandchild")
    name = create_run(kube_api, namespace, "waits.parent", {"n": 3})
    run = completed(kube_api, namespace, name)
    assert run["status"]["output"] == {
        "parent": 20,
        "child": {"child": 10, "grandchild": {"square": 9}},
    }
    [child] = children_of(kube_api, namespace, name)
    [grandchild] = children_of(kube_api, namespace, child["metadata"]["name"])
    assert child["spec"]["task"] == "waits.child" and child["status"]["phase"] == "Completed"
    assert grandchild["status"]["output"] == {"square": 9}
    assert child["metadata"]["labels"]["podtask.dev/parent-run"] == name
    assert run["status"]["attempt"] == 1
    assert child["metadata"]["name"] == f"{name}-a1p0-0", "named by its journal position"


def test_a_batch_of_100_children_is_waited_on(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.batch", "waits.square")
    name = create_run(kube_api, namespace, "waits.batch", {"count": 100})
    run = completed(kube_api, namespace, name, timeout=240)
    assert run["status"]["output"] == {"squares": [i * i for i in range(100)], "children": 100}
    children = children_of(kube_api, namespace, name)
    assert len(children) == 100, "each child created exactly once"
    assert {c["status"]["phase"] for c in children} == {"Completed"}
    assert {c["metadata"]["name"] for c in children} == {f"{name}-a1p0-{i}" for i in range(100)}


def test_a_failed_child_gives_ok_false_and_unwrap_raises_its_error(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.check-failure", "waits.failing")
    name = create_run(kube_api, namespace, "waits.check-failure", "payload-7")
    output = completed(kube_api, namespace, name)["status"]["output"]
    [child] = children_of(kube_api, namespace, name)
    assert child["status"]["phase"] == "Failed"
    assert output["ok"] is False
    assert output["error"]["type"] == "ValueError"
    assert output["error"]["message"] == "no luck: payload-7"
    assert output["unwrap"]["type"] == "SubtaskUnwrapError"
    assert "no luck: payload-7" in output["unwrap"]["message"]
    assert output["unwrap"]["run"] == child["metadata"]["name"]


# --------------------------------------------------------------------------- durations


def test_a_long_wait_frees_the_pod_and_the_slot_then_resumes(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "solo", 1)
    deploy(kube_api, namespace, "waits.sleeper", queue="solo")
    apply_task(kube_api, namespace, "hello.world", "examples.tasks.hello:hello_world", queue="solo")
    name = create_run(kube_api, namespace, "waits.sleeper", {"seconds": 8})
    waiting = wait_for_phase(kube_api, namespace, name, {"Waiting"}, timeout=60)
    status = waiting["status"]
    assert status["waitingFor"]["kind"] == "Duration" and status["waitingFor"]["until"]
    assert status["waitingFor"]["since"]
    # Mid-wait: no live pod for the run at all...
    deadline = time.monotonic() + 6
    while live_pods_of_run(kube_api, namespace, name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_pods_of_run(kube_api, namespace, name) == []
    assert phase_of(get_run(kube_api, namespace, name)) == "Waiting"
    # ...and its slot of the limit-1 queue runs another run to completion meanwhile.
    other = create_run(kube_api, namespace, "hello.world", {"name": "slot"})
    assert completed(kube_api, namespace, other, timeout=60)["status"]["output"]
    assert phase_of(get_run(kube_api, namespace, name)) == "Waiting"

    run = completed(kube_api, namespace, name, timeout=60)
    output = run["status"]["output"]
    # The same attempt resumed in a new pod; the first step was not run again.
    assert output == {"before": {"attempt": 1}, "after": {"resumed": True}, "attempt": 1}
    attempts = run["status"]["attempts"]
    assert [(a["number"], a["pod"], a["reason"]) for a in attempts] == [
        (1, f"{name}-1", "Checkpointed"),
        (1, f"{name}-1-w1", "Completed"),
    ]
    assert "waitingFor" not in run["status"]


def test_canceling_a_waiting_run_cancels_it_and_its_children(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.queue-parent")
    # The child's Task names a queue that never admits anything: it stays Queued.
    make_queue(kube_api, namespace, "closed", 0)
    deploy(kube_api, namespace, "waits.queue-child", queue="closed")
    name = create_run(kube_api, namespace, "waits.queue-parent", "x")
    wait_for_phase(kube_api, namespace, name, {"Waiting"}, timeout=60)
    [child] = children_of(kube_api, namespace, name)
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns", name, {"spec": {"cancel": True}}
    )
    assert phase_of(wait_final(kube_api, namespace, name, timeout=30)) == "Canceled"
    child_name = child["metadata"]["name"]
    assert phase_of(wait_final(kube_api, namespace, child_name, timeout=30)) == "Canceled"


# --------------------------------------------------------------------------- tokens


def test_a_token_completed_from_the_cli_after_the_pod_exited_resumes_the_run(
    waits_operator: OperatorProcess,
    kube_api: ApiClient,
    namespace: str,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    deploy(kube_api, namespace, "waits.approval")
    name = create_run(kube_api, namespace, "waits.approval", {"timeout": "10m"})
    run = wait_for(
        kube_api,
        namespace,
        name,
        lambda r: (
            phase_of(r) == "Waiting"
            and not live_pods_of_run(kube_api, namespace, name)
            and bool((r["status"].get("metadata") or {}).get("token"))
        ),
        timeout=60,
        what="Waiting with its pod stopped",
    )
    token = run["status"]["metadata"]["token"]
    waiting_for = run["status"]["waitingFor"]
    assert (waiting_for["kind"], waiting_for["token"], waiting_for["position"]) == (
        "Token",
        token,
        1,
    )
    assert waiting_for["since"]
    assert get_token(kube_api, namespace, token)["spec"]["tags"] == ["approval"]
    cli = subprocess.run(
        [
            str(PODTASK),
            "tokens",
            "complete",
            token,
            "--output-json",
            json.dumps({"approved": True, "by": "ada"}),
            "--namespace",
            namespace,
        ],
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    output = completed(kube_api, namespace, name, timeout=60)["status"]["output"]
    assert output == {"ok": True, "output": {"approved": True, "by": "ada"}, "error": None}
    assert get_token(kube_api, namespace, token)["status"]["completed"] is True


def test_an_expired_token_resumes_the_run_with_a_timeout(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.approval")
    name = create_run(kube_api, namespace, "waits.approval", {"timeout": "6s"})
    run = completed(kube_api, namespace, name, timeout=60)
    assert run["status"]["output"] == {
        "ok": False,
        "output": None,
        "error": "WaitpointTimeoutError",
    }
    assert "Checkpointed" in reasons(run)
    token = get_token(kube_api, namespace, run["status"]["metadata"]["token"])
    assert token["status"]["timedOut"] is True and token["status"]["completed"] is True
    assert token["status"]["expiresAt"]


def test_a_token_made_and_completed_outside_any_run_resumes_its_waiter(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    sdk = Client(kube_api, namespace=namespace)
    token = wait.create_token(timeout="1h", tags=["outside"], client=sdk)
    assert token.namespace == namespace
    assert get_token(kube_api, namespace, token.id)["spec"] == {
        "timeout": "1h",
        "tags": ["outside"],
    }
    deploy(kube_api, namespace, "waits.token-waiter")
    name = create_run(kube_api, namespace, "waits.token-waiter", {"token": token.id})
    wait_for_phase(kube_api, namespace, name, {"Waiting"}, timeout=60)
    wait.complete_token(token, {"answer": 42}, client=sdk)
    assert completed(kube_api, namespace, name, timeout=60)["status"]["output"] == {"answer": 42}
    with pytest.raises(TokenAlreadyCompletedError):
        wait.complete_token(token, "again", client=sdk)


# --------------------------------------------------------------------------- queues and restarts


def test_parent_and_child_in_one_queue_of_limit_1_complete(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    make_queue(kube_api, namespace, "one", 1)
    deploy(kube_api, namespace, "waits.queue-parent", "waits.queue-child", queue="one")
    name = create_run(kube_api, namespace, "waits.queue-parent", "hi")
    run = completed(kube_api, namespace, name, timeout=90)
    assert run["status"]["output"] == "child saw hi"
    assert "Checkpointed" in reasons(run), "the parent must give its slot to the child"


def test_operator_killed_mid_wait_changes_nothing(
    waits_operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "waits.nap-parent", "waits.sleeper")
    parent = create_run(kube_api, namespace, "waits.nap-parent", {"seconds": 6})
    wait_for_phase(kube_api, namespace, parent, {"Waiting"}, timeout=60)
    [child] = children_of(kube_api, namespace, parent)
    child_name = child["metadata"]["name"]
    wait_for_phase(kube_api, namespace, child_name, {"Waiting"}, timeout=60)
    waits_operator.kill()
    time.sleep(3)
    waits_operator.start()
    run = completed(kube_api, namespace, parent, timeout=90)
    assert run["status"]["output"]["child"] == {
        "before": {"attempt": 1},
        "after": {"resumed": True},
        "attempt": 1,
    }
    for name in (parent, child_name):
        attempts = get_run(kube_api, namespace, name)["status"]["attempts"]
        assert [(a["number"], a["reason"]) for a in attempts] == [
            (1, "Checkpointed"),
            (1, "Completed"),
        ], attempts
    # Nothing was triggered twice across the restart.
    assert [c["metadata"]["name"] for c in children_of(kube_api, namespace, parent)] == [child_name]
