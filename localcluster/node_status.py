"""Pod status as kubelet computes it, from per-container records.

Ports of pkg/kubelet: ``getPhase`` (kubelet_pods.go, ContainerRestartRules path with only
the pod's restartPolicy), the condition generators (status/generate.go), the crash-loop
backoff (flowcontrol.Backoff as used by kuberuntime's doBackOff) and the final
``TerminatePod`` defaulting. Kept pure so they can be compared with kubelet line by line.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

# Reasons and messages exactly as kubelet writes them.
CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
CREATE_CONTAINER_ERROR = "CreateContainerError"
STATUS_UNKNOWN = "ContainerStatusUnknown"
STATUS_UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"

INITIAL_BACKOFF = 10.0
MAX_BACKOFF = 300.0


def now_time() -> str:
    """A metav1.Time: RFC 3339 with whole seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A metav1.MicroTime, as Lease renewTime uses."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() for whole seconds: 10s, 1m20s, 5m0s."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def terminated_reason(exit_code: int, oom_killed: bool) -> str:
    # What containerd reports; kubelet copies it through.
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


@dataclass
class ContainerRecord:
    """What the runtime knows about one container of the pod (kubecontainer.Status)."""

    name: str
    image: str
    init: bool = False
    state: Obj = field(default_factory=dict)  # {"waiting": {...}} | {"running": ...} | ...
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""
    resources: Obj = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        value: Obj | None = self.state.get("terminated")
        return value

    def api(self) -> Obj:
        started = self.running
        if self.init:
            terminated = self.terminated
            ready = terminated is not None and terminated.get("exitCode") == 0
        else:
            ready = self.running
        status: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": ready,
            "restartCount": self.restart_count,
            "started": started,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        if self.resources and not self.init:
            status["resources"] = self.resources
            if self.resources.get("requests"):
                status["allocatedResources"] = self.resources["requests"]
        return status


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    return restart_policy == "OnFailure" and exit_code != 0


def pod_phase(spec: Obj, inits: Sequence[Obj], apps: Sequence[Obj], pod_is_terminal: bool) -> str:
    """kubelet's getPhase; inits/apps are API container statuses (no sidecars here)."""
    policy = spec.get("restartPolicy") or "Always"
    pending_init = 0
    failed_init_not_restartable = 0
    for status in inits:
        state, last = status.get("state") or {}, status.get("lastState") or {}
        if "running" in state:
            pending_init += 1
        elif "terminated" in state:
            code = int(state["terminated"].get("exitCode", 0))
            if code != 0 and not should_restart(policy, code):
                failed_init_not_restartable += 1
        elif "waiting" in state and "terminated" in last:
            code = int(last["terminated"].get("exitCode", 0))
            if code != 0 and not should_restart(policy, code):
                failed_init_not_restartable += 1
        else:
            pending_init += 1
    pending_init += max(0, len(spec.get("initContainers") or []) - len(inits))

    unknown = max(0, len(spec.get("containers") or []) - len(apps))
    running = waiting = stopped = stopped_not_restartable = succeeded = 0
    for status in apps:
        state, last = status.get("state") or {}, status.get("lastState") or {}
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            code = int(state["terminated"].get("exitCode", 0))
            if not should_restart(policy, code):
                stopped_not_restartable += 1
            if code == 0:
                succeeded += 1
        elif "waiting" in state:
            if "terminated" in last:
                stopped += 1
                if not should_restart(policy, int(last["terminated"].get("exitCode", 0))):
                    stopped_not_restartable += 1
            else:
                waiting += 1
        else:
            unknown += 1

    if failed_init_not_restartable > 0:
        return "Failed"
    if pending_init > 0 or waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running == 0 and stopped > 0 and unknown == 0:
        if pod_is_terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if stopped != stopped_not_restartable:
            return "Running"
        return "Succeeded" if stopped == succeeded else "Failed"
    return "Pending"


def _names(names: Sequence[str]) -> str:
    # Go's %s of a []string: [a b]
    return "[" + " ".join(names) + "]"


def _has_regular_started(apps: Sequence[Obj]) -> bool:
    # kubecontainer.HasAnyRegularContainerStarted
    return any(
        "running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {}) for s in apps
    )


def pod_conditions(
    spec: Obj, inits: Sequence[Obj], apps: Sequence[Obj], phase: str, existing: Sequence[Obj] = ()
) -> list[Obj]:
    """PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled."""

    def cond(kind: str, status: bool, reason: str = "", message: str = "") -> Obj:
        value: Obj = {"type": kind, "status": "True" if status else "False"}
        if reason:
            value["reason"] = reason
        if message:
            value["message"] = message
        return value

    # Initialized
    statuses = {s["name"]: s for s in inits}
    unknown_init = [
        c["name"] for c in spec.get("initContainers") or [] if c["name"] not in statuses
    ]
    incomplete = [name for name, s in statuses.items() if not s.get("ready")]
    if phase == "Succeeded" and not unknown_init:
        initialized = cond("Initialized", True, "PodCompleted")
    elif _has_regular_started(apps):
        initialized = cond("Initialized", True)
    elif unknown_init or incomplete:
        parts = []
        if unknown_init:
            parts.append(f"containers with unknown status: {_names(unknown_init)}")
        if incomplete:
            parts.append(f"containers with incomplete status: {_names(incomplete)}")
        initialized = cond("Initialized", False, "ContainersNotInitialized", ", ".join(parts))
    else:
        initialized = cond("Initialized", True)

    # ContainersReady, and Ready which follows it (readiness gates are not evaluated).
    app_status = {s["name"]: s for s in apps}
    unknown = [c["name"] for c in spec.get("containers") or [] if c["name"] not in app_status]
    unready = [
        c["name"]
        for c in spec.get("containers") or []
        if c["name"] in app_status and not app_status[c["name"]].get("ready")
    ]
    if (phase == "Succeeded" and not unknown) or phase == "Failed":
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = cond("ContainersReady", False, reason)
    elif unknown or unready:
        parts = []
        if unknown:
            parts.append(f"containers with unknown status: {_names(unknown)}")
        if unready:
            parts.append(f"containers with unready status: {_names(unready)}")
        ready = cond("ContainersReady", False, "ContainersNotReady", ", ".join(parts))
    else:
        ready = cond("ContainersReady", True)
    pod_ready = {**ready, "type": "Ready"}

    result = [
        cond("PodReadyToStartContainers", True),
        initialized,
        pod_ready,
        ready,
        cond("PodScheduled", True),
    ]
    previous = {c.get("type"): c for c in existing}
    stamp = now_time()
    for condition in result:
        before = previous.get(condition["type"])
        # lastTransitionTime moves only when the status flips (status manager's
        # updateLastTransitionTime).
        if (
            before
            and before.get("status") == condition["status"]
            and before.get("lastTransitionTime")
        ):
            condition["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            condition["lastTransitionTime"] = stamp
        condition["lastProbeTime"] = None
    return result


def _unknown_terminated() -> Obj:
    return {
        "terminated": {"exitCode": 137, "reason": STATUS_UNKNOWN, "message": STATUS_UNKNOWN_MESSAGE}
    }


def _pod_initialized(inits: Sequence[ContainerRecord], apps: Sequence[ContainerRecord]) -> bool:
    # status manager's hasPodInitialized
    if not inits:
        return True
    if any("terminated" in a.last_state or "waiting" not in a.state for a in apps):
        return True
    last = inits[-1]
    return any(
        s.get("terminated", {}).get("exitCode", 1) == 0 for s in (last.last_state, last.state)
    )


def terminate_defaults(inits: list[ContainerRecord], apps: list[ContainerRecord]) -> None:
    """kubelet's TerminatePod: every container that might have run ends up terminated."""
    if _pod_initialized(inits, apps):
        for record in apps:
            if record.terminated is None:
                record.state = _unknown_terminated()
    # initializedContainers: all but the trailing never-started inits, at least the first.
    keep = 1
    for index in range(len(inits) - 1, -1, -1):
        if "waiting" not in inits[index].state or "terminated" in inits[index].last_state:
            keep = index + 1
            break
    for record in inits[:keep]:
        if record.terminated is None:
            record.state = _unknown_terminated()


@dataclass(frozen=True)
class PodFacts:
    host_ip: str
    pod_ip: str
    start_time: str
    terminal: bool = False
    # (reason, message) forced by an eviction-like handler (activeDeadlineSeconds).
    evicted: tuple[str, str] | None = None


def pod_status(
    pod: Obj, inits: Sequence[ContainerRecord], apps: Sequence[ContainerRecord], facts: PodFacts
) -> Obj:
    """The status kubelet would write for this pod, as a strategic-merge-patch body."""
    spec = pod.get("spec") or {}
    old = pod.get("status") or {}
    init_statuses = [r.api() for r in inits]
    app_statuses = [r.api() for r in apps]
    phase = pod_phase(spec, init_statuses, app_statuses, facts.terminal)
    old_phase = old.get("phase")
    if phase not in {"Succeeded", "Failed"} and old_phase in {"Succeeded", "Failed"}:
        phase = old_phase
    if facts.terminal and phase not in {"Succeeded", "Failed"}:
        phase = "Failed"
    reason = message = None
    if facts.evicted:
        phase = "Failed"
        reason, message = facts.evicted
    generation = int((pod.get("metadata") or {}).get("generation") or 0)
    conditions = pod_conditions(
        spec, init_statuses, app_statuses, phase, old.get("conditions") or []
    )
    for condition in conditions:
        if generation:
            condition["observedGeneration"] = generation
        # A strategic merge patch merges conditions by type: a reason or message that no
        # longer applies must be removed explicitly.
        condition.setdefault("reason", None)
        condition.setdefault("message", None)
    status: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "podIP": facts.pod_ip,
        "podIPs": [{"ip": facts.pod_ip}],
        "startTime": facts.start_time,
        "containerStatuses": app_statuses,
    }
    if generation:
        status["observedGeneration"] = generation
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if reason:
        status["reason"] = reason
        status["message"] = message
    return status


@dataclass
class Backoff:
    """flowcontrol.Backoff keyed per container, as kuberuntime's doBackOff drives it."""

    initial: float = INITIAL_BACKOFF
    maximum: float = MAX_BACKOFF
    _entries: dict[str, tuple[float, float]] = field(default_factory=dict)  # backoff, lastUpdate

    def delay(self, key: str, finished_at: float, now: float) -> float:
        """Seconds to wait before restarting a container that finished at ``finished_at``.

        Returns 0 (and records the next step) when it may restart now, like
        IsInBackOffSince followed by Next.
        """
        entry = self._entries.get(key)
        if entry is not None:
            backoff, last_update = entry
            expired = finished_at - last_update > 2 * self.maximum
            if not expired and now - finished_at < backoff:
                return finished_at + backoff - now
        self._next(key, finished_at)
        return 0.0

    def current(self, key: str) -> float:
        return self._entries.get(key, (self.initial, 0.0))[0]

    def _next(self, key: str, event_time: float) -> None:
        entry = self._entries.get(key)
        if entry is None or event_time - entry[1] > 2 * self.maximum:
            self._entries[key] = (self.initial, event_time)
        else:
            self._entries[key] = (min(entry[0] * 2, self.maximum), event_time)


def crash_loop_message(backoff: float, container: str, pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return (
        f"back-off {go_duration(backoff)} restarting failed container={container} "
        f"pod={meta.get('name')}_{meta.get('namespace')}({meta.get('uid')})"
    )
