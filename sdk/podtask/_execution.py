"""One attempt of a task: middleware, hooks and the function, in Trigger.dev's order.

::

    validate payload            (schema_task; a bad payload fails at once, no hooks)
    middleware (global, task)   wraps:
        init, on_start (attempt 1), on_start_attempt, the function
    success: output to JSON, on_success, on_complete
    failure: catch_error (task first), then if no retry follows: on_failure, on_complete

Everything runs on the main thread in one event loop, sync callables inline, so
a cancel reaches them (see ``_cancel``).  A cancel leaves :meth:`AttemptExecutor.run`
as :class:`~podtask.errors.RunCanceled`; the runner then calls
:meth:`AttemptExecutor.run_cancel_hooks`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from podtask._callables import UserCallable
from podtask._cancel import Canceller
from podtask.context import TaskContext
from podtask.errors import (
    AbortTaskRunError,
    CatchErrorFailedError,
    CompleteTaskWithOutput,
    OutputNotSerializableError,
    OutputTooLargeError,
    PodtaskError,
    RunCanceled,
)
from podtask.hooks import HookKind, HookSet, RunResult
from podtask.outputs import MAX_OUTPUT_BYTES
from podtask.protocol import RetryDecision
from podtask.tasks import Task

logger = logging.getLogger("podtask.runner")


@dataclass(frozen=True, slots=True)
class Succeeded:
    output: Any
    """JSON data (a pydantic model returned by the function is already dumped)."""


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException
    retry: RetryDecision
    final: bool
    """No retry follows: attempts are used up or retrying was ruled out."""


Outcome = Succeeded | Failed


def json_output(value: Any) -> Any:
    """``value`` as JSON data, or OutputNotSerializableError / OutputTooLargeError."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        raise OutputNotSerializableError(
            f"the task returned a {type(value).__name__} that is not JSON-serialisable: {error}"
        ) from error
    size = len(encoded.encode())
    if size > MAX_OUTPUT_BYTES:
        raise OutputTooLargeError(
            f"the task's output is {size} bytes as JSON; the limit is {MAX_OUTPUT_BYTES} bytes"
        )
    return value


@dataclass(frozen=True, slots=True)
class _Layer:
    """A stage of the middleware onion: how to run it, and whether it needs a loop."""

    run: Callable[[], Coroutine[Any, Any, Any]]
    needs_loop: bool


class _Result:
    value: Any = None
    error: BaseException | None = None


class AttemptExecutor:
    """Runs one attempt of ``task`` and says how it ended."""

    def __init__(
        self,
        task: Task[..., Any],
        global_hooks: HookSet,
        ctx: TaskContext,
        payload: Any,
        canceller: Canceller,
    ) -> None:
        self.task = task
        self.ctx = ctx
        self.payload = payload
        """The raw payload, replaced by the parsed one once validated."""
        self.started = False
        """Whether user code of the attempt began (on_cancel runs only then)."""
        self._global = global_hooks
        self._canceller = canceller

    # ------------------------------------------------------------------ entry points

    def run(self) -> Outcome:
        """Run the attempt; raises RunCanceled when a cancel arrived meanwhile."""
        runner = asyncio.Runner()
        canceled = False
        try:
            return runner.run(self._attempt())
        except RunCanceled:
            canceled = True
            raise
        finally:
            # After a cancel the process exits at once: closing the loop would wait
            # for whatever the canceled code left running.
            if not canceled:
                runner.close()

    def run_cancel_hooks(self, timeout: float) -> None:
        """Run on_cancel hooks (global, then the task's) in a thread, for at most ``timeout`` s."""
        hooks = self._hooks("on_cancel")
        if not hooks:
            return

        def run_all() -> None:
            for hook in hooks:
                try:
                    result = hook(self.payload, self.ctx)
                    if inspect.isawaitable(result):
                        asyncio.run(_awaited(result))
                except Exception:
                    logger.exception("on_cancel hook %s raised; ignored", hook.name)

        worker = threading.Thread(target=run_all, name="podtask-on-cancel", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            logger.warning("on_cancel hooks still running after %.0fs; not waiting longer", timeout)

    # ------------------------------------------------------------------ the attempt

    async def _attempt(self) -> Outcome:
        current = asyncio.current_task()
        assert current is not None
        with self._canceller.attempt_task(current):
            try:
                return await self._attempt_outcome()
            except asyncio.CancelledError:
                if self._canceller.requested.is_set():
                    raise RunCanceled() from None
                raise

    async def _attempt_outcome(self) -> Outcome:
        try:
            with self._canceller.user_code():
                self.payload = self.task.validate_payload(self.payload)
        except Exception as error:
            # The same payload fails the same way on every attempt: no retry, no hooks.
            return Failed(error, RetryDecision(skip=True), final=True)
        self.started = True
        try:
            output = await self._onion().run()
        except CompleteTaskWithOutput as early:
            output = early.output
        except asyncio.CancelledError as error:
            if self._canceller.requested.is_set():
                raise
            return await self._failed(error)
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            return await self._failed(error)
        self._canceller.raise_if_requested()
        try:
            reported = json_output(output)
        except PodtaskError as error:
            return self._policy_failure(error)
        # Hooks see what the function returned (a model stays a model).
        await self._each("on_success", self.payload, output, self.ctx, ignore_errors=True)
        await self._each(
            "on_complete",
            self.payload,
            RunResult(ok=True, output=output),
            self.ctx,
            ignore_errors=True,
        )
        return Succeeded(reported)

    async def _failed(self, error: BaseException) -> Outcome:
        self._canceller.raise_if_requested()
        if isinstance(error, AbortTaskRunError):
            decision = RetryDecision(skip=True)
        else:
            try:
                decision = await self._catch_error(error)
            except (Exception, SystemExit) as hook_error:
                failure = CatchErrorFailedError(
                    f"a catch_error hook raised {type(hook_error).__name__}: {hook_error} "
                    f"while handling {type(error).__name__}: {error}"
                )
                failure.__cause__ = hook_error
                return Failed(failure, RetryDecision(skip=True), final=True)
        final = decision.skip or self.ctx.is_last_attempt
        if final:
            await self._each("on_failure", self.payload, error, self.ctx, ignore_errors=True)
            await self._each(
                "on_complete",
                self.payload,
                RunResult(ok=False, error=error),
                self.ctx,
                ignore_errors=True,
            )
        return Failed(error, decision, final)

    def _policy_failure(self, error: BaseException) -> Failed:
        """A failure decided by podtask (no hooks), retried by the task's policy."""
        return Failed(error, RetryDecision(), final=self.ctx.is_last_attempt)

    async def _catch_error(self, error: BaseException) -> RetryDecision:
        # The task's own hook is asked first, then the global ones, as in Trigger.dev.
        for hook in (*self.task.hooks.get("catch_error"), *self._global.get("catch_error")):
            answer = await self._call(hook, self.payload, error, self.ctx)
            if answer is None:
                continue
            if not isinstance(answer, RetryDecision):
                raise TypeError(
                    f"{hook.name} returned {answer!r}; a catch_error hook returns None or a "
                    "RetryDecision (podtask.hooks.skip_retrying(), retry_after(...))"
                )
            return answer
        return RetryDecision()

    # ------------------------------------------------------------------ middleware onion

    def _onion(self) -> _Layer:
        start_kinds: tuple[HookKind, ...] = ("init", "on_start", "on_start_attempt")
        inner_callables = [self.task.function, *(h for k in start_kinds for h in self._hooks(k))]

        async def start_and_run() -> Any:
            await self._each("init", self.payload, self.ctx)
            # A pod that resumes the attempt after a checkpoint replays the function,
            # but the run and the attempt started long ago: their hooks ran then.
            if self.ctx.attempt == 1 and not self.ctx.resumed:
                await self._each("on_start", self.payload, self.ctx)
            if not self.ctx.resumed:
                await self._each("on_start_attempt", self.payload, self.ctx)
            return await self._call(self.task.function, self.payload, self.ctx)

        layer = _Layer(start_and_run, any(c.is_async for c in inner_callables))
        for middleware in reversed(self._hooks("middleware")):
            layer = self._wrap(middleware, layer)
        return layer

    def _wrap(self, middleware: UserCallable, inner: _Layer) -> _Layer:
        if middleware.is_async:

            async def next_async() -> Any:
                return await inner.run()

            async def run_async_middleware() -> Any:
                return await self._call(middleware, self.payload, self.ctx, next_async)

            return _Layer(run_async_middleware, needs_loop=True)

        def next_sync() -> Any:
            return self._run_inner_blocking(inner)

        async def run_sync_middleware() -> Any:
            return await self._call(middleware, self.payload, self.ctx, next_sync)

        return _Layer(run_sync_middleware, needs_loop=inner.needs_loop)

    def _run_inner_blocking(self, inner: _Layer) -> Any:
        """``next()`` of a sync middleware: run the inner layers to the end, right now."""
        if not inner.needs_loop:
            # Only sync callables inside: the coroutine finishes without suspending.
            coroutine = inner.run()
            try:
                coroutine.send(None)
            except StopIteration as stop:
                return stop.value
            coroutine.close()
            raise PodtaskError(
                "a sync middleware's next() reached code that awaits; make the middleware async"
            )
        return self._run_in_helper_loop(inner)

    def _run_in_helper_loop(self, inner: _Layer) -> Any:
        # The main loop is blocked inside the sync middleware, so async code further
        # in runs on a loop of its own thread; the main thread waits, interruptibly.
        result = _Result()
        ready = threading.Event()
        helper: dict[str, Any] = {}

        async def tracked() -> Any:
            helper["loop"], helper["task"] = asyncio.get_running_loop(), asyncio.current_task()
            ready.set()
            return await inner.run()

        def target() -> None:
            try:
                result.value = asyncio.run(tracked())
            except BaseException as error:
                result.error = error
            finally:
                ready.set()

        thread = threading.Thread(target=target, name="podtask-middleware-next", daemon=True)
        thread.start()
        try:
            thread.join()
        except RunCanceled:
            ready.wait(1)
            if "task" in helper:
                helper["loop"].call_soon_threadsafe(helper["task"].cancel)
            thread.join(5)
            raise
        if result.error is not None:
            raise result.error
        return result.value

    # ------------------------------------------------------------------ calling user code

    def _hooks(self, kind: HookKind) -> tuple[UserCallable, ...]:
        return (*self._global.get(kind), *self.task.hooks.get(kind))

    async def _each(self, kind: HookKind, *args: Any, ignore_errors: bool = False) -> None:
        for hook in self._hooks(kind):
            try:
                await self._call(hook, *args)
            except Exception:
                if not ignore_errors:
                    raise
                logger.exception("%s hook %s raised; ignored", kind, hook.name)

    async def _call(self, fn: UserCallable, *args: Any) -> Any:
        with self._canceller.user_code():
            result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
