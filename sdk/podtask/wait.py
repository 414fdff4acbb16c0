"""Waits inside a run: for a while, until a time, or for a token a person completes.

::

    from podtask import task, wait

    @task(id="report.approve")
    def approve(payload: dict, ctx) -> dict:
        wait.for_(minutes=5)                       # the pod exits; a new one resumes here
        token = wait.create_token(timeout="1d", tags=["approval"])
        ctx.step("notify", lambda: send_approval_mail(payload["to"], token.id))
        result = wait.for_token(token)             # completed with `podtask tokens complete`
        return {"approved": result.ok and result.output["approved"]}

A wait shorter than the operator's checkpoint threshold sleeps in the pod.  A longer
one *checkpoints*: the pod exits, its queue slot is freed, and when the wait is
over a new pod runs the function again from the start, replaying the journal of
what it already did.  Code between waits must therefore be deterministic;
``docs/waits.md`` has the rules.  Every function has an ``_async`` twin for
``async def`` tasks.

``create_token`` and ``complete_token`` also work outside a run (through the
Kubernetes API, with the process's kubeconfig or in-cluster credentials).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from podtask import _waits
from podtask.api.durations import format_duration
from podtask.api.v1alpha1 import API_VERSION, RunError
from podtask.errors import InvalidTriggerOptionsError, WaitpointTimeoutError

if TYPE_CHECKING:
    from podtask.client import Client

__all__ = [
    "Token",
    "TokenResult",
    "complete_token",
    "complete_token_async",
    "create_token",
    "create_token_async",
    "for_",
    "for_async",
    "for_token",
    "for_token_async",
    "until",
    "until_async",
]

_UNIT_SECONDS = {
    "seconds": 1,
    "minutes": 60,
    "hours": 3600,
    "days": 86400,
    "weeks": 7 * 86400,
    "months": 30 * 86400,
    "years": 365 * 86400,
}


@dataclass(frozen=True, slots=True)
class Token:
    """A WaitToken: give its ``id`` to whoever completes it."""

    id: str
    namespace: str | None = None
    expires_at: datetime | None = None

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class TokenResult:
    """What ``for_token`` returns: the token's output, or a timeout."""

    id: str
    ok: bool
    output: Any = None
    error: RunError | None = None

    def unwrap(self) -> Any:
        """The output; raises :class:`~podtask.errors.WaitpointTimeoutError` otherwise."""
        if not self.ok:
            message = self.error.message if self.error else f"wait token {self.id} timed out"
            raise WaitpointTimeoutError(message)
        return self.output


# --------------------------------------------------------------------------- durations


def _seconds(units: dict[str, float]) -> float:
    total = 0.0
    for unit, amount in units.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"wait.for_({unit}=...) takes a number, not {amount!r}")
        if amount < 0 or not math.isfinite(amount):
            raise ValueError(f"wait.for_({unit}={amount!r}): a wait cannot be negative")
        total += amount * _UNIT_SECONDS[unit]
    return total


def for_(
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    weeks: float = 0,
    months: float = 0,
    years: float = 0,
) -> None:
    """Wait this long (months are 30 days, years 365).  Inside a run only."""
    delta = _seconds(
        {
            "seconds": seconds,
            "minutes": minutes,
            "hours": hours,
            "days": days,
            "weeks": weeks,
            "months": months,
            "years": years,
        }
    )
    _sleep_until(datetime.now(UTC) + timedelta(seconds=delta), "wait.for_")


async def for_async(
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    weeks: float = 0,
    months: float = 0,
    years: float = 0,
) -> None:
    """:func:`for_` for ``async def`` tasks."""
    delta = _seconds(
        {
            "seconds": seconds,
            "minutes": minutes,
            "hours": hours,
            "days": days,
            "weeks": weeks,
            "months": months,
            "years": years,
        }
    )
    await _sleep_until_async(datetime.now(UTC) + timedelta(seconds=delta), "wait.for_async")


def _aware(date: datetime, throw_if_in_the_past: bool) -> datetime:
    if not isinstance(date, datetime):
        raise TypeError(f"wait.until takes a datetime, not {type(date).__name__}")
    # A naive datetime is local time, as everywhere in Python.
    moment = date.astimezone(UTC)
    if throw_if_in_the_past and moment < datetime.now(UTC):
        raise ValueError(f"wait.until({date.isoformat()}): that time has passed")
    return moment


def until(date: datetime, *, throw_if_in_the_past: bool = False) -> None:
    """Wait until ``date`` (a time already past returns at once, unless
    ``throw_if_in_the_past``).  Inside a run only."""
    _sleep_until(_aware(date, throw_if_in_the_past), "wait.until")


async def until_async(date: datetime, *, throw_if_in_the_past: bool = False) -> None:
    """:func:`until` for ``async def`` tasks."""
    await _sleep_until_async(_aware(date, throw_if_in_the_past), "wait.until_async")


def _sleep_until(moment: datetime, call: str) -> None:
    session = _waits.current(call)
    with session.exclusive(call):
        left = session.duration(moment)
        if left > 0:
            time.sleep(left)


async def _sleep_until_async(moment: datetime, call: str) -> None:
    session = _waits.current(call)
    with session.exclusive(call):
        left = session.duration(moment)
        if left > 0:
            await asyncio.sleep(left)


# --------------------------------------------------------------------------- tokens


def _token_options(
    timeout: str | float | timedelta | None, tags: str | Sequence[str] | None
) -> tuple[str | None, list[str]]:
    from podtask.api.v1alpha1 import WaitTokenSpec

    text: str | None
    if timeout is None or isinstance(timeout, str):
        text = timeout
    else:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        text = format_duration(seconds) if seconds > 0 else None
    tag_list = [tags] if isinstance(tags, str) else list(tags or [])
    try:
        WaitTokenSpec(timeout=text, tags=tag_list)
    except ValueError as error:
        raise InvalidTriggerOptionsError(f"invalid wait token options: {error}") from None
    return text, tag_list


def create_token(
    *,
    timeout: str | float | timedelta | None = None,
    tags: str | Sequence[str] | None = None,
    namespace: str | None = None,
    client: Client | None = None,
) -> Token:
    """A new WaitToken that times out after ``timeout`` (``"10m"``, seconds or a
    timedelta; none waits forever).  Inside a run it is journalled: a replay gets the
    same token back.  Outside a run it is created through ``client`` (default: the
    process-wide one) in ``namespace`` (default: the client's)."""
    text, tag_list = _token_options(timeout, tags)
    session = _waits.active()
    if session is None:
        return _create_outside(text, tag_list, namespace, client)
    _same_namespace(session, namespace)
    with session.exclusive("wait.create_token"):
        info = session.create_token(text, tag_list)
    return Token(info.name, session.namespace, info.expires_at)


async def create_token_async(
    *,
    timeout: str | float | timedelta | None = None,  # noqa: ASYNC109 (the token's, not the call's)
    tags: str | Sequence[str] | None = None,
    namespace: str | None = None,
    client: Client | None = None,
) -> Token:
    """:func:`create_token` for ``async def`` code."""
    text, tag_list = _token_options(timeout, tags)
    session = _waits.active()
    if session is None:
        return await asyncio.to_thread(_create_outside, text, tag_list, namespace, client)
    _same_namespace(session, namespace)
    with session.exclusive("wait.create_token_async"):
        info = await asyncio.to_thread(session.create_token, text, tag_list)
    return Token(info.name, session.namespace, info.expires_at)


def _create_outside(
    timeout: str | None, tags: list[str], namespace: str | None, client: Client | None
) -> Token:
    from podtask.client import WAITTOKENS, default_client

    client = client or default_client()
    ns = namespace or client.namespace
    spec: dict[str, Any] = {"tags": tags}
    if timeout:
        spec["timeout"] = timeout
    body = {
        "apiVersion": API_VERSION,
        "kind": "WaitToken",
        "metadata": {"generateName": "waittoken-", "namespace": ns},
        "spec": spec,
    }
    created = client.backend.create(WAITTOKENS, ns, body)
    return Token(str(created["metadata"]["name"]), ns)


def _same_namespace(session: _waits.WaitSession, namespace: str | None) -> None:
    if namespace is not None and namespace != session.namespace:
        raise InvalidTriggerOptionsError(
            f"a run works with wait tokens of its own namespace ({session.namespace}), "
            f"not {namespace}"
        )


def _token_id(token: Token | str) -> str:
    name = token.id if isinstance(token, Token) else token
    if not isinstance(name, str) or not name:
        raise TypeError(f"a wait token is a Token or its id, not {token!r}")
    return name


def for_token(token: Token | str) -> TokenResult:
    """Wait until ``token`` is completed (its output) or times out (``ok=False``).
    Inside a run only."""
    name = _token_id(token)
    session = _waits.current("wait.for_token")
    with session.exclusive("wait.for_token"):
        result = session.wait_for_token(name)
    return TokenResult(name, result.ok, result.output, result.error)


async def for_token_async(token: Token | str) -> TokenResult:
    """:func:`for_token` for ``async def`` tasks."""
    name = _token_id(token)
    session = _waits.current("wait.for_token_async")
    with session.exclusive("wait.for_token_async"):
        result = await asyncio.to_thread(session.wait_for_token, name)
    return TokenResult(name, result.ok, result.output, result.error)


def complete_token(
    token: Token | str,
    output: Any = None,
    *,
    namespace: str | None = None,
    client: Client | None = None,
) -> None:
    """Complete ``token`` with ``output`` (JSON): the runs waiting for it resume.

    Raises :class:`~podtask.errors.TokenAlreadyCompletedError` for a token completed
    or timed out before.  Inside a run this goes through the run API and is
    journalled like a step (a replay does not complete it again); elsewhere through
    the Kubernetes API with ``client`` (default: the process-wide one), through
    :meth:`podtask.Client.complete_token`, as ``podtask tokens complete`` does.
    """
    name = _token_id(token)
    namespace = namespace or (token.namespace if isinstance(token, Token) else None)
    session = _waits.active()
    if session is None:
        from podtask.client import default_client

        (client or default_client()).complete_token(name, output, namespace)
        return
    _same_namespace(session, namespace)
    _waits.run_step(f"wait.complete_token:{name}", lambda: _complete_in_run(session, name, output))


async def complete_token_async(
    token: Token | str,
    output: Any = None,
    *,
    namespace: str | None = None,
    client: Client | None = None,
) -> None:
    """:func:`complete_token` for ``async def`` code."""
    name = _token_id(token)
    namespace = namespace or (token.namespace if isinstance(token, Token) else None)
    session = _waits.active()
    if session is None:
        from podtask.client import default_client

        active = client or default_client()
        await asyncio.to_thread(active.complete_token, name, output, namespace)
        return
    _same_namespace(session, namespace)

    async def complete() -> None:
        await asyncio.to_thread(_complete_in_run, session, name, output)

    await _waits.run_step_async(f"wait.complete_token:{name}", complete)


def _complete_in_run(session: _waits.WaitSession, name: str, output: Any) -> None:
    from podtask.errors import TokenAlreadyCompletedError
    from podtask.protocol import CompleteToken
    from podtask.runapi import RunApiError

    try:
        data = json.loads(json.dumps(to_jsonable_python(output), allow_nan=False))
    except (PydanticSerializationError, TypeError, ValueError) as error:
        raise InvalidTriggerOptionsError(f"a wait token's output must be JSON: {error}") from None
    body = CompleteToken(attempt=session.attempt, token=name, output=data)
    try:
        session.call(lambda: session.api.complete_token(body), "complete a wait token")
    except RunApiError as error:
        if error.status == 409 and "TokenCompleted" in str(error):
            raise TokenAlreadyCompletedError(f"wait token {name} was completed before") from None
        raise
