"""User callables that take a prefix of a fixed argument list.

A task function is ``fn(payload)`` or ``fn(payload, ctx)``; an ``on_success`` hook
may take ``(payload, output, ctx)`` or any leading part of it.  The signature is
inspected once, when the callable is registered, so a mistake shows at import
time rather than in the middle of a run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns a coroutine (``async def``, also behind partial)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 (an object with an async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


def accepted_arguments(fn: Callable[..., Any], names: tuple[str, ...], role: str) -> int:
    """How many of ``names`` (in order) ``fn`` takes positionally; raise if it cannot be called."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return len(names)
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return len(names)
    positional = [p for p in params if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    keyword_required = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    spelled = f"{role}({', '.join(names)})"
    if len(required) > len(names) or keyword_required:
        raise TypeError(
            f"{describe(fn)} cannot be a {role}: it is called as {spelled} "
            f"(or with fewer leading arguments), but its signature is {signature}"
        )
    return min(len(positional), len(names))


def describe(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}"


@dataclass(frozen=True, slots=True)
class UserCallable:
    """A registered user callable and how to call it."""

    fn: Callable[..., Any]
    arguments: int
    """How many leading arguments of the role's list it takes."""
    is_async: bool
    role: str

    @classmethod
    def of(cls, fn: Callable[..., Any], names: tuple[str, ...], role: str) -> UserCallable:
        if not callable(fn):
            raise TypeError(f"a {role} must be callable, not {type(fn).__name__}")
        return cls(fn, accepted_arguments(fn, names, role), is_async_callable(fn), role)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args[: self.arguments])

    @property
    def name(self) -> str:
        return describe(self.fn)
