"""``podtask dev``: run a local project's tasks as local processes against a cluster.

As Trigger.dev's dev command: the platform queues and dispatches the runs, the
developer's machine executes them from the working copy, and an edit takes effect
on the next attempt without building or deploying an image.

How:

1. The project's tasks are applied as Task resources marked with this session
   (label ``podtask.dev/dev-session`` and the container variable
   ``PODTASK_DEV_SESSION``), re-applied whenever a project file changes.
2. Runs of those tasks go through the operator as any other: queues, concurrency,
   delays, retries, cancel and maxDuration all apply.  Each attempt still gets its
   pod, whose runner sees ``PODTASK_DEV_SESSION`` and only holds the attempt's
   place (:func:`podtask.runner.dev_relay`).
3. This session watches those pods.  For each running one it starts
   ``python -m podtask.runner`` locally, in the project directory, with the pod's
   environment (run name, attempt, run API token and URL): the local process
   fetches the payload from the run API, runs the task and reports the outcome,
   exactly as the pod would have.  Its output is printed here.
4. When the local attempt exits the session deletes the pod; when the pod goes
   first (cancel, maxDuration) the local attempt gets SIGTERM, so ``on_cancel``
   runs.

The run API must be reachable from this machine: the URL the operator gives pods
is used unless ``--api-url`` overrides it (e.g. after ``kubectl port-forward``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from podtask import protocol
from podtask._kube import Backend
from podtask.errors import KubernetesApiError, PodtaskError
from podtask.project import Applied, Project, ProjectError, apply_manifests

__all__ = ["DEV_IMAGE", "DevSession", "session_id"]

DEV_IMAGE = "podtask/runner:dev"
"""The image of dev Tasks' pods: they only relay, so the runner image is all they need."""
POD_SELECTOR = "app.kubernetes.io/managed-by=podtask"
_STOP_GRACE_SECONDS = 35.0  # on_cancel hooks get 30 s


def session_id(project: Project, namespace: str) -> str:
    """Stable per project directory and namespace: a restarted session adopts its runs."""
    return hashlib.sha256(f"{project.root}\x00{namespace}".encode()).hexdigest()[:12]


@dataclass
class LocalAttempt:
    pod: str
    run: str
    attempt: str
    process: subprocess.Popen[bytes]
    stopping: bool = False
    reader: threading.Thread | None = field(default=None, repr=False)


class DevSession:
    """One ``podtask dev`` session: keeps Tasks in sync and runs attempts locally."""

    def __init__(
        self,
        project: Project,
        backend: Backend,
        namespace: str,
        *,
        emit: Callable[[str], None],
        image: str = DEV_IMAGE,
        api_url: str | None = None,
        poll_interval: float = 1.0,
        python: str = sys.executable,
    ) -> None:
        self.project = project
        self.backend = backend
        self.namespace = namespace
        self.emit = emit
        self.image = image
        self.api_url = api_url
        self.poll_interval = poll_interval
        self.python = python
        self.session = session_id(project, namespace)
        self.task_ids: set[str] = set()
        self.fingerprint = ""
        self.attempts: dict[str, LocalAttempt] = {}
        self.done: set[str] = set()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    # ------------------------------------------------------------------ tasks

    def manifests(self) -> list[dict[str, Any]]:
        """The project's Task and Schedule manifests for this session.

        Built by ``podtask deploy`` in a fresh interpreter: a reload must see the
        files as they are now, which re-importing in this process cannot promise.
        """
        fingerprint = self.project.fingerprint()
        command = [
            self.python,
            "-m",
            "podtask.cli",
            "deploy",
            "--project",
            str(self.project.root),
            "--image",
            self.image,
            "--version",
            f"dev-{fingerprint}",
            "--namespace",
            self.namespace,
            "--dev-session",
            self.session,
            "--output",
            "json",
        ]
        done = subprocess.run(command, capture_output=True, cwd=self.project.root, timeout=120)
        if done.returncode != 0:
            raise ProjectError(done.stderr.decode(errors="replace").strip() or "deploy failed")
        manifests: list[dict[str, Any]] = json.loads(done.stdout)
        self.fingerprint = fingerprint
        return manifests

    def sync(self) -> list[Applied]:
        manifests = self.manifests()
        applied = apply_manifests(self.backend, self.namespace, manifests)
        self.task_ids = {m["metadata"]["name"] for m in manifests if m["kind"] == "Task"}
        return applied

    def _reload_loop(self) -> None:
        while not self.stop_event.wait(self.poll_interval):
            if self.project.fingerprint() == self.fingerprint:
                continue
            try:
                applied = self.sync()
            except PodtaskError as error:
                self.emit(f"reload failed: {error}")
                continue
            changed = [a for a in applied if a.action != "unchanged"]
            self.emit(
                f"reloaded {len(self.task_ids)} task(s)"
                + (f"; updated {', '.join(a.name for a in changed)}" if changed else "")
            )

    # ------------------------------------------------------------------ pods

    def _ours(self, pod: dict[str, Any]) -> bool:
        for container in (pod.get("spec") or {}).get("containers") or []:
            for var in container.get("env") or []:
                if var.get("name") == protocol.ENV_DEV_SESSION:
                    return bool(var.get("value") == self.session)
        return False

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        """React to one pod event (public for tests)."""
        if not self._ours(pod):
            return
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        phase = (pod.get("status") or {}).get("phase")
        gone = (
            kind == "DELETED" or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed")
        )
        with self._lock:
            attempt = self.attempts.get(name)
            if gone:
                if attempt is not None and attempt.process.poll() is None and not attempt.stopping:
                    attempt.stopping = True
                    self.emit(
                        f"{attempt.run} #{attempt.attempt}: pod stopped; stopping the local attempt"
                    )
                    attempt.process.send_signal(signal.SIGTERM)
                return
            if phase != "Running" or attempt is not None or name in self.done:
                return
            self.attempts[name] = self._start(pod)

    def _env(self, pod: dict[str, Any]) -> dict[str, str]:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        env = dict(os.environ)
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif var.get("valueFrom"):
                value = self._value_from(var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
        env.pop(protocol.ENV_DEV_SESSION, None)
        if self.api_url:
            env[protocol.ENV_API_URL] = self.api_url
        root = str(self.project.import_root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _value_from(self, source: dict[str, Any]) -> str | None:
        namespace = self.namespace
        try:
            if ref := source.get("configMapKeyRef"):
                return self.backend.config_map_data(namespace, ref["name"]).get(ref["key"])
            if ref := source.get("secretKeyRef"):
                raw = self.backend.secret_data(namespace, ref["name"]).get(ref["key"])
                return base64.b64decode(raw).decode() if raw is not None else None
        except PodtaskError as error:
            self.emit(f"warning: cannot resolve an env var: {error}")
        return None

    def _start(self, pod: dict[str, Any]) -> LocalAttempt:
        meta = pod.get("metadata") or {}
        env = self._env(pod)
        run = env.get(protocol.ENV_RUN_NAME, "?")
        number = env.get(protocol.ENV_ATTEMPT, "?")
        process = subprocess.Popen(
            [self.python, "-m", "podtask.runner"],
            cwd=self.project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal is the session's, not the run's
        )
        attempt = LocalAttempt(str(meta.get("name")), run, number, process)
        self.emit(
            f"{run} #{number}: running {env.get(protocol.ENV_ENTRYPOINT)} locally "
            f"(pid {process.pid})"
        )
        attempt.reader = threading.Thread(
            target=self._follow, args=(attempt,), name=f"dev-{attempt.pod}", daemon=True
        )
        attempt.reader.start()
        return attempt

    def _follow(self, attempt: LocalAttempt) -> None:
        assert attempt.process.stdout is not None
        for raw in attempt.process.stdout:
            self.emit(f"{attempt.run} #{attempt.attempt} | {raw.decode(errors='replace').rstrip()}")
        code = attempt.process.wait()
        self.emit(f"{attempt.run} #{attempt.attempt}: local attempt exited with {code}")
        with self._lock:
            self.done.add(attempt.pod)
            self.attempts.pop(attempt.pod, None)
        # The pod only stood in for this attempt; the operator has the outcome now.
        with contextlib.suppress(KubernetesApiError):
            self.backend.delete_pod(self.namespace, attempt.pod, grace_seconds=1)

    def _watch_pods(self) -> None:
        version: str | None = None
        while not self.stop_event.is_set():
            try:
                if version is None:
                    pods, version = self.backend.list_pods(self.namespace, POD_SELECTOR)
                    for pod in pods:
                        self.on_pod("ADDED", pod)
                for kind, pod in self.backend.watch_pods(
                    self.namespace,
                    label_selector=POD_SELECTOR,
                    resource_version=version,
                    timeout_seconds=30,
                ):
                    version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self.on_pod(kind, pod)
                    if self.stop_event.is_set():
                        return
            except PodtaskError as error:
                if not (isinstance(error, KubernetesApiError) and error.status == 410):
                    self.emit(f"watching pods failed, retrying: {error}")
                    self.stop_event.wait(2)
                version = None

    # ------------------------------------------------------------------ runs (display)

    def _watch_runs(self) -> None:
        while not self.stop_event.wait(self.poll_interval):
            try:
                items, _ = self.backend.list("taskruns", self.namespace)
            except PodtaskError:
                continue
            for run in items:
                spec = run.get("spec") or {}
                if spec.get("task") not in self.task_ids:
                    continue
                name = str((run.get("metadata") or {}).get("name"))
                status = run.get("status") or {}
                phase = status.get("phase") or "Pending"
                if self._phases.get(name) == phase:
                    continue
                self._phases[name] = phase
                detail = ""
                if phase == "Completed" and "output" in status:
                    detail = f" output={json.dumps(status['output'])[:200]}"
                elif status.get("error"):
                    detail = f" {status['error'].get('type')}: {status['error'].get('message', '')}"
                self.emit(f"{name} ({spec.get('task')}): {phase}{detail}")

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Sync the Tasks, then serve until :meth:`stop` (or Ctrl-C in the caller)."""
        applied = self.sync()
        self.emit(
            f"dev session {self.session}: {len(self.task_ids)} task(s) in namespace "
            f"{self.namespace}: {', '.join(sorted(self.task_ids))}"
        )
        for item in applied:
            if item.action != "unchanged":
                self.emit(f"{item.kind} {item.name} {item.action}")
        threads = [
            threading.Thread(target=self._watch_pods, name="dev-pods", daemon=True),
            threading.Thread(target=self._reload_loop, name="dev-reload", daemon=True),
            threading.Thread(target=self._watch_runs, name="dev-runs", daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.emit("watching for runs; edit files to reload, Ctrl-C to stop")
        try:
            while not self.stop_event.wait(0.2):
                pass
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        """Stop local attempts (SIGTERM: on_cancel runs), then wait for them."""
        self.stop_event.set()
        with self._lock:
            running = [a for a in self.attempts.values() if a.process.poll() is None]
        for attempt in running:
            self.emit(f"{attempt.run} #{attempt.attempt}: stopping the local attempt")
            with contextlib.suppress(ProcessLookupError):
                attempt.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for attempt in running:
            try:
                attempt.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                attempt.process.kill()
                attempt.process.wait()


def task_manifest_for_dev(manifest: dict[str, Any], session: str) -> dict[str, Any]:
    """A Task manifest marked for a dev session: label, and the pod's relay variable."""
    spec = dict(manifest["spec"])
    env = [e for e in spec.get("env") or [] if e.get("name") != protocol.ENV_DEV_SESSION]
    spec["env"] = [*env, {"name": protocol.ENV_DEV_SESSION, "value": session}]
    metadata = dict(manifest["metadata"])
    metadata["labels"] = {**metadata.get("labels", {}), "podtask.dev/dev-session": session}
    return {**manifest, "metadata": metadata, "spec": spec}
