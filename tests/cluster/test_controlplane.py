"""The local control plane behaves like a real cluster where podtask depends on it.

Admission (CRD schemas, ResourceQuota), the controllers (Job, garbage collector,
quota) and optimistic concurrency are what the operator relies on; each test
exercises one of them through the real API server.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localcluster import pytest_plugin, tools
from localcluster.gen_gomod import read_versions
from localcluster.pytest_plugin import KubeCluster, new_api_client

T = TypeVar("T")
GROUP, VERSION, PLURAL = "podtask.dev", "v1alpha1", "taskruns"
IMAGE = "python:3.11"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def pod(name: str, code: str, owner: client.V1OwnerReference | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, owner_references=[owner] if owner else None),
        spec=pod_spec(code),
    )


def pod_spec(code: str) -> client.V1PodSpec:
    return client.V1PodSpec(
        restart_policy="Never",
        termination_grace_period_seconds=5,
        containers=[client.V1Container(name="main", image=IMAGE, command=["python", "-c", code])],
    )


def pod_phase(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    status = core.read_namespaced_pod(name, namespace).to_dict()["status"] or {}
    phase: str | None = status.get("phase")
    return phase


def conditions(obj: Any) -> dict[str, str]:
    """type -> status of an API object's status.conditions (models typed loosely on purpose)."""
    status = obj.to_dict()["status"] or {}
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


def exceeded_quota(error: ApiException) -> bool:
    return error.status == 403 and "exceeded quota" in str(error.body)


# --- CRDs --------------------------------------------------------------------------


def test_crds_install_and_are_established(crds: list[str], kube_api: ApiClient) -> None:
    files = sorted(pytest_plugin.CRDS_DIR.glob("*.yaml"))
    assert files, "crds/ is empty"
    assert "taskruns.podtask.dev" in crds
    assert len(crds) == len(files)
    api = client.ApiextensionsV1Api(kube_api)
    for name in crds:
        state = conditions(api.read_custom_resource_definition(name))
        assert state.get("Established") == "True", (name, state)
        assert state.get("NamesAccepted") == "True", (name, state)


def taskrun(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_valid_taskrun_at_the_limits_is_accepted(
    crds: list[str], kube_api: ApiClient, namespace: str
) -> None:
    # The counterpart of the rejections below: each limit is hit exactly.
    spec = {
        "task": "demo.hello",
        "tags": [f"t{i}" for i in range(10)],
        "machine": "large-2x",
        "delay": "1m30s",
    }
    created: Any = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, taskrun("ok", spec)
    )
    assert created["spec"]["task"] == "demo.hello"


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        pytest.param({"payload": {"x": 1}}, "spec.task", "Required value", id="missing-task"),
        pytest.param(
            {"task": "demo.hello", "tags": [f"t{i}" for i in range(11)]},
            "spec.tags",
            "must have at most 10 items",
            id="eleven-tags",
        ),
        pytest.param(
            {"task": "demo.hello", "machine": "huge"},
            "spec.machine",
            "Unsupported value",
            id="unknown-machine",
        ),
        pytest.param(
            {"task": "demo.hello", "delay": "soon"},
            "spec.delay",
            "should match",
            id="delay-not-a-duration",
        ),
    ],
)
def test_bad_taskrun_is_rejected_naming_the_field(
    crds: list[str],
    kube_api: ApiClient,
    namespace: str,
    spec: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, taskrun("bad", spec)
        )
    assert caught.value.status == 422
    message = json.loads(str(caught.value.body))["message"]
    assert field in message, message
    assert reason in message, message


# --- admission and controllers ----------------------------------------------------------


def test_resource_quota_rejects_then_admits_after_release(
    kube_api: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="one-pod"),
            spec=client.V1ResourceQuotaSpec(hard={"pods": "1"}),
        ),
    )
    # Quota admission refuses everything until the controller has computed usage.
    wait_for(
        "quota status",
        lambda: (
            (
                core.read_namespaced_resource_quota("one-pod", namespace).to_dict()["status"] or {}
            ).get("hard")
            or {}
        ).get("pods"),
    )

    core.create_namespaced_pod(namespace, pod("first", "import time; time.sleep(3)"))
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(namespace, pod("second", "print('second')"))
    assert exceeded_quota(caught.value), caught.value

    wait_for("first pod to succeed", lambda: pod_phase(core, namespace, "first") == "Succeeded")

    def admitted() -> bool:
        # The quota controller releases the slot asynchronously after the phase change.
        try:
            core.create_namespaced_pod(namespace, pod("second", "print('second')"))
        except ApiException as error:
            if exceeded_quota(error):
                return False
            raise
        return True

    wait_for("the quota to admit the second pod", admitted)
    wait_for("second pod to succeed", lambda: pod_phase(core, namespace, "second") == "Succeeded")


def test_job_runs_to_completion(kube_api: ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="answer"),
            spec=client.V1JobSpec(
                backoff_limit=0, template=client.V1PodTemplateSpec(spec=pod_spec("print(42)"))
            ),
        ),
    )

    def complete() -> bool:
        job = batch.read_namespaced_job("answer", namespace)
        state = conditions(job)
        assert state.get("Failed") != "True", job.status
        return state.get("Complete") == "True" and job.to_dict()["status"]["succeeded"] == 1

    wait_for("the Job to complete", complete, timeout=120)
    pods = [
        p.to_dict()
        for p in core.list_namespaced_pod(
            namespace, label_selector="batch.kubernetes.io/job-name=answer"
        ).items
    ]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    terminated = pods[0]["status"]["container_statuses"][0]["state"]["terminated"]
    assert terminated["exit_code"] == 0
    # Proves the command really ran (and the apiserver -> node log path works).
    assert core.read_namespaced_pod_log(pods[0]["metadata"]["name"], namespace) == "42\n"


def test_deleting_an_owner_garbage_collects_its_pods(kube_api: ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.to_dict()["metadata"]["uid"]
    )
    for name in ("owned-a", "owned-b"):
        core.create_namespaced_pod(namespace, pod(name, "import time; time.sleep(300)", ref))
    core.create_namespaced_pod(namespace, pod("bystander", "import time; time.sleep(300)"))
    wait_for(
        "owned pods to run",
        lambda: all(pod_phase(core, namespace, n) == "Running" for n in ("owned-a", "owned-b")),
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def owned_gone() -> bool:
        names = {p.to_dict()["metadata"]["name"] for p in core.list_namespaced_pod(namespace).items}
        return not names & {"owned-a", "owned-b"}

    wait_for("the garbage collector to delete the owned pods", owned_gone, timeout=90)
    bystander = core.read_namespaced_pod("bystander", namespace).to_dict()
    assert bystander["metadata"]["deletion_timestamp"] is None


# --- concurrency and versions -------------------------------------------------------------


def test_racing_lease_creates_get_one_201_and_one_409(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(new_api_client(kube_cluster.kubeconfig)) for _ in range(2)]
        for round_ in range(5):
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=f"leader-{round_}"),
                spec=client.V1LeaseSpec(holder_identity="whoever", lease_duration_seconds=15),
            )
            barrier = threading.Barrier(len(clients))

            def create(
                api: ApiClient, body: client.V1Lease = body, barrier: threading.Barrier = barrier
            ) -> int:
                coordination = client.CoordinationV1Api(api)
                barrier.wait()
                try:
                    _, status, _ = coordination.create_namespaced_lease_with_http_info(
                        namespace, body
                    )
                except ApiException as error:
                    return int(error.status)
                return int(status)

            with ThreadPoolExecutor(len(clients)) as pool:
                statuses = sorted(pool.map(create, clients))
            assert statuses == [201, 409], f"round {round_}: {statuses}"


def test_kubectl_reports_the_pinned_server_version(kubeconfig: Path) -> None:
    kubectl = tools.install(names=["kubectl"])["kubectl"]
    out = subprocess.run(
        [str(kubectl), "version", "-o", "json", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    server = json.loads(out.stdout)["serverVersion"]["gitVersion"]
    assert server == read_versions()["KUBERNETES_VERSION"] == "v1.37.2"
