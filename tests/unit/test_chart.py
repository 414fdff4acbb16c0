"""The Helm chart, rendered offline with `helm template` and checked object by object.

No cluster: these tests check what the chart would send to one. (The cluster tier
installs it for real.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import tools
from podtask.api import chart_crds

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "podtask"
CRDS = ROOT / "crds"
RELEASE = "podtask"
NAMESPACE = "podtask-system"
FULLNAME = "podtask"  # the release name already contains the chart name

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]

DEFAULT_ENV = {
    "PODTASK_API_HOST": "0.0.0.0",
    "PODTASK_API_PORT": "8080",
    "PODTASK_API_URL": f"http://{FULLNAME}.{NAMESPACE}.svc:8080",
    "PODTASK_API_KEY_SECRET": "podtask-run-api-key",
    "PODTASK_OUTPUT_INLINE_LIMIT": "262144",
    "PODTASK_HEARTBEAT_TIMEOUT": "5m",
    "PODTASK_HEARTBEAT_INTERVAL": "30s",
    "PODTASK_START_TIMEOUT": "10m",
    "PODTASK_TASK_GRACE": "10s",
    "PODTASK_INFRA_RETRY_LIMIT": "5",
    "PODTASK_DELETE_FINISHED_PODS": "false",
    "PODTASK_KEEP_FAILED_PODS": "true",
    "PODTASK_PHASE_EVENTS": "false",
    "PODTASK_TTL_AFTER_FINISHED": "7d",
    "PODTASK_CANCEL_GRACE_SECONDS": "30",
    "PODTASK_WORKERS": "16",
    "PODTASK_DEFAULT_QUEUE_LIMIT": "100",
    "PODTASK_NAMESPACE_CONCURRENCY_LIMIT": "0",
    "PODTASK_WAIT_CHECKPOINT_THRESHOLD": "10s",
    "PODTASK_CPU_REQUEST_RATIO": "1",
    "PODTASK_MEMORY_REQUEST_RATIO": "1",
}
METRICS = {
    "podtask_runs_total",
    "podtask_runs_running",
    "podtask_runs_queued",
    "podtask_run_duration_seconds",
    "podtask_trigger_to_pod_seconds",
    "podtask_reconcile_seconds",
    "podtask_kube_api_errors_total",
    "podtask_run_api_requests_total",
}
NAMESPACED = {"rbac": {"mode": "namespaced", "namespaces": ["team-a", "team-b"]}}

# What the operator must be able to do on namespaced resources (the operator's contract).
CRUD = {"get", "list", "watch", "create", "update", "patch", "delete"}
NAMESPACED_RIGHTS: list[tuple[str, str, set[str]]] = [
    *[("podtask.dev", r, CRUD) for r in ("tasks", "taskruns", "schedules", "queues", "waittokens")],
    *[
        ("podtask.dev", f"{r}/status", {"get", "update", "patch"})
        for r in ("tasks", "taskruns", "schedules", "queues", "waittokens")
    ],
    ("", "pods", {"get", "list", "watch", "create", "delete", "patch"}),
    ("", "pods/log", {"get"}),
    ("", "secrets", {"get", "list", "create", "patch", "delete"}),
    ("", "configmaps", {"get", "list", "watch", "create", "patch", "delete"}),
    ("", "events", {"create", "patch"}),
    ("events.k8s.io", "events", {"create", "patch"}),
    ("coordination.k8s.io", "leases", CRUD),
    ("", "resourcequotas", CRUD),
]
PEERING_VERBS = {"get", "list", "watch", "patch"}


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> Path:
    # Extracts helm into the virtualenv when it is missing (normally `make install` did).
    return tools.install(names=["helm"])["helm"]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _values_args(tmp: Path, values: dict[str, Any] | None) -> list[str]:
    if not values:
        return []
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Render:
    """`helm template` with the given values; every rendered object, hooks included."""

    def _render(values: dict[str, Any] | None = None, *extra: str) -> list[Manifest]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        result = run_helm(helm, *args, *_values_args(tmp_path / "values", values), *extra)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return _render


@pytest.fixture
def render_error(helm: Path, tmp_path: Path) -> Callable[..., str]:
    """`helm template` that must fail; its error output."""

    def _fail(values: dict[str, Any] | None = None, *extra: str) -> str:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        result = run_helm(helm, *args, *_values_args(tmp_path / "values", values), *extra)
        assert result.returncode != 0, f"helm template accepted {values} {extra}"
        return result.stderr

    return _fail


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[Manifest]) -> Manifest:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Manifest = containers[0]
    return result


def env_of(docs: list[Manifest]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from>") for e in container(docs)["env"]}


def allows(rules: list[Manifest], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


def kinds(docs: list[Manifest]) -> set[str]:
    return {d["kind"] for d in docs}


def _leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, sub in values.items():
            yield from _leaf_paths(sub, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _schema_at(schema: Manifest, path: str) -> Manifest | None:
    node: Manifest | None = schema
    for part in path.split("."):
        if node is None:
            return None
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


# -- lint ------------------------------------------------------------------------------

NON_DEFAULT: dict[str, dict[str, Any]] = {
    "namespaced": NAMESPACED,
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "dashboard": {"dashboard": {"enabled": True, "namespace": "monitoring"}},
    "no-crds": {"crds": {"install": False}},
    "no-peering": {"operator": {"peering": {"enabled": False}}},
    "settings": {"operator": {"settings": {"workers": 4, "ttlAfterFinished": "1d"}}},
    "everything": {
        **NAMESPACED,
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "dashboard": {"enabled": True},
        "priorityClasses": ["podtask-default"],
    },
}


@pytest.mark.parametrize("values", [{}, *NON_DEFAULT.values()], ids=["default", *NON_DEFAULT])
def test_helm_lint(helm: Path, tmp_path: Path, values: dict[str, Any]) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *_values_args(tmp_path, values))
    assert result.returncode == 0, result.stdout + result.stderr


# -- default install -------------------------------------------------------------------


def test_default_kinds(render: Render) -> None:
    docs = render()
    assert kinds(docs) == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "ClusterKopfPeering",
    }
    optional = {"ServiceMonitor", "NetworkPolicy", "ConfigMap", "PriorityClass", "Role"}
    assert not optional & kinds(docs)


def test_deployment_runs_one_operator(render: Render) -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()

    main = container(docs)
    assert main["image"] == "ghcr.io/podtask/operator:0.1.0"  # the chart's appVersion
    assert main["command"] == ["podtask-operator"]
    assert main["args"] == ["--liveness", "http://0.0.0.0:8081/healthz", "--peering", "podtask"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": 8080, "health": 8081}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]


def test_operator_pod_is_restricted(render: Render) -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(docs)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root still needs a writable /tmp.
    assert {m["mountPath"] for m in container(docs)["volumeMounts"]} == {"/tmp"}


def test_default_env(render: Render) -> None:
    env = env_of(render())
    assert env.pop("PODTASK_OPERATOR_NAMESPACE") == "<from>"  # the pod's own namespace
    assert env == DEFAULT_ENV


def test_operator_namespace_comes_from_the_pod(render: Render) -> None:
    variables = {e["name"]: e for e in container(render())["env"]}
    source = variables["PODTASK_OPERATOR_NAMESPACE"]["valueFrom"]
    assert source == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_custom_settings(render: Render) -> None:
    settings = {
        "apiPort": 9090,
        "apiUrl": "https://podtask.example.internal",
        "apiKeySecret": "my-key",
        "outputInlineLimit": 1048576,
        "heartbeatTimeout": "2m",
        "heartbeatInterval": "5s",
        "taskGrace": "1m30s",
        "infraRetryLimit": 2,
        "deleteFinishedPods": True,
        "keepFailedPods": False,
        "phaseEvents": True,
        "ttlAfterFinished": "1d",
        "cancelGraceSeconds": 5,
        "workers": 64,
        "cpuRequestRatio": 0.25,
        "memoryRequestRatio": 0.5,
        "runAsUser": 2000,
    }
    docs = render(
        {
            "operator": {
                "settings": settings,
                "verbose": True,
                "extraEnv": [{"name": "EXTRA", "value": "1"}],
            },
            "image": {"tag": "dev", "pullPolicy": "Always"},
        }
    )
    env = env_of(docs)
    assert env["PODTASK_API_PORT"] == "9090"
    assert env["PODTASK_API_URL"] == "https://podtask.example.internal"
    assert env["PODTASK_API_KEY_SECRET"] == "my-key"
    assert env["PODTASK_OUTPUT_INLINE_LIMIT"] == "1048576"  # not 1.048576e+06
    assert env["PODTASK_HEARTBEAT_TIMEOUT"] == "2m"
    assert env["PODTASK_HEARTBEAT_INTERVAL"] == "5s"
    assert env["PODTASK_TASK_GRACE"] == "1m30s"
    assert env["PODTASK_INFRA_RETRY_LIMIT"] == "2"
    assert env["PODTASK_DELETE_FINISHED_PODS"] == "true"
    assert env["PODTASK_KEEP_FAILED_PODS"] == "false"
    assert env["PODTASK_PHASE_EVENTS"] == "true"
    assert env["PODTASK_TTL_AFTER_FINISHED"] == "1d"
    assert env["PODTASK_CANCEL_GRACE_SECONDS"] == "5"
    assert env["PODTASK_WORKERS"] == "64"
    assert env["PODTASK_CPU_REQUEST_RATIO"] == "0.25"
    assert env["PODTASK_MEMORY_REQUEST_RATIO"] == "0.5"
    assert env["PODTASK_RUN_AS_USER"] == "2000"
    assert env["EXTRA"] == "1"
    main = container(docs)
    assert main["image"] == "ghcr.io/podtask/operator:dev"
    assert main["imagePullPolicy"] == "Always"
    assert "--verbose" in main["args"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]}["http"] == 9090


def test_ports_are_configurable(render: Render) -> None:
    # Pods on the local process node share 127.0.0.1: two operators need two port pairs.
    docs = render({"operator": {"healthPort": 18081, "settings": {"apiPort": 18080}}})
    main = container(docs)
    assert main["args"][:2] == ["--liveness", "http://0.0.0.0:18081/healthz"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "http": 18080,
        "health": 18081,
    }
    assert env_of(docs)["PODTASK_API_PORT"] == "18080"


def test_local_cluster_values(render: Render) -> None:
    # What `make demo` and the Helm cluster test install on the process node: the schema
    # accepts them, and run pods reach the run API on loopback.
    from localcluster import demo

    values = demo.local_values(["podtask-demo"], 18080, 18081, heartbeatInterval="5s")
    docs = render(values)
    env = env_of(docs)
    assert env["PODTASK_API_HOST"] == "127.0.0.1"
    assert env["PODTASK_API_URL"] == "http://127.0.0.1:18080"
    assert env["PODTASK_HEARTBEAT_INTERVAL"] == "5s"
    args = container(docs)["args"]
    assert args[:2] == ["--liveness", "http://0.0.0.0:18081/healthz"]
    assert args[args.index("--namespace") :] == ["--namespace", "podtask-demo"]
    assert {r["metadata"]["namespace"] for r in of_kind(docs, "Role")} == {
        "podtask-demo",
        NAMESPACE,
    }


def test_every_env_value_is_a_string(render: Render) -> None:
    # The API server rejects a number in an EnvVar value.
    for variable in container(render({"operator": {"settings": {"runAsUser": 1}}}))["env"]:
        assert "valueFrom" in variable or isinstance(variable["value"], str), variable


def test_api_url_follows_release_and_service(helm: Path, tmp_path: Path) -> None:
    args = ["template", "tasks", str(CHART), "--namespace", "jobs", "--set", "service.port=81"]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert env_of(docs)["PODTASK_API_URL"] == "http://tasks-podtask.jobs.svc:81"
    service = one(docs, "Service")
    assert service["metadata"]["name"] == "tasks-podtask"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 81, "targetPort": "http", "protocol": "TCP"}
    ]


# -- RBAC ------------------------------------------------------------------------------


def test_cluster_mode_rbac(render: Render) -> None:
    docs = render()
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    rules = role["rules"]
    for group, resource, verbs in NAMESPACED_RIGHTS:
        for verb in verbs:
            assert allows(rules, group, resource, verb), (group, resource, verb)
    for verb in ("get", "list", "watch"):
        assert allows(rules, "", "namespaces", verb)
        assert allows(rules, "apiextensions.k8s.io", "customresourcedefinitions", verb)
    for verb in ("get", "list", "watch", "create"):
        assert allows(rules, "scheduling.k8s.io", "priorityclasses", verb)
    for verb in PEERING_VERBS:
        assert allows(rules, "kopf.dev", "clusterkopfpeerings", verb)
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    # Cluster-scoped names carry the namespace: two releases must not collide.
    assert NAMESPACE in role["metadata"]["name"]


def test_namespaced_mode_rbac(render: Render) -> None:
    docs = render(NAMESPACED)
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    # One Role per watched namespace, plus one for the signing key in the release namespace.
    assert set(roles) == set(bindings) == {"team-a", "team-b", NAMESPACE}
    for namespace in ("team-a", "team-b"):
        rules = roles[namespace]["rules"]
        for group, resource, verbs in NAMESPACED_RIGHTS:
            for verb in verbs:
                assert allows(rules, group, resource, verb), (namespace, resource, verb)
        for verb in PEERING_VERBS:
            assert allows(rules, "kopf.dev", "kopfpeerings", verb)
        assert bindings[namespace]["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    own = roles[NAMESPACE]["rules"]
    assert allows(own, "", "secrets", "create") and not allows(own, "", "pods", "create")

    # The one ClusterRole reads CRDs and creates the queues' PriorityClasses (the dispatcher
    # creates podtask-<namespace>-<queue> for every queue it admits to, in either mode);
    # it never touches namespaces and never updates or deletes anything cluster-scoped.
    cluster_rules = one(docs, "ClusterRole")["rules"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "customresourcedefinitions",
        "priorityclasses",
    }
    for rule in cluster_rules:
        if rule["resources"] == ["priorityclasses"]:
            assert set(rule["verbs"]) == {"get", "list", "watch", "create"}
        else:
            assert set(rule["verbs"]) == {"get", "list", "watch"}, rule
    args = container(docs)["args"]
    assert args[args.index("--namespace") :] == [
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
    ]


def test_namespaced_mode_in_the_release_namespace_needs_no_extra_role(render: Render) -> None:
    docs = render({"rbac": {"mode": "namespaced", "namespaces": [NAMESPACE]}})
    assert [r["metadata"]["namespace"] for r in of_kind(docs, "Role")] == [NAMESPACE]


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["cluster", "namespaced"])
def test_rbac_is_least_privilege(render: Render, values: dict[str, Any]) -> None:
    docs = render(values)
    for role in of_kind(docs, "Role") + of_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "*" not in rule["apiGroups"], rule
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
            if rule["apiGroups"] == ["apiextensions.k8s.io"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_rbac_create_false(render: Render) -> None:
    docs = render({"rbac": {"create": False}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & kinds(docs)


def test_existing_service_account(render: Render, render_error: Callable[..., str]) -> None:
    docs = render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not of_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
    assert "serviceAccount.name" in render_error({"serviceAccount": {"create": False}})


# -- CRDs ------------------------------------------------------------------------------


def test_crds_render_from_crds_dir_with_keep(render: Render) -> None:
    rendered = {d["metadata"]["name"]: d for d in of_kind(render(), "CustomResourceDefinition")}
    for path in sorted(CRDS.glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        name = source["metadata"]["name"]
        got = rendered.pop(name)
        assert got["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        del got["metadata"]["annotations"]
        assert got == source, f"{name} rendered differently from crds/{path.name}"
    assert set(rendered) == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    for crd in rendered.values():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["spec"]["group"] == "kopf.dev"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert rendered["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    assert rendered["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"


def test_crds_install_false(render: Render) -> None:
    docs = render({"crds": {"install": False}})
    assert not of_kind(docs, "CustomResourceDefinition")
    # The peering object is still needed (its CRD is then someone else's).
    assert of_kind(docs, "ClusterKopfPeering")


def test_kopf_peering_crds_can_be_left_to_another_operator(render: Render) -> None:
    names = {
        d["metadata"]["name"]
        for d in of_kind(render({"crds": {"kopfPeering": False}}), "CustomResourceDefinition")
    }
    assert names == {yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRDS.glob("*")}


def test_chart_crd_templates_match_crds_dir() -> None:
    problems = chart_crds.stale_chart_crds(CRDS, CHART)
    assert problems == [], "charts/podtask/templates/crds drifted from crds/: run `make crds`"


# -- peering ---------------------------------------------------------------------------


def test_peering_object_is_a_post_install_hook(render: Render) -> None:
    peering = one(render(), "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "podtask"
    hooks = peering["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"post-install", "post-upgrade"}


def test_namespaced_peering_objects(render: Render) -> None:
    docs = render(NAMESPACED)
    assert not of_kind(docs, "ClusterKopfPeering")
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"podtask"}


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["cluster", "namespaced"])
def test_peering_off(render: Render, values: dict[str, Any]) -> None:
    docs = render({**values, "operator": {"peering": {"enabled": False}}})
    assert "--peering" not in container(docs)["args"]
    assert not {"KopfPeering", "ClusterKopfPeering"} & kinds(docs)
    crds = {d["spec"]["group"] for d in of_kind(docs, "CustomResourceDefinition")}
    assert crds == {"podtask.dev"}
    for role in of_kind(docs, "Role") + of_kind(docs, "ClusterRole"):
        assert all("kopf.dev" not in rule["apiGroups"] for rule in role["rules"])


def test_peering_name(render: Render) -> None:
    docs = render({"operator": {"peering": {"name": "tasks"}}})
    args = container(docs)["args"]
    assert args[args.index("--peering") + 1] == "tasks"
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "tasks"


# -- Service, monitoring, NetworkPolicy, PriorityClasses -------------------------------


def test_service_selects_the_operator(render: Render) -> None:
    docs = render()
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_service_monitor(render: Render) -> None:
    docs = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_network_policy_admits_only_run_pods(render: Render) -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    policy = one(docs, "NetworkPolicy")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "podtask"}}
    assert peer["namespaceSelector"] == {}  # run pods in any namespace
    # The operator's own pod does not carry the run-pod label.
    assert pod_labels.get("app.kubernetes.io/managed-by") != "podtask"


def test_network_policy_in_namespaced_mode(render: Render) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    docs = render({**NAMESPACED, "networkPolicy": {"enabled": True, "metricsFrom": [prometheus]}})
    (rule,) = one(docs, "NetworkPolicy")["spec"]["ingress"]
    run_pods, extra = rule["from"]
    assert run_pods["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["team-a", "team-b"],
            }
        ]
    }
    assert extra == prometheus


def test_priority_classes(render: Render) -> None:
    docs = render({"priorityClasses": ["podtask-default", "podtask-batch"]})
    classes = of_kind(docs, "PriorityClass")
    assert [c["metadata"]["name"] for c in classes] == ["podtask-default", "podtask-batch"]
    for priority_class in classes:
        assert priority_class["apiVersion"] == "scheduling.k8s.io/v1"
        assert priority_class["value"] == 0
        assert priority_class["preemptionPolicy"] == "Never"
        assert priority_class["globalDefault"] is False


def test_dashboard(render: Render) -> None:
    docs = render({"dashboard": {"enabled": True, "namespace": "monitoring"}})
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["podtask.json"])
    assert dashboard["uid"] and dashboard["title"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bpodtask_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in METRICS, f"unknown metric {name} in {expr}"
            used.add(base)
    assert used == METRICS
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_common_labels(render: Render) -> None:
    docs = render({"commonLabels": {"team": "platform"}, **NAMESPACED})
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition":  # those are exactly crds/ (+ keep)
            assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]


# -- values and their schema -----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator": {"settings": {"workers": "many"}}}, "/operator/settings/workers"),
        ({"rbac": {"mode": "sideways"}}, "/rbac/mode"),
        ({"bogus": True}, "bogus"),
        ({"operator": {"settings": {"heartbeatTimeout": "5 minutes"}}}, "heartbeatTimeout"),
        ({"operator": {"settings": {"cpuRequestRatio": 0}}}, "cpuRequestRatio"),
        ({"operator": {"settings": {"runAsUser": 0}}}, "runAsUser"),
        ({"operator": {"settings": {"apiUrl": "podtask:8080"}}}, "apiUrl"),
        ({"operator": {"setings": {}}}, "setings"),
        ({"rbac": {"mode": "namespaced"}}, "/rbac/namespaces"),
        ({"rbac": {"mode": "namespaced", "namespaces": ["Team_A"]}}, "/rbac/namespaces/0"),
        ({"priorityClasses": ["system-cluster-critical"]}, "/priorityClasses/0"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"operator": {"healthPort": 0}}, "/operator/healthPort"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
    ],
)
def test_bad_values_are_rejected(
    render_error: Callable[..., str], values: dict[str, Any], named: str
) -> None:
    error = render_error(values)
    assert "schema" in error and named in error, error


def test_bad_value_fails_lint(helm: Path) -> None:
    result = run_helm(helm, "lint", str(CHART), "--set", "operator.settings.workers=many")
    assert result.returncode != 0
    assert "/operator/settings/workers" in result.stdout + result.stderr


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in _leaf_paths(values) if _schema_at(schema, path) is None]
    assert missing == []
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) - {"global"} == set(values)


def test_every_setting_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    settings = yaml.safe_load(text)["operator"]["settings"]
    for key in settings:
        variable = "PODTASK_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
        assert re.search(rf"#.*{variable}\b.*\n(\s*#.*\n)*\s*{key}:", text), key
        assert variable in DEFAULT_ENV or variable == "PODTASK_RUN_AS_USER"


# -- the CRD sync step itself ----------------------------------------------------------


def _fake_crd(name: str, description: str) -> str:
    return "# Generated. Do not edit.\n" + yaml.safe_dump(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {"group": "example.dev", "description": description},
        },
        sort_keys=False,
    )


def test_render_chart_crds_is_stable_and_prunes(tmp_path: Path) -> None:
    crds, chart = tmp_path / "crds", tmp_path / "chart"
    crds.mkdir()
    (crds / "a.example.dev.yaml").write_text(_fake_crd("a.example.dev", "A"))
    (crds / "b.example.dev.yaml").write_text(_fake_crd("b.example.dev", "B"))
    handwritten = chart / "templates" / "crds" / "kopf-peering.yaml"
    handwritten.parent.mkdir(parents=True)
    handwritten.write_text("# mine\n")

    assert len(chart_crds.render_chart_crds(crds, chart)) == 2
    first = {p.name: p.read_bytes() for p in handwritten.parent.iterdir()}
    assert chart_crds.render_chart_crds(crds, chart) == []  # byte-stable: nothing to do
    assert {p.name: p.read_bytes() for p in handwritten.parent.iterdir()} == first
    assert chart_crds.stale_chart_crds(crds, chart) == []

    (crds / "b.example.dev.yaml").unlink()
    assert chart_crds.stale_chart_crds(crds, chart) == [
        "b.example.dev.yaml: generated but has no source in crds/"
    ]
    chart_crds.render_chart_crds(crds, chart)
    assert sorted(p.name for p in handwritten.parent.iterdir()) == [
        "a.example.dev.yaml",
        "kopf-peering.yaml",
    ]
    assert handwritten.read_text() == "# mine\n"

    (crds / "a.example.dev.yaml").write_text(_fake_crd("a.example.dev", "changed"))
    assert chart_crds.stale_chart_crds(crds, chart) == [
        "a.example.dev.yaml: missing or out of date"
    ]


def test_chart_crds_survive_go_templating(helm: Path, tmp_path: Path) -> None:
    """A description that looks like a template renders literally, gated by crds.install."""
    crds, chart = tmp_path / "crds", tmp_path / "chart"
    crds.mkdir()
    tricky = 'Use {{ .Values.x }} or {{- "y" }} literally; }} alone is text.'
    (crds / "a.example.dev.yaml").write_text(_fake_crd("a.example.dev", tricky))
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: t\nversion: 0.0.1\n")
    (chart / "values.yaml").write_text("crds:\n  install: true\n")
    chart_crds.render_chart_crds(crds, chart)

    result = run_helm(helm, "template", "t", str(chart))
    assert result.returncode == 0, result.stderr
    (crd,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert crd["spec"]["description"] == tricky
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    result = run_helm(helm, "template", "t", str(chart), "--set", "crds.install=false")
    assert result.returncode == 0, result.stderr
    assert not [d for d in yaml.safe_load_all(result.stdout) if d]


def test_render_chart_crds_refuses_an_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        chart_crds.render_chart_crds(tmp_path, tmp_path / "chart")


def test_the_chart_copy_is_what_render_writes(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART / "templates" / "crds", chart / "templates" / "crds")
    assert chart_crds.render_chart_crds(CRDS, chart) == []
