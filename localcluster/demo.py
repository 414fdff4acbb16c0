"""``make demo``: the local cluster, the operator installed by its Helm chart, example runs.

    python -m localcluster.demo [--state-dir DIR] [--timeout SECONDS] [--plain]

1. Starts the local control plane and process node in ``.localcluster/`` (or finds it
   running there), and writes ``<state-dir>/image-map.yaml`` so the node runs podtask's
   images (``ghcr.io/podtask/*``) from this checkout: its virtualenv first on PATH and the
   repository as the working directory, so ``examples/`` imports as in an examples image.
2. ``helm upgrade --install podtask charts/podtask -n podtask-system`` in namespaced mode,
   watching ``podtask-demo`` only (so it never competes with operators that tests sharing
   the cluster start), with free loopback ports for the run API and kopf's liveness
   endpoint: every pod on the process node shares 127.0.0.1. The node runs the Deployment's
   pod as a process, which reaches the API server in-cluster through the service-account
   token mounted at the standard path.
3. Applies a Queue, the example Tasks (their specs built from the ``@task`` decorators), a
   Schedule firing every 10 seconds, and a batch of TaskRuns: a greeting, a delayed one, a
   run that fails twice and completes on its third attempt, one reporting progress through
   metadata, one that aborts without retrying, a parent that waits for a child run (which
   waits for a grandchild), and one that waits for a WaitToken, which the demo completes
   with ``podtask tokens complete`` once the run has checkpointed (``Waiting``).
4. Shows the runs live (a plain line per change under ``CI=true``, ``--plain`` or without a
   terminal) until the batch and a scheduled run are final, then the final table and how to
   use the cluster, which stays up (``make cluster-down`` stops it).

Rerunnable: a second ``make demo`` upgrades the release in place (same ports while its pod
runs) and adds a new batch of runs. Exits 0 only when every run ended as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from localcluster import controlplane, tools
from localcluster.components import LOOPBACK, REPO_ROOT

CHART = REPO_ROOT / "charts" / "podtask"
RELEASE = "podtask"
RELEASE_NAMESPACE = "podtask-system"
NAMESPACE = "podtask-demo"
QUEUE = "demo"
SCHEDULE = "demo-every-10s"
GROUP, VERSION = "podtask.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
BATCH_LABEL = "podtask.dev/demo-batch"
SCHEDULE_LABEL = "podtask.dev/schedule"
PARENT_LABEL = "podtask.dev/parent-run"
APPROVAL = {"approved": True, "by": "make demo"}
# A token found before its run checkpointed is completed anyway after this long.
APPROVE_AFTER_SECONDS = 20.0
FINAL = {"Completed", "Failed", "Canceled", "Crashed", "SystemFailure", "Expired", "TimedOut"}
CRDS = ("tasks", "taskruns", "schedules", "queues", "waittokens")
# Example task modules (examples/tasks/*) whose tasks the demo deploys.
TASK_MODULES = (
    "examples.tasks.hello",
    "examples.tasks.flaky",
    "examples.tasks.metadata_progress",
    "examples.tasks.abort",
    "examples.tasks.scheduled",
    "examples.tasks.waits",
)
DEMO_TASKS = (
    "hello.world",
    "flaky.fail.until",
    "metadata.report.progress",
    "abort.fail.now",
    "schedule.echo",
    "waits.parent",
    "waits.child",
    "waits.grandchild",
    "waits.approval",
)
OPERATOR_READY_SECONDS = 120.0
POLL_SECONDS = 0.5
PLAIN_SUMMARY_SECONDS = 15.0
OUTPUT_WIDTH = 50


class DemoError(RuntimeError):
    pass


def app_version() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return str(chart["appVersion"])


def runner_image() -> str:
    return f"ghcr.io/podtask/runner:{app_version()}"


# --- the local cluster's side -------------------------------------------------------------


def write_image_map(state_dir: Path) -> Path:
    """Map podtask's images to this checkout (the node re-reads the file when it changes)."""
    path = state_dir / "image-map.yaml"
    entries = [
        {
            "match": "ghcr.io/podtask/*",
            "pathPrepend": [str(Path(sys.executable).parent)],
            "env": {"PYTHONUNBUFFERED": "1"},
            # The runner puts its working directory on sys.path: examples/ imports.
            "workingDir": str(REPO_ROOT),
        }
    ]
    text = "# Written by `make demo` (localcluster/demo.py).\n" + yaml.safe_dump(entries)
    if not path.exists() or path.read_text() != text:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (every pod on the process node shares 127.0.0.1)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_values(
    namespaces: Sequence[str], api_port: int, health_port: int, **settings: Any
) -> dict[str, Any]:
    """Chart values for the process node: namespaced mode, loopback ports and URL."""
    return {
        "rbac": {"mode": "namespaced", "namespaces": list(namespaces)},
        "operator": {
            "healthPort": health_port,
            "settings": {
                "apiHost": LOOPBACK,
                "apiPort": api_port,
                # No Service routing on the process node: run pods call the operator directly.
                "apiUrl": f"http://{LOOPBACK}:{api_port}",
                **settings,
            },
        },
    }


@dataclass
class Kubectl:
    kubeconfig: Path
    bins: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bins:
            self.bins = tools.install(names=["kubectl", "helm"])

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self,
        tool: str,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bins[tool]), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            command = shlex.join([tool, *args])
            raise DemoError(f"`{command}` failed ({result.returncode}):\n{result.stderr.strip()}")
        return result

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, stdin=stdin, check=check).stdout

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.run("helm", *args, timeout=timeout).stdout

    def get_json(self, *args: str) -> Any:
        result = self.run("kubectl", "get", *args, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def apply(
        self,
        documents: Sequence[Mapping[str, Any]],
        namespace: str | None = None,
        *,
        create: bool = False,
    ) -> str:
        """``kubectl apply`` (or ``create``); namespaced objects go to ``namespace``."""
        if namespace is not None:
            documents = [
                {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
                for doc in documents
            ]
        # JSON, not YAML: kubectl reads YAML 1.1, where a key like `n` is a boolean.
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})
        return self.kubectl("create" if create else "apply", "-f", "-", stdin=text)

    def ensure_namespace(self, name: str) -> None:
        self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        # Pods are rejected until the serviceaccount controller made `default`.
        deadline = time.monotonic() + 60
        while self.get_json("serviceaccount", "default", "-n", name) is None:
            if time.monotonic() > deadline:
                raise DemoError(f"namespace {name} has no default ServiceAccount after 60s")
            time.sleep(0.2)

    def wait_crds(self, timeout: float = 60) -> None:
        names = [f"crd/{plural}.{GROUP}" for plural in CRDS]
        self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names)


def helm_install(
    kube: Kubectl,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    values_file: Path,
    chart: Path = CHART,
    timeout: str = "3m",
) -> str:
    """``helm upgrade --install`` with the CRDs in the chart taking over existing ones.

    CRDs applied before by kubectl (or another release) are adopted: ``--take-ownership``
    for Helm's ownership annotations, ``--force-conflicts`` for server-side apply's fields.
    """
    values_file.parent.mkdir(parents=True, exist_ok=True)
    values_file.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return kube.helm(
        "upgrade", "--install", release, str(chart),
        "--namespace", namespace, "--create-namespace",
        "--take-ownership", "--force-conflicts",
        "--wait", "--timeout", timeout,
        "-f", str(values_file),
    )  # fmt: skip


def release_ports(kube: Kubectl, release: str, namespace: str) -> tuple[int, int] | None:
    """The ports of a release whose operator pod runs now (so they are its, not free)."""
    result = kube.run("helm", "get", "values", release, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    values = json.loads(result.stdout or "null") or {}
    operator = values.get("operator") or {}
    api_port = (operator.get("settings") or {}).get("apiPort")
    health_port = operator.get("healthPort")
    if not isinstance(api_port, int) or not isinstance(health_port, int):
        return None
    pods = kube.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    running = [
        p
        for p in (pods or {}).get("items", [])
        if (p.get("status") or {}).get("phase") == "Running"
    ]
    return (api_port, health_port) if running else None


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def wait_operator(kube: Kubectl, release: str, namespace: str, api_port: int) -> None:
    """The operator pod Running and its run API answering /healthz."""
    deadline = time.monotonic() + OPERATOR_READY_SECONDS
    url = f"http://{LOOPBACK}:{api_port}/healthz"
    while not healthy(url):
        if time.monotonic() > deadline:
            logs = kube.run(
                "kubectl", "logs", "-n", namespace, f"deployment/{release}", "--tail=30",
                check=False,
            )  # fmt: skip
            raise DemoError(
                f"the operator's run API at {url} did not answer within "
                f"{OPERATOR_READY_SECONDS:.0f}s; its log:\n{logs.stdout}{logs.stderr}"
            )
        time.sleep(0.5)


# --- what the demo applies ----------------------------------------------------------------


def task_documents(image: str) -> list[dict[str, Any]]:
    """Task resources for the example tasks, specs from their ``@task`` options."""
    from podtask import tasks

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # examples/ is a package at the repository root
    for module in TASK_MODULES:
        importlib.import_module(module)
    documents = []
    for task_id in DEMO_TASKS:
        spec = tasks.get(task_id).to_spec(image).to_wire()
        if task_id in {"hello.world", "metadata.report.progress"}:
            spec["queue"] = QUEUE
        documents.append(
            {"apiVersion": API_VERSION, "kind": "Task", "metadata": {"name": task_id}, "spec": spec}
        )
    return documents


def setup_documents(image: str) -> list[dict[str, Any]]:
    queue = {
        "apiVersion": API_VERSION,
        "kind": "Queue",
        "metadata": {"name": QUEUE},
        "spec": {"concurrencyLimit": 2},
    }
    schedule = {
        "apiVersion": API_VERSION,
        "kind": "Schedule",
        "metadata": {"name": SCHEDULE},
        "spec": {
            "task": "schedule.echo",
            "cron": "*/10 * * * * *",  # six fields: seconds first
            "timezone": "UTC",
            "payload": {"from": "make demo"},
            "concurrencyPolicy": "Forbid",
            "successfulRunsHistoryLimit": 3,
            "failedRunsHistoryLimit": 1,
        },
    }
    return [queue, *task_documents(image), schedule]


@dataclass(frozen=True)
class DemoRun:
    short: str
    task: str
    expect: str
    what: str
    spec: Mapping[str, Any] = field(default_factory=dict)


DEMO_RUNS = (
    DemoRun("hello", "hello.world", "Completed", "a greeting", {"payload": {"name": "Ada"}}),
    DemoRun(
        "hello-delayed",
        "hello.world",
        "Completed",
        "the same task, delayed 5 s",
        {"payload": {"name": "Grace"}, "delay": "5s", "tags": ["delayed"]},
    ),
    DemoRun(
        "flaky",
        "flaky.fail.until",
        "Completed",
        "fails twice, retried with backoff, completes on attempt 3",
        {"payload": {"succeed_on": 3}},
    ),
    DemoRun(
        "progress",
        "metadata.report.progress",
        "Completed",
        "reports progress in run metadata",
        {"payload": {"steps": 5, "step_seconds": 0.5}},
    ),
    DemoRun(
        "abort", "abort.fail.now", "Failed", "raises AbortTaskRunError: fails without retrying"
    ),
    DemoRun(
        "parent",
        "waits.parent",
        "Completed",
        "trigger_and_wait: a child run, which waits for a grandchild",
        {"payload": {"n": 3}},
    ),
    DemoRun(
        "approval",
        "waits.approval",
        "Completed",
        "waits for a WaitToken; the demo completes it",
        {"payload": {"timeout": "10m"}},
    ),
)


def run_documents(batch: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "TaskRun",
            "metadata": {"name": f"{run.short}-{batch}", "labels": {BATCH_LABEL: batch}},
            "spec": {"task": run.task, **run.spec},
        }
        for run in DEMO_RUNS
    ]


# --- watching -----------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


@dataclass(frozen=True)
class Row:
    name: str
    task: str
    phase: str
    attempt: str
    duration: str
    result: str
    created: datetime | None
    kind: str = "run"  # run (the batch), child, scheduled

    @property
    def final(self) -> bool:
        return self.phase in FINAL


def row_of(run: Mapping[str, Any], now: datetime | None = None, kind: str = "run") -> Row:
    meta, spec = run.get("metadata") or {}, run.get("spec") or {}
    status = run.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    started, finished = _time(status.get("startedAt")), _time(status.get("finishedAt"))
    if started is not None:
        end = finished or now or datetime.now(UTC)
        seconds = max(0.0, (end - started).total_seconds())
        duration = f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
    else:
        duration = str(status.get("duration") or "")
    waiting_for = status.get("waitingFor") or {}
    if status.get("error"):
        error = status["error"]
        result = f"{error.get('type') or 'Error'}: {error.get('message') or ''}"
    elif status.get("outputRef"):
        result = "(large output, stored in a Secret)"
    elif "output" in status and phase == "Completed":
        result = json.dumps(status["output"], separators=(", ", ": "))
    elif phase == "Waiting" and waiting_for:
        what = waiting_for.get("token") or waiting_for.get("until") or waiting_for.get("runs")
        result = f"waiting for {str(waiting_for.get('kind', '')).lower()} {_short(what)}"
    elif status.get("metadata"):
        result = "metadata " + json.dumps(status["metadata"], separators=(", ", ": "))
    else:
        result = ""
    attempt = status.get("attempt")
    name = str(meta.get("name", ""))
    return Row(
        name=f"└ {name}" if kind == "child" else name,
        task=str(spec.get("task", "")),
        phase=phase,
        attempt=str(attempt) if attempt else "",
        duration=duration,
        result=result,
        created=_time(meta.get("creationTimestamp")),
        kind=kind,
    )


def cut(text: str, width: int = OUTPUT_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value) if value else ""


PHASE_STYLE = {
    "Completed": "green",
    "Failed": "red",
    "Crashed": "red",
    "SystemFailure": "red",
    "TimedOut": "red",
    "Expired": "yellow",
    "Canceled": "yellow",
    "Executing": "cyan",
    "Waiting": "magenta",
    "Delayed": "blue",
}


def table(rows: Sequence[Row], title: str) -> Table:
    grid = Table(title=title, title_justify="left", expand=False)
    for column in ("RUN", "TASK", "PHASE", "ATTEMPT", "DURATION"):
        grid.add_column(column, no_wrap=True, min_width=9 if column == "PHASE" else None)
    # Only the output gives way when the terminal is narrow.
    grid.add_column("OUTPUT / ERROR", no_wrap=True, overflow="ellipsis", max_width=OUTPUT_WIDTH)
    for row in rows:
        style = PHASE_STYLE.get(row.phase, "")
        grid.add_row(
            row.name,
            row.task,
            f"[{style}]{row.phase}[/]" if style else row.phase,
            row.attempt,
            row.duration,
            cut(row.result),
        )
    return grid


@dataclass
class Watch:
    """The batch's runs, their child runs and the Schedule's latest runs, polled."""

    kube: Kubectl
    batch: str
    started: datetime
    say: Callable[[str], None] = print
    scheduled_shown: int = 3
    approved: str | None = None
    token_seen: float | None = None

    def rows(self) -> list[Row]:
        now = datetime.now(UTC)
        listing = self.kube.get_json("taskruns", "-n", NAMESPACE) or {}
        runs = {str(r["metadata"]["name"]): r for r in listing.get("items", [])}
        children: dict[str, list[Mapping[str, Any]]] = {}
        for run in runs.values():
            parent = (run["metadata"].get("labels") or {}).get(PARENT_LABEL)
            if parent:
                children.setdefault(str(parent), []).append(run)

        def with_descendants(run: Mapping[str, Any], kind: str) -> list[Row]:
            found = [row_of(run, now, kind)]
            below = children.get(str(run["metadata"]["name"]), [])
            for child in sorted(below, key=lambda r: str(r["metadata"].get("creationTimestamp"))):
                found += with_descendants(child, "child")
            return found

        rows: list[Row] = []
        for demo_run in DEMO_RUNS:
            run = runs.get(f"{demo_run.short}-{self.batch}")
            if run is not None:
                rows += with_descendants(run, "run")
        ticks = [
            row
            for row in (
                row_of(run, now, "scheduled")
                for run in runs.values()
                if SCHEDULE_LABEL in (run["metadata"].get("labels") or {})
            )
            if row.created is not None and row.created >= self.started
        ]
        ticks.sort(key=lambda r: r.created or now)
        self._approve(runs.get(f"approval-{self.batch}"))
        return rows + ticks[-self.scheduled_shown :]

    def _approve(self, run: Mapping[str, Any] | None) -> None:
        """Play the human in the loop: complete the approval run's token, once it waits."""
        if run is None or self.approved is not None:
            return
        status = run.get("status") or {}
        token = (status.get("metadata") or {}).get("token")
        if not token:
            return
        if self.token_seen is None:
            self.token_seen = time.monotonic()
        waiting = status.get("phase") == "Waiting"
        if not waiting and time.monotonic() - self.token_seen < APPROVE_AFTER_SECONDS:
            return  # let it checkpoint first, so the table shows it Waiting
        cli = Path(sys.executable).with_name("podtask")
        args = ["tokens", "complete", str(token), "--output-json", json.dumps(APPROVAL)]
        result = subprocess.run(
            [str(cli), *args, "-n", NAMESPACE, "--kubeconfig", str(self.kube.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise DemoError(f"`podtask {shlex.join(args)}` failed: {result.stderr.strip()}")
        self.approved = str(token)
        self.say(f"approved: podtask {shlex.join(args)} -n {NAMESPACE}")

    def done(self, rows: Sequence[Row]) -> bool:
        batch = {r.name: r for r in rows if r.kind == "run"}
        if any(not (row := batch.get(f"{run.short}-{self.batch}")) or not row.final
               for run in DEMO_RUNS):  # fmt: skip
            return False
        return any(r.phase == "Completed" for r in rows if r.kind == "scheduled")


def watch_live(watch: Watch, console: Console, timeout: float) -> list[Row]:
    deadline = time.monotonic() + timeout
    title = f"podtask runs in namespace {NAMESPACE} (live; batch {watch.batch})"
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        watch.say = lambda text: live.console.print(f"    {text}", highlight=False)
        rows = watch.rows()
        live.update(table(rows, title))
        while not watch.done(rows) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            rows = watch.rows()
            live.update(table(rows, title))
    return rows


def watch_plain(watch: Watch, console: Console, timeout: float) -> list[Row]:
    began = time.monotonic()
    deadline = began + timeout
    seen: dict[str, tuple[str, str]] = {}
    last_summary = began

    def say(text: str) -> None:
        console.print(f"{time.monotonic() - began:6.1f}s  {text}", markup=False, highlight=False)

    watch.say = say
    rows = watch.rows()
    while True:
        for row in rows:
            state = (row.phase, row.attempt)
            if seen.get(row.name) != state:
                seen[row.name] = state
                attempt = f" (attempt {row.attempt})" if row.attempt else ""
                detail = (
                    f"  {cut(row.result)}"
                    if row.result and (row.final or row.phase == "Waiting")
                    else ""
                )
                say(f"{row.name:<30} {row.task:<26} {row.phase}{attempt}{detail}")
        if watch.done(rows) or time.monotonic() >= deadline:
            return rows
        if time.monotonic() - last_summary >= PLAIN_SUMMARY_SECONDS:
            last_summary = time.monotonic()
            final = sum(1 for r in rows if r.final)
            say(f"… {final}/{len(rows)} runs final")
        time.sleep(POLL_SECONDS)
        rows = watch.rows()


# --- main ---------------------------------------------------------------------------------


@dataclass
class Steps:
    console: Console
    began: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.began
        self.console.print(f"[bold]==>[/] {text} [dim]({elapsed:.1f}s)[/]", highlight=False)


def verdict(rows: Sequence[Row], batch: str) -> list[str]:
    """Why the demo failed (empty: every run ended as expected)."""
    problems = []
    by_name = {r.name: r for r in rows if r.kind == "run"}
    for run in DEMO_RUNS:
        row = by_name.get(f"{run.short}-{batch}")
        if row is None:
            problems.append(f"run {run.short}-{batch} disappeared")
        elif row.phase != run.expect:
            problems.append(
                f"run {row.name} ({run.what}) is {row.phase}, expected {run.expect}"
                + (f": {cut(row.result, 200)}" if row.result else "")
            )
    flaky = by_name.get(f"flaky-{batch}")
    if flaky is not None and flaky.phase == "Completed" and flaky.attempt != "3":
        problems.append(f"run {flaky.name} completed on attempt {flaky.attempt}, expected 3")
    parent = next((i for i, r in enumerate(rows) if r.name == f"parent-{batch}"), None)
    if parent is not None:
        family = [r for r in rows[parent + 1 : parent + 3] if r.kind == "child"]
        if [r.phase for r in family] != ["Completed", "Completed"]:
            problems.append(f"run parent-{batch} has no completed child and grandchild runs")
    approval = by_name.get(f"approval-{batch}")
    if (
        approval is not None
        and approval.phase == "Completed"
        and '"ok": true' not in approval.result
    ):
        problems.append(
            f"run {approval.name} did not get the token's output: {cut(approval.result, 200)}"
        )
    if not any(r.phase == "Completed" for r in rows if r.kind == "scheduled"):
        problems.append(f"no run of Schedule {SCHEDULE} completed")
    if any("ModuleNotFoundError" in r.result for r in rows):
        problems.append(
            "a task module did not import: a node agent started before image-map.yaml support "
            "ignores the demo's image map; restart the cluster (make cluster-down; make demo)"
        )
    return problems


def usage(console: Console, kubeconfig: Path, state_dir: Path, batch: str) -> None:
    bin_dir = Path(sys.executable).parent
    podtask_cli = bin_dir / "podtask"
    has_watch = (
        podtask_cli.exists()
        and subprocess.run(
            [str(podtask_cli), "runs", "watch", "--help"], capture_output=True, check=False
        ).returncode
        == 0
    )
    cluster_down = "make cluster-down"
    if state_dir != controlplane.DEFAULT_STATE_DIR.resolve():
        cluster_down = f"PODTASK_LOCALCLUSTER_DIR={shlex.quote(str(state_dir))} {cluster_down}"
    relative_bin = os.path.relpath(bin_dir, Path.cwd()) if bin_dir.is_absolute() else bin_dir
    lines = [
        "",
        "[bold]The cluster keeps running.[/] Use it from this shell:",
        f"  export KUBECONFIG={shlex.quote(str(kubeconfig))}",
        f'  export PATH="$PWD/{relative_bin}:$PATH"      # kubectl, helm and podtask',
        f"  kubectl get taskruns -n {NAMESPACE}",
        "  kubectl get podtask -A                      # every podtask resource",
        f"  kubectl get taskrun flaky-{batch} -n {NAMESPACE} -o yaml   # attempts, output",
    ]
    if has_watch:
        lines += [
            f"  podtask runs list -n {NAMESPACE}",
            f"  podtask runs watch progress-{batch} -n {NAMESPACE}",
        ]
    lines += [
        f"  kubectl logs -n {RELEASE_NAMESPACE} deployment/{RELEASE}    # the operator",
        f"  helm status {RELEASE} -n {RELEASE_NAMESPACE}",
        f"  kubectl patch schedule {SCHEDULE} -n {NAMESPACE} --type merge "
        '-p \'{"spec":{"suspend":true}}\'   # pause the 10 s schedule',
        "",
        "Run `make demo` again for a new batch of runs; stop everything with "
        f"[bold]{cluster_down}[/].",
    ]
    for line in lines:
        console.print(line, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="default: $PODTASK_LOCALCLUSTER_DIR or .localcluster/")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="give up on the runs after this many seconds")  # fmt: skip
    parser.add_argument("--plain", action="store_true",
                        help="a line per change instead of a live table")  # fmt: skip
    args = parser.parse_args(argv)
    env_dir = os.environ.get("PODTASK_LOCALCLUSTER_DIR")
    state_dir = args.state_dir or (Path(env_dir) if env_dir else controlplane.DEFAULT_STATE_DIR)
    state_dir = state_dir.resolve()
    plain = args.plain or os.environ.get("CI", "").lower() == "true" or not sys.stdout.isatty()
    # Without a terminal rich assumes 80 columns, too few for the table.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        return demo(state_dir, console, timeout=args.timeout, plain=plain)
    except (DemoError, controlplane.ControlPlaneError, subprocess.TimeoutExpired) as error:
        console.print(f"[bold red]make demo failed:[/] {error}", highlight=False)
        console.print(f"Logs: {state_dir / 'logs'}", highlight=False)
        return 1


def demo(state_dir: Path, console: Console, *, timeout: float, plain: bool) -> int:
    steps = Steps(console)
    image = runner_image()
    write_image_map(state_dir)
    steps.say(f"local control plane and node in {state_dir}")
    info = controlplane.up(state_dir)
    if info.startup_seconds is None:
        console.print("    already running", highlight=False)
    kube = Kubectl(info.kubeconfig)

    steps.say(f"namespace {NAMESPACE} for the demo's runs")
    kube.ensure_namespace(NAMESPACE)

    ports = release_ports(kube, RELEASE, RELEASE_NAMESPACE)
    api_port, health_port = ports or free_ports(2)
    steps.say(
        f"helm upgrade --install {RELEASE} charts/podtask -n {RELEASE_NAMESPACE} "
        f"(run API on {LOOPBACK}:{api_port})"
    )
    values = local_values(
        [NAMESPACE],
        api_port,
        health_port,
        heartbeatInterval="5s",
        heartbeatTimeout="60s",
        cancelGraceSeconds=5,
    )
    helm_install(kube, RELEASE, RELEASE_NAMESPACE, values, state_dir / "demo-values.yaml")
    kube.wait_crds()
    wait_operator(kube, RELEASE, RELEASE_NAMESPACE, api_port)
    pod = kube.kubectl(
        "get", "pods", "-n", RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "jsonpath={.items[0].metadata.name} on {.items[0].spec.nodeName}",
    )  # fmt: skip
    console.print(f"    operator pod {pod} is up", highlight=False)

    steps.say(f"Queue {QUEUE}, Tasks from examples/tasks/ and Schedule {SCHEDULE} (every 10 s)")
    kube.apply(setup_documents(image), NAMESPACE)
    console.print(f"    Tasks: {', '.join(DEMO_TASKS)}", highlight=False)

    batch = secrets.token_hex(2)
    started = datetime.now(UTC).replace(microsecond=0)
    steps.say(f"TaskRuns (batch {batch})")
    kube.apply(run_documents(batch), NAMESPACE, create=True)
    for run in DEMO_RUNS:
        name = f"{run.short}-{batch}"
        console.print(f"    {name:<20} {run.task:<26} {run.what}", highlight=False)

    steps.say(f"waiting for the runs and a scheduled run (at most {timeout:.0f}s)")
    watch = Watch(kube, batch, started)
    rows = (watch_plain if plain else watch_live)(watch, console, timeout)
    console.print(table(rows, f"podtask runs in namespace {NAMESPACE} (batch {batch})"))
    problems = verdict(rows, batch)
    usage(console, info.kubeconfig, state_dir, batch)
    if problems:
        console.print("", highlight=False)
        console.print("[bold red]The demo did not end as expected:[/]", highlight=False)
        for problem in problems:
            console.print(f"  - {problem}", highlight=False)
        console.print(
            f"  operator log: kubectl logs -n {RELEASE_NAMESPACE} deployment/{RELEASE}; "
            f"node log: {state_dir / 'logs' / 'node-1.log'}",
            highlight=False,
        )
        return 1
    steps.say("[green]done[/]: every run ended as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
