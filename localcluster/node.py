"""The process kubelet: a test-and-demo-only node agent that runs pods as local processes.

    python -m localcluster.node --kubeconfig PATH --state-dir DIR --name NAME \\
        [--cpu 8] [--memory 16Gi] [--pods 250] [--image-map FILE] [--instant]
        [--instant-runner]

It registers a Node, keeps it Ready (Lease renewals plus condition heartbeats), watches
the pods the scheduler binds to it and runs each container as a local process (see
node_pod.py), reports their status the way kubelet does and serves ``kubectl logs``.
Images are not pulled: an image map says which local environment stands in for which
image (``--image-map FILE``, else ``<state-dir>/image-map.yaml`` when present, re-read when
it changes, ahead of the default: every image stands for this interpreter's environment).
``--instant`` runs nothing and moves each pod straight to Running then Succeeded,
for measuring the control plane without process start-up. ``--instant-runner`` is
``--instant`` in which podtask-runner pods make the runner's run API calls first
(node_instant.py), so podtask runs complete honestly.

Follows kubelet (v1.37 source) for: pod phase, the five kubelet conditions, container
states and reasons (ContainerCreating, PodInitializing, CreateContainerConfigError,
CrashLoopBackOff with 10 s doubling to 5 min, Completed, Error, OOMKilled, StartError,
ContainerStatusUnknown), termination messages (file, FallbackToLogsOnError), init
containers, restartPolicy, activeDeadlineSeconds (DeadlineExceeded), graceful deletion with
the final uid-guarded DELETE, env/envFrom/valueFrom and `$(VAR)` expansion, and
emptyDir/configMap/secret/downwardAPI/projected (incl. service-account tokens)/hostPath
volumes. Where the agent may create mount namespaces (it probes at start; ``--mount-
namespaces off`` disables them), each container with volume mounts runs in its own, with
every volume bind-mounted at its ``mountPath`` (so ``load_incluster_config()`` finds the
token and CA at the standard path); the process also finds each volume through
``PODTASK_NODE_VOLUME_<MOUNT_PATH>``, the only way without mount namespaces.

Not supported, by design or not yet: probes (a running container is ready), lifecycle
hooks, sidecar init containers (``restartPolicy: Always`` on an init container), container
restart rules, CPU limits, PVC/CSI/ephemeral/image volumes (empty directories), mounts
over system directories or over what the process needs from the host (see node_sandbox),
the termination message at ``terminationMessagePath``, ports, networking and Services
(every pod's IP is 127.0.0.1, so two pods cannot listen on one port), exec/attach/
port-forward, `kubectl logs --timestamps/--since`, readiness gates, eviction, images.
Memory limits are enforced by sampling the RSS peak of each container's session
(every 150 ms), not by a cgroup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from localcluster import node_spec as specs
from localcluster.node_instant import InstantRunner
from localcluster.node_kube import ApiError, GoneError, Kube
from localcluster.node_logs import LogError, LogTarget, self_signed, serve
from localcluster.node_pod import Outcome, PodWorker, Stop
from localcluster.node_process import MemoryMonitor, mount_namespaces_available
from localcluster.node_registration import HOST_IP, NodeRegistration, log
from localcluster.node_sandbox import (
    BASE_ENV_KEYS,
    Instance,
    NodeContext,
    pod_dir_name,
    remove_pod_files,
)

Obj = dict[str, Any]

WATCH_TIMEOUT_SECONDS = 300
TERMINAL = {"Succeeded", "Failed"}


def default_image_map() -> list[specs.ImageEnv]:
    # Every image stands for the interpreter running the agent: its bin directory (the
    # checkout's virtualenv) comes first on PATH, so `python` and `podtask-runner` are
    # the project's. Images conventionally set PYTHONUNBUFFERED so logs stream.
    return [
        specs.ImageEnv(
            match="*",
            path_prepend=(str(Path(sys.executable).parent),),
            env={"PYTHONUNBUFFERED": "1"},
        )
    ]


def load_image_map(path: Path | None) -> list[specs.ImageEnv]:
    if path is None:
        return default_image_map()
    return specs.parse_image_map(yaml.safe_load(path.read_text()), path.resolve().parent)


class StateDirImageMap:
    """``<state-dir>/image-map.yaml`` if present (then the default), re-read when it changes.

    Lets a tool (``make demo``) map its images on a node that is already running.
    A file that does not parse is reported once and ignored until it changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: list[specs.ImageEnv] = []

    def __call__(self) -> list[specs.ImageEnv]:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self._entries = []
            if stamp is not None:
                try:
                    self._entries = load_image_map(self.path)
                    log(f"image map {self.path}: {len(self._entries)} entries")
                except (OSError, ValueError, yaml.YAMLError) as error:
                    log(f"image map {self.path} ignored: {error}")
        return [*self._entries, *default_image_map()]


def fixed_image_map(path: Path) -> Callable[[], list[specs.ImageEnv]]:
    entries = load_image_map(path)
    return lambda: entries


class Agent:
    def __init__(self, kube: Kube, args: argparse.Namespace) -> None:
        self.kube = kube
        self.name: str = args.name
        self.state_dir: Path = args.state_dir.resolve()
        self.pods_dir = self.state_dir / "pods"
        self.node_dir = self.state_dir / "nodes" / self.name
        self.instant: bool = args.instant or args.instant_runner
        self.runner = InstantRunner() if args.instant_runner else None
        capacity = {"cpu": str(args.cpu), "memory": str(args.memory), "pods": str(args.pods)}
        for value in capacity.values():
            specs.parse_quantity(value)  # reject a malformed flag before registering
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            capacity["ephemeral-storage"] = str(shutil.disk_usage(self.state_dir).total)
        host, port = kube.host_port
        mount_namespaces = False
        if args.mount_namespaces != "off" and not self.instant:
            why_not = mount_namespaces_available()
            mount_namespaces = why_not is None
            if why_not is not None:
                log(
                    f"warning: no mount namespaces for containers ({why_not}); volumes are "
                    "reachable only through $PODTASK_NODE_VOLUME_<MOUNT_PATH>"
                )
        self.context = NodeContext(
            kube=kube,
            node_name=self.name,
            pods_dir=self.pods_dir,
            image_map=(
                fixed_image_map(args.image_map)
                if args.image_map is not None
                else StateDirImageMap(self.state_dir / "image-map.yaml")
            ),
            # The `kubernetes` Service's ClusterIP is not reachable from a plain process;
            # in-cluster clients get the API server itself.
            service_env={
                "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
                f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
            },
            allocatable=capacity,
            monitor=MemoryMonitor(),
            host_ip=HOST_IP,
            instant=self.instant,
            base_env={k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ},
            mount_namespaces=mount_namespaces,
        )
        self.workers: dict[str, PodWorker] = {}
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}
        self.latest: dict[str, Obj] = {}  # uid -> newest pod object seen
        self.finished: set[str] = set()  # uids whose worker ended with a terminal status
        self.instances: dict[str, dict[str, Instance]] = {}  # uid -> container ID -> slice
        self.background: set[asyncio.Task[Any]] = set()
        self.registration = NodeRegistration(kube, self.name, capacity, self.instant)

    # --- pods -----------------------------------------------------------------------

    def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _delete_terminal(self, pod: Obj) -> None:
        try:
            await PodWorker.final_delete(self.kube, pod)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            log(f"final delete of {pod['metadata']['name']} failed: {error!r}")

    def handle(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if kind == "DELETED":
            self.forget(uid, pod)
            return
        self.latest[uid] = pod
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in TERMINAL or uid in self.finished:
            if meta.get("deletionTimestamp"):
                self._spawn_background(self._delete_terminal(pod))
            return
        self.start(pod)

    def start(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = PodWorker(self.context, pod, self.runner)
        self.workers[uid] = worker
        self.instances[uid] = worker.instances
        task = asyncio.create_task(worker.run())
        self.tasks[uid] = task
        task.add_done_callback(lambda t: self._worker_done(uid, t))

    def _worker_done(self, uid: str, task: asyncio.Task[Outcome]) -> None:
        self.workers.pop(uid, None)
        self.tasks.pop(uid, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log(f"pod worker {uid} failed: {error!r}")
            return
        outcome = task.result()
        if outcome is Outcome.TERMINAL:
            self.finished.add(uid)
            pod = self.latest.get(uid)
            if pod is not None and pod["metadata"].get("deletionTimestamp"):
                # Deleted while the worker was wrapping up: the final delete is ours now.
                self._spawn_background(self._delete_terminal(pod))

    def forget(self, uid: str, pod: Obj) -> None:
        self.latest.pop(uid, None)
        self.finished.discard(uid)
        self.instances.pop(uid, None)
        worker = self.workers.get(uid)
        task = self.tasks.get(uid)
        if worker is not None and task is not None:
            worker.stop(Stop.VANISHED)
            task.add_done_callback(lambda _: remove_pod_files(self.pods_dir, pod))
        else:
            remove_pod_files(self.pods_dir, pod)

    def reconcile(self, pods: Sequence[Obj]) -> None:
        """After a (re)list: pods that disappeared meanwhile are forgotten, the rest handled."""
        listed = {p["metadata"]["uid"] for p in pods}
        for uid in {*self.workers, *self.latest} - listed:
            worker = self.workers.get(uid)
            pod = self.latest.get(uid) or (worker.pod if worker else None)
            if pod is not None:
                self.forget(uid, pod)
        for pod in pods:
            self.handle("MODIFIED", pod)

    async def watch_pods(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.name}"}
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.kube.get("/api/v1/pods", params)
                    self.reconcile(listing.get("items") or [])
                    version = str(listing["metadata"]["resourceVersion"])
                async for event in self.kube.watch(
                    "/api/v1/pods",
                    {
                        **params,
                        "resourceVersion": version,
                        "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
                    },
                ):
                    obj = event["object"]
                    version = str(obj["metadata"]["resourceVersion"])
                    if event["type"] != "BOOKMARK":
                        self.handle(event["type"], obj)
            except GoneError:
                version = None
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
                log(f"pod watch interrupted: {error!r}")
                await asyncio.sleep(1.0)

    # --- logs -----------------------------------------------------------------------

    def locate_log(self, namespace: str, name: str, container: str, previous: bool) -> LogTarget:
        pod = next(
            (
                p
                for p in self.latest.values()
                if p["metadata"]["namespace"] == namespace and p["metadata"]["name"] == name
            ),
            None,
        )
        if pod is None:
            raise LogError(404, f'pod "{name}" cannot be found - no logs available')
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            statuses = [r.api() for r in [*worker.inits, *worker.apps]]
        else:
            status = pod.get("status") or {}
            statuses = [
                *(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or []),
            ]
        found = next((s for s in statuses if s["name"] == container), None)
        if found is None:
            raise LogError(400, f'container "{container}" in pod "{name}" is not available')
        container_id = _log_container_id(found, container, name, previous)
        instance = self.instances.get(uid, {}).get(container_id)
        if instance is None:
            # Not started by this agent run (it restarted): the whole file is all we know.
            path = self.pods_dir / pod_dir_name(pod) / f"{container}.log"
            return LogTarget(path=path, start=0, end=None, running=lambda: False)

        def running() -> bool:
            current = self.workers.get(uid)
            if current is None:
                return False
            process = current.processes.get(container)
            record = current.record(container)
            return (
                process is not None
                and process.alive
                and record is not None
                and record.container_id == container_id
            )

        return LogTarget(
            path=instance.path, start=instance.start, end=instance.end, running=running
        )

    # --- main -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        registration = self.registration
        runner, registration.log_port = await serve(
            self.locate_log, self_signed(self.node_dir, self.name)
        )
        loops: list[asyncio.Task[None]] = []
        try:
            version = await _retry_forever("register node", registration.register, stop)
            if version is None:
                return
            mode = "instant" if self.instant else "process"
            if self.context.mount_namespaces:
                mode += " mode, mount namespaces"
            else:
                mode += " mode"
            log(
                f"node {self.name} registered (kubelet version {version}, logs on "
                f"{HOST_IP}:{registration.log_port}, {mode})"
            )
            loops = [
                asyncio.create_task(registration.heartbeat(version)),
                asyncio.create_task(self.watch_pods()),
            ]
            await stop.wait()
        finally:
            for loop in loops:
                loop.cancel()
            for worker in list(self.workers.values()):
                worker.stop(Stop.SHUTDOWN)
            await asyncio.gather(*self.tasks.values(), *loops, return_exceptions=True)
            for task in list(self.background):
                task.cancel()
            await self.context.monitor.close()
            if self.runner is not None:
                await self.runner.close()
            await runner.cleanup()
            log(f"node {self.name} stopped")


def _log_container_id(status: Obj, container: str, pod: str, previous: bool) -> str:
    """Which instance `kubectl logs` means, by kubelet's validateContainerLogStatus."""
    state, last = status.get("state") or {}, (status.get("lastState") or {}).get("terminated")
    if previous:
        if not last or not last.get("containerID"):
            raise LogError(
                400, f'previous terminated container "{container}" in pod "{pod}" not found'
            )
        return str(last["containerID"])
    if "running" in state:
        return str(status.get("containerID") or "")
    if "terminated" in state:
        cid = state["terminated"].get("containerID") or (last or {}).get("containerID")
        if not cid:
            raise LogError(400, f'container "{container}" in pod "{pod}" is terminated')
        return str(cid)
    if last:
        if not last.get("containerID"):
            raise LogError(400, f'container "{container}" in pod "{pod}" is terminated')
        return str(last["containerID"])
    reason = (state.get("waiting") or {}).get("reason", "")
    raise LogError(400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}')


async def _retry_forever(
    what: str, call: Callable[[], Awaitable[str]], stop: asyncio.Event
) -> str | None:
    delay = 0.5
    while not stop.is_set():
        try:
            return await call()
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            log(f"{what} failed: {error!r}; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 5.0)
    return None


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.node",
        description="a test-only node agent that runs pods as local processes",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="pod directories and logs go to <state-dir>/pods",
    )
    parser.add_argument("--name", required=True, help="the Node's name")
    parser.add_argument("--cpu", default="8")
    parser.add_argument("--memory", default="16Gi")
    parser.add_argument("--pods", default="250")
    parser.add_argument(
        "--image-map",
        type=Path,
        default=None,
        help="YAML/JSON list of {match, pathPrepend, env, workingDir, "
        "entrypoint, cmd}; default: <state-dir>/image-map.yaml if "
        "present, then every image -> this interpreter's bin directory "
        "first on PATH",
    )
    parser.add_argument(
        "--mount-namespaces",
        choices=["auto", "off"],
        default="auto",
        help="auto: containers with volume mounts get their own mount "
        "namespace with the volumes at their paths, if this process "
        "may create one",
    )
    # Also accepts a value (`--instant true`) for callers that pass every option as a pair.
    parser.add_argument(
        "--instant",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="run nothing: bound pods go straight to Running, then Succeeded",
    )
    parser.add_argument(
        "--instant-runner",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="--instant, but podtask-runner pods first make the runner's run "
        "API calls (context, then complete) with the pod's env",
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Kube(args.kubeconfig) as kube:
        await Agent(kube, args).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(amain(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
