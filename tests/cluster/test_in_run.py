"""Plain triggers and subscriptions from inside real run pods (issue #7).

A run pod has no Kubernetes credentials: its ``trigger``, ``batch_trigger`` and
``runs.subscribe`` go through the run API.  Covers: a parent's plain triggers make
children the operator links to it (``parentRun``, the parent label, the annotation of the
trigger that made them) with every option the parent gave, an idempotency key dedupes
inside the run and a batch reports an undeployed task in place; a task that subscribes
to its child from inside its pod sees the child's metadata change live, then its final
phase and its result.  Tasks: ``tests/cluster/_in_run_tasks.py``.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient

from podtask._runenv import CurrentRun
from podtask._trigger import idempotency_run_name
from tests.cluster.harness import (
    GROUP,
    VERSION,
    OperatorProcess,
    apply_task,
    create_run,
    wait_final,
    wait_for_phase,
)

MODULE = "tests.cluster._in_run_tasks"


def deploy(api: ApiClient, namespace: str, *names: str) -> None:
    for name in names:
        apply_task(api, namespace, name, f"{MODULE}:{name.removeprefix('inrun.')}")


def children_of(api: ApiClient, namespace: str, parent: str) -> dict[str, dict[str, Any]]:
    found = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns"
    )
    return {
        run["metadata"]["name"]: run
        for run in found["items"]
        if run["spec"].get("parentRun") == parent
    }


def completed_output(api: ApiClient, namespace: str, name: str) -> Any:
    run = wait_final(api, namespace, name, timeout=180)
    assert run["status"]["phase"] == "Completed", run["status"]
    return run["status"]["output"]


def test_plain_triggers_inside_a_run_make_linked_children_with_their_options(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    deploy(kube_api, namespace, "inrun.parent", "inrun.leaf")
    parent = create_run(kube_api, namespace, "inrun.parent", {})
    output = completed_output(kube_api, namespace, parent)

    one = idempotency_run_name(
        namespace, "inrun.leaf", "one", "run", CurrentRun(namespace, parent, 1)
    )
    assert (output["one"], output["one_cached"]) == (one, False)
    assert (output["again"], output["again_cached"]) == (one, True)
    assert output["batch_errors"] == [[2, "TaskNotDeployed"]]
    children = children_of(kube_api, namespace, parent)
    assert set(children) == {one, *output["batch_runs"]}
    assert len(children) == 3

    made = children[one]
    assert made["spec"] == {
        "task": "inrun.leaf",
        "payload": {"n": 1},
        "idempotencyKey": "one",
        "idempotencyKeyScope": "run",
        "concurrencyKey": "tenant-1",
        "queue": "inrun-queue",
        "delay": "1h",
        "ttl": "2h",
        "tags": ["in-run"],
        "metadata": {"from": parent},
        "machine": "small-1x",
        "maxAttempts": 4,
        "maxDuration": "30s",
        "priority": 7,
        "parentRun": parent,
    }
    labels = made["metadata"]["labels"]
    assert labels["podtask.dev/parent-run"] == parent and labels["team"] == "inrun"
    assert labels["podtask.dev/task"] == "inrun.leaf"
    # The operator made it, on the parent's behalf (the pod has no credentials).
    assert made["metadata"]["annotations"]["podtask.dev/trigger"] == f"{parent}-a1p0-0"
    wait_for_phase(kube_api, namespace, one, {"Delayed"})

    batch = [children[name] for name in output["batch_runs"]]
    assert [r["spec"]["payload"] for r in batch] == [{"n": 2}, {"n": 3}]
    assert batch[0]["spec"]["tags"] == ["b0"] and batch[1]["spec"]["priority"] == 3
    assert {r["metadata"]["labels"]["podtask.dev/batch-id"] for r in batch} == {output["batch_id"]}
    assert [r["metadata"]["annotations"]["podtask.dev/batch-index"] for r in batch] == ["0", "1"]
    # The batch took the journal position after the two single triggers.
    assert output["batch_runs"] == [f"{parent}-a1p2-0", f"{parent}-a1p2-1"]


def test_a_run_subscribes_to_its_child_and_sees_it_change_live(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    """The examples of docs/sdk.md (``examples/tasks/in_run.py``), as they are."""
    examples = "examples.tasks"
    apply_task(kube_api, namespace, "children.watch", f"{examples}.in_run:watch")
    apply_task(kube_api, namespace, "children.fanout", f"{examples}.in_run:fanout")
    apply_task(
        kube_api,
        namespace,
        "metadata.report.progress",
        f"{examples}.metadata_progress:metadata_progress",
    )
    apply_task(kube_api, namespace, "hello.world", f"{examples}.hello:hello_world")
    watcher = create_run(kube_api, namespace, "children.watch", {"steps": 4})
    fanout = create_run(kube_api, namespace, "children.fanout", {"names": ["Ada", "Grace"]})
    output = completed_output(kube_api, namespace, watcher)

    child = output["child"]
    assert children_of(kube_api, namespace, watcher).keys() == {child}
    assert output["output"] == {"steps": 4}
    seen = output["seen"]
    assert seen[-1] == ["Completed", 1.0], seen
    live = [progress for phase, progress in seen if phase == "Executing" and progress]
    # Progress arrived while the child still ran, in order: followed live, not read after.
    assert len(set(live)) >= 2 and live == sorted(live), seen
    assert all(phase != "Completed" for phase, _ in seen[:-1]), seen

    made = completed_output(kube_api, namespace, fanout)
    greeted = children_of(kube_api, namespace, fanout)
    assert set(greeted) == set(made["children"]) and len(greeted) == 2
    for name in greeted:
        assert completed_output(kube_api, namespace, name)["greeting"].startswith("Hello, ")
