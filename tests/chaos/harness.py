"""Chaos: runs flow through several queues while the operator is SIGKILLed on a timer, the
API server and etcd are crashed and restarted, and run pods are deleted at random.

Everything is counted from outside the operator: the API server (watches, and LISTs of
live pods sampled on a timer) and the node's ledger of run API calls (``INSTANT-RUNNER``
lines, node_instant.py). The report says how many runs were

* **lost**: created (the API server said so) but gone, or never given a status;
* **stuck**: not in a final phase once the chaos stopped and ``settle`` passed;
* **completed twice**: two attempts whose completion the operator accepted (ledger),
  a run seen leaving a final phase, or a pod name created twice;

and the **concurrency overshoot**: the most slot-holding runs (Dequeued/Executing) or
live pods any queue (or concurrency key) had beyond its limit, at any watch event or
sample. All four must be 0. Runs whose attempt was re-executed after an infrastructure
failure (at-least-once) are reported, not counted as failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localcluster import controlplane
from tests.bench.harness import FINAL, BenchOperator, paths, queue_body, run_body
from tests.bench.kube import (
    Kube,
    KubeError,
    Obj,
    install_crds,
    make_namespace,
    now,
    wait_until,
)

HELD = ("Dequeued", "Executing")
LEDGER = re.compile(r"INSTANT-RUNNER (\{.*\})\s*$")


@dataclass(frozen=True)
class QueueDef:
    name: str
    limit: int
    per_key: int | None = None
    keys: int = 0


@dataclass(frozen=True)
class ChaosConfig:
    runs: int = 1000
    queues: tuple[QueueDef, ...] = (
        QueueDef("q-a", 3),
        QueueDef("q-b", 5),
        QueueDef("q-c", 10, per_key=2, keys=6),
        QueueDef("q-d", 20),
    )
    submit_rate: float = 20.0
    kill_every: float = 10.0
    apiserver_restart_at: float = 22.0
    etcd_restart_at: float = 37.0
    chaos_seconds: float = 0.0
    """Keep up the chaos at least this long (it lasts while runs are submitted anyway)."""
    pod_delete_every: float = 1.0
    max_sleep: float = 2.0
    fail_fraction: float = 0.1
    settle: float = 600.0
    sample_every: float = 0.25
    nodes: int = 2
    seed: int = 10


@dataclass
class ChaosReport:
    config: dict[str, Any]
    started: str
    seconds: float = 0.0
    submitted: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    completed_twice: list[str] = field(default_factory=list)
    overshoot: int = 0
    overshoot_detail: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, str] = field(default_factory=dict)
    stuck_detail: dict[str, str] = field(default_factory=dict)
    reexecuted: int = 0
    pods_created_twice: list[str] = field(default_factory=list)
    operator_kills: int = 0
    apiserver_restarts: int = 0
    etcd_restarts: int = 0
    pod_deletions: int = 0
    samples: int = 0
    sample_errors: int = 0
    watch_evaluations: int = 0
    operator_log_errors: int = 0
    operator_alive: bool = False
    events: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.stuck or self.completed_twice or self.overshoot or self.unexpected
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class View:
    """Slot holders and live pods per queue and key, as the API server reports them."""

    def __init__(self, queues: dict[str, QueueDef], report: ChaosReport) -> None:
        self.queues = queues
        self.report = report
        self.runs: dict[str, Obj] = {}
        self.pods: dict[str, Obj] = {}
        self.phase_history: dict[str, list[str]] = defaultdict(list)
        self.pod_uids: dict[str, set[str]] = defaultdict(set)
        # pod name -> (seconds, event, uid, phase, deleting): for explaining a stuck run.
        self.pod_history: dict[str, list[tuple[float, str, str, str, bool]]] = defaultdict(list)
        self.run_history: dict[str, list[tuple[float, str, Any]]] = defaultdict(list)
        self.t0 = now()

    # --- watch handlers -----------------------------------------------------------------

    def relist_runs(self, items: list[Obj]) -> None:
        self.runs = {i["metadata"]["name"]: i for i in items}

    def relist_pods(self, items: list[Obj]) -> None:
        self.pods = {i["metadata"]["name"]: i for i in items}

    def on_run(self, kind: str, run: Obj) -> None:
        name = run["metadata"]["name"]
        if kind == "DELETED":
            self.runs.pop(name, None)
        else:
            self.runs[name] = run
            status = run.get("status") or {}
            phase = status.get("phase")
            history = self.phase_history[name]
            if phase and (not history or history[-1] != phase):
                history.append(phase)
            self.run_history[name].append(
                (
                    round(now() - self.t0, 2),
                    kind,
                    [
                        phase,
                        status.get("attempt"),
                        [(a.get("pod"), a.get("reason")) for a in status.get("attempts") or []],
                    ],
                )
            )
        self.evaluate(self.held_runs(), "runs")

    def on_pod(self, kind: str, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        self.pod_uids[name].add(pod["metadata"]["uid"])
        self.pod_history[name].append(
            (
                round(now() - self.t0, 2),
                kind,
                pod["metadata"]["uid"][:8],
                str((pod.get("status") or {}).get("phase")),
                bool(pod["metadata"].get("deletionTimestamp")),
            )
        )
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
        self.evaluate(self.live_pods(list(self.pods.values())), "pods")

    # --- counting -----------------------------------------------------------------------

    def held_runs(self) -> list[tuple[str, str | None]]:
        held = []
        for run in self.runs.values():
            status = run.get("status") or {}
            if status.get("phase") in HELD and status.get("queue"):
                held.append((str(status["queue"]), (run.get("spec") or {}).get("concurrencyKey")))
        return held

    def live_pods(self, pods: list[Obj]) -> list[tuple[str, str | None]]:
        """(queue, concurrency key) of each pod not yet stopped; a terminating pod still
        runs until it has stopped, so it counts."""
        live = []
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            queue = (meta.get("labels") or {}).get("podtask.dev/queue")
            run = self.runs.get((meta.get("annotations") or {}).get("podtask.dev/run", ""))
            if queue:
                live.append((queue, ((run or {}).get("spec") or {}).get("concurrencyKey")))
        return live

    def evaluate(self, holders: list[tuple[str, str | None]], what: str) -> None:
        if "LIST" not in what:
            self.report.watch_evaluations += 1
        per_queue = Counter(q for q, _ in holders)
        per_key = Counter((q, k) for q, k in holders if k is not None)
        for queue, count in per_queue.items():
            limit = self.queues[queue].limit if queue in self.queues else None
            if limit is not None and count > limit:
                self._note(f"{what} in {queue}", count - limit)
        for (queue, key), count in per_key.items():
            per_key_limit = self.queues[queue].per_key if queue in self.queues else None
            if per_key_limit is not None and count > per_key_limit:
                self._note(f"{what} in {queue} key {key}", count - per_key_limit)

    def _note(self, where: str, excess: int) -> None:
        detail = self.report.overshoot_detail
        detail[where] = max(detail.get(where, 0), excess)
        self.report.overshoot = max(self.report.overshoot, excess)


class Chaos:
    def __init__(self, state_dir: Path, work_dir: Path, config: ChaosConfig) -> None:
        self.state_dir = state_dir
        self.work_dir = work_dir
        self.config = config
        self.kube = Kube(state_dir, connections=48)
        self.rng = random.Random(config.seed)
        self.report = ChaosReport(
            config=asdict(config), started=time.strftime("%Y-%m-%d %H:%M:%S %Z")
        )
        self.queues = {q.name: q for q in config.queues}
        self.view = View(self.queues, self.report)
        self.ns = "chaos"
        self.created: set[str] = set()
        self.operator: BenchOperator | None = None
        self.t0 = 0.0

    def log(self, message: str) -> None:
        line = f"[chaos {time.strftime('%H:%M:%S')} +{now() - self.t0:5.1f}s] {message}"
        print(line, flush=True)
        self.report.events.append(line)

    async def run(self) -> ChaosReport:
        self.t0 = now()
        try:
            await self._run()
        finally:
            if self.operator is not None:
                await asyncio.to_thread(self.operator.stop)
            await self.kube.close()
        self.report.seconds = now() - self.t0
        return self.report

    async def _run(self) -> None:
        cfg = self.config
        await install_crds(self.kube)
        await make_namespace(self.kube, self.ns)
        p = paths(self.ns)
        for queue in cfg.queues:
            spec = {"perKeyLimit": queue.per_key} if queue.per_key else {}
            await self.kube.create(p["queues"], queue_body(queue.name, queue.limit, **spec))
            await self.kube.create(
                p["tasks"],
                {
                    "apiVersion": "podtask.dev/v1alpha1",
                    "kind": "Task",
                    "metadata": {"name": f"t-{queue.name}"},
                    "spec": {
                        "image": "podtask/runner:dev",
                        "entrypoint": "chaos.noop:run",
                        "queue": queue.name,
                        "machine": "micro",
                        "retry": {
                            "maxAttempts": 3,
                            "minTimeout": "500ms",
                            "maxTimeout": "1s",
                            "randomize": False,
                        },
                    },
                },
            )
        log_dir = self.work_dir / "operator"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.operator = BenchOperator(self.state_dir / "kubeconfig", log_dir)
        await asyncio.to_thread(self.operator.start)
        synced = [asyncio.Event(), asyncio.Event()]
        watches = [
            asyncio.create_task(
                self.kube.watch(
                    p["taskruns"],
                    self.view.on_run,
                    synced=synced[0],
                    relisted=self.view.relist_runs,
                )
            ),
            asyncio.create_task(
                self.kube.watch(
                    p["pods"],
                    self.view.on_pod,
                    synced=synced[1],
                    params={"labelSelector": "app.kubernetes.io/managed-by=podtask"},
                    relisted=self.view.relist_pods,
                )
            ),
        ]
        await asyncio.gather(*(e.wait() for e in synced))
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample(stop))
        try:
            self.log(
                f"submitting {cfg.runs} runs at {cfg.submit_rate:g}/s into "
                f"{len(cfg.queues)} queues; chaos starts"
            )
            submit = asyncio.create_task(self._submit())
            chaos = asyncio.create_task(self._chaos(submit))
            await asyncio.gather(submit, chaos)
            self.log(f"chaos over; {len(self.created)} runs submitted; settling")
            try:
                await wait_until(self._settled, cfg.settle, "every run to finish", interval=0.5)
            except TimeoutError:
                self.log("settle timed out")
            await asyncio.sleep(2)  # let the last pods stop for the final samples
        finally:
            stop.set()
            await sampler
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
        await self._tally()

    def _settled(self) -> bool:
        runs = self.view.runs
        return all(
            (runs.get(n, {}).get("status") or {}).get("phase") in FINAL for n in self.created
        )

    # --- load ---------------------------------------------------------------------------

    async def _submit(self) -> None:
        cfg = self.config
        path = paths(self.ns)["taskruns"]
        start = now()
        tasks = []

        weights = [q.limit for q in cfg.queues]  # so that every queue drains alike

        async def one(i: int) -> None:
            queue = self.rng.choices(cfg.queues, weights)[0]
            payload = {
                "i": i,
                "instantRunner": {
                    "sleepSeconds": round(self.rng.uniform(0, cfg.max_sleep), 2),
                    "failAttempts": 1 if self.rng.random() < cfg.fail_fraction else 0,
                },
            }
            spec: dict[str, Any] = {}
            if queue.keys:
                spec["concurrencyKey"] = f"k{self.rng.randrange(queue.keys)}"
            name = f"chaos-{i:05d}"
            body = run_body(name, f"t-{queue.name}", payload, **spec)
            # Outages are retried; a 409 after a lost answer means our own create landed.
            await self.kube.create(path, body, retry_for=300)
            self.created.add(name)

        for i in range(cfg.runs):
            delay = start + i / cfg.submit_rate - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        self.report.submitted = len(self.created)

    # --- chaos --------------------------------------------------------------------------

    async def _chaos(self, submit: asyncio.Task[None]) -> None:
        """Three disruptions side by side until the runs are in and the restarts done."""
        cfg = self.config
        start = now()
        control_plane = asyncio.create_task(self._restarts(start))
        over = asyncio.Event()

        async def pause(seconds: float) -> bool:
            """Sleep; False once the chaos is over."""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(over.wait(), seconds)
            return not over.is_set()

        async def kill_operator() -> None:
            assert self.operator is not None
            while await pause(cfg.kill_every):
                await asyncio.to_thread(self.operator.kill)
                self.report.operator_kills += 1
                self.log(f"operator SIGKILLed (#{self.report.operator_kills}); restarting")
                began = now()
                await asyncio.to_thread(self.operator.start)
                self.log(f"operator healthy again after {now() - began:.1f}s")

        async def delete_pods() -> None:
            while await pause(cfg.pod_delete_every):
                await self._delete_a_pod()

        loops = [asyncio.create_task(kill_operator()), asyncio.create_task(delete_pods())]
        await asyncio.gather(submit, control_plane)
        await asyncio.sleep(max(0.0, start + cfg.chaos_seconds - now()))
        over.set()
        await asyncio.gather(*loops)

    async def _restarts(self, start: float) -> None:
        cfg = self.config
        for at, component in sorted(
            [(cfg.apiserver_restart_at, "kube-apiserver"), (cfg.etcd_restart_at, "etcd")]
        ):
            await asyncio.sleep(max(0.0, start + at - now()))
            await self._restart(component)
            if component == "etcd":
                self.report.etcd_restarts += 1
            else:
                self.report.apiserver_restarts += 1

    async def _restart(self, component: str) -> None:
        self.log(f"crashing {component} (SIGKILL) and starting it again")
        began = now()
        await asyncio.to_thread(controlplane.restart, self.state_dir, component, grace=0)
        self.log(f"{component} back after {now() - began:.1f}s")

    async def _delete_a_pod(self) -> None:
        live = [
            name
            for name, pod in self.view.pods.items()
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not pod["metadata"].get("deletionTimestamp")
        ]
        if not live:
            return
        name = self.rng.choice(sorted(live))
        grace = self.rng.choice([0, None])
        try:
            if await self.kube.delete(f"/api/v1/namespaces/{self.ns}/pods/{name}", grace):
                self.report.pod_deletions += 1
        except (KubeError, OSError) as error:
            self.log(f"pod deletion failed: {error}")
        except Exception as error:  # the API server may be restarting
            self.log(f"pod deletion failed: {error!r}")

    async def _sample(self, stop: asyncio.Event) -> None:
        """Point-in-time LISTs of live run pods, independent of the watches."""
        path = paths(self.ns)["pods"]
        while not stop.is_set():
            try:
                listing = await self.kube.get(
                    path,
                    labelSelector="app.kubernetes.io/managed-by=podtask",
                    fieldSelector="status.phase!=Succeeded,status.phase!=Failed",
                )
                self.report.samples += 1
                self.view.evaluate(self.view.live_pods(listing.get("items") or []), "pods (LIST)")
            except Exception:
                self.report.sample_errors += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.sample_every)

    # --- the verdict --------------------------------------------------------------------

    async def _tally(self) -> None:
        report = self.report
        listing = await self.kube.get(paths(self.ns)["taskruns"])
        runs = {r["metadata"]["name"]: r for r in listing.get("items") or []}
        for name in sorted(self.created):
            run = runs.get(name)
            status = (run or {}).get("status") or {}
            phase = status.get("phase")
            if run is None or phase is None:
                report.lost.append(name)
                continue
            report.phases[phase] = report.phases.get(phase, 0) + 1
            if phase not in FINAL:
                report.stuck.append(name)
                pods = {n: h for n, h in self.view.pod_history.items() if n.startswith(name + "-")}
                report.stuck_detail[name] = json.dumps(
                    {
                        "phase": phase,
                        "queue": status.get("queue"),
                        "attempts": status.get("attempts"),
                        "pod events": pods,
                        "run events": self.view.run_history.get(name),
                        "ledger": [e for e in self.ledger() if e.get("run") == name],
                    },
                    default=str,
                )[:6000]
            elif phase != "Completed":
                error = status.get("error") or {}
                report.unexpected[name] = f"{phase}: {error.get('type')}: {error.get('message')}"
        completions: Counter[str] = Counter()
        starts: Counter[tuple[str, int]] = Counter()
        for entry in self.ledger():
            if entry.get("namespace") != self.ns:
                continue
            if entry["event"] == "completed":
                completions[entry["run"]] += 1
            if entry["event"] == "started":
                starts[(entry["run"], entry["attempt"])] += 1
        twice = {run for run, count in completions.items() if count > 1}
        for name, history in self.view.phase_history.items():
            finals = [i for i, phase in enumerate(history) if phase in FINAL]
            if finals and finals[0] != len(history) - 1:
                twice.add(name)  # left a final phase
        # A pod deleted before its run was seen Executing is created again under the same
        # name (same attempt); reported, not a double completion by itself.
        report.pods_created_twice = sorted(
            n for n, uids in self.view.pod_uids.items() if len(uids) > 1
        )
        report.completed_twice = sorted(twice)
        report.reexecuted = sum(1 for count in starts.values() if count > 1)
        assert self.operator is not None
        alive = self.operator.process is not None and self.operator.process.poll() is None
        report.operator_alive = alive
        report.operator_log_errors = sum(
            path.read_text(errors="replace").count("Traceback")
            for path in (self.work_dir / "operator").glob("operator-*.log")
        )
        self.log(
            f"lost {len(report.lost)}, stuck {len(report.stuck)}, not Completed "
            f"{len(report.unexpected)}, completed twice "
            f"{len(report.completed_twice)}, overshoot {report.overshoot}; "
            f"phases {report.phases}"
        )

    def ledger(self) -> list[dict[str, Any]]:
        entries = []
        for path in sorted((self.state_dir / "logs").glob("node-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                match = LEDGER.search(line)
                if match:
                    entries.append(json.loads(match[1]))
        return entries


def markdown(report: ChaosReport, command: str) -> str:
    cfg = report.config
    queues = ", ".join(
        f"{q['name']} (limit {q['limit']}"
        + (f", {q['per_key']} per key" if q.get("per_key") else "")
        + ")"
        for q in cfg["queues"]
    )
    verdict = "all 0" if report.clean else "**NOT all 0**"
    lines = [
        f"_Generated by `{command}` on {report.started}; {report.seconds:.0f} s._\n",
        f"{report.submitted} runs submitted at {cfg['submit_rate']:g}/s into {queues}; "
        f"each holds its pod 0 to {cfg['max_sleep']:g} s, {cfg['fail_fraction']:.0%} fail their "
        "first attempt (retried). Meanwhile: the operator SIGKILLed every "
        f"{cfg['kill_every']:g} s ({report.operator_kills} times), kube-apiserver crashed and "
        f"restarted ({report.apiserver_restarts} times), etcd crashed and restarted "
        f"({report.etcd_restarts} times), {report.pod_deletions} run pods deleted at random.\n",
        "| | count |",
        "|---|---|",
        f"| runs lost | {len(report.lost)} |",
        f"| runs stuck (not final {cfg['settle']:g} s after the chaos) | {len(report.stuck)} |",
        f"| runs whose success was lost (ended other than Completed; every task succeeds "
        f"by its second attempt) | {len(report.unexpected)} |",
        f"| runs completed twice | {len(report.completed_twice)} |",
        f"| concurrency overshoot (max over queues and keys) | {report.overshoot} |",
        f"| pods created twice under one name | {len(report.pods_created_twice)} |",
        f"| attempts re-executed after an infrastructure failure (at-least-once) | "
        f"{report.reexecuted} |",
        f"| final phases | {', '.join(f'{k} {v}' for k, v in sorted(report.phases.items()))} |",
        f"| limit checks: watch events / LIST samples (failed during outages) | "
        f"{report.watch_evaluations} / {report.samples} ({report.sample_errors}) |",
        f"| tracebacks in the operator's logs | {report.operator_log_errors} |",
        "",
        f"Verdict: {verdict}.",
    ]
    if report.unexpected:
        lines += ["", "Runs not Completed:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(report.unexpected.items())[:20]]
    if report.stuck_detail:
        lines += ["", "Stuck runs:", ""]
        lines += [
            f"- `{name}`: `{detail}`" for name, detail in sorted(report.stuck_detail.items())[:20]
        ]
    if report.overshoot_detail:
        lines += ["", f"Overshoot detail: {report.overshoot_detail}"]
    lines += [
        "",
        "<details><summary>Timeline</summary>",
        "",
        "```",
        *report.events,
        "```",
        "</details>",
    ]
    return "\n".join(lines)


def run_chaos(
    state_dir: Path, work_dir: Path, config: ChaosConfig, prepare: Callable[[], None] | None = None
) -> ChaosReport:
    if prepare is not None:
        prepare()
    return asyncio.run(Chaos(state_dir, work_dir, config).run())
