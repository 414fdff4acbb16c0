"""The process kubelet's pure rules: quantities, $(VAR) expansion, env, volumes, image map."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from localcluster import node_spec as specs

Obj = dict[str, Any]


# --- quantities -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("0.5Gi", 2**29),
        ("1G", 10**9),
        ("1Ki", 1024),
        ("100", 100),
        ("1e3", 1000),
        ("1.5k", 1500),
        ("129M", 129 * 10**6),
        (64, 64),
    ],
)
def test_memory_bytes(text: str | int, expected: int) -> None:
    assert specs.memory_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "millis"), [("250m", 250), ("0.5", 500), ("2", 2000), ("100u", 1), (1, 1000)]
)
def test_cpu_millis(text: str | int, millis: int) -> None:
    assert specs.cpu_millis(text) == millis


@pytest.mark.parametrize("bad", ["", "Mi", "12Q", "1.2.3", "1 Gi", "--1"])
def test_parse_quantity_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        specs.parse_quantity(bad)


def test_parse_quantity_is_exact() -> None:
    assert specs.parse_quantity("0.1") * 3 == Decimal("0.3")


# --- $(VAR) expansion ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "a"),
        ("x-$(A)-$(B)-y", "x-a-bee-y"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$a"),
        ("$$", "$"),
        ("$", "$"),
        ("a$", "a$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("$()", "empty?"),
        ("$(A)$(A)", "aa"),
        ("no refs", "no refs"),
        ("ünï$(A)çødé", "ünïaçødé"),
    ],
)
def test_expand_matches_kubernetes_rules(text: str, expected: str) -> None:
    assert specs.expand(text, specs.mapping_for({"A": "a", "B": "bee", "": "empty?"})) == expected


def test_expand_command_uses_command_then_args() -> None:
    container = {"command": ["echo", "$(X)"], "args": ["$$(X)", "$(Y)"]}
    assert specs.expand_command(container, {"X": "1"}) == ["echo", "1", "$(X)", "$(Y)"]


# --- env --------------------------------------------------------------------------------


def _pod(container: Obj, **spec: Any) -> Obj:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "demo"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "sa",
            "containers": [container],
            **spec,
        },
    }


def _secret(**data: str) -> Obj:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _ctx(
    pod: Obj,
    configmaps: dict[str, Obj | None] | None = None,
    secrets: dict[str, Obj | None] | None = None,
    **kw: Any,
) -> specs.EnvContext:
    return specs.EnvContext(pod=pod, configmaps=configmaps or {}, secrets=secrets or {}, **kw)


def test_env_precedence_and_sources() -> None:
    container = {
        "name": "main",
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "sec"}},
        ],
        "env": [
            {"name": "LITERAL", "value": "v"},
            {"name": "REF", "value": "$(LITERAL)-$(CM_k)-$(KUBERNETES_SERVICE_HOST)-$(LATER)"},
            {"name": "LATER", "value": "late"},
            {"name": "password", "value": "env beats envFrom"},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {
                "name": "FROM_SECRET",
                "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}},
            },
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "NOTE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}},
            },
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "overridden"},
        ],
    }
    env = specs.container_env(
        container,
        _ctx(
            _pod(container),
            configmaps={"cm": {"data": {"k": "cmv"}}},
            secrets={"sec": _secret(password="pw")},
            service_env={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            pod_ip="127.0.0.2",
            host_ip="127.0.0.3",
        ),
    )
    assert env == {
        "CM_k": "cmv",
        "password": "env beats envFrom",
        "LITERAL": "v",
        # LATER is defined after REF, so it is not expanded (kubelet order).
        "REF": "v-cmv-10.0.0.1-$(LATER)",
        "LATER": "late",
        "FROM_CM": "cmv",
        "FROM_SECRET": "pw",
        "NAME": "p",
        "NS": "ns",
        "UID": "u-1",
        "APP": "demo",
        "NOTE": 'say "hi"',
        "NODE": "node-1",
        "SA": "sa",
        "POD_IP": "127.0.0.2",
        "HOST_IP": "127.0.0.3",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "overridden",
    }


@pytest.mark.parametrize(
    ("var", "configmaps", "secrets", "message"),
    [
        ({"configMapKeyRef": {"name": "cm", "key": "k"}}, {}, {}, 'configmap "cm" not found'),
        (
            {"configMapKeyRef": {"name": "cm", "key": "k"}},
            {"cm": {"data": {}}},
            {},
            "couldn't find key k in ConfigMap ns/cm",
        ),
        ({"secretKeyRef": {"name": "s", "key": "k"}}, {}, {"s": None}, 'secret "s" not found'),
        (
            {"secretKeyRef": {"name": "s", "key": "k"}},
            {},
            {"s": _secret(other="x")},
            "couldn't find key k in Secret ns/s",
        ),
        ({"fieldRef": {"fieldPath": "spec.nope"}}, {}, {}, "unsupported fieldPath: spec.nope"),
    ],
)
def test_env_errors_use_kubelet_messages(
    var: Obj, configmaps: dict[str, Obj | None], secrets: dict[str, Obj | None], message: str
) -> None:
    container = {"name": "main", "env": [{"name": "X", "valueFrom": var}]}
    with pytest.raises(specs.ConfigError) as error:
        specs.container_env(container, _ctx(_pod(container), configmaps, secrets))
    assert str(error.value) == message


def test_optional_refs_are_skipped() -> None:
    container = {
        "name": "main",
        "envFrom": [
            {"configMapRef": {"name": "gone", "optional": True}},
            {"secretRef": {"name": "gone", "optional": True}},
        ],
        "env": [
            {
                "name": "A",
                "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
            {
                "name": "B",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey", "optional": True}},
            },
            {
                "name": "C",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
            {"name": "D", "value": ""},
        ],
    }
    env = specs.container_env(container, _ctx(_pod(container), {"cm": {"data": {}}}))
    assert env == {"D": ""}


def test_envfrom_missing_required_configmap_fails() -> None:
    container = {"name": "main", "envFrom": [{"configMapRef": {"name": "cm"}}]}
    with pytest.raises(specs.ConfigError, match='configmap "cm" not found'):
        specs.container_env(container, _ctx(_pod(container)))


def test_resource_field_ref_defaults_limits_to_node_allocatable() -> None:
    container = {
        "name": "main",
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m"}},
        "env": [
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "CPU_REQ_M",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
            },
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
        ],
    }
    env = specs.container_env(
        container, _ctx(_pod(container), node_allocatable={"cpu": "8", "memory": "16Gi"})
    )
    assert env == {"MEM": "512", "CPU_LIMIT": "8", "CPU_REQ_M": "250", "CPU_REQ": "1"}


def test_referenced_objects_covers_env_envfrom_and_volumes() -> None:
    pod = {
        "spec": {
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s1"}}]}],
            "containers": [
                {
                    "name": "c",
                    "env": [
                        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c1", "key": "k"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
                    ],
                }
            ],
            "volumes": [
                {"name": "v1", "configMap": {"name": "c2"}},
                {"name": "v2", "secret": {"secretName": "s3"}},
                {
                    "name": "v3",
                    "projected": {
                        "sources": [{"configMap": {"name": "c3"}}, {"secret": {"name": "s4"}}]
                    },
                },
                {"name": "v4", "emptyDir": {}},
            ],
        }
    }
    assert specs.referenced_objects(pod) == ({"c1", "c2", "c3"}, {"s1", "s2", "s3", "s4"})


# --- volumes ------------------------------------------------------------------------------


def test_configmap_volume_all_keys_and_items() -> None:
    pod = _pod({"name": "main"})
    cm = {"data": {"a": "A", "b": "B"}, "binaryData": {"bin": base64.b64encode(b"\0").decode()}}
    ctx = _ctx(pod, {"cm": cm})
    assert specs.volume_files({"name": "v", "configMap": {"name": "cm"}}, ctx, {}) == {
        "a": (b"A", 0o644),
        "b": (b"B", 0o644),
        "bin": (b"\0", 0o644),
    }
    items = {
        "name": "v",
        "configMap": {
            "name": "cm",
            "defaultMode": 0o600,
            "items": [{"key": "a", "path": "sub/a.txt"}, {"key": "b", "path": "b", "mode": 0o400}],
        },
    }
    assert specs.volume_files(items, ctx, {}) == {"sub/a.txt": (b"A", 0o600), "b": (b"B", 0o400)}


def test_volume_errors_and_optional() -> None:
    ctx = _ctx(_pod({"name": "main"}), {"cm": {"data": {}}})
    with pytest.raises(specs.ConfigError, match='secret "s" not found'):
        specs.volume_files({"name": "v", "secret": {"secretName": "s"}}, ctx, {})
    with pytest.raises(specs.ConfigError, match="configmap references non-existent config key: x"):
        specs.volume_files(
            {"name": "v", "configMap": {"name": "cm", "items": [{"key": "x", "path": "x"}]}},
            ctx,
            {},
        )
    assert (
        specs.volume_files({"name": "v", "secret": {"secretName": "s", "optional": True}}, ctx, {})
        == {}
    )
    assert specs.volume_files({"name": "v", "emptyDir": {}}, ctx, {}) is None
    assert (
        specs.volume_files({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, ctx, {})
        is None
    )


def test_projected_volume_like_kube_api_access() -> None:
    volume = {
        "name": "kube-api-access-x",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
    assert specs.token_sources(volume) == [specs.TokenSource("token", "", 3607)]
    ctx = _ctx(_pod({"name": "main"}), {"kube-root-ca.crt": {"data": {"ca.crt": "PEM"}}})
    assert specs.volume_files(volume, ctx, {"token": "jwt"}) == {
        "token": (b"jwt", 420),
        "ca.crt": (b"PEM", 420),
        "namespace": (b"ns", 420),
    }


def test_downward_api_volume_formats_maps_like_kubelet() -> None:
    volume = {
        "name": "d",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            ]
        },
    }
    pod = _pod({"name": "main"})
    pod["metadata"]["labels"] = {"b": "2", "a": "1"}
    files = specs.volume_files(volume, _ctx(pod), {})
    assert files == {
        "labels": (b'a="1"\nb="2"', 0o644),
        "annotations": (b'note="say \\"hi\\""', 0o644),
    }


def test_env_name_for_path() -> None:
    assert specs.env_name_for_path("P_", "/etc/my-config/") == "P_ETC_MY_CONFIG"
    assert specs.env_name_for_path("P_", "/var/run/secrets/kubernetes.io/serviceaccount") == (
        "P_VAR_RUN_SECRETS_KUBERNETES_IO_SERVICEACCOUNT"
    )


# --- image map ------------------------------------------------------------------------------


def test_image_map_first_match_wins_and_resolves_relative_dirs(tmp_path: Path) -> None:
    image_map = specs.parse_image_map(
        [
            {
                "match": "ghcr.io/acme/*",
                "pathPrepend": ["envs/acme/bin"],
                "env": {"X": 1},
                "workingDir": "work",
                "entrypoint": ["acme"],
                "cmd": ["--serve"],
            },
            {"match": "*", "pathPrepend": ["/opt/default/bin"]},
        ],
        tmp_path,
    )
    acme = specs.match_image("ghcr.io/acme/app:1.2", image_map)
    assert acme.path_prepend == (str(tmp_path / "envs/acme/bin"),)
    assert acme.env == {"X": "1"}
    assert acme.working_dir == str(tmp_path / "work")
    assert (acme.entrypoint, acme.cmd) == (("acme",), ("--serve",))
    other = specs.match_image("python:3.11", image_map)
    assert other.path_prepend == ("/opt/default/bin",)
    assert specs.match_image("x", []).path_prepend == ()


@pytest.mark.parametrize(
    "bad", [{"match": "*"}, [{"pathPrepend": []}], [{"match": "*", "typo": 1}]]
)
def test_image_map_rejects_bad_shapes(bad: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image map"):
        specs.parse_image_map(bad, tmp_path)
