"""Lifecycle hooks, per task and global, with Trigger.dev's meanings.

Register a global hook for every task of the process::

    from podtask import hooks

    @hooks.on_failure
    def alert(payload, error, ctx): ...

or one for a single task with ``@my_task.on_failure`` (or ``task(on_failure=...)``).
Global hooks run before the task's own, except ``catch_error``, where the task's
hook is asked first.  Each hook may take a leading part of its arguments
(``def alert(payload)`` is fine), and may be ``async def``.

=================  =====================================  ===================================
hook               arguments                              when
=================  =====================================  ===================================
init               payload, ctx                           before every attempt (deprecated)
on_start           payload, ctx                           once per run: attempt 1
on_start_attempt   payload, ctx                           before every attempt
on_success         payload, output, ctx                   after the function returned
on_failure         payload, error, ctx                    after the last attempt failed
on_complete        payload, result, ctx                   after the run's final outcome
on_cancel          payload, ctx                           on cancel, up to 30 s before kill
catch_error        payload, error, ctx                    after an error; may decide retries
middleware         payload, ctx, next                     wraps init, start hooks, function
=================  =====================================  ===================================

A raise in ``init``, ``on_start``, ``on_start_attempt`` or ``middleware`` fails the
attempt; a raise in ``on_success``, ``on_failure``, ``on_complete`` or
``on_cancel`` is logged and ignored.  ``catch_error`` returns ``None`` (follow the
retry policy) or a :class:`RetryDecision` (see :func:`skip_retrying`,
:func:`retry_after`); a raise in it fails the run without retrying.
Middleware calls ``next()`` (``await next()`` when async) which returns the
function's output or raises its error; what the middleware returns is the output.
A payload a ``schema_task`` rejects, and an output that is not JSON, end the
attempt without any hooks, as in Trigger.dev.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args

from podtask._callables import UserCallable
from podtask.api.durations import parse_duration
from podtask.protocol import RetryDecision

__all__ = [
    "HookKind",
    "HookSet",
    "RetryDecision",
    "RunResult",
    "catch_error",
    "clear",
    "global_hooks",
    "init",
    "middleware",
    "on_cancel",
    "on_complete",
    "on_failure",
    "on_start",
    "on_start_attempt",
    "on_success",
    "retry_after",
    "retry_at",
    "skip_retrying",
]

HookKind = Literal[
    "init",
    "on_start",
    "on_start_attempt",
    "on_success",
    "on_failure",
    "on_complete",
    "on_cancel",
    "catch_error",
    "middleware",
]
HOOK_KINDS: tuple[HookKind, ...] = get_args(HookKind)

HOOK_ARGUMENTS: dict[HookKind, tuple[str, ...]] = {
    "init": ("payload", "ctx"),
    "on_start": ("payload", "ctx"),
    "on_start_attempt": ("payload", "ctx"),
    "on_success": ("payload", "output", "ctx"),
    "on_failure": ("payload", "error", "ctx"),
    "on_complete": ("payload", "result", "ctx"),
    "on_cancel": ("payload", "ctx"),
    "catch_error": ("payload", "error", "ctx"),
    "middleware": ("payload", "ctx", "next"),
}

HookFn = TypeVar("HookFn", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RunResult:
    """What ``on_complete`` hooks get: the run's final outcome."""

    ok: bool
    output: Any = None
    error: BaseException | None = None


class HookSet:
    """Hooks of one scope (a task, or the whole process), in registration order."""

    def __init__(self) -> None:
        self._hooks: dict[HookKind, list[UserCallable]] = {kind: [] for kind in HOOK_KINDS}

    def add(self, kind: HookKind, fn: Callable[..., Any]) -> UserCallable:
        hook = UserCallable.of(fn, HOOK_ARGUMENTS[kind], kind)
        if kind == "middleware" and hook.arguments < len(HOOK_ARGUMENTS[kind]):
            raise TypeError(
                f"{hook.name} cannot be a middleware: it must take (payload, ctx, next) "
                "and call next()"
            )
        self._hooks[kind].append(hook)
        return hook

    def get(self, kind: HookKind) -> tuple[UserCallable, ...]:
        return tuple(self._hooks[kind])

    def clear(self) -> None:
        for hooks in self._hooks.values():
            hooks.clear()

    def __bool__(self) -> bool:
        return any(self._hooks.values())


_GLOBAL = HookSet()


def global_hooks() -> HookSet:
    """The hooks that apply to every task of this process."""
    return _GLOBAL


def clear() -> None:
    """Forget every global hook (for tests that register their own)."""
    _GLOBAL.clear()


def _register(kind: HookKind, fn: HookFn) -> HookFn:
    _GLOBAL.add(kind, fn)
    return fn


def init(fn: HookFn) -> HookFn:
    """Global: run before every attempt (Trigger.dev's deprecated ``init``)."""
    return _register("init", fn)


def on_start(fn: HookFn) -> HookFn:
    """Global: run once per run, before the function's first attempt."""
    return _register("on_start", fn)


def on_start_attempt(fn: HookFn) -> HookFn:
    """Global: run before every attempt; a raise fails the attempt."""
    return _register("on_start_attempt", fn)


def on_success(fn: HookFn) -> HookFn:
    """Global: run after the function returned, with its output."""
    return _register("on_success", fn)


def on_failure(fn: HookFn) -> HookFn:
    """Global: run when the run failed for good (no retry follows)."""
    return _register("on_failure", fn)


def on_complete(fn: HookFn) -> HookFn:
    """Global: run after the run's final outcome, success or failure."""
    return _register("on_complete", fn)


def on_cancel(fn: HookFn) -> HookFn:
    """Global: run when an executing run is canceled (bounded to ~30 s)."""
    return _register("on_cancel", fn)


def catch_error(fn: HookFn) -> HookFn:
    """Global: decide about retrying an error; return None or a RetryDecision."""
    return _register("catch_error", fn)


def middleware(fn: HookFn) -> HookFn:
    """Global: wrap every attempt; global middleware runs outside task middleware."""
    return _register("middleware", fn)


def skip_retrying() -> RetryDecision:
    """A ``catch_error`` answer: fail the run now, no further attempts."""
    return RetryDecision(skip=True)


def retry_after(delay: str | float | timedelta) -> RetryDecision:
    """A ``catch_error`` answer: retry after ``delay`` (``"30s"``, seconds or timedelta)."""
    return RetryDecision(delay_seconds=duration_seconds(delay))


def retry_at(when: datetime) -> RetryDecision:
    """A ``catch_error`` answer: retry no sooner than ``when`` (naive means UTC)."""
    moment = when if when.tzinfo else when.replace(tzinfo=UTC)
    return RetryDecision(delay_seconds=max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def duration_seconds(value: str | float | timedelta) -> float:
    """Seconds in ``"1m30s"``, a number of seconds or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = parse_duration(value).total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"a duration is a string like '30s' or seconds, not {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds
