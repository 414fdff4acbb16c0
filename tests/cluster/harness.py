"""Run the operator as a real process against the local cluster, and poll runs.

The operator is started the way a user starts it (`podtask-operator`), so a test
can SIGKILL it and start it again exactly as a crash and a restart would.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

from podtask.api.v1alpha1 import API_VERSION, FINAL_PHASES

GROUP, VERSION = "podtask.dev", "v1alpha1"
RUNNER_IMAGE = "podtask/runner:dev"
OPERATOR_BIN = Path(sys.executable).with_name("podtask-operator")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """One `podtask-operator` process; ``kill`` and ``start`` simulate a crash."""

    def __init__(self, kubeconfig: Path, log_dir: Path, **settings: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A fixed key keeps run tokens valid across restarts, as the chart's Secret does.
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PODTASK_API_HOST": "127.0.0.1",
            "PODTASK_API_PORT": str(self.port),
            "PODTASK_API_URL": self.url,
            "PODTASK_RUN_API_KEY": secrets.token_hex(32),
            "PODTASK_OPERATOR_NAMESPACE": "default",
            "PODTASK_HEARTBEAT_INTERVAL": "2s",
            "PODTASK_HEARTBEAT_TIMEOUT": "60s",
            "PODTASK_CANCEL_GRACE_SECONDS": "5",
            **{f"PODTASK_{name.upper()}": value for name, value in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(OPERATOR_BIN), "--liveness", ""],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()  # never leave a half-started operator behind
        raise RuntimeError(f"operator did not come up: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, exactly as a crashed or OOM-killed operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.log_dir / f"operator-{self.starts}.log"
        return path.read_text()[-4000:] if path.exists() else ""


def custom(api: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def apply_task(
    api: ApiClient, namespace: str, name: str, entrypoint: str, **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": API_VERSION,
        "kind": "Task",
        "metadata": {"name": name},
        # The local node runs the "image" from this checkout: make examples/ importable.
        "spec": {
            "image": RUNNER_IMAGE,
            "entrypoint": entrypoint,
            "env": [{"name": "PYTHONPATH", "value": str(REPO)}],
            **spec,
        },
    }
    result: dict[str, Any] = custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "tasks", body
    )
    return result


def create_run(
    api: ApiClient,
    namespace: str,
    task: str,
    payload: Any = None,
    name: str | None = None,
    **spec: Any,
) -> str:
    metadata = {"name": name} if name else {"generateName": f"{task.replace('.', '-')}-"}
    body = {
        "apiVersion": API_VERSION,
        "kind": "TaskRun",
        "metadata": metadata,
        "spec": {"task": task, **({"payload": payload} if payload is not None else {}), **spec},
    }
    created = custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns", body
    )
    return str(created["metadata"]["name"])


def get_run(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    run: dict[str, Any] = custom(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "taskruns", name
    )
    return run


def phase_of(run: dict[str, Any]) -> str | None:
    return (run.get("status") or {}).get("phase")


def wait_for(
    api: ApiClient,
    namespace: str,
    name: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 90,
    what: str = "condition",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            run = get_run(api, namespace, name)
        except ApiException as error:
            if error.status != 404:
                raise
        else:
            if until(run):
                return run
        time.sleep(0.2)
    raise AssertionError(f"run {name} never reached {what}; last status: {run.get('status')}")


def wait_for_phase(
    api: ApiClient, namespace: str, name: str, phases: Iterable[str], timeout: float = 90
) -> dict[str, Any]:
    wanted = set(phases)
    return wait_for(
        api, namespace, name, lambda run: phase_of(run) in wanted, timeout, f"phase {wanted}"
    )


def wait_final(api: ApiClient, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for_phase(api, namespace, name, {p.value for p in FINAL_PHASES}, timeout)


def pods_of(api: ApiClient, namespace: str) -> list[Any]:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/managed-by=podtask"
    )
    return list(pods.items)
