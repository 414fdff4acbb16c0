"""Tasks the wait tests run through the runner (``test_waits_runner.py``).

``CALLS`` records what ran, in order; tests clear it first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from podtask import TaskContext, wait
from podtask.tasks import batch_trigger_by_task_and_wait, task, trigger_and_wait

CALLS: list[str] = []


def _on_start(payload: Any, ctx: TaskContext) -> None:
    CALLS.append("on_start")


def _on_start_attempt(payload: Any, ctx: TaskContext) -> None:
    CALLS.append("on_start_attempt")


@task(id="test.waits.child")
def child(payload: Any) -> Any:
    return payload


@task(id="test.waits.parent", on_start=_on_start, on_start_attempt=_on_start_attempt)
def parent(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    CALLS.append("parent")
    result = child.trigger_and_wait({"n": payload["n"]}, tags=["kid"])
    CALLS.append("after-child")
    return {"child": result.unwrap(), "id": result.id, "resumed": ctx.resumed}


@task(id="test.waits.by-id")
def by_id(payload: Any) -> Any:
    first = trigger_and_wait("test.waits.child", {"x": 1})
    both = batch_trigger_by_task_and_wait(
        [{"task": "test.waits.child", "payload": 2}, {"task": "test.waits.other", "payload": 3}]
    )
    return [first.output, [r.output for r in both]]


@task(id="test.waits.batch")
def batch(payload: int) -> Any:
    results = child.batch_trigger_and_wait([{"payload": i} for i in range(payload)])
    return {"outputs": [r.output for r in results], "ok": [r.ok for r in results]}


@task(id="test.waits.unwrap")
def unwraps(payload: Any) -> Any:
    return child.trigger_and_wait(payload).unwrap()


@task(id="test.waits.sleeper")
def sleeper(payload: dict[str, float]) -> str:
    CALLS.append("before")
    wait.for_(seconds=payload["seconds"])
    CALLS.append("woke")
    return "ok"


def _first() -> dict[str, int]:
    CALLS.append("first")
    return {"n": 1}


def _second() -> tuple[int, int]:
    CALLS.append("second")
    return (2, 3)


@task(id="test.waits.steps")
def steps(payload: dict[str, float], ctx: TaskContext) -> dict[str, Any]:
    a = ctx.step("first", _first)
    wait.for_(seconds=payload["seconds"])
    b = ctx.step("second", _second)
    return {"a": a, "b": b}


@task(id="test.waits.concurrent")
async def concurrent(payload: Any, ctx: TaskContext) -> Any:
    return await asyncio.gather(child.trigger_and_wait_async(1), child.trigger_and_wait_async(2))


@task(id="test.waits.token")
def token_task(payload: Any) -> dict[str, Any]:
    token = wait.create_token(timeout="1h", tags=["approval"])
    result = wait.for_token(token)
    return {
        "token": token.id,
        "ok": result.ok,
        "output": result.output,
        "error": result.error.type if result.error else None,
    }


@task(id="test.waits.swallow")
def swallow(payload: Any) -> str:
    try:
        wait.for_(hours=1)
    except BaseException:
        CALLS.append("swallowed")
    wait.for_(seconds=0.01)
    return "must not complete"


async def _async_step() -> str:
    await asyncio.sleep(0)
    CALLS.append("async-step")
    return "stepped"


@task(id="test.waits.async")
async def async_parent(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    result = await child.trigger_and_wait_async(payload)
    await wait.for_async(seconds=0.01)
    stepped = await ctx.step("async-step", _async_step)
    return {"child": result.output, "step": stepped}


@task(id="test.waits.nested")
def nested(payload: Any, ctx: TaskContext) -> Any:
    return ctx.step("outer", lambda: wait.for_(seconds=1))


@task(id="test.waits.complete")
def completes_token(payload: dict[str, Any]) -> str:
    wait.complete_token(payload["token"], {"approved": True})
    wait.for_(hours=1)
    return "done"
