"""End to end on kind: the real images, the Helm chart, the demo's example runs.

Where a Docker engine answers ``docker info``: builds the operator image, the runner image
and an examples image (the runner image plus ``examples/``, as a user's task image is built
FROM the runner), builds kind from its Go module into the podtask cache (once per version),
creates a throw-away kind cluster, loads the images, installs the chart with
``helm install`` (cluster mode, the chart's defaults but for the image names), and runs the
same Queue, Tasks, Schedule and TaskRuns as ``make demo`` to the outcomes it expects.
The cluster is deleted at the end. Everywhere else the module is skipped with the reason.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from localcluster import build, demo
from localcluster.components import REPO_ROOT

KIND_VERSION = "v0.33.0"  # its default node image runs Kubernetes v1.37.0
TAG = "e2e"
OPERATOR_IMAGE = f"podtask/operator:{TAG}"
RUNNER_IMAGE = f"podtask/runner:{TAG}"
EXAMPLES_IMAGE = f"podtask/examples:{TAG}"
EXAMPLES_DOCKERFILE = f"""\
FROM {RUNNER_IMAGE}
COPY --chown=10001:10001 examples /app/examples
"""
RUNS_TIMEOUT_SECONDS = 300.0
# Image builds and a cold kind cluster take far longer than the default per-test timeout;
# the module's fixtures are set up within the first test's budget.
E2E_TIMEOUT_SECONDS = 3600


def docker_problem() -> str | None:
    """None if a Docker engine answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "there is no `docker` command"
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`docker info` failed: {error}"
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return f"no Docker engine: `docker info` failed: {lines[-1] if lines else 'no output'}"
    return None


DOCKER_PROBLEM = docker_problem()
pytestmark = [
    pytest.mark.skipif(DOCKER_PROBLEM is not None, reason=f"e2e needs Docker: {DOCKER_PROBLEM}"),
    pytest.mark.timeout(E2E_TIMEOUT_SECONDS),
]


def run(*argv: str, stdin: str | None = None, timeout: float = 1800) -> str:
    result = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def kind() -> Path:
    """kind built from its Go module (the Go module proxy), cached per version."""
    directory = build.cache_root() / f"kind-{KIND_VERSION}-{build.go_version()}"
    binary = directory / "kind"
    if not binary.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
            env={**build.go_env(), "GOBIN": str(directory)},
            check=True,
            timeout=1800,
        )
    assert run(str(binary), "version").startswith(f"kind {KIND_VERSION}")
    return binary


@pytest.fixture(scope="module")
def images() -> list[str]:
    root = str(REPO_ROOT)
    run("docker", "build", "-f", "operator/Dockerfile", "-t", OPERATOR_IMAGE, root)
    run("docker", "build", "-f", "runner-image/Dockerfile", "-t", RUNNER_IMAGE, root)
    run("docker", "build", "-f", "-", "-t", EXAMPLES_IMAGE, root, stdin=EXAMPLES_DOCKERFILE)
    return [OPERATOR_IMAGE, EXAMPLES_IMAGE]


@pytest.fixture(scope="module")
def kind_cluster(
    kind: Path, images: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh kind cluster with the images loaded; its kubeconfig."""
    name = f"podtask-e2e-{secrets.token_hex(3)}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    try:
        run(str(kind), "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig),
            "--wait", "180s")  # fmt: skip
        run(str(kind), "load", "docker-image", "--name", name, *images)
        yield kubeconfig
    finally:
        subprocess.run(
            [str(kind), "delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig)],
            capture_output=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def release(kind_cluster: Path) -> demo.Kubectl:
    kube = demo.Kubectl(kind_cluster)
    kube.ensure_namespace(demo.NAMESPACE)
    kube.helm(
        "install", demo.RELEASE, str(demo.CHART),
        "--namespace", demo.RELEASE_NAMESPACE, "--create-namespace",
        "--set", "image.repository=podtask/operator", "--set", f"image.tag={TAG}",
        "--set", "image.pullPolicy=Never",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    kube.wait_crds()
    return kube


def test_chart_installs_a_ready_operator(release: demo.Kubectl) -> None:
    status = release.kubectl(
        "rollout", "status", f"deployment/{demo.RELEASE}", "-n", demo.RELEASE_NAMESPACE,
        "--timeout=120s",
    )  # fmt: skip
    assert "successfully rolled out" in status
    logs = release.kubectl("logs", f"deployment/{demo.RELEASE}", "-n", demo.RELEASE_NAMESPACE)
    assert "podtask operator started" in logs


def test_example_runs_end_as_expected(release: demo.Kubectl) -> None:
    release.apply(demo.setup_documents(EXAMPLES_IMAGE), demo.NAMESPACE)
    batch = secrets.token_hex(2)
    started = datetime.now(UTC).replace(microsecond=0)
    release.apply(demo.run_documents(batch), demo.NAMESPACE, create=True)
    watch = demo.Watch(release, batch, started)
    deadline = time.monotonic() + RUNS_TIMEOUT_SECONDS
    rows = watch.rows()
    while not watch.done(rows) and time.monotonic() < deadline:
        time.sleep(1)
        rows = watch.rows()
    assert demo.verdict(rows, batch) == [], rows
    flaky = next(r for r in rows if r.name == f"flaky-{batch}")
    assert flaky.attempt == "3"
