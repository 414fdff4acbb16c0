"""Waits and child runs (``docs/waits.md``): every task id starts with ``waits.``.

* ``waits.parent`` → ``waits.child`` → ``waits.grandchild``: payload ``{"n": 3}``;
  the grandchild squares ``n``, the child adds one, the parent doubles it, and
  each returns what it got from below: ``{"parent": 20, "child": {...}}``.
* ``waits.batch``: payload ``{"count": 100}``; one ``waits.square`` child per index,
  waited on together; returns ``{"squares": [0, 1, 4, ...]}`` in index order.
* ``waits.failing``: always raises ``ValueError("no luck: <payload>")``, once.
* ``waits.check-failure``: triggers ``waits.failing`` and returns what the result
  says (``ok``, the child's error) and what ``unwrap()`` raised.
* ``waits.sleeper``: payload ``{"seconds": 30}``; ``wait.for_`` that long, with a
  step before and after; returns the steps' results and the attempt number.
* ``waits.approval``: payload ``{"timeout": "1h"}``; creates a WaitToken (its name
  goes in the run's metadata ``token``), waits for it and returns
  ``{"ok": ..., "output": ..., "error": ...}``.
* ``waits.queue-parent`` / ``waits.queue-child``: a parent that waits for one child,
  for a test that puts both in one queue of limit 1.
* ``waits.nap-parent``: payload ``{"seconds": 6}``; waits for a ``waits.sleeper``
  child that waits that long, and returns its output.
* ``waits.token-waiter``: payload ``{"token": "<name>"}``; waits for a token made
  elsewhere and returns its output.
"""

from __future__ import annotations

from typing import Any

from podtask import TaskContext, metadata, task, wait
from podtask.errors import SubtaskUnwrapError
from podtask.tasks import trigger_and_wait


@task(id="waits.grandchild", machine="micro")
def grandchild(payload: dict[str, int]) -> dict[str, int]:
    return {"square": payload["n"] ** 2}


@task(id="waits.child", machine="micro")
def child(payload: dict[str, int]) -> dict[str, Any]:
    below = grandchild.trigger_and_wait({"n": payload["n"]}).unwrap()
    return {"child": below["square"] + 1, "grandchild": below}


@task(id="waits.parent", machine="micro")
def parent(payload: dict[str, int]) -> dict[str, Any]:
    # By id here (the child is also importable, so child.trigger_and_wait works too).
    below = trigger_and_wait("waits.child", {"n": payload["n"]}).unwrap()
    return {"parent": below["child"] * 2, "child": below}


@task(id="waits.square", machine="micro")
def square(payload: int) -> int:
    return payload * payload


@task(id="waits.batch", machine="micro")
def batch(payload: dict[str, int]) -> dict[str, Any]:
    results = square.batch_trigger_and_wait([{"payload": i} for i in range(payload["count"])])
    return {"squares": [r.unwrap() for r in results], "children": len(results)}


@task(id="waits.failing", machine="micro", retry={"max_attempts": 1})
def failing(payload: Any) -> None:
    raise ValueError(f"no luck: {payload}")


@task(id="waits.check-failure", machine="micro")
def check_failure(payload: Any) -> dict[str, Any]:
    result = failing.trigger_and_wait(payload)
    try:
        result.unwrap()
        raised = None
    except SubtaskUnwrapError as error:
        raised = {"type": type(error).__name__, "message": str(error), "run": error.run_id}
    return {
        "ok": result.ok,
        "error": result.error.model_dump() if result.error else None,
        "unwrap": raised,
    }


@task(id="waits.sleeper", machine="micro")
def sleeper(payload: dict[str, float], ctx: TaskContext) -> dict[str, Any]:
    before = ctx.step("before", lambda: {"attempt": ctx.attempt})
    wait.for_(seconds=payload["seconds"])
    after = ctx.step("after", lambda: {"resumed": ctx.resumed})
    return {"before": before, "after": after, "attempt": ctx.attempt}


@task(id="waits.approval", machine="micro")
def approval(payload: dict[str, str]) -> dict[str, Any]:
    token = wait.create_token(timeout=payload.get("timeout"), tags=["approval"])
    metadata.set("token", token.id)
    metadata.flush()  # so whoever completes the token can find it now
    result = wait.for_token(token)
    return {
        "ok": result.ok,
        "output": result.output,
        "error": result.error.type if result.error else None,
    }


@task(id="waits.queue-child", machine="micro")
def queue_child(payload: str) -> str:
    return f"child saw {payload}"


@task(id="waits.queue-parent", machine="micro")
def queue_parent(payload: str) -> str:
    return queue_child.trigger_and_wait(payload).unwrap()


@task(id="waits.nap-parent", machine="micro")
def nap_parent(payload: dict[str, float]) -> dict[str, Any]:
    return {"child": sleeper.trigger_and_wait(payload).unwrap()}


@task(id="waits.token-waiter", machine="micro")
def token_waiter(payload: dict[str, str]) -> Any:
    return wait.for_token(payload["token"]).unwrap()
