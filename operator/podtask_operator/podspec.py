"""The pod of one attempt: isolated, sized by its machine preset, credential-free.

The spec passes the Pod Security "restricted" profile: run pods talk to the
operator's run API with a per-run token and need no Kubernetes credentials,
so no service-account token is mounted.
"""

from __future__ import annotations

import math
from typing import Any

from podtask import protocol
from podtask.api.durations import parse_duration
from podtask.api.machines import MACHINE_PRESETS
from podtask.api.v1alpha1 import API_VERSION, TaskSpec
from podtask_operator.naming import label_value
from podtask_operator.settings import Settings

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN_UID = "podtask.dev/run-uid"
LABEL_RUN = "podtask.dev/run"
LABEL_TASK = "podtask.dev/task"
LABEL_ATTEMPT = "podtask.dev/attempt"
LABEL_QUEUE = "podtask.dev/queue"
ANNOTATION_RUN = "podtask.dev/run"
CONTAINER = "task"
RUNNER_COMMAND = ["podtask-runner"]


def resources(machine: str, settings: Settings) -> dict[str, dict[str, str]]:
    preset = MACHINE_PRESETS[machine]
    cpu_request = math.ceil(preset.cpu * 1000 * settings.cpu_request_ratio)
    memory_request = math.ceil(preset.memory_gib * 1024 * settings.memory_request_ratio)
    return {
        "limits": {"cpu": preset.cpu_quantity, "memory": preset.memory_quantity},
        "requests": {"cpu": f"{cpu_request}m", "memory": f"{memory_request}Mi"},
    }


def build_pod(
    *,
    run: dict[str, Any],
    snapshot: TaskSpec,
    pod_name: str,
    attempt: int,
    machine: str,
    queue: str,
    max_duration: str | None,
    token: str,
    settings: Settings,
    priority_class: str | None = None,
) -> dict[str, Any]:
    meta = run["metadata"]
    env: list[dict[str, Any]] = [
        {"name": protocol.ENV_API_URL, "value": settings.api_url},
        {"name": protocol.ENV_TOKEN, "value": token},
        {"name": protocol.ENV_NAMESPACE, "value": meta["namespace"]},
        {"name": protocol.ENV_RUN_NAME, "value": meta["name"]},
        {"name": protocol.ENV_ATTEMPT, "value": str(attempt)},
        {"name": protocol.ENV_ENTRYPOINT, "value": snapshot.entrypoint},
        *[var.to_wire() for var in snapshot.env],
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": snapshot.image,
        "command": RUNNER_COMMAND,
        "env": env,
        "resources": resources(machine, settings),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if snapshot.env_from:
        container["envFrom"] = [source.to_wire() for source in snapshot.env_from]
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if settings.run_as_user is not None:
        pod_security["runAsUser"] = settings.run_as_user
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.cancel_grace_seconds,
        "securityContext": pod_security,
        "containers": [container],
    }
    if snapshot.service_account_name:
        spec["serviceAccountName"] = snapshot.service_account_name
    if max_duration:
        spec["activeDeadlineSeconds"] = max(
            1, math.ceil(parse_duration(max_duration).total_seconds())
        )
    if priority_class:
        spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": meta["namespace"],
            "labels": {
                **settings.labels,
                LABEL_MANAGED_BY: "podtask",
                LABEL_RUN_UID: meta["uid"],
                LABEL_RUN: label_value(meta["name"]),
                LABEL_TASK: label_value(run["spec"]["task"]),
                LABEL_ATTEMPT: str(attempt),
                LABEL_QUEUE: label_value(queue),
            },
            "annotations": {ANNOTATION_RUN: meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "TaskRun",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": spec,
    }
