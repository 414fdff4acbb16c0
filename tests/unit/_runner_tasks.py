"""Tasks the runner tests run, imported by the runner through their entrypoints.

``CALLS`` records what ran, in order; tests clear it first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from podtask import AbortTaskRunError, CompleteTaskWithOutput, TaskContext, metadata
from podtask.hooks import RunResult, retry_after, skip_retrying
from podtask.protocol import RetryDecision
from podtask.tasks import schema_task, task

CALLS: list[str] = []


@task(id="test.runner.echo")
def echo(payload: Any) -> Any:
    CALLS.append("run")
    return payload


@task(id="test.runner.context")
def with_context(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    return {
        "attempt": ctx.attempt,
        "run": ctx.run.name,
        "namespace": ctx.run.namespace,
        "task": ctx.task.id,
        "version": ctx.task.version,
        "tags": ctx.run.tags,
        "last": ctx.is_last_attempt,
    }


def plain_function(payload: dict[str, int]) -> dict[str, int]:
    return {"sum": payload["a"] + payload["b"]}


@task(id="test.runner.async")
async def async_double(payload: dict[str, int], ctx: TaskContext) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"doubled": payload["n"] * 2, "attempt": ctx.attempt}


@task(id="test.runner.fails", retry={"max_attempts": 3})
def fails(payload: Any) -> None:
    CALLS.append("run")
    raise ValueError("it broke")


@task(id="test.runner.abort")
def aborts(payload: Any) -> None:
    raise AbortTaskRunError("stop now")


@task(id="test.runner.not-json")
def returns_object(payload: Any) -> object:
    return object()


@task(id="test.runner.nan")
def returns_nan(payload: Any) -> float:
    return float("nan")


class Order(BaseModel):
    item: str
    quantity: int


class Receipt(BaseModel):
    item: str
    total: int


@schema_task(id="test.runner.order", schema=Order)
def order(payload: Order) -> Receipt:
    CALLS.append(f"run:{type(payload).__name__}")
    return Receipt(item=payload.item, total=payload.quantity * 3)


@task(id="test.runner.early")
def completes_early(payload: Any) -> None:
    raise CompleteTaskWithOutput({"early": True})


@task(id="test.runner.sleeps")
def sleeps(payload: dict[str, float]) -> str:
    time.sleep(payload["seconds"])
    return "done"


@task(id="test.runner.metadata")
def writes_metadata(payload: dict[str, int]) -> str:
    for step in range(payload["steps"]):
        metadata.set("step", step + 1)
        metadata.append("log", f"step {step + 1}")
    metadata.increment("count", payload["steps"])
    return "ok"


# --------------------------------------------------------------------------- hooks


def _recorder(name: str) -> Callable[..., None]:
    def record(*args: Any) -> None:
        CALLS.append(name)

    return record


def _middleware(name: str) -> Callable[[Any, TaskContext, Callable[[], Any]], Any]:
    def middleware(payload: Any, ctx: TaskContext, next: Callable[[], Any]) -> Any:
        CALLS.append(f"{name}:before")
        try:
            return next()
        finally:
            CALLS.append(f"{name}:after")

    return middleware


def _record_result(payload: Any, result: RunResult) -> None:
    CALLS.append(f"task.on_complete:{'ok' if result.ok else 'error'}")


def _hooked(payload: dict[str, Any]) -> str:
    CALLS.append("run")
    if payload.get("fail"):
        raise RuntimeError("hooked failure")
    return "hooked"


hooked = task(
    id="test.runner.hooked",
    retry={"max_attempts": 2},
    init=_recorder("task.init"),
    on_start=_recorder("task.on_start"),
    on_start_attempt=_recorder("task.on_start_attempt"),
    on_success=_recorder("task.on_success"),
    on_failure=_recorder("task.on_failure"),
    on_complete=_record_result,
    middleware=_middleware("task.middleware"),
)(_hooked)


@task(id="test.runner.async-hooked")
async def async_hooked(payload: Any, ctx: TaskContext) -> str:
    await asyncio.sleep(0)
    CALLS.append("run")
    return "async-hooked"


@async_hooked.middleware
async def async_middleware(
    payload: Any, ctx: TaskContext, next: Callable[[], Awaitable[Any]]
) -> Any:
    CALLS.append("async-middleware:before")
    ctx.locals["seen"] = True
    output = await next()
    CALLS.append("async-middleware:after")
    return f"{output}+wrapped"


@async_hooked.on_start_attempt
async def async_start(payload: Any, ctx: TaskContext) -> None:
    await asyncio.sleep(0)
    CALLS.append(f"async-on_start_attempt:{ctx.locals.get('seen')}")


@async_hooked.on_success
async def async_success(payload: Any, output: str) -> None:
    await asyncio.sleep(0)
    CALLS.append(f"async-on_success:{output}")


@task(id="test.runner.sync-around-async", middleware=_middleware("sync-middleware"))
async def sync_around_async(payload: Any) -> str:
    await asyncio.sleep(0.01)
    CALLS.append("run")
    return "inner"


@task(id="test.runner.success-hook-raises", on_success=lambda payload: 1 / 0)
def success_hook_raises(payload: Any) -> str:
    return "still ok"


@task(
    id="test.runner.start-hook-raises",
    on_start_attempt=lambda payload: (_ for _ in ()).throw(KeyError("no db")),
)
def start_hook_raises(payload: Any) -> str:
    CALLS.append("run")
    return "never"


# --------------------------------------------------------------------------- catch_error


def _decide(payload: dict[str, Any], error: BaseException) -> RetryDecision | None:
    CALLS.append(f"task.catch_error:{type(error).__name__}")
    match payload.get("decision"):
        case "skip":
            return skip_retrying()
        case "delay":
            return retry_after("7s")
        case "raise":
            raise LookupError("catch_error broke")
        case "bad":
            return "retry please"  # type: ignore[return-value]
        case _:
            return None


@task(id="test.runner.catch", retry={"max_attempts": 3}, catch_error=_decide)
def caught(payload: dict[str, Any]) -> None:
    raise ConnectionError("flaky upstream")
