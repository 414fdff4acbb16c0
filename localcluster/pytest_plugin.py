"""Pytest fixtures for tests that talk to a real Kubernetes API server.

Registered from ``tests/conftest.py``. Nothing starts unless a test asks for
``kube_cluster`` (directly or through another fixture), so unit-only runs stay
free of side effects. A run that does ask either reuses the cluster
``KUBECONFIG`` points at (unless ``PODTASK_REUSE_CLUSTER=0``) or starts a
private one in a temporary state dir and stops it at the end of the session.
Failures to build or start are errors, never skips: CI relies on these tests.
"""

from __future__ import annotations

import functools
import os
import random
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from localcluster import controlplane
from localcluster.components import REPO_ROOT

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REUSE_ENV = "PODTASK_REUSE_CLUSTER"
CRDS_DIR = REPO_ROOT / "crds"
NAMESPACE_READY_SECONDS = 60.0
CRD_ESTABLISHED_SECONDS = 60.0

_summary_key = pytest.StashKey[str]()
_build_error_key = pytest.StashKey[Exception]()


@dataclass(frozen=True)
class KubeCluster:
    kubeconfig: Path
    server: str
    # None when reusing a cluster that podtask's localcluster did not start.
    state_dir: Path | None
    # True when this session started the cluster and will stop it.
    owned: bool


def new_api_client(kubeconfig: Path) -> ApiClient:
    from kubernetes import config

    api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


@functools.cache
def reusable_kubeconfig() -> Path | None:
    """The file in KUBECONFIG if it names one reachable cluster and reuse is allowed."""
    value = os.environ.get("KUBECONFIG", "")
    if not value or os.pathsep in value or os.environ.get(REUSE_ENV) == "0":
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        return None
    from kubernetes import client

    try:
        with new_api_client(path) as api:
            client.VersionApi(api).get_code(_request_timeout=5)
    except Exception:
        return None
    return path


def _wants_cluster(items: list[pytest.Item]) -> bool:
    return any("kube_cluster" in getattr(item, "fixturenames", ()) for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    # A cold build takes far longer than the per-test timeout, which also covers
    # fixture setup; building here, before any test starts, keeps it out of that
    # budget. The error is kept for the fixture to raise, so it fails the tests.
    if session.config.option.collectonly or not _wants_cluster(session.items):
        return
    if reusable_kubeconfig() is not None:
        return
    from localcluster import build

    try:
        if not build.is_built():
            build.build()
    except Exception as error:
        session.config.stash[_build_error_key] = error


@pytest.fixture(scope="session")
def kube_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    build_error = request.config.stash.get(_build_error_key, None)
    if build_error is not None:
        raise RuntimeError("building the local control plane failed") from build_error
    reused = reusable_kubeconfig()
    if reused is not None:
        state_dir = reused.parent if (reused.parent / "cluster.json").is_file() else None
        with new_api_client(reused) as api:
            server = str(api.configuration.host)
        # Said out loud: KUBECONFIG may well name a cluster nobody meant to test on.
        request.config.stash[_summary_key] = f"reused {server} from KUBECONFIG={reused}"
        yield KubeCluster(kubeconfig=reused, server=server, state_dir=state_dir, owned=False)
        return
    state_dir = tmp_path_factory.mktemp("localcluster")
    info = controlplane.up(state_dir, owner_pid=os.getpid())
    try:
        yield KubeCluster(
            kubeconfig=info.kubeconfig, server=info.server, state_dir=info.state_dir, owned=True
        )
    finally:
        usage = controlplane.memory(state_dir)
        controlplane.down(state_dir)
        request.config.stash[_summary_key] = (
            f"started in {info.startup_seconds:.1f}s; memory at teardown: "
            f"{controlplane.format_memory(usage)}; logs in {state_dir / 'logs'}"
        )


@pytest.fixture(scope="session")
def kubeconfig(kube_cluster: KubeCluster) -> Path:
    return kube_cluster.kubeconfig


@pytest.fixture(scope="session")
def kube_api(kube_cluster: KubeCluster) -> Iterator[ApiClient]:
    with new_api_client(kube_cluster.kubeconfig) as api:
        yield api


def _crd_documents(directory: Path) -> list[dict[str, Any]]:
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                documents.append(doc)
    return documents


def _established(crd: Any) -> bool:
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="session")
def crds(kube_api: ApiClient) -> list[str]:
    """Apply ``crds/*.yaml`` once and return the CRD names, all Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.ApiextensionsV1Api(kube_api)
    names = []
    for doc in _crd_documents(CRDS_DIR):
        crd = client.V1CustomResourceDefinition.from_dict(doc)
        assert crd is not None and crd.metadata is not None and crd.metadata.name
        name = crd.metadata.name
        try:
            api.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:
                raise
            current = api.read_custom_resource_definition(name)
            assert current.metadata is not None
            crd.metadata.resource_version = current.metadata.resource_version
            api.replace_custom_resource_definition(name, crd)
        names.append(name)
    deadline = time.monotonic() + CRD_ESTABLISHED_SECONDS
    pending = list(names)
    while pending:
        pending = [n for n in pending if not _established(api.read_custom_resource_definition(n))]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {CRD_ESTABLISHED_SECONDS}s: {pending}")
        if pending:
            time.sleep(0.1)
    return names


def namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-") or "test"
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"{base[:57].rstrip('-')}-{suffix}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: ApiClient) -> Iterator[str]:
    """A fresh namespace, ready for pods; deleted afterwards without waiting."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = namespace_name(request.node.name)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"podtask.dev/test": "true"})
        )
    )
    try:
        # The ServiceAccount admission plugin rejects pods until the serviceaccount
        # controller has made `default`, and projected token volumes need the
        # root-ca publisher's ConfigMap.
        deadline = time.monotonic() + NAMESPACE_READY_SECONDS
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                core.read_namespaced_config_map("kube-root-ca.crt", name)
                break
            except ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    summary = config.stash.get(_summary_key, None)
    if summary:
        terminalreporter.write_sep("-", "local control plane")
        terminalreporter.write_line(summary)
