"""Child runs and WaitTokens as the run API's wait endpoints see them: pure helpers.

The controller creates children and tokens and reads their outcomes; everything
here turns objects into other objects without I/O, so it is unit-tested alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from podtask.api.durations import parse_duration
from podtask.api.v1alpha1 import API_VERSION, Phase, RunError, TaskRunStatus, WaitingFor
from podtask.protocol import ChildResult, ChildRun, TokenResult
from podtask_operator import kube as k
from podtask_operator.naming import label_value
from podtask_operator.runstate import ChildView, TokenView

LABEL_PARENT_RUN = "podtask.dev/parent-run"
"""On a child run: its parent's name (as a label value), as the SDK sets it."""
LABEL_TASK = "podtask.dev/task"
LABEL_RUN = "podtask.dev/run"
"""On a WaitToken a run created: the run's name (as a label value)."""

CHILD_RUN_NOT_FOUND = "CHILD_RUN_NOT_FOUND"
TOKEN_NOT_FOUND = "WAIT_TOKEN_NOT_FOUND"
WAITPOINT_TIMEOUT = "WaitpointTimeoutError"
"""Trigger.dev's error for a token that timed out."""


def tokens_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"{k.GROUP_PATH}/namespaces/{namespace}/waittokens"
    return f"{path}/{name}/{sub}".rstrip("/") if name else path


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- children


def child_body(parent: dict[str, Any], name: str, child: ChildRun) -> dict[str, Any]:
    """The TaskRun of one child: the runner's spec, linked to ``parent``.

    ``parentRun`` is set here, whatever the request said; ``cancel`` and
    ``replayOf`` are not a child's to carry.
    """
    meta = parent["metadata"]
    spec = child.spec.model_copy(
        update={"parent_run": meta["name"], "cancel": None, "replay_of": None}
    )
    labels = {
        **child.labels,
        LABEL_TASK: label_value(spec.task),
        LABEL_PARENT_RUN: label_value(meta["name"]),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "TaskRun",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels},
        "spec": spec.to_wire(),
    }


def child_view(run: dict[str, Any] | None) -> ChildView | None:
    if run is None:
        return None
    status = run.get("status") or {}
    return ChildView(phase=status.get("phase"), queue=status.get("queue"))


def child_result(name: str, run: dict[str, Any] | None, output: Any = None) -> ChildResult:
    """A finished child's result; ``output`` is its output read from ``outputRef``
    when it was too large for the status."""
    if run is None:
        return ChildResult(
            name=name,
            ok=False,
            error=RunError(type=CHILD_RUN_NOT_FOUND, message=f"child run {name} no longer exists"),
        )
    status = TaskRunStatus.model_validate(run.get("status") or {})
    task = str((run.get("spec") or {}).get("task", ""))
    if status.phase == Phase.COMPLETED:
        value = status.output if status.output_ref is None else output
        return ChildResult(name=name, task=task, ok=True, phase=status.phase, output=value)
    error = status.error or RunError(
        type=f"RUN_{(status.phase or 'UNKNOWN').upper()}",
        message=f"child run {name} ended {status.phase}",
    )
    return ChildResult(name=name, task=task, ok=False, phase=status.phase, error=error)


def blocked_behind_parent(
    parent_queue: str | None, child: dict[str, Any] | None, now: datetime, after: float
) -> bool:
    """Whether ``child`` has sat Queued in the parent's own queue for ``after`` seconds.

    The parent holds a slot of that queue while its pod waits; when the queue is full
    the child may be waiting for exactly that slot (a limit-1 queue always is), so
    the parent should checkpoint and free it rather than poll on.
    """
    if child is None or not parent_queue:
        return False
    status = child.get("status") or {}
    if status.get("phase") != Phase.QUEUED.value or status.get("queue") != parent_queue:
        return False
    queued_at = _time(status.get("queuedAt"))
    return queued_at is not None and (now - queued_at).total_seconds() >= after


# --------------------------------------------------------------------------- tokens


def token_body(
    run: dict[str, Any], name: str, timeout: str | None, tags: list[str]
) -> dict[str, Any]:
    """The WaitToken a run creates; owned by the run, so it goes when the run does."""
    meta = run["metadata"]
    spec: dict[str, Any] = {"tags": tags}
    if timeout:
        spec["timeout"] = timeout
    return {
        "apiVersion": API_VERSION,
        "kind": "WaitToken",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {LABEL_RUN: label_value(meta["name"])},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "TaskRun",
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
            ],
        },
        "spec": spec,
    }


def token_expiry(token: dict[str, Any]) -> datetime | None:
    """When a token times out: its creation plus ``spec.timeout`` (None: never)."""
    timeout = (token.get("spec") or {}).get("timeout")
    created = _time((token.get("metadata") or {}).get("creationTimestamp"))
    if not timeout or created is None:
        return None
    try:
        return created + timedelta(seconds=parse_duration(timeout).total_seconds())
    except ValueError:
        return None


def token_view(token: dict[str, Any] | None) -> TokenView | None:
    if token is None:
        return None
    status = token.get("status") or {}
    return TokenView(
        completed=bool(status.get("completed")),
        timed_out=bool(status.get("timedOut")),
        expires_at=token_expiry(token),
    )


def token_result(name: str, token: dict[str, Any] | None, now: datetime) -> TokenResult:
    """What ``wait.for_token`` returns: the output, or a timeout (or missing) error."""
    if token is None:
        return TokenResult(
            name=name,
            ok=False,
            error=RunError(type=TOKEN_NOT_FOUND, message=f"wait token {name} does not exist"),
        )
    status = token.get("status") or {}
    expires = token_expiry(token)
    if status.get("completed") and not status.get("timedOut"):
        return TokenResult(name=name, ok=True, output=status.get("output"))
    timeout = (token.get("spec") or {}).get("timeout")
    if status.get("timedOut") or (expires is not None and expires <= now):
        return TokenResult(
            name=name,
            ok=False,
            error=RunError(
                type=WAITPOINT_TIMEOUT, message=f"wait token {name} timed out after {timeout}"
            ),
        )
    raise ValueError(f"wait token {name} is still open")


def completed_token(token: dict[str, Any], output: Any, now: datetime) -> dict[str, Any]:
    """The token with its status completed by ``output`` (written with its resourceVersion)."""
    status = {
        **(token.get("status") or {}),
        "completed": True,
        "output": output,
        "completedAt": _stamp(now),
    }
    return {**token, "status": status}


def timed_out_token(token: dict[str, Any], now: datetime) -> dict[str, Any]:
    status = {
        **(token.get("status") or {}),
        "completed": True,
        "timedOut": True,
        "completedAt": _stamp(now),
    }
    expires = token_expiry(token)
    if expires is not None:
        status["expiresAt"] = _stamp(expires)
    return {**token, "status": status}


def with_expiry(token: dict[str, Any]) -> dict[str, Any] | None:
    """The token with ``status.expiresAt`` filled in, or None when nothing is to write."""
    expires = token_expiry(token)
    status = token.get("status") or {}
    if expires is None or status.get("completed") or status.get("expiresAt"):
        return None
    return {**token, "status": {**status, "expiresAt": _stamp(expires)}}


def waited_token(run: dict[str, Any]) -> str | None:
    """The token a run's status says it waits for."""
    waiting = (run.get("status") or {}).get("waitingFor") or {}
    return (
        str(waiting["token"]) if waiting.get("kind") == "Token" and waiting.get("token") else None
    )


def waiting_for_of(run: dict[str, Any]) -> WaitingFor | None:
    raw = (run.get("status") or {}).get("waitingFor")
    return WaitingFor.model_validate(raw) if raw else None
