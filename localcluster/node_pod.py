"""One pod on the process kubelet: its containers' lifecycle and the status it reports.

A PodWorker owns a pod from the moment it is bound here until it is terminal (or gone).
The lifecycle task runs init containers in order, then the app containers side by side,
restarting them per ``restartPolicy`` with kubelet's crash-loop backoff. Deletion,
``activeDeadlineSeconds``, disappearance and agent shutdown all stop it the same way:
SIGTERM, grace period, SIGKILL. Status goes out through one sender per pod that always
sends the newest state, so bursts of transitions coalesce into few PATCHes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from typing import Any

import aiohttp

from localcluster import node_spec as specs
from localcluster import node_status as st
from localcluster.node_instant import EXIT_CANCELED, InstantRunner, is_runner_pod, ledger
from localcluster.node_kube import ApiError, Kube
from localcluster.node_process import Process, spawn
from localcluster.node_sandbox import Instance, NodeContext, Sandbox, parse_time

Obj = dict[str, Any]

CONFIG_RETRY_SECONDS = 2.0
MIN_GRACE_SECONDS = 2.0  # kuberuntime's minimumGracePeriodInSeconds
SHUTDOWN_GRACE_SECONDS = 2.0
DEFAULT_GRACE_SECONDS = 30.0


class Stop(enum.Enum):
    DELETED = "deleted"
    DEADLINE = "deadline"
    VANISHED = "vanished"  # the pod object is gone (force-deleted, or missed while away)
    SHUTDOWN = "shutdown"  # the agent itself is stopping


class Outcome(enum.Enum):
    TERMINAL = "terminal"  # Succeeded/Failed reported; nothing left to run
    DELETED = "deleted"  # terminal and the final DELETE sent
    ABANDONED = "abandoned"  # stopped without reporting (vanished or shutdown)


def _resource_version(pod: Obj) -> int:
    try:
        return int((pod.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class PodWorker:
    def __init__(self, node: NodeContext, pod: Obj, runner: InstantRunner | None = None) -> None:
        self.node = node
        self.runner = runner  # --instant-runner: plays podtask-runner's calls
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.sandbox = Sandbox(node, pod)
        spec = pod["spec"]
        self.specs: dict[str, Obj] = {
            c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        }
        status = pod.get("status") or {}
        self.inits = self._adopt(
            spec.get("initContainers") or [], status.get("initContainerStatuses") or [], init=True
        )
        self.apps = self._adopt(
            spec["containers"], status.get("containerStatuses") or [], init=False
        )
        self.start_time: str = status.get("startTime") or st.now_time()
        self.processes: dict[str, Process] = {}
        self.instances: dict[str, Instance] = {}  # container ID -> log slice
        self.backoff = st.Backoff()
        self.stop_reason: Stop | None = None
        self.terminal = False
        self.evicted: tuple[str, str] | None = None
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._sent = asyncio.Event()
        self._version = 0
        self._sent_version = 0
        self._gone = False

    # --- inputs from the agent ----------------------------------------------------

    def update(self, pod: Obj) -> None:
        # Watch events can trail our own PATCH responses; never step back in time.
        if _resource_version(pod) >= _resource_version(self.pod):
            self.pod = pod
        self._wake.set()

    def stop(self, reason: Stop) -> None:
        if self.stop_reason is None or reason in {Stop.VANISHED, Stop.SHUTDOWN}:
            self.stop_reason = reason
        self._stopped.set()
        self._wake.set()

    # --- state ------------------------------------------------------------------------

    def _adopt(
        self, containers: list[Obj], statuses: list[Obj], init: bool
    ) -> list[st.ContainerRecord]:
        """Records for the containers, continuing from a status an earlier agent wrote.

        A container that was running has no process any more (the agent kills its pods
        when it stops): kubelet reports such a container as ContainerStatusUnknown.
        """
        by_name = {s["name"]: s for s in statuses}
        records = []
        default = (
            st.POD_INITIALIZING
            if self.pod["spec"].get("initContainers")
            else (st.CONTAINER_CREATING)
        )
        for container in containers:
            record = st.ContainerRecord(
                name=container["name"],
                image=container.get("image", ""),
                init=init,
                state={"waiting": {"reason": default}},
                resources=container.get("resources") or {},
            )
            old = by_name.get(container["name"])
            if old:
                record.restart_count = int(old.get("restartCount") or 0)
                record.last_state = old.get("lastState") or {}
                record.container_id = old.get("containerID") or ""
                state = old.get("state") or {}
                if "terminated" in state:
                    record.state = state
                elif "running" in state:
                    record.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": st.STATUS_UNKNOWN,
                            "message": st.STATUS_UNKNOWN_MESSAGE,
                        }
                    }
            records.append(record)
        return records

    def status(self) -> Obj:
        return st.pod_status(
            self.pod,
            self.inits,
            self.apps,
            st.PodFacts(
                host_ip=self.node.host_ip,
                pod_ip=self.node.host_ip,
                start_time=self.start_time,
                terminal=self.terminal,
                evicted=self.evicted,
            ),
        )

    def phase(self) -> str:
        return str(self.status()["phase"])

    def record(self, name: str) -> st.ContainerRecord | None:
        return next((r for r in [*self.inits, *self.apps] if r.name == name), None)

    def _mark_dirty(self) -> None:
        self._version += 1
        self._dirty.set()

    async def _flush(self) -> None:
        target = self._version
        while self._sent_version < target and not self._gone:
            self._sent.clear()
            await self._sent.wait()

    async def _send_loop(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            version = self._version
            try:
                patched = await self.node.kube.patch(path, {"status": self.status()})
            except ApiError as error:
                if error.status == 404:
                    self._gone = True
                    self._sent.set()
                    self.stop(Stop.VANISHED)
                    return
                print(f"pod {self.namespace}/{self.name}: status patch failed: {error}", flush=True)
                if 400 <= error.status < 500 and error.status not in {409, 429}:
                    # Retrying a rejected status cannot help; count it as sent.
                    self._sent_version = max(self._sent_version, version)
                    self._sent.set()
                    continue
                await asyncio.sleep(1.0)
                self._dirty.set()
                continue
            except (OSError, TimeoutError, aiohttp.ClientError) as error:
                # ClientError: a disconnect (API server restarting) is not an OSError, and
                # must not end this sender: the pod's status would never be reported again.
                print(
                    f"pod {self.namespace}/{self.name}: status patch failed: {error!r}", flush=True
                )
                await asyncio.sleep(1.0)
                self._dirty.set()
                continue
            if isinstance(patched, dict):
                self.update(patched)
            self._sent_version = max(self._sent_version, version)
            self._sent.set()

    # --- the worker -----------------------------------------------------------------

    def _deadline_remaining(self) -> float | None:
        seconds = self.pod["spec"].get("activeDeadlineSeconds")
        started = parse_time(self.start_time)
        if seconds is None or started is None:
            return None
        return started + float(seconds) - time.time()

    def _grace(self) -> float:
        if self.stop_reason in {Stop.VANISHED, Stop.SHUTDOWN}:
            return SHUTDOWN_GRACE_SECONDS
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return max(float(DEFAULT_GRACE_SECONDS if grace is None else grace), MIN_GRACE_SECONDS)

    async def run(self) -> Outcome:
        sender = asyncio.create_task(self._send_loop())
        lifecycle = asyncio.create_task(self._lifecycle())
        try:
            return await self._supervise(lifecycle)
        finally:
            if not lifecycle.done():
                self.stop(Stop.SHUTDOWN)
                await self._kill_all()
                lifecycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lifecycle
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _supervise(self, lifecycle: asyncio.Task[None]) -> Outcome:
        while self.stop_reason is None:
            if self.pod["metadata"].get("deletionTimestamp"):
                self.stop(Stop.DELETED)
                break
            if lifecycle.done() and self.phase() in {"Succeeded", "Failed"}:
                lifecycle.result()
                await self._flush()
                return Outcome.TERMINAL
            remaining = self._deadline_remaining()
            if remaining is not None and remaining <= 0:
                self.stop(Stop.DEADLINE)
                break
            self._wake.clear()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
            if not lifecycle.done():
                waits.append(lifecycle)
            _, pending = await asyncio.wait(
                waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                if waiter is not lifecycle:
                    waiter.cancel()

        reason = self.stop_reason
        if reason is Stop.DEADLINE:
            # kubelet reports Failed/DeadlineExceeded at once, then kills the containers.
            self.evicted = (st.DEADLINE_REASON, st.DEADLINE_MESSAGE)
            self._mark_dirty()
        await self._kill_all()
        with contextlib.suppress(asyncio.CancelledError):
            await lifecycle
        if reason is Stop.SHUTDOWN and not self._gone:
            # The agent kills its pods when it stops; say so while the API is still there,
            # so the record is the same whichever status was in flight.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush(), SHUTDOWN_GRACE_SECONDS)
        if reason in {Stop.VANISHED, Stop.SHUTDOWN} or self._gone:
            return Outcome.ABANDONED
        self.terminal = True
        st.terminate_defaults(self.inits, self.apps)
        self._mark_dirty()
        await self._flush()
        if self.pod["metadata"].get("deletionTimestamp"):
            await self.final_delete(self.node.kube, self.pod)
            return Outcome.DELETED
        return Outcome.TERMINAL

    @staticmethod
    async def final_delete(kube: Kube, pod: Obj) -> None:
        """What kubelet's status manager does once a deleted pod is terminal."""
        meta = pod["metadata"]
        try:
            await kube.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as error:
            # 404: already gone; 409: the name now belongs to a new pod.
            if error.status not in {404, 409}:
                raise

    async def _kill_all(self) -> None:
        grace = self._grace()
        # Looped because a container may have been starting while the others were stopped.
        while live := [p for p in self.processes.values() if p.alive]:
            await asyncio.gather(*(p.stop(grace) for p in live))
            # The lifecycle records the exits; give it a turn before looking again.
            await asyncio.sleep(0)
        if self.node.instant:
            for record in self.apps:
                if record.running:
                    record.state = {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": record.state["running"]["startedAt"],
                            "finishedAt": st.now_time(),
                            "containerID": record.container_id,
                        }
                    }

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    # --- lifecycle ----------------------------------------------------------------

    async def _lifecycle(self) -> None:
        try:
            await self._containers()
        except Exception as error:
            # A bug here would otherwise leave the pod silently stuck.
            print(f"pod {self.namespace}/{self.name}: lifecycle failed: {error!r}", flush=True)
            raise

    async def _containers(self) -> None:
        if self.node.instant:
            await self._instant()
            return
        self._mark_dirty()  # Pending, containers waiting: kubelet's first status
        if not await self._prepare():
            return
        for record in self.inits:
            if not await self._run_container(record):
                return
        await asyncio.gather(*(self._run_container(r) for r in self.apps))

    async def _instant(self) -> None:
        now = st.now_time()
        for record in self.inits:
            record.container_id = f"process://{secrets.token_hex(32)}"
            record.state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": now,
                    "finishedAt": now,
                    "containerID": record.container_id,
                }
            }
        for record in self.apps:
            record.container_id = f"process://{secrets.token_hex(32)}"
            record.state = {"running": {"startedAt": now}}
        self._mark_dirty()
        await self._flush()
        if (self.pod["spec"].get("restartPolicy") or "Always") == "Always" or self.stop_reason:
            return
        code, message = await self._instant_runner() if self.runner is not None else (0, None)
        now = st.now_time()
        for record in self.apps:
            started = (record.state.get("running") or record.state.get("terminated") or {}).get(
                "startedAt", now
            )
            terminated = {
                "exitCode": code,
                "reason": st.terminated_reason(code, False),
                "startedAt": started,
                "finishedAt": now,
                "containerID": record.container_id,
            }
            if message:
                terminated["message"] = message
            record.state = {"terminated": terminated}
        self._mark_dirty()

    async def _instant_runner(self) -> tuple[int, str | None]:
        """The runner's exit code and termination message for a podtask-runner pod; 143
        when stopped first (SIGTERM)."""
        assert self.runner is not None
        if not is_runner_pod(self.pod):
            return 0, None
        try:
            env = specs.container_env(
                self.pod["spec"]["containers"][0], await self.sandbox.env_context(self.pod)
            )
        except (specs.ConfigError, ApiError, OSError, TimeoutError) as error:
            print(f"pod {self.namespace}/{self.name}: {error!r}", flush=True)
            return 1, None
        calls = asyncio.ensure_future(self.runner.run(self.pod, env))
        stopped = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait({calls, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not calls.done():
            calls.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await calls
            ledger(
                namespace=self.namespace,
                pod=self.name,
                uid=self.uid,
                event="canceled",
                run=env.get("PODTASK_RUN_NAME"),
                attempt=env.get("PODTASK_ATTEMPT"),
            )
            return EXIT_CANCELED, None
        return calls.result()

    def _last_exit(self, record: st.ContainerRecord) -> int:
        terminated = record.terminated or record.last_state.get("terminated") or {}
        return int(terminated.get("exitCode", 0))

    async def _run_container(self, record: st.ContainerRecord) -> bool:
        """Run one container until it needs no restart; True if it ended successfully."""
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        container = self.specs[record.name]
        finished_at: float | None = None
        if record.terminated is not None:
            finished_at = parse_time(record.terminated.get("finishedAt")) or time.time()
        while True:
            if finished_at is not None:
                code = self._last_exit(record)
                if record.init and code == 0:
                    return True
                if not st.should_restart(policy, code) or self.stop_reason:
                    return code == 0 and not self.stop_reason
                delay = self.backoff.delay(record.name, finished_at, time.time())
                if delay > 0:
                    self._set_waiting(
                        record,
                        st.CRASH_LOOP_BACK_OFF,
                        st.crash_loop_message(
                            self.backoff.current(record.name), record.name, self.pod
                        ),
                    )
                    await self._sleep(delay)
                    continue
            env = await self._configure(record, container)
            if env is None:
                return False
            if finished_at is not None:
                record.restart_count += 1
            await self._execute(record, container, env)
            finished_at = time.time()

    def _set_waiting(self, record: st.ContainerRecord, reason: str, message: str = "") -> None:
        if record.terminated is not None:
            record.last_state = {"terminated": record.terminated}
        waiting: Obj = {"reason": reason}
        if message:
            waiting["message"] = message
        record.state = {"waiting": waiting}
        self._mark_dirty()

    async def _configure(self, record: st.ContainerRecord, container: Obj) -> dict[str, str] | None:
        """The container's env; retried (CreateContainerConfigError) until its refs exist."""
        while not self.stop_reason:
            try:
                return specs.container_env(container, await self.sandbox.env_context(self.pod))
            except specs.ConfigError as error:
                self._set_waiting(record, st.CREATE_CONTAINER_CONFIG_ERROR, str(error))
            except (ApiError, OSError, TimeoutError) as error:
                print(f"pod {self.namespace}/{self.name}: {error!r}", flush=True)
            await self._sleep(CONFIG_RETRY_SECONDS)
        return None

    async def _prepare(self) -> bool:
        """Materialise the pod's volumes; until that works the pod stays ContainerCreating."""
        while not self.stop_reason:
            try:
                await self.sandbox.prepare(self.pod)
                return True
            except (specs.ConfigError, ApiError, OSError, TimeoutError) as error:
                print(f"pod {self.namespace}/{self.name}: volumes not ready: {error}", flush=True)
            await self._sleep(CONFIG_RETRY_SECONDS)
        return False

    async def _execute(
        self, record: st.ContainerRecord, container: Obj, env: dict[str, str]
    ) -> None:
        if self.stop_reason:
            return
        if record.terminated is not None:
            record.last_state = {"terminated": record.terminated}
        record.container_id = f"process://{secrets.token_hex(32)}"
        log_path = self.sandbox.log_path(record.name)
        start = log_path.stat().st_size if log_path.exists() else 0
        instance = Instance(record.name, log_path, start)
        self.instances[record.container_id] = instance
        self.sandbox.termination_file(record.name).unlink(missing_ok=True)
        started_at = st.now_time()
        process: Process | None = None
        try:
            launch = self.sandbox.launch(container, env)
            if not launch.argv:
                raise OSError("no command specified")
            process = spawn(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                log_path=log_path,
                loop=asyncio.get_running_loop(),
                mounts=launch.mounts,
            )
            # Registered before the exec is known, so a stop meanwhile reaches it.
            self.processes[record.name] = process
            exec_error = await process.exec_error
            if exec_error is not None:
                await process.exited
                raise exec_error
        except OSError as error:
            # containerd's StartError: the task never ran.
            if process is not None:
                self.processes.pop(record.name, None)
            record.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(error),
                    "startedAt": "1970-01-01T00:00:00Z",
                    "finishedAt": st.now_time(),
                    "containerID": record.container_id,
                }
            }
            instance.end = log_path.stat().st_size if log_path.exists() else start
            self._mark_dirty()
            return
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is not None:
            self.node.monitor.watch(process, specs.memory_bytes(limit))
        record.state = {"running": {"startedAt": started_at}}
        self._mark_dirty()
        code = await process.exited
        del self.processes[record.name]
        instance.end = log_path.stat().st_size if log_path.exists() else start
        if process.oom_killed:
            code = 137
        terminated: Obj = {
            "exitCode": code,
            "reason": st.terminated_reason(code, process.oom_killed),
            "startedAt": started_at,
            "finishedAt": st.now_time(),
            "containerID": record.container_id,
        }
        message = self.sandbox.termination_message(container, code, instance)
        if message:
            terminated["message"] = message
        record.state = {"terminated": terminated}
        self._mark_dirty()
