"""A pod that never starts gives its queue slot back (PODTASK_START_TIMEOUT).

The node is cordoned, so the attempt's pod stays Pending (Unschedulable); after the start
timeout the operator deletes it and re-runs the attempt without using one, and after the
infrastructure retry limit the run ends SystemFailure saying why the pods waited. The
queue allows one run at a time: a run made afterwards completing proves the slot was freed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client import ApiClient

from podtask.api.v1alpha1 import API_VERSION
from tests.cluster.harness import (
    GROUP,
    VERSION,
    OperatorProcess,
    apply_task,
    create_run,
    pods_of,
    wait_final,
)


@pytest.fixture
def impatient_operator(
    kubeconfig: Path, crds: list[str], tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, tmp_path, start_timeout="3s", infra_retry_limit="1")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def cordoned(kube_api: ApiClient) -> Iterator[client.CoreV1Api]:
    core = client.CoreV1Api(kube_api)
    nodes = [n.metadata.name for n in core.list_node().items]
    for node in nodes:
        core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        yield core
    finally:
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": False}})


def test_a_pod_that_never_starts_frees_its_slot_and_the_run_says_why(
    impatient_operator: OperatorProcess,
    kube_api: ApiClient,
    namespace: str,
    cordoned: client.CoreV1Api,
) -> None:
    queue = {"apiVersion": API_VERSION, "kind": "Queue", "metadata": {"name": "one"}}
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "queues", {**queue, "spec": {"concurrencyLimit": 1}}
    )
    apply_task(kube_api, namespace, "stuck.hello", "examples.tasks.hello:hello_world", queue="one")
    name = create_run(kube_api, namespace, "stuck.hello", {"name": "stuck"})
    run = wait_final(kube_api, namespace, name, timeout=120)
    status = run["status"]
    assert status["phase"] == "SystemFailure", status
    assert "did not start within 3s" in status["error"]["message"]
    assert "Unschedulable" in status["error"]["message"]
    attempts = status["attempts"]
    # The first pod and one re-run (infraRetryLimit 1), neither counted as an attempt.
    assert len(attempts) == 2 and not any(a["counted"] for a in attempts), attempts
    assert len({a["pod"] for a in attempts}) == 2

    for node in cordoned.list_node().items:
        cordoned.patch_node(node.metadata.name, {"spec": {"unschedulable": False}})
    after = create_run(kube_api, namespace, "stuck.hello", {"name": "after"})
    assert wait_final(kube_api, namespace, after, timeout=120)["status"]["phase"] == "Completed"
    stuck_pods = {a["pod"] for a in attempts}
    assert not stuck_pods & {p.metadata.name for p in pods_of(kube_api, namespace)}
