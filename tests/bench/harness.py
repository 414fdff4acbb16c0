"""The benchmark: a raw pod loop, batch/v1 Jobs and podtask TaskRuns on one API server.

Every phase runs on the same private control plane (``kube.private_cluster``), whose
nodes run in ``--instant-runner`` mode: pods exit at once, and podtask pods still make
the runner's two run API calls, so the operator's whole path is measured and the
runner's process start-up is not. Phases run one after another, never at once, so each
has the machine to itself; API server writes are read from its own
``apiserver_request_total`` before and after each phase, net of the idle background
rate measured first.

Phases:

* **throughput**: ``runs`` objects created as fast as the client can (a burst), timed
  from the first create to the last completion: raw pods (the ceiling), Jobs through
  the Job controller, TaskRuns through podtask (with and without phase Events);
* **latency**: objects created at a fixed ``rate``; trigger (create sent) to the pod's
  ADDED event, for Jobs and TaskRuns;
* **saturated queue**: ``saturated_runs`` TaskRuns through a queue of
  ``saturated_limit`` slots; each pod creation beyond the first ``limit`` is paired
  (in order) with the slot release before it: the run final *and* its pod stopped;
* **deep queue**: ``deep_runs`` TaskRuns in a paused queue: operator memory, then a
  SIGKILL, the queue unpaused, and the time from the new operator's start to its first
  pod;
* **profile**: the podtask throughput phase again under cProfile.
"""

from __future__ import annotations

import asyncio
import cProfile  # noqa: F401  (the profile phase runs it in the operator's process)
import importlib.metadata
import io
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from localcluster.gen_gomod import read_versions
from tests.bench.kube import (
    Kube,
    Obj,
    component_pids,
    cpu_by_component,
    install_crds,
    make_namespace,
    now,
    parse_request_totals,
    usage_of,
    wait_until,
    write_deltas,
)
from tests.cluster.harness import OPERATOR_BIN, OperatorProcess

GROUP_PATH = "/apis/podtask.dev/v1alpha1/namespaces/{ns}"
RUNNER_IMAGE = "podtask/runner:dev"
FINAL = {"Completed", "Failed", "Canceled", "Crashed", "SystemFailure", "Expired", "TimedOut"}
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# Writes attributed to each controller by resource (the metrics carry no user): what
# the operator / the Job controller write for a run, as opposed to the client's create,
# the scheduler's binding and Event, and the node's status patches. Only successful
# requests: the node's redundant final DELETE of a pod the controller's grace-0 DELETE
# already removed answers 404, as kubelet's does.
CONTROLLER_WRITES = {
    "podtask": {
        "podtask.dev/taskruns/status PATCH",
        "coordination.k8s.io/leases POST",
        "coordination.k8s.io/leases PUT",
        "coordination.k8s.io/leases DELETE",
        "pods POST",
        "pods DELETE",
        "events POST",
        "scheduling.k8s.io/priorityclasses POST",
        "resourcequotas POST",
        "resourcequotas PATCH",
        "secrets POST",
    },
    "jobs": {
        "batch/jobs/status PUT",
        "batch/jobs/status PATCH",
        "pods POST",
        "pods PATCH",
        "pods DELETE",
        "events POST",
    },
    "raw": set(),
}


PHASES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("raw", "raw pod loop", {}),
    ("jobs", "batch/v1 Jobs", {}),
    ("podtask", "podtask TaskRuns", {}),
    # Events for routine phase changes are off by default (settings.phase_events).
    ("podtask", "podtask, phase Events on", {"phase_events": "true"}),
)


@dataclass(frozen=True)
class BenchConfig:
    runs: int = 500
    rate: float = 20.0
    rate_seconds: float = 30.0
    extra_rates: tuple[float, ...] = (5.0,)
    """Further arrival rates for the latency phase (the targets are at ``rate``)."""
    rounds: int = 3
    saturated_runs: int = 300
    saturated_limit: int = 10
    deep_runs: int = 10_000
    nodes: int = 2
    client_connections: int = 16
    operator_settings: tuple[tuple[str, str], ...] = ()
    profile: bool = True
    apiserver_profile_seconds: float = 10.0
    """kube-apiserver CPU profile at the start of each throughput phase; 0: none."""
    phase_timeout: float = 900.0
    background_seconds: float = 10.0

    @classmethod
    def from_env(cls, **defaults: Any) -> BenchConfig:
        """Defaults overridden by PODTASK_BENCH_<FIELD> variables (ints, floats, bools)."""
        values = dict(defaults)
        for name, kind in (
            ("runs", int),
            ("rounds", int),
            ("rate", float),
            ("rate_seconds", float),
            ("saturated_runs", int),
            ("saturated_limit", int),
            ("deep_runs", int),
            ("nodes", int),
            ("client_connections", int),
        ):
            raw = os.environ.get(f"PODTASK_BENCH_{name.upper()}")
            if raw:
                values[name] = kind(raw)
        raw = os.environ.get("PODTASK_BENCH_PROFILE")
        if raw:
            values["profile"] = raw.lower() in {"1", "true", "yes"}
        return cls(**values)


# --- results ---------------------------------------------------------------------------


@dataclass
class Resources:
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    operator_peak_rss_mib: float | None = None


@dataclass
class Throughput:
    flavour: str
    label: str
    runs: int
    seconds: float
    runs_per_second: float
    create_seconds: float
    outcomes: dict[str, int]
    writes: dict[str, float]
    writes_per_run: float
    controller_writes_per_run: float
    resources: Resources
    completions: list[float]  # seconds from the first create, sorted
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute, at the start and the end
    round: int = 1
    apiserver_profile: str | None = None


@dataclass
class Latency:
    flavour: str
    rate: float
    runs: int
    achieved_rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    samples_ms: list[float]


@dataclass
class Saturated:
    runs: int
    limit: int
    seconds: float
    runs_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples_ms: list[float]
    outcomes: dict[str, int]


@dataclass
class DeepQueue:
    runs: int
    create_seconds: float
    queued_seconds: float
    operator_rss_empty_mib: float
    operator_rss_mib: float
    operator_peak_rss_mib: float
    restart_to_healthy_seconds: float
    restart_to_first_pod_seconds: float
    restart_peak_rss_mib: float


@dataclass
class BenchResult:
    command: str
    started: str
    machine: dict[str, str]
    config: dict[str, Any]
    background_writes_per_second: float
    throughput: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    saturated: Saturated | None = None
    deep: DeepQueue | None = None
    profile: str | None = None
    operator_metrics: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _mib(value: int) -> float:
    return value / (1024 * 1024)


# --- bodies -----------------------------------------------------------------------------


def _noop_pod_spec() -> Obj:
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [{"name": "main", "image": "bench/noop", "command": ["true"]}],
    }


def pod_body(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "raw"}},
        "spec": _noop_pod_spec(),
    }


def job_body(name: str) -> Obj:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "template": {"spec": _noop_pod_spec()},
        },
    }


def run_body(name: str, task: str, payload: Any = None, **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {"task": task, **spec},
    }
    if payload is not None:
        body["spec"]["payload"] = payload
    return body


def task_body(name: str, queue: str) -> Obj:
    # The instant-runner node never imports the entrypoint; it only has to be well formed.
    return {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": name},
        "spec": {
            "image": RUNNER_IMAGE,
            "entrypoint": "bench.noop:run",
            "queue": queue,
            "machine": "micro",
        },
    }


def queue_body(name: str, limit: int, **spec: Any) -> Obj:
    return {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"concurrencyLimit": limit, **spec},
    }


def paths(ns: str) -> dict[str, str]:
    group = GROUP_PATH.format(ns=ns)
    return {
        "pods": f"/api/v1/namespaces/{ns}/pods",
        "jobs": f"/apis/batch/v1/namespaces/{ns}/jobs",
        "taskruns": f"{group}/taskruns",
        "tasks": f"{group}/tasks",
        "queues": f"{group}/queues",
    }


# --- observing a phase ------------------------------------------------------------------


@dataclass
class Timeline:
    """What a phase's watches saw, by owner (raw pod, Job or TaskRun name)."""

    flavour: str
    sent: dict[str, float] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    first_pod: dict[str, float] = field(default_factory=dict)
    pod_stopped: dict[str, float] = field(default_factory=dict)
    pod_deleted: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    pod_uids: dict[str, set[str]] = field(default_factory=dict)
    pod_added: list[float] = field(default_factory=list)

    def owner(self, pod: Obj) -> str | None:
        meta = pod["metadata"]
        if self.flavour == "raw":
            return str(meta["name"])
        if self.flavour == "jobs":
            labels = meta.get("labels") or {}
            return next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        return (meta.get("annotations") or {}).get("podtask.dev/run")

    def on_pod(self, kind: str, pod: Obj) -> None:
        t = now()
        owner = self.owner(pod)
        if owner is None:
            return
        uids = self.pod_uids.setdefault(pod["metadata"]["name"], set())
        if pod["metadata"]["uid"] not in uids:
            uids.add(pod["metadata"]["uid"])
            self.pod_added.append(t)
        self.first_pod.setdefault(owner, t)
        phase = (pod.get("status") or {}).get("phase")
        if kind == "DELETED" or phase in ("Succeeded", "Failed"):
            self.pod_stopped.setdefault(owner, t)
        if kind == "DELETED":
            self.pod_deleted.setdefault(owner, t)
        if self.flavour == "raw" and phase in ("Succeeded", "Failed"):
            self.done.setdefault(owner, t)
            self.outcome.setdefault(owner, str(phase))

    def on_job(self, kind: str, job: Obj) -> None:
        for condition in (job.get("status") or {}).get("conditions") or []:
            if condition.get("status") == "True" and condition.get("type") in (
                "Complete",
                "Failed",
            ):
                name = str(job["metadata"]["name"])
                self.done.setdefault(name, now())
                self.outcome.setdefault(name, str(condition["type"]))

    def on_run(self, kind: str, run: Obj) -> None:
        phase = (run.get("status") or {}).get("phase")
        if phase in FINAL:
            name = str(run["metadata"]["name"])
            self.done.setdefault(name, now())
            self.outcome.setdefault(name, str(phase))

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for value in self.outcome.values():
            counts[value] = counts.get(value, 0) + 1
        return counts


class Watching:
    """The watches of one phase, started before it and cancelled after."""

    def __init__(self, kube: Kube, ns: str, timeline: Timeline) -> None:
        self.kube, self.ns, self.timeline = kube, ns, timeline
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Watching:
        p = paths(self.ns)
        watches: list[tuple[str, Callable[[str, Obj], None]]] = [(p["pods"], self.timeline.on_pod)]
        if self.timeline.flavour == "jobs":
            watches.append((p["jobs"], self.timeline.on_job))
        if self.timeline.flavour == "podtask":
            watches.append((p["taskruns"], self.timeline.on_run))
        synced = []
        for path, handler in watches:
            event = asyncio.Event()
            synced.append(event)
            self.tasks.append(asyncio.create_task(self.kube.watch(path, handler, synced=event)))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# --- the operator -----------------------------------------------------------------------


class BenchOperator(OperatorProcess):
    """The operator as a process, optionally under cProfile (written on SIGTERM)."""

    def __init__(
        self, kubeconfig: Path, log_dir: Path, profile_to: Path | None = None, **settings: str
    ) -> None:
        super().__init__(kubeconfig, log_dir, **settings)
        self.profile_to = profile_to
        self.started_at = 0.0

    def start(self) -> None:
        if self.profile_to is None:
            self.started_at = now()
            super().start()
            return
        self.starts += 1
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.started_at = now()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(self.profile_to),
                str(OPERATOR_BIN),
                "--liveness",
                "",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"operator did not come up: {self.log()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


# --- the bench --------------------------------------------------------------------------


class Bench:
    def __init__(self, state_dir: Path, work_dir: Path, config: BenchConfig, command: str) -> None:
        self.state_dir = state_dir
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.kube = Kube(state_dir, connections=max(config.client_connections, 8) + 16)
        self.kubeconfig = state_dir / "kubeconfig"
        self.background: dict[str, float] = {}
        self._profiled: set[str] = set()
        self.result = BenchResult(
            command=command,
            started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            machine={},
            config=asdict(config),
            background_writes_per_second=0.0,
        )

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def operator(
        self, namespace: str, extra: dict[str, str] | None = None, profile_to: Path | None = None
    ) -> BenchOperator:
        # Each operator watches its phase's namespace only, so runs finished in earlier
        # phases cost it nothing at start (the Job controller's finished Jobs cost nothing).
        settings = {
            "workers": "16",
            **dict(self.config.operator_settings),
            "namespaces": namespace,
            **(extra or {}),
        }
        log_dir = self.work_dir / "operator" / namespace
        log_dir.mkdir(parents=True, exist_ok=True)
        return BenchOperator(self.kubeconfig, log_dir, profile_to, **settings)

    async def run(self) -> BenchResult:
        started = now()
        try:
            await install_crds(self.kube)
            self.result.machine = await self.machine()
            await self.measure_background()
            cfg = self.config
            # Round-robin, so that load from outside (a shared machine) drifts over all of
            # them alike; the report takes each one's median round.
            for number in range(1, cfg.rounds + 1):
                for flavour, label, extra in PHASES:
                    phase = await self.throughput(flavour, label, **extra)
                    phase.round = number
                    self.result.throughput.append(phase)
            for rate in (cfg.rate, *cfg.extra_rates):
                self.result.latency.append(await self.latency("jobs", rate))
                self.result.latency.append(await self.latency("podtask", rate))
            self.result.saturated = await self.saturated()
            if cfg.deep_runs:
                self.result.deep = await self.deep_queue()
            if cfg.profile:
                self.result.profile = await self.profile()
        finally:
            await self.kube.close()
        self.result.seconds = now() - started
        return self.result

    # --- context ------------------------------------------------------------------------

    async def machine(self) -> dict[str, str]:
        version = await self.kube.get("/version")
        model = cpu_model()
        pins = read_versions()

        def dist(name: str) -> str:
            try:
                return importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                return "?"

        return {
            "cpu": f"{psutil.cpu_count(logical=True)} logical CPUs ({model or platform.machine()})",
            "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
            "kernel": platform.release(),
            "python": platform.python_version(),
            "kubernetes": str(version.get("gitVersion")),
            "etcd": pins.get("ETCD_VERSION", "?"),
            "kopf": dist("kopf"),
            "kubernetes_asyncio": dist("kubernetes-asyncio"),
            "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }

    async def measure_background(self) -> None:
        """Idle write rate (node heartbeats, controllers), subtracted from every phase."""
        before = parse_request_totals(await self.kube.metrics_text())
        await asyncio.sleep(self.config.background_seconds)
        after = parse_request_totals(await self.kube.metrics_text())
        seconds = self.config.background_seconds
        self.background = {k: v / seconds for k, v in write_deltas(before, after).items()}
        self.result.background_writes_per_second = sum(self.background.values())
        self.log(f"background: {self.result.background_writes_per_second:.1f} writes/s")

    def _net(self, deltas: dict[str, float], seconds: float) -> dict[str, float]:
        net = {}
        for key, value in deltas.items():
            value -= self.background.get(key, 0.0) * seconds
            if value > 0.5:
                net[key] = value
        return net

    # --- phases --------------------------------------------------------------------------

    async def throughput(self, flavour: str, label: str, **operator_extra: str) -> Throughput:
        cfg = self.config
        ns = await make_namespace(self.kube, f"tp-{flavour}-{len(self.result.throughput)}")
        p = paths(ns)
        operator = None
        if flavour == "podtask":
            await self.kube.create(p["queues"], queue_body("bench", 100_000))
            await self.kube.create(p["tasks"], task_body("noop", "bench"))
            operator = self.operator(ns, operator_extra)
            await asyncio.to_thread(operator.start)
        try:
            timeline = Timeline(flavour)
            async with Watching(self.kube, ns, timeline):
                names = [f"{flavour[:3]}-{i:05d}" for i in range(cfg.runs)]
                if flavour == "raw":
                    bodies, path = [pod_body(n) for n in names], p["pods"]
                elif flavour == "jobs":
                    bodies, path = [job_body(n) for n in names], p["jobs"]
                else:
                    bodies, path = [run_body(n, "noop") for n in names], p["taskruns"]
                before = parse_request_totals(await self.kube.metrics_text())
                cpu_before = cpu_by_component(self.state_dir)
                op_before = usage_of(operator.pid) if operator else None
                self.log(f"throughput {label}: {cfg.runs} at once")
                load_start = os.getloadavg()[0]
                profiling = None
                if cfg.apiserver_profile_seconds and label not in self._profiled:
                    self._profiled.add(label)
                    profiling = asyncio.create_task(self._apiserver_profile(label))
                start = now()
                await self._burst(path, bodies, timeline)
                created = now()
                await wait_until(
                    lambda: len(timeline.done) >= cfg.runs,
                    cfg.phase_timeout,
                    f"{cfg.runs} {flavour} to complete",
                )
                end = max(timeline.done.values())
                if flavour == "podtask":
                    # The operator's clean-up (pods stopped, deleted where it deletes them,
                    # slots released and their Leases deleted) is part of what a run costs:
                    # count its writes and CPU too, however late it comes.
                    await wait_until(
                        lambda: len(timeline.pod_stopped) >= cfg.runs,
                        cfg.phase_timeout,
                        f"the {cfg.runs} pods to stop",
                    )
                    await self._until_no_leases(ns, cfg.phase_timeout)
                    await asyncio.sleep(1.0)
                # Controllers post Events asynchronously (the Job controller's trail its
                # Jobs by seconds): count each phase's own, not let them leak into the next.
                await self._until_events_settle(ns, cfg.phase_timeout)
                after = parse_request_totals(await self.kube.metrics_text())
                cpu_after = cpu_by_component(self.state_dir)
                op_after = usage_of(operator.pid) if operator else None
                load_end = os.getloadavg()[0]
                apiserver_profile = await profiling if profiling is not None else None
        finally:
            if operator is not None:
                await asyncio.to_thread(operator.stop)
        seconds = end - start
        writes = self._net(write_deltas(before, after), seconds)
        cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
        resources = Resources(cpu_seconds=_group_cpu(cpu))
        if op_before and op_after:
            resources.cpu_seconds["podtask-operator"] = op_after.cpu_seconds - op_before.cpu_seconds
            resources.operator_peak_rss_mib = _mib(op_after.peak_rss)
        own = sum(v for k, v in writes.items() if k in CONTROLLER_WRITES[flavour])
        result = Throughput(
            flavour=flavour,
            label=label,
            runs=cfg.runs,
            seconds=seconds,
            runs_per_second=cfg.runs / seconds,
            create_seconds=created - start,
            outcomes=timeline.outcomes(),
            writes=writes,
            writes_per_run=sum(writes.values()) / cfg.runs,
            controller_writes_per_run=own / cfg.runs,
            resources=resources,
            completions=sorted(t - start for t in timeline.done.values()),
            load_average=(load_start, load_end),
            apiserver_profile=apiserver_profile,
        )
        self.log(
            f"  {result.runs_per_second:.1f} runs/s, {result.writes_per_run:.1f} writes/run"
            f" ({result.controller_writes_per_run:.1f} by the controller), "
            f"outcomes {result.outcomes}"
        )
        return result

    async def _until_events_settle(self, ns: str, within: float, quiet: float = 3.0) -> None:
        """Until the namespace's Events have not changed for ``quiet`` seconds."""
        deadline = now() + within
        path = f"/api/v1/namespaces/{ns}/events"
        last, since = -1, now()
        while now() - since < quiet:
            if now() > deadline:
                raise TimeoutError(f"timed out after {within:.0f}s waiting for Events in {ns}")
            count = len((await self.kube.get(path)).get("items") or [])
            if count != last:
                last, since = count, now()
            await asyncio.sleep(0.5)

    async def _until_no_leases(self, ns: str, within: float) -> None:
        """Until the operator has released every slot of the namespace's queues."""
        deadline = now() + within
        path = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        while (await self.kube.get(path)).get("items"):
            if now() > deadline:
                raise TimeoutError(f"timed out after {within:.0f}s waiting for no Leases in {ns}")
            await asyncio.sleep(0.5)

    async def _apiserver_profile(self, label: str) -> str | None:
        """kube-apiserver's own CPU profile (pprof) over the first seconds of a phase,
        summarised by `go tool pprof` when a Go toolchain is at hand."""
        seconds = self.config.apiserver_profile_seconds
        try:
            response = await self.kube.client.get(
                "/debug/pprof/profile",
                params={"seconds": str(int(seconds))},
                timeout=seconds + 30.0,
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            return f"(no profile: {error!r})"
        out = self.work_dir / f"apiserver-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.pprof"
        out.write_bytes(response.content)
        go = shutil.which("go")
        if go is None:
            return f"(profile saved as {out.name}; no Go toolchain to summarise it)"
        summary = await asyncio.to_thread(
            subprocess.run,
            [go, "tool", "pprof", "-top", "-cum", "-nodecount=400", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return summarize_pprof(summary.stdout)

    async def _burst(self, path: str, bodies: list[Obj], timeline: Timeline) -> None:
        semaphore = asyncio.Semaphore(self.config.client_connections)

        async def one(body: Obj) -> None:
            async with semaphore:
                name = body["metadata"]["name"]
                timeline.sent[name] = now()
                await self.kube.create(path, body)
                timeline.created[name] = now()

        await asyncio.gather(*(one(b) for b in bodies))

    async def _paced(self, path: str, bodies: list[Obj], rate: float, timeline: Timeline) -> float:
        """Open loop: the i-th create is sent at start + i/rate whatever the answers."""
        start = now()
        tasks = []

        async def one(body: Obj) -> None:
            name = body["metadata"]["name"]
            timeline.sent[name] = now()
            await self.kube.create(path, body)
            timeline.created[name] = now()

        for i, body in enumerate(bodies):
            delay = start + i / rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        return now() - start

    async def latency(self, flavour: str, rate: float) -> Latency:
        cfg = self.config
        count = int(rate * cfg.rate_seconds)
        ns = await make_namespace(self.kube, f"lat-{flavour}-{rate:g}".replace(".", "-"))
        p = paths(ns)
        operator = None
        if flavour == "podtask":
            await self.kube.create(p["queues"], queue_body("bench", 100_000))
            await self.kube.create(p["tasks"], task_body("noop", "bench"))
            operator = self.operator(ns)
            await asyncio.to_thread(operator.start)
        try:
            timeline = Timeline(flavour)
            async with Watching(self.kube, ns, timeline):
                names = [f"lat-{i:05d}" for i in range(count)]
                if flavour == "jobs":
                    bodies, path = [job_body(n) for n in names], p["jobs"]
                else:
                    bodies, path = [run_body(n, "noop") for n in names], p["taskruns"]
                self.log(f"latency {flavour}: {count} at {rate:g}/s")
                sent_for = await self._paced(path, bodies, rate, timeline)
                await wait_until(
                    lambda: len(timeline.first_pod) >= count,
                    cfg.phase_timeout,
                    f"{count} {flavour} pods",
                )
                await wait_until(
                    lambda: len(timeline.done) >= count,
                    cfg.phase_timeout,
                    f"{count} {flavour} to complete",
                )
                if operator is not None:
                    self.result.operator_metrics["latency"] = operator.metrics()
        finally:
            if operator is not None:
                await asyncio.to_thread(operator.stop)
        samples = [1000 * (timeline.first_pod[n] - timeline.sent[n]) for n in names]
        result = Latency(
            flavour=flavour,
            rate=rate,
            runs=count,
            achieved_rate=count / sent_for,
            p50_ms=_percentile(samples, 0.5),
            p90_ms=_percentile(samples, 0.9),
            p99_ms=_percentile(samples, 0.99),
            max_ms=max(samples),
            samples_ms=samples,
        )
        self.log(f"  trigger->pod p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms")
        return result

    async def saturated(self) -> Saturated:
        cfg = self.config
        ns = await make_namespace(self.kube, "saturated")
        p = paths(ns)
        await self.kube.create(p["queues"], queue_body("narrow", cfg.saturated_limit))
        await self.kube.create(p["tasks"], task_body("noop", "narrow"))
        operator = self.operator(ns)
        await asyncio.to_thread(operator.start)
        try:
            timeline = Timeline("podtask")
            async with Watching(self.kube, ns, timeline):
                names = [f"sat-{i:05d}" for i in range(cfg.saturated_runs)]
                self.log(f"saturated: {cfg.saturated_runs} runs, {cfg.saturated_limit} slots")
                start = now()
                await self._burst(p["taskruns"], [run_body(n, "noop") for n in names], timeline)
                await wait_until(
                    lambda: (
                        len(timeline.done) >= cfg.saturated_runs
                        and len(timeline.pod_stopped) >= cfg.saturated_runs
                    ),
                    cfg.phase_timeout,
                    "the saturated queue to drain",
                )
                end = max(timeline.done.values())
        finally:
            await asyncio.to_thread(operator.stop)
        samples = slot_to_pod_ms(timeline, names, cfg.saturated_limit)
        result = Saturated(
            runs=cfg.saturated_runs,
            limit=cfg.saturated_limit,
            seconds=end - start,
            runs_per_second=cfg.saturated_runs / (end - start),
            p50_ms=_percentile(samples, 0.5),
            p90_ms=_percentile(samples, 0.9),
            p99_ms=_percentile(samples, 0.99),
            samples_ms=samples,
            outcomes=timeline.outcomes(),
        )
        self.log(
            f"  slot-freed->next-pod p50 {result.p50_ms:.0f} ms, "
            f"{result.runs_per_second:.1f} runs/s through {cfg.saturated_limit} slots"
        )
        return result

    async def deep_queue(self) -> DeepQueue:
        cfg = self.config
        ns = await make_namespace(self.kube, "deep")
        p = paths(ns)
        await self.kube.create(p["queues"], queue_body("deep", 0))  # paused
        await self.kube.create(p["tasks"], task_body("noop", "deep"))
        operator = self.operator(ns)
        await asyncio.to_thread(operator.start)
        await asyncio.sleep(5)
        empty = usage_of(operator.pid)
        assert empty is not None
        timeline = Timeline("podtask")
        queued: set[str] = set()

        def on_run(kind: str, run: Obj) -> None:
            if (run.get("status") or {}).get("phase") == "Queued":
                queued.add(run["metadata"]["name"])

        watch = asyncio.create_task(self.kube.watch(p["taskruns"], on_run))
        try:
            self.log(f"deep queue: creating {cfg.deep_runs} runs in a paused queue")
            start = now()
            await self._burst(
                p["taskruns"],
                [run_body(f"deep-{i:05d}", "noop") for i in range(cfg.deep_runs)],
                timeline,
            )
            created = now()
            await wait_until(
                lambda: len(queued) >= cfg.deep_runs,
                cfg.phase_timeout,
                f"{cfg.deep_runs} runs Queued",
                interval=0.5,
            )
            all_queued = now()
            await asyncio.sleep(3)
            full = usage_of(operator.pid)
            assert full is not None
            self.log(
                f"  {cfg.deep_runs} Queued after {all_queued - start:.0f}s; operator "
                f"RSS {_mib(full.rss):.0f} MiB (empty: {_mib(empty.rss):.0f} MiB)"
            )
            await asyncio.to_thread(operator.kill)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await self.kube.merge_patch(f"{p['queues']}/deep", {"spec": {"concurrencyLimit": 10}})
        restart = Timeline("podtask")
        async with Watching(self.kube, ns, restart):
            begin = now()
            await asyncio.to_thread(operator.start)
            healthy = now()
            try:
                first = await wait_until(
                    lambda: bool(restart.pod_added),
                    120,
                    "the first pod after the restart",
                    interval=0.01,
                )
                first = min(restart.pod_added)
                await asyncio.sleep(10)
                after = usage_of(operator.pid)
                assert after is not None
            finally:
                await asyncio.to_thread(operator.kill)
        result = DeepQueue(
            runs=cfg.deep_runs,
            create_seconds=created - start,
            queued_seconds=all_queued - start,
            operator_rss_empty_mib=_mib(empty.rss),
            operator_rss_mib=_mib(full.rss),
            operator_peak_rss_mib=_mib(full.peak_rss),
            restart_to_healthy_seconds=healthy - begin,
            restart_to_first_pod_seconds=first - begin,
            restart_peak_rss_mib=_mib(after.peak_rss),
        )
        self.log(
            f"  restart -> first pod {result.restart_to_first_pod_seconds:.1f}s "
            f"(healthy after {result.restart_to_healthy_seconds:.1f}s)"
        )
        return result

    async def profile(self) -> str:
        """The podtask throughput phase once more, the operator under cProfile."""
        cfg = self.config
        ns = await make_namespace(self.kube, "profile")
        p = paths(ns)
        await self.kube.create(p["queues"], queue_body("bench", 100_000))
        await self.kube.create(p["tasks"], task_body("noop", "bench"))
        out = self.work_dir / "operator.prof"
        operator = self.operator(ns, profile_to=out)
        await asyncio.to_thread(operator.start)
        try:
            timeline = Timeline("podtask")
            async with Watching(self.kube, ns, timeline):
                self.log(f"profile: {cfg.runs} runs, operator under cProfile")
                start = now()
                await self._burst(
                    p["taskruns"],
                    [run_body(f"prof-{i:05d}", "noop") for i in range(cfg.runs)],
                    timeline,
                )
                await wait_until(
                    lambda: len(timeline.done) >= cfg.runs, cfg.phase_timeout, "profiled runs"
                )
                seconds = max(timeline.done.values()) - start
        finally:
            await asyncio.to_thread(operator.stop)
        if not out.exists():
            return "(the profiled operator did not write its profile)"
        return (
            f"{cfg.runs} runs in {seconds:.1f}s under cProfile "
            f"({cfg.runs / seconds:.1f} runs/s with the profiler's overhead)\n\n"
            + summarize_profile(out)
        )


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return ""
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )


def _group_cpu(cpu: dict[str, float]) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for name, seconds in cpu.items():
        key = "node agents" if name.startswith("node-") else name
        if key == "watchdog":
            continue
        grouped[key] = grouped.get(key, 0.0) + seconds
    return grouped


def slot_to_pod_ms(timeline: Timeline, names: list[str], limit: int) -> list[float]:
    """Slot release (run final and its pod stopped) to the next pod, paired in order."""
    frees = sorted(
        max(timeline.done[n], timeline.pod_stopped.get(n, timeline.done[n]))
        for n in names
        if n in timeline.done
    )
    creations = sorted(timeline.pod_added)
    return [
        1000 * (created - freed) for freed, created in zip(frees, creations[limit:], strict=False)
    ]


# Where the operator's one thread goes: (label, file suffix, function), by cumulative time.
# Coroutines count from each resume to the next suspension, so their cumulative time is the
# CPU they used, not the time they waited.
PROFILE_GROUPS = (
    (
        "kopf: one watch event, end to end",
        "kopf/_core/reactor/processing.py",
        "process_resource_event",
    ),
    ("  of which kopf's diff-base copy (deepcopy)", "kopf/_cogs/configs/diffbase.py", "build"),
    ("podtask: reconcile of one run", "podtask_operator/controller.py", "reconcile"),
    ("  of which runstate.decide", "podtask_operator/runstate.py", "decide"),
    ("  of which the dispatcher's acquire", "podtask_operator/dispatcher.py", "acquire"),
    ("podtask: Event posts", "podtask_operator/controller.py", "_post_event"),
    ("podtask: API requests (kube.py)", "podtask_operator/kube.py", "request"),
    ("run API: requests from pods", "podtask_operator/runapi.py", "answer"),
    ("JSON decoding", "json/decoder.py", "decode"),
    (
        "pydantic validation",
        "~",
        "<method 'validate_python' of 'pydantic_core._pydantic_core.SchemaValidator' objects>",
    ),
    ("idle: waiting in epoll", "~", "<method 'poll' of 'select.epoll' objects>"),
)


def summarize_profile(path: Path, top: int = 25) -> str:
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in table.values())
    lines = [f"{'':48} {'seconds':>8} {'share':>6}"]
    for label, file_suffix, function in PROFILE_GROUPS:
        # The largest match: a function may call another of the same name (nested).
        seconds = max(
            (
                entry[3]
                for (file, _line, name), entry in table.items()
                if name == function and (file == file_suffix or file.endswith(file_suffix))
            ),
            default=0.0,
        )
        lines.append(f"{label:48} {seconds:8.2f} {seconds / total:6.0%}")
    lines.append(f"{'everything the thread did (incl. idle)':48} {total:8.2f} {1:6.0%}")
    buffer = io.StringIO()
    ranked = pstats.Stats(str(path), stream=buffer)
    ranked.strip_dirs().sort_stats("tottime").print_stats(top)
    text = buffer.getvalue().splitlines()
    begin = next((i for i, line in enumerate(text) if "ncalls" in line), 0)
    return (
        "\n".join(lines) + "\n\nTop functions by own time:\n\n" + "\n".join(text[begin:]).rstrip()
    )


def summarize_pprof(text: str, top: int = 18) -> str:
    """The API server's own work, by cumulative share: handlers, admission, validation,
    storage, watch fan-out (Go runtime and scheduler frames left out)."""
    lines = text.splitlines()
    header = [line for line in lines[:8] if line.startswith(("Duration", "Showing nodes"))]
    wanted = (
        "k8s.io/apiserver/pkg/endpoints/handlers.",
        "k8s.io/apiserver/pkg/admission",
        "k8s.io/apiextensions-apiserver",
        "k8s.io/apiserver/pkg/storage",
        "k8s.io/apiserver/pkg/registry",
        "k8s.io/kubernetes/plugin/pkg/admission",
        "k8s.io/apiserver/pkg/endpoints/filters",
        "sigs.k8s.io/structured-merge-diff",
        "k8s.io/apiserver/pkg/cel",
        "k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager",
        "go.etcd.io/etcd/client",
        "encoding/json",
        "k8s.io/apimachinery/pkg/runtime",
    )
    rows = [line for line in lines if any(w in line for w in wanted)]
    return "\n".join([*header, "      flat  flat%   sum%        cum   cum%", *rows[:top]])


def percentile(values: list[float], q: float) -> float:
    return _percentile(values, q)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def component_memory(state_dir: Path) -> dict[str, float]:
    result = {}
    for name, pid in component_pids(state_dir).items():
        usage = usage_of(pid)
        if usage is not None:
            result[name] = _mib(usage.peak_rss)
    return result
