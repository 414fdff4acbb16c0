"""Operator settings, read once from the environment (the chart sets them).

Every knob has a default that works on a real cluster; tests shorten the
timeouts through the same variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from podtask.api.durations import parse_duration


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PODTASK_{name}", default)


def _seconds(name: str, default: str) -> float:
    return parse_duration(_env(name, default)).total_seconds()


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    operator_namespace: str = "podtask-system"
    api_host: str = "0.0.0.0"
    api_port: int = 8080
    api_url: str = "http://podtask-operator.podtask-system.svc:8080"
    """The run API's address as run pods reach it."""
    api_key_secret: str = "podtask-run-api-key"
    run_api_key: bytes | None = None
    """Fixed HMAC key for run tokens; when unset it lives in api_key_secret."""
    output_inline_limit: int = 256 * 1024
    heartbeat_timeout: float = 300.0
    heartbeat_interval: float = 30.0
    start_timeout: float = 600.0
    """How long an attempt's pod may take to start the runner (scheduling, image pull,
    imports) before it is deleted and the attempt re-run as an infrastructure failure:
    a pod that never starts must not hold its queue slot forever."""
    task_grace: float = 10.0
    """How long a run waits for its Task to appear before failing (kubectl apply -f dir/
    may create the run before the Task)."""
    infra_retry_limit: int = 5
    delete_finished_pods: bool = False
    """Delete an attempt's pod once it has stopped and its run has ended.  Off: such
    pods are kept (they use no resources, hold no quota, keep ``kubectl logs``) until
    the run is deleted (``ttl_after_finished``), as the Job controller keeps a Job's."""
    keep_failed_pods: bool = True
    """With ``delete_finished_pods``: keep the last pod of a run that did not complete."""
    ttl_after_finished: float = 7 * 86400.0
    cancel_grace_seconds: int = 30
    workers: int = 16
    default_queue_limit: int = 100
    """Concurrency of a queue no Queue object describes (Trigger.dev self-hosted: 100)."""
    namespace_concurrency_limit: int = 0
    """Runs executing at once per namespace across all its queues; 0: no cap."""
    cpu_request_ratio: float = 1.0
    memory_request_ratio: float = 1.0
    run_as_user: int | None = None
    wait_checkpoint_threshold: float = 10.0
    """Waits expected to end within this many seconds sleep in the pod (holding its
    slot); longer ones checkpoint: the pod exits, the slot is freed, and a new pod
    replays the function when the wait is over.  Waits on children and tokens poll in
    the pod for up to this long before they checkpoint."""
    phase_events: bool = False
    """Also post an Event for every routine phase change (Delayed, Queued, Dequeued,
    Executing, Completed): ~4 more API writes a run (benchmarks).  Events for retries,
    failures, cancels, timeouts, waits and resumes are always posted."""
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        namespaces = tuple(n for n in _env("NAMESPACES", "").split(",") if n)
        key = _env("RUN_API_KEY", "")
        run_as_user = _env("RUN_AS_USER", "")
        return cls(
            namespaces=namespaces,
            operator_namespace=_env("OPERATOR_NAMESPACE", cls.operator_namespace),
            api_host=_env("API_HOST", cls.api_host),
            api_port=int(_env("API_PORT", str(cls.api_port))),
            api_url=_env("API_URL", cls.api_url),
            api_key_secret=_env("API_KEY_SECRET", cls.api_key_secret),
            run_api_key=key.encode() if key else None,
            output_inline_limit=int(_env("OUTPUT_INLINE_LIMIT", str(cls.output_inline_limit))),
            heartbeat_timeout=_seconds("HEARTBEAT_TIMEOUT", "5m"),
            heartbeat_interval=_seconds("HEARTBEAT_INTERVAL", "30s"),
            start_timeout=_seconds("START_TIMEOUT", "10m"),
            task_grace=_seconds("TASK_GRACE", "10s"),
            infra_retry_limit=int(_env("INFRA_RETRY_LIMIT", str(cls.infra_retry_limit))),
            delete_finished_pods=_env("DELETE_FINISHED_PODS", "false").lower() == "true",
            keep_failed_pods=_env("KEEP_FAILED_PODS", "true").lower() == "true",
            phase_events=_env("PHASE_EVENTS", "false").lower() == "true",
            ttl_after_finished=_seconds("TTL_AFTER_FINISHED", "7d"),
            cancel_grace_seconds=int(_env("CANCEL_GRACE_SECONDS", "30")),
            workers=int(_env("WORKERS", str(cls.workers))),
            default_queue_limit=int(_env("DEFAULT_QUEUE_LIMIT", str(cls.default_queue_limit))),
            namespace_concurrency_limit=int(_env("NAMESPACE_CONCURRENCY_LIMIT", "0")),
            cpu_request_ratio=float(_env("CPU_REQUEST_RATIO", "1")),
            memory_request_ratio=float(_env("MEMORY_REQUEST_RATIO", "1")),
            run_as_user=int(run_as_user) if run_as_user else None,
            wait_checkpoint_threshold=_seconds("WAIT_CHECKPOINT_THRESHOLD", "10s"),
        )
