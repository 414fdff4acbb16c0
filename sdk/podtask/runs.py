"""Runs from outside a pod: retrieve, read output, cancel, replay.

These talk to the Kubernetes API with the official client (kubeconfig or
in-cluster credentials), so they work from any process that may read TaskRuns.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiClient

from podtask import outputs
from podtask.api.base import GROUP
from podtask.api.v1alpha1 import API_VERSION, VERSION, OutputRef, TaskRun

PLURAL = "taskruns"


def default_api_client() -> ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


def _custom(api: ApiClient | None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api or default_api_client())


def retrieve(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> TaskRun:
    body = _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return TaskRun.model_validate(body)


def output(run: TaskRun, *, api: ApiClient | None = None) -> Any:
    """The run's output, read back from its Secrets when it was too large to inline."""
    status = run.status
    if status is None:
        return None
    if status.output_ref is None:
        return status.output
    return read_output_ref(status.output_ref, run.metadata.namespace or "default", api=api)


def read_output_ref(ref: OutputRef, namespace: str, *, api: ApiClient | None = None) -> Any:
    core = client.CoreV1Api(api or default_api_client())
    chunks = []
    for name in ref.names:
        secret = core.read_namespaced_secret(name, namespace)
        chunks.append(base64.b64decode((secret.data or {})[outputs.CHUNK_KEY]))
    return outputs.assemble(chunks, ref.size, ref.sha256)


def cancel(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> None:
    _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"cancel": True}}
    )


def replay(name: str, namespace: str = "default", *, api: ApiClient | None = None) -> TaskRun:
    """A new run of the same task with the same payload, linked by ``spec.replayOf``."""
    original = retrieve(name, namespace, api=api)
    spec = original.spec.model_copy(
        update={
            "replay_of": name,
            "cancel": None,
            "idempotency_key": None,
            "parent_run": original.spec.parent_run,
        }
    )
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "TaskRun",
        "metadata": {"generateName": f"{name[:200]}-replay-"},
        "spec": spec.to_wire(),
    }
    created = _custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return TaskRun.model_validate(created)
