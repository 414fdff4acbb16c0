"""Plain ``trigger``/``batch_trigger`` inside a run: children nobody waits for.

A run pod has no Kubernetes credentials, so its plain triggers come through the run
API (``POST …/trigger`` with ``detached``) and the operator creates the children,
linked to the parent as any child is (:func:`podtask_operator.waits.child_body`).
Every child is created exactly once however often the request is sent:

* with an idempotency key, under the key's name (``_trigger.idempotency_run_name``,
  the SDK's rule outside a run), following the SDK's create-or-return flow
  (``_trigger.trigger_flow``): a run that still holds the key is the answer
  (``cached``), one whose key was released is replaced;
* without one, under ``naming.child_run_name(parent, attempt, position, index)``,
  as the children a run waits for.

Each child carries the annotation :data:`ANNOTATION_TRIGGER` naming the trigger that
made it, so a resent request recognises its own child instead of calling it cached; of
the annotations a request asks for, only the batch index is kept (the SDK sets no other,
and a pod has no business annotating objects the operator makes).
A child that cannot be made (its Task is not deployed, the API server refuses it) is
an error item of the answer; a transient failure fails the request, and the runner
sends it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Mapping
from typing import Any

from podtask._runenv import CurrentRun
from podtask._trigger import (
    ANNOTATION_BATCH_INDEX,
    CreateRun,
    DeleteRun,
    GetRun,
    IdempotencyScope,
    Op,
    RunPlan,
    Sleep,
    Triggered,
    idempotency_run_name,
    trigger_flow,
)
from podtask.api.v1alpha1 import RunError
from podtask.errors import KubernetesApiError
from podtask.protocol import RunTriggerRequest, RunTriggerResponse, TriggerChild, TriggeredRun
from podtask_operator import kube as k
from podtask_operator import naming, waits
from podtask_operator.kube import ApiError, Kube

ANNOTATION_TRIGGER = "podtask.dev/trigger"
"""On a child of a plain trigger: ``child_run_name`` of the trigger call that made it."""
TASK_NOT_DEPLOYED = "TaskNotDeployedError"
API_REFUSED = "KubernetesApiError"
CREATES_AT_ONCE = 16

# What the API server says for good: the child is an error item.  Anything else (429,
# 5xx, no answer) fails the request, and the runner tries it again.
_REFUSALS = frozenset({400, 403, 404, 409, 422})
_LISTED_TASKS = 20
_KEPT_ANNOTATIONS = frozenset({ANNOTATION_BATCH_INDEX})
_SCOPES: dict[str, IdempotencyScope] = {"global": "global", "run": "run", "attempt": "attempt"}


def child_manifest(
    parent: dict[str, Any], name: str, child: TriggerChild, trigger_id: str
) -> dict[str, Any]:
    body = waits.child_body(parent, name, child)
    annotations = {k: v for k, v in child.annotations.items() if k in _KEPT_ANNOTATIONS}
    body["metadata"]["annotations"] = {**annotations, ANNOTATION_TRIGGER: trigger_id}
    return body


def key_name(namespace: str, parent: str, attempt: int, child: TriggerChild) -> str | None:
    """The name an idempotency key gives the child (None: the child has no key)."""
    spec = child.spec
    if spec.idempotency_key is None:
        return None
    # The SDK always sends the scope; "run" is its default inside a run.
    scope = _SCOPES[spec.idempotency_key_scope.value] if spec.idempotency_key_scope else "run"
    return idempotency_run_name(
        namespace, spec.task, spec.idempotency_key, scope, CurrentRun(namespace, parent, attempt)
    )


def not_deployed(task: str, namespace: str, tasks: Mapping[tuple[str, str], Any]) -> RunError:
    known = sorted(name for ns, name in tasks if ns == namespace)
    listing = ", ".join(known[:_LISTED_TASKS]) + (" ..." if len(known) > _LISTED_TASKS else "")
    return RunError(
        type=TASK_NOT_DEPLOYED,
        message=f"no task {task!r} is deployed in namespace {namespace!r} (deployed: "
        f"{listing or 'none'}); run `podtask deploy --apply` or check the namespace",
    )


async def drive(
    kube: Kube, flow: Generator[Op, Any, Triggered], *, made_by: str | None = None
) -> Triggered:
    """Carry out the SDK's trigger flow with the operator's client.

    A run found under the key that the trigger ``made_by`` made (:data:`ANNOTATION_TRIGGER`)
    is the answer even if its key was released since: the same trigger sent again (a
    journal that was not durable yet) gets its child back, not a second one.
    """
    value: Any = None
    error: KubernetesApiError | None = None
    while True:
        try:
            op = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            triggered: Triggered = stop.value
            return triggered
        value, error = None, None
        try:
            if isinstance(op, CreateRun):
                value = await kube.create(k.runs_path(op.namespace), op.body)
            elif isinstance(op, GetRun):
                value = await kube.request("GET", k.runs_path(op.namespace, op.name))
                meta = value.get("metadata") or {}
                made = (meta.get("annotations") or {}).get(ANNOTATION_TRIGGER)
                if made_by is not None and made == made_by and not meta.get("deletionTimestamp"):
                    flow.close()
                    return Triggered(value, cached=False)
            elif isinstance(op, DeleteRun):
                await kube.delete(k.runs_path(op.namespace, op.name), uid=op.uid)
            elif isinstance(op, Sleep):
                await asyncio.sleep(op.seconds)
        except ApiError as failed:
            error = KubernetesApiError(str(failed), failed.status, failed.reason)


async def _create_own(
    kube: Kube, namespace: str, parent: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    name = manifest["metadata"]["name"]
    try:
        return await kube.create(k.runs_path(namespace), manifest)
    except ApiError as error:
        if error.status != 409:
            raise
    # Created before (a resent request, a replay): the same child.
    existing = await kube.request("GET", k.runs_path(namespace, name))
    if (existing.get("spec") or {}).get("parentRun") != parent:
        raise KubernetesApiError(
            f"a run named {name} exists and is not a child of {parent}", 409, "AlreadyExists"
        )
    return existing


async def trigger(
    kube: Kube,
    parent: dict[str, Any],
    body: RunTriggerRequest,
    *,
    tasks: Mapping[tuple[str, str], Any],
    on_created: Callable[[dict[str, Any]], None],
    on_api_error: Callable[[int], None],
) -> RunTriggerResponse:
    """Create (or find) the children of one plain trigger of ``parent``.

    ``tasks`` are the deployed Tasks by (namespace, name); ``on_created`` gets every
    child made or found, for the cache; ``on_api_error`` every status the API server
    refused a write with.
    """
    namespace, name = parent["metadata"]["namespace"], parent["metadata"]["name"]
    gate = asyncio.Semaphore(CREATES_AT_ONCE)

    async def one(index: int, child: TriggerChild) -> TriggeredRun:
        task = child.spec.task
        if body.verify_tasks and (namespace, task) not in tasks:
            return TriggeredRun(error=not_deployed(task, namespace, tasks))
        trigger_id = naming.child_run_name(name, body.attempt, body.position, index)
        keyed = key_name(namespace, name, body.attempt, child)
        manifest = child_manifest(parent, keyed or trigger_id, child, trigger_id)
        async with gate:
            try:
                if keyed is None:
                    made, cached = await _create_own(kube, namespace, name, manifest), False
                else:
                    plan = RunPlan(namespace=namespace, task=task, body=manifest, name=keyed)
                    found = await drive(kube, trigger_flow(plan), made_by=trigger_id)
                    annotations = (found.run.get("metadata") or {}).get("annotations") or {}
                    # Found under the key but made by this very trigger (sent again): ours.
                    cached = found.cached and annotations.get(ANNOTATION_TRIGGER) != trigger_id
                    made = found.run
            except (ApiError, KubernetesApiError) as error:
                on_api_error(error.status)
                if error.status not in _REFUSALS:
                    raise
                message = f"child run of task {task!r} refused: {error}"
                return TriggeredRun(
                    error=RunError(type=API_REFUSED, message=message), status=error.status
                )
        on_created(made)
        return TriggeredRun(name=str(made["metadata"]["name"]), cached=cached)

    items = await asyncio.gather(*(one(i, child) for i, child in enumerate(body.runs)))
    return RunTriggerResponse(runs=[item.name for item in items], items=list(items))
