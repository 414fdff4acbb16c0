"""The process kubelet against the real control plane: pods run as local processes and
their status, logs, limits, deadlines and deletion behave as kubelet's would."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localcluster import tools
from localcluster.node_registration import AGENT_LABEL, LEASE_NAMESPACE
from localcluster.pytest_plugin import KubeCluster

T = TypeVar("T")
IMAGE = "python:3.11"
Obj = dict[str, Any]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def python_pod(name: str, code: str, *, policy: str = "Never", **container: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {"name": "main", "image": IMAGE, "command": ["python", "-c", code], **container}
            ],
        },
    }


def as_dict(core: client.CoreV1Api, obj: Any) -> Obj:
    value: Obj = core.api_client.sanitize_for_serialization(obj)
    return value


def create(core: client.CoreV1Api, namespace: str, body: Obj) -> Obj:
    # The client accepts plain dicts as bodies; its annotations only name the model class.
    created: Any = core.create_namespaced_pod(namespace, body)  # type: ignore[arg-type]
    return as_dict(core, created)


def read(core: client.CoreV1Api, namespace: str, name: str) -> Obj:
    return as_dict(core, core.read_namespaced_pod(name, namespace))


def finished(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> Obj:
    return wait_for(
        f"pod {name} to finish",
        lambda: (
            p
            if (p := read(core, namespace, name))["status"].get("phase") in {"Succeeded", "Failed"}
            else None
        ),
        timeout,
    )


def terminated(pod: Obj, index: int = 0) -> Obj:
    state: Obj = pod["status"]["containerStatuses"][index]["state"]["terminated"]
    return state


@pytest.fixture
def core(kube_api: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def test_pod_runs_to_success_and_kubectl_logs_work(
    core: client.CoreV1Api, namespace: str, kubeconfig: Path
) -> None:
    create(core, namespace, python_pod("answer", "print(42)"))
    pod = finished(core, namespace, "answer")
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert state["containerID"].startswith("process://")
    assert pod["status"]["podIP"] == pod["status"]["hostIP"] == "127.0.0.1"
    conditions = {c["type"]: (c["status"], c.get("reason")) for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == ("False", "PodCompleted")
    assert conditions["Initialized"] == ("True", "PodCompleted")
    # Through the API server's proxy to the agent's HTTPS log endpoint.
    assert core.read_namespaced_pod_log("answer", namespace) == "42\n"
    kubectl = tools.install(names=["kubectl"])["kubectl"]
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "-n", namespace, "logs", "answer"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout) == (0, "42\n"), out.stderr


def test_failing_command_fails_the_pod_with_its_exit_code(
    core: client.CoreV1Api, namespace: str
) -> None:
    create(
        core,
        namespace,
        python_pod(
            "three",
            "import sys; print('bad input', file=sys.stderr); sys.exit(3)",
            terminationMessagePolicy="FallbackToLogsOnError",
        ),
    )
    pod = finished(core, namespace, "three")
    assert pod["status"]["phase"] == "Failed"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "bad input\n")


def test_missing_executable_is_a_start_error(core: client.CoreV1Api, namespace: str) -> None:
    body = python_pod("nope", "")
    body["spec"]["containers"][0]["command"] = ["no-such-command-podtask"]
    create(core, namespace, body)
    pod = finished(core, namespace, "nope")
    assert pod["status"]["phase"] == "Failed"
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (128, "StartError")


def test_memory_limit_ends_in_oomkilled(core: client.CoreV1Api, namespace: str) -> None:
    create(
        core,
        namespace,
        python_pod(
            "hog",
            "import time; x = bytearray(256 * 1024 * 1024); time.sleep(60)",
            resources={"limits": {"memory": "64Mi"}},
        ),
    )
    pod = finished(core, namespace, "hog", timeout=30)
    assert pod["status"]["phase"] == "Failed"
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (137, "OOMKilled")


def test_env_and_volumes_from_configmap_secret_and_downward_api(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="settings"),
            data={"greeting": "hello", "file.txt": "from a volume"},
        ),
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="creds"), string_data={"password": "s3cret"}
        ),
    )
    code = (
        "import os, pathlib, sys\n"
        "print(sys.argv[1:])\n"
        "for k in ['GREETING', 'PASSWORD', 'POD', 'NS', 'APP', 'CFG_greeting', 'COMBINED']:\n"
        "    print(k, os.environ.get(k))\n"
        "print('file', (pathlib.Path(os.environ['PODTASK_NODE_VOLUME_ETC_SETTINGS'])\n"
        "               / 'file.txt').read_text())\n"
    )
    body = python_pod("envs", code)
    body["metadata"]["labels"] = {"app": "demo"}
    body["spec"]["containers"][0].update(
        {
            "args": ["$(GREETING)", "$$(GREETING)"],
            "env": [
                {
                    "name": "GREETING",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
                },
                {
                    "name": "PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                },
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "COMBINED", "value": "$(GREETING), $(POD)"},
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"}],
        }
    )
    body["spec"]["volumes"] = [{"name": "settings", "configMap": {"name": "settings"}}]
    create(core, namespace, body)
    assert finished(core, namespace, "envs")["status"]["phase"] == "Succeeded"
    assert core.read_namespaced_pod_log("envs", namespace).splitlines() == [
        "['hello', '$(GREETING)']",
        "GREETING hello",
        "PASSWORD s3cret",
        "POD envs",
        f"NS {namespace}",
        "APP demo",
        "CFG_greeting hello",
        "COMBINED hello, envs",
        "file from a volume",
    ]


def test_volumes_are_mounted_at_their_paths_and_in_cluster_config_works(
    core: client.CoreV1Api, namespace: str
) -> None:
    """The configMap at its mountPath, and the admission-injected service-account volume at
    the standard path, so `load_incluster_config()` works as in a real pod."""
    from localcluster.node_process import mount_namespaces_available

    why_not = mount_namespaces_available()
    if why_not is not None:
        pytest.skip(f"the node cannot create mount namespaces here: {why_not}")
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="settings"), data={"file.txt": "mounted"}
        ),
    )
    code = (
        "import pathlib\n"
        "from kubernetes import client, config\n"
        "print('config', pathlib.Path('/mnt/podtask-test/settings/file.txt').read_text())\n"
        "try:\n"
        "    pathlib.Path('/mnt/podtask-test/settings/new').write_text('x')\n"
        "except OSError as error:\n"
        "    print('read-only', error.errno)\n"
        "sa = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')\n"
        "print('files', sorted(p.name for p in sa.iterdir() if not p.name.startswith('.')))\n"
        "print('namespace', (sa / 'namespace').read_text())\n"
        "config.load_incluster_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review(\n"
        "    {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'})\n"
        "print('user', review.status.user_info.username)\n"
    )
    body = python_pod("mounts", code)
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "settings", "mountPath": "/mnt/podtask-test/settings"}
    ]
    body["spec"]["volumes"] = [{"name": "settings", "configMap": {"name": "settings"}}]
    created = create(core, namespace, body)
    # The ServiceAccount admission plugin added the projected token volume and its mount.
    assert any(
        m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
        for m in created["spec"]["containers"][0]["volumeMounts"]
    )
    pod = finished(core, namespace, "mounts")
    log = core.read_namespaced_pod_log("mounts", namespace)
    assert pod["status"]["phase"] == "Succeeded", log
    assert log.splitlines() == [
        "config mounted",
        "read-only 30",  # EROFS: configMap volumes are mounted read-only, as by kubelet
        "files ['ca.crt', 'namespace', 'token']",
        f"namespace {namespace}",
        f"user system:serviceaccount:{namespace}:default",
    ]
    # The mounts were the container's own: the host sees an empty mount point.
    assert list(Path("/mnt/podtask-test/settings").iterdir()) == []


def test_missing_configmap_waits_with_config_error_until_it_exists(
    core: client.CoreV1Api, namespace: str
) -> None:
    create(
        core,
        namespace,
        python_pod(
            "later",
            "import os; print(os.environ['X'])",
            env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "x"}}}],
        ),
    )

    def config_error() -> Obj | None:
        statuses = read(core, namespace, "later")["status"].get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting") if statuses else None
        return waiting if waiting and waiting["reason"] == "CreateContainerConfigError" else None

    waiting = wait_for("CreateContainerConfigError", config_error, 30)
    assert waiting["message"] == 'configmap "late" not found'
    assert read(core, namespace, "later")["status"]["phase"] == "Pending"
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="late"), data={"x": "arrived"}),
    )
    assert finished(core, namespace, "later")["status"]["phase"] == "Succeeded"
    assert core.read_namespaced_pod_log("later", namespace) == "arrived\n"


def test_init_containers_run_in_order_then_the_app(core: client.CoreV1Api, namespace: str) -> None:
    def step(name: str, text: str) -> Obj:
        code = (
            "import os, pathlib; p = pathlib.Path(os.environ['PODTASK_NODE_VOLUME_WORK'])"
            f" / 'steps'; p.write_text(p.read_text() + '{text}' if p.exists() else "
            f"'{text}'); print(p.read_text())"
        )
        return {
            "name": name,
            "image": IMAGE,
            "command": ["python", "-c", code],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }

    body = python_pod("inits", "")
    body["spec"]["initContainers"] = [step("first", "1"), step("second", "2")]
    body["spec"]["containers"] = [step("main", "3")]
    body["spec"]["volumes"] = [{"name": "work", "emptyDir": {}}]
    create(core, namespace, body)
    pod = finished(core, namespace, "inits")
    assert pod["status"]["phase"] == "Succeeded"
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == [
        "Completed",
        "Completed",
    ]
    assert core.read_namespaced_pod_log("inits", namespace, container="main") == "123\n"


def test_on_failure_restarts_and_counts(core: client.CoreV1Api, namespace: str) -> None:
    # An emptyDir outlives container restarts, so the second attempt can succeed.
    code = (
        "import os, pathlib, sys\n"
        "marker = pathlib.Path(os.environ['PODTASK_NODE_VOLUME_STATE']) / 'tried'\n"
        "if not marker.exists():\n"
        "    marker.touch(); print('first try'); sys.exit(1)\n"
        "print('second try')\n"
    )
    body = python_pod(
        "flaky", code, policy="OnFailure", volumeMounts=[{"name": "state", "mountPath": "/state"}]
    )
    body["spec"]["volumes"] = [{"name": "state", "emptyDir": {}}]
    create(core, namespace, body)
    pod = finished(core, namespace, "flaky")
    assert pod["status"]["phase"] == "Succeeded"
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert core.read_namespaced_pod_log("flaky", namespace) == "second try\n"
    assert core.read_namespaced_pod_log("flaky", namespace, previous=True) == "first try\n"


def test_active_deadline_fails_the_pod(core: client.CoreV1Api, namespace: str) -> None:
    body = python_pod("slow", "import time; time.sleep(120)")
    body["spec"]["activeDeadlineSeconds"] = 2
    create(core, namespace, body)
    started = time.monotonic()
    pod = finished(core, namespace, "slow", timeout=30)
    assert time.monotonic() - started < 20
    assert (pod["status"]["phase"], pod["status"]["reason"], pod["status"]["message"]) == (
        "Failed",
        "DeadlineExceeded",
        "Pod was active on the node longer than the specified deadline",
    )
    wait_for(
        "the container to be reported killed",
        lambda: (
            "terminated" in read(core, namespace, "slow")["status"]["containerStatuses"][0]["state"]
        ),
        20,
    )


def _pod_dir(cluster: KubeCluster, namespace: str, name: str, uid: str) -> Path:
    assert cluster.state_dir is not None, "needs a cluster started by localcluster"
    return cluster.state_dir / "pods" / f"{namespace}_{name}_{uid}"


def test_deleting_a_running_pod_sends_sigterm_then_removes_it(
    core: client.CoreV1Api, namespace: str, kube_cluster: KubeCluster
) -> None:
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('caught SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    created = create(core, namespace, python_pod("trap", code, policy="Always"))
    uid = created["metadata"]["uid"]
    wait_for(
        "the pod to run",
        lambda: (
            core.read_namespaced_pod_log("trap", namespace) == "ready\n"
            if read(core, namespace, "trap")["status"].get("phase") == "Running"
            else None
        ),
    )
    core.delete_namespaced_pod("trap", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("trap", namespace)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    # The trap exits at once, so this is the final delete, not the grace period running out.
    wait_for("the pod object to disappear", gone, 8)
    log = _pod_dir(kube_cluster, namespace, "trap", uid) / "main.log"
    assert log.read_text() == "ready\ncaught SIGTERM\n"


def test_node_stays_ready_with_lease_renewals(core: client.CoreV1Api, kube_api: ApiClient) -> None:
    nodes = as_dict(core, core.list_node(label_selector=AGENT_LABEL))["items"]
    assert nodes, "no node run by the process kubelet"
    name = nodes[0]["metadata"]["name"]
    created = dt.datetime.fromisoformat(nodes[0]["metadata"]["creationTimestamp"])
    coordination = client.CoordinationV1Api(kube_api)

    def renew_time() -> str:
        lease = as_dict(core, coordination.read_namespaced_lease(name, LEASE_NAMESPACE))
        return str(lease["spec"]["renewTime"])

    renewals = {renew_time()}
    # The node-lifecycle controller's grace period is 50 s: stay past it, then some.
    while dt.datetime.now(dt.UTC) - created < dt.timedelta(seconds=60) or len(renewals) < 3:
        time.sleep(2)
        renewals.add(renew_time())
        node = as_dict(core, core.read_node(name))
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert not [
            t
            for t in node["spec"].get("taints") or []
            if t["key"].startswith("node.kubernetes.io/")
        ]
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    version = as_dict(core, client.VersionApi(kube_api).get_code())["gitVersion"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == version


@pytest.fixture
def instant_node(kubeconfig: Path, tmp_path: Path, core: client.CoreV1Api) -> Iterator[str]:
    name = f"instant-{os.getpid()}"
    repo = Path(__file__).resolve().parents[2]
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcluster.node",
            "--kubeconfig",
            str(kubeconfig),
            "--state-dir",
            str(tmp_path),
            "--name",
            name,
            "--instant",
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=(tmp_path / "agent.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            "the instant node to be Ready",
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for n in as_dict(core, core.list_node(field_selector=f"metadata.name={name}"))[
                    "items"
                ]
                for c in n.get("status", {}).get("conditions") or []
            ),
            30,
        )
        yield name
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0, (tmp_path / "agent.log").read_text()
        core.delete_node(name)


def test_instant_mode_completes_pods_without_running_them(
    core: client.CoreV1Api, namespace: str, instant_node: str
) -> None:
    body = python_pod("quick", "raise SystemExit(9)")
    body["spec"]["nodeName"] = instant_node
    create(core, namespace, body)
    pod = finished(core, namespace, "quick", timeout=15)
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0
    forever = python_pod("forever", "", policy="Always")
    forever["spec"]["nodeName"] = instant_node
    create(core, namespace, forever)
    wait_for(
        "Running", lambda: read(core, namespace, "forever")["status"].get("phase") == "Running", 15
    )
    core.delete_namespaced_pod("forever", namespace)
    wait_for(
        "deletion",
        lambda: (
            not core.list_namespaced_pod(namespace, field_selector="metadata.name=forever").items
        ),
        15,
    )
