"""Prometheus metrics of the operator (served on the run API's /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = Counter(
            "podtask_runs_total",
            "Runs that reached a phase, by task, queue and phase.",
            ["task", "queue", "phase"],
            registry=registry,
        )
        self.running = Gauge(
            "podtask_runs_running",
            "Runs holding a slot (Dequeued or Executing).",
            registry=registry,
        )
        self.queued = Gauge("podtask_runs_queued", "Runs waiting in queues.", registry=registry)
        self.run_duration = Histogram(
            "podtask_run_duration_seconds",
            "From first start to the final phase.",
            ["task"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.trigger_to_start = Histogram(
            "podtask_trigger_to_pod_seconds",
            "From TaskRun creation to its first pod being created.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "podtask_reconcile_seconds",
            "Time to reconcile one run (decide and write).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_errors = Counter(
            "podtask_kube_api_errors_total",
            "Failed Kubernetes API calls by verb and status code.",
            ["verb", "code"],
            registry=registry,
        )
