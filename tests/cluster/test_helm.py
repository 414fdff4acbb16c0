"""The Helm chart on the local cluster: `helm install`, a run through the chart's operator,
`helm upgrade` of a changed CRD, and `helm uninstall` keeping the CRDs and the runs.

The release runs in namespaced mode, watching only this module's namespace, and no other
operator process is alive meanwhile (the cluster tier's `operator` fixture is per module
and this module does not use it). The node runs the Deployment's pod as a process, which
finds its service-account token at the standard path (a mount namespace per container).
The CRDs are shared with the whole session: the release takes them over, and they are
put back exactly as in crds/ at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localcluster import demo
from localcluster.node_process import mount_namespaces_available
from localcluster.pytest_plugin import CRDS_DIR, KubeCluster, namespace_name
from tests.cluster.harness import apply_task, create_run, get_run, wait_final

CHANGED_CRD = "taskruns.podtask.dev"
CHART_CRD_FILE = Path("templates") / "crds" / f"{CHANGED_CRD}.yaml"
MARKER = "Changed by the Helm upgrade test."
OPERATOR_READY_SECONDS = 120.0


@dataclass
class Release:
    name: str
    namespace: str  # the release's own namespace (Deployment, ServiceAccount, key Secret)
    watched: str  # the namespace the operator watches
    api_port: int
    health_port: int
    values: dict[str, Any]
    kube: demo.Kubectl
    work: Path

    def helm(self, *args: str) -> str:
        return self.kube.helm(*args, timeout=300)

    def values_args(self) -> list[str]:
        path = self.work / "values.yaml"
        path.write_text(yaml.safe_dump(self.values))
        return ["-f", str(path)]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _restore_crds(kube_api: ApiClient) -> None:
    """crds/ as the `crds` fixture applied them: content, and no Helm ownership."""
    api = client.ApiextensionsV1Api(kube_api)
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            crd = client.V1CustomResourceDefinition.from_dict(doc)
            assert crd is not None and crd.metadata is not None
            name = str(crd.metadata.name)
            try:
                current = api.read_custom_resource_definition(name)
            except ApiException as error:
                if error.status != 404:
                    raise
                api.create_custom_resource_definition(crd)
                continue
            assert current.metadata is not None
            crd.metadata.resource_version = current.metadata.resource_version
            api.replace_custom_resource_definition(name, crd)


def _wait_healthy(url: str, release: Release) -> None:
    deadline = time.monotonic() + OPERATOR_READY_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    logs = release.kube.run(
        "kubectl", "logs", "-n", release.namespace, f"deployment/{release.name}", check=False
    )
    raise AssertionError(f"the chart's operator never served {url}/healthz:\n{logs.stdout}")


@pytest.fixture(scope="module")
def release(
    kube_cluster: KubeCluster,
    kube_api: ApiClient,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    if kube_cluster.state_dir is None:
        pytest.skip(
            "the values are for the process node (loopback run API, no Service routing); "
            f"{kube_cluster.server} is not a cluster localcluster started"
        )
    why_not = mount_namespaces_available()
    if why_not is not None:
        # The operator pod can only log in in-cluster with the token at its standard path.
        pytest.fail(f"the node cannot give pods their service-account token: {why_not}")
    core = client.CoreV1Api(kube_api)
    watched = namespace_name("helm-watched")
    release_namespace = namespace_name("helm-release")
    api_port, health_port = demo.free_ports(2)
    kube = demo.Kubectl(kube_cluster.kubeconfig)
    work = tmp_path_factory.mktemp("helm")
    rel = Release(
        name="podtask",
        namespace=release_namespace,
        watched=watched,
        api_port=api_port,
        health_port=health_port,
        values=demo.local_values(
            [watched], api_port, health_port, heartbeatInterval="2s", cancelGraceSeconds=5
        ),
        kube=kube,
        work=work,
    )
    kube.ensure_namespace(watched)
    try:
        # A plain `helm install`; the CRDs exist already (the `crds` fixture applied them):
        # the release adopts them.
        rel.helm(
            "install", rel.name, str(demo.CHART), "--namespace", release_namespace,
            "--create-namespace", "--take-ownership", "--force-conflicts",
            "--wait", "--timeout", "3m", *rel.values_args(),
        )  # fmt: skip
        _wait_healthy(rel.api_url, rel)
        yield rel
    finally:
        kube.run("helm", "uninstall", rel.name, "-n", release_namespace, "--wait", check=False)
        for name in (watched, release_namespace):
            try:
                core.delete_namespace(name, propagation_policy="Background")
            except ApiException as error:
                if error.status != 404:
                    raise
        scheduling = client.SchedulingV1Api(kube_api)
        for priority_class in scheduling.list_priority_class().items:
            assert priority_class.metadata is not None
            if str(priority_class.metadata.name).startswith(f"podtask-{watched}-"):
                scheduling.delete_priority_class(str(priority_class.metadata.name))
        _restore_crds(kube_api)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_chart_operator_runs_a_taskrun_to_completed(release: Release, kube_api: ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    # The operator is the chart's Deployment's pod, on the process node.
    listing = core.list_namespaced_pod(
        release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
    )
    pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listing)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    # kopf peering: the chart's post-install hook made the peering object the operator joins.
    args = pods[0]["spec"]["containers"][0]["args"]
    assert args[args.index("--peering") + 1] == "podtask"
    peering = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        "kopf.dev", "v1", release.watched, "kopfpeerings", "podtask"
    )
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    apply_task(kube_api, release.watched, "hello.world", "examples.tasks.hello:hello_world")
    name = create_run(kube_api, release.watched, "hello.world", {"name": "Helm"})
    run = wait_final(kube_api, release.watched, name)
    assert run["status"]["phase"] == "Completed", run["status"]
    assert run["status"]["output"] == {"greeting": "Hello, Helm!"}
    # Counted by the chart's operator (its run API and /metrics are on the release's port).
    metrics = httpx.get(f"{release.api_url}/metrics", timeout=5).text
    assert _metric(metrics, "podtask_runs_total", task="hello.world", phase="Completed") == 1


def _with_schema_description(template: str, description: str) -> str:
    """The chart's CRD template (Go template around YAML) with a new top-level schema
    description: the first ``description:`` below ``openAPIV3Schema:``, one level deeper."""
    lines = template.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "openAPIV3Schema:")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    for i in range(start + 1, len(lines)):
        if lines[i].startswith(" " * indent + "description:"):
            lines[i] = f"{' ' * indent}description: {json.dumps(description)}\n"
            return "".join(lines)
    raise AssertionError("no schema description in the CRD template")


def _crd_description(kube_api: ApiClient) -> str:
    api = client.ApiextensionsV1Api(kube_api)
    crd = api.read_custom_resource_definition(CHANGED_CRD)
    body: dict[str, Any] = api.api_client.sanitize_for_serialization(crd)
    return str(body["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get("description", ""))


def test_helm_upgrade_updates_a_changed_crd(
    release: Release, kube_api: ApiClient, tmp_path: Path
) -> None:
    chart = tmp_path / "podtask"
    shutil.copytree(demo.CHART, chart)
    crd_file = chart / CHART_CRD_FILE
    crd_file.write_text(_with_schema_description(crd_file.read_text(), MARKER))
    assert _crd_description(kube_api) != MARKER

    release.helm(
        "upgrade", release.name, str(chart), "--namespace", release.namespace,
        "--force-conflicts", "--wait", "--timeout", "3m", *release.values_args(),
    )  # fmt: skip
    assert _crd_description(kube_api) == MARKER
    history = release.helm("history", release.name, "-n", release.namespace, "-o", "json")
    assert [entry["revision"] for entry in yaml.safe_load(history)] == [1, 2]
    # The operator came through the upgrade (its values did not change) and still serves.
    _wait_healthy(release.api_url, release)


def test_helm_uninstall_keeps_the_crds_and_the_runs(release: Release, kube_api: ApiClient) -> None:
    apply_task(kube_api, release.watched, "flaky.fail.until", "examples.tasks.flaky:flaky",
               retry={"maxAttempts": 3, "minTimeout": "1s", "maxTimeout": "1s"})  # fmt: skip
    name = create_run(kube_api, release.watched, "flaky.fail.until", {"succeed_on": 2})
    run = wait_final(kube_api, release.watched, name)
    assert (run["status"]["phase"], run["status"]["attempt"]) == ("Completed", 2)
    crds_before = _crd_names(kube_api)

    out = release.helm("uninstall", release.name, "-n", release.namespace, "--wait")
    assert "kept due to the resource policy" in out, out
    apps = client.AppsV1Api(kube_api)
    assert apps.list_namespaced_deployment(release.namespace).items == []
    assert _crd_names(kube_api) == crds_before
    assert {f"{p}.podtask.dev" for p in demo.CRDS} <= crds_before
    # The runs and Tasks are still there, unchanged.
    kept = get_run(kube_api, release.watched, name)
    assert kept["status"]["phase"] == "Completed"
    assert kept["status"]["output"] == {"attempt": 2}
    tasks: Any = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        "podtask.dev", "v1alpha1", release.watched, "tasks"
    )
    assert {t["metadata"]["name"] for t in tasks["items"]} == {"hello.world", "flaky.fail.until"}


def _crd_names(kube_api: ApiClient) -> set[str]:
    listing = client.ApiextensionsV1Api(kube_api).list_custom_resource_definition()
    return {str(c.metadata.name) for c in listing.items if c.metadata is not None}
