"""The run API client: how a run pod talks to the operator (``podtask.protocol``).

The runner depends on the :class:`RunApi` protocol only, so tests drive it with
an in-memory fake; :class:`HttpRunApi` is the real client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from podtask import protocol
from podtask.api.base import Model
from podtask.errors import PodtaskError
from podtask.protocol import (
    Checkpoint,
    CompleteToken,
    Completion,
    CreateToken,
    Failure,
    Heartbeat,
    JournalUpdate,
    MetadataUpdate,
    RunContext,
    RunTriggerRequest,
    RunTriggerResponse,
    TokenInfo,
    TriggerRequest,
    TriggerResponse,
    WaitRequest,
    WaitResponse,
)

__all__ = ["HttpRunApi", "RunApi", "RunApiError", "RunEvent"]

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_EXCERPT = 300
# A long poll (POST …/wait) answers within its block_seconds; allow for that on top.
_LONG_POLL_MARGIN = 30.0
# An events stream is quiet for at most a keepalive interval; three of them is a dead peer.
EVENTS_READ_TIMEOUT = 3 * protocol.EVENTS_KEEPALIVE_SECONDS

M = TypeVar("M", bound=Model)


class RunApiError(PodtaskError):
    """A run API call that failed; ``status`` is None when no answer came back."""

    error_type = "RunApiError"

    def __init__(
        self, message: str, status: int | None = None, *, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self._transient = transient

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed (no answer, or a server-side hiccup)."""
        if self._transient is not None:
            return self._transient
        return self.status is None or self.status in _TRANSIENT_STATUSES


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run's events stream: ``kind`` is ``protocol.EVENT_RUN`` (``data`` is
    the TaskRun) or ``protocol.EVENT_DELETED``."""

    kind: str
    data: dict[str, Any]


class _EventReader:
    """Server-Sent Events from lines; a comment (the keepalive) reads as None."""

    def __init__(self) -> None:
        self._kind = ""
        self._data: list[str] = []

    def feed(self, line: str) -> list[RunEvent | None]:
        if line.startswith(":"):
            return [None]
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self._kind = value
            elif field == "data":
                self._data.append(value)
            return []
        kind, data = self._kind or "message", "\n".join(self._data)
        self._kind, self._data = "", []
        if not data:
            return []
        try:
            document = json.loads(data)
        except ValueError as error:
            raise RunApiError(
                f"the run API sent an event podtask cannot read: {error}", transient=False
            ) from error
        return [RunEvent(kind, document if isinstance(document, dict) else {})]


class RunApi(Protocol):
    """The calls a runner makes for its one run."""

    def context(self, attempt: int) -> RunContext: ...

    def heartbeat(self, body: Heartbeat) -> None: ...

    def metadata(self, body: MetadataUpdate) -> None: ...

    def complete(self, body: Completion) -> None: ...

    def fail(self, body: Failure) -> None: ...

    def trigger(self, body: TriggerRequest) -> TriggerResponse: ...

    def trigger_detached(self, body: RunTriggerRequest) -> RunTriggerResponse: ...

    def events(
        self,
        run: str | None = None,
        *,
        close_on_complete: bool = True,
        read_timeout: float = EVENTS_READ_TIMEOUT,
    ) -> Generator[RunEvent | None]: ...

    def aevents(
        self,
        run: str | None = None,
        *,
        close_on_complete: bool = True,
        read_timeout: float = EVENTS_READ_TIMEOUT,
    ) -> AsyncGenerator[RunEvent | None]: ...

    def wait(self, body: WaitRequest) -> WaitResponse: ...

    def checkpoint(self, body: Checkpoint) -> None: ...

    def journal(self, body: JournalUpdate) -> None: ...

    def create_token(self, body: CreateToken) -> TokenInfo: ...

    def complete_token(self, body: CompleteToken) -> None: ...

    def close(self) -> None: ...


class HttpRunApi:
    """The run API over HTTP, authenticated with the run's bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        namespace: str,
        name: str,
        *,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._namespace = namespace
        self._name = name
        self._base_url = base_url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = httpx.Client(
            base_url=base_url,
            headers=self._headers,
            # A 10 MiB output may take a while to upload; connecting should not.
            timeout=timeout or httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )

    def context(self, attempt: int) -> RunContext:
        response = self._request("GET", "context", params={"attempt": attempt})
        try:
            return RunContext.model_validate_json(response.content)
        except ValueError as error:
            raise RunApiError(
                f"the run API answered with a context podtask cannot read: {error}",
                response.status_code,
                transient=False,
            ) from error

    def heartbeat(self, body: Heartbeat) -> None:
        self._post("heartbeat", body)

    def metadata(self, body: MetadataUpdate) -> None:
        self._post("metadata", body)

    def complete(self, body: Completion) -> None:
        self._post("complete", body)

    def fail(self, body: Failure) -> None:
        self._post("fail", body)

    def trigger(self, body: TriggerRequest) -> TriggerResponse:
        return self._read(self._post("trigger", body), TriggerResponse)

    def trigger_detached(self, body: RunTriggerRequest) -> RunTriggerResponse:
        return self._read(self._post("trigger", body), RunTriggerResponse)

    def _events_request(
        self, run: str | None, close_on_complete: bool, read_timeout: float
    ) -> tuple[str, dict[str, str], httpx.Timeout]:
        params = {"run": run} if run else {}
        if not close_on_complete:
            params["closeOnComplete"] = "false"
        path = protocol.run_path(self._namespace, self._name, protocol.EVENTS_ACTION)
        return path, params, httpx.Timeout(read_timeout, connect=5.0)

    def events(
        self,
        run: str | None = None,
        *,
        close_on_complete: bool = True,
        read_timeout: float = EVENTS_READ_TIMEOUT,
    ) -> Generator[RunEvent | None]:
        """The events of this run, or of its child ``run``: the run now, then at every
        change, None at every keepalive; a stream that stays silent ``read_timeout``
        seconds raises a transient :class:`RunApiError`."""
        path, params, timeout = self._events_request(run, close_on_complete, read_timeout)
        reader = _EventReader()
        try:
            with self._client.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 300:
                    response.read()
                    raise _refused("GET", path, response)
                for line in response.iter_lines():
                    yield from reader.feed(line)
        except httpx.TransportError as error:
            raise RunApiError(f"GET {path}: {type(error).__name__}: {error}") from error

    async def aevents(
        self,
        run: str | None = None,
        *,
        close_on_complete: bool = True,
        read_timeout: float = EVENTS_READ_TIMEOUT,
    ) -> AsyncGenerator[RunEvent | None]:
        """:meth:`events` for async code (a connection of its own, in the running loop)."""
        path, params, timeout = self._events_request(run, close_on_complete, read_timeout)
        reader = _EventReader()
        try:
            async with (
                httpx.AsyncClient(base_url=self._base_url, headers=self._headers) as client,
                client.stream("GET", path, params=params, timeout=timeout) as response,
            ):
                if response.status_code >= 300:
                    await response.aread()
                    raise _refused("GET", path, response)
                async for line in response.aiter_lines():
                    for event in reader.feed(line):
                        yield event
        except httpx.TransportError as error:
            raise RunApiError(f"GET {path}: {type(error).__name__}: {error}") from error

    def wait(self, body: WaitRequest) -> WaitResponse:
        timeout = httpx.Timeout(body.block_seconds + _LONG_POLL_MARGIN, connect=5.0)
        return self._read(self._post("wait", body, timeout=timeout), WaitResponse)

    def checkpoint(self, body: Checkpoint) -> None:
        self._post("checkpoint", body)

    def journal(self, body: JournalUpdate) -> None:
        self._post("journal", body)

    def create_token(self, body: CreateToken) -> TokenInfo:
        return self._read(self._post("token", body), TokenInfo)

    def complete_token(self, body: CompleteToken) -> None:
        self._post("complete_token", body)

    def close(self) -> None:
        self._client.close()

    def _post(self, action: str, body: Model, **kwargs: Any) -> httpx.Response:
        # Strict JSON: NaN and Infinity are not JSON, and the server would refuse them.
        content = json.dumps(body.to_wire(), allow_nan=False, ensure_ascii=False).encode()
        return self._request(
            "POST", action, content=content, headers={"Content-Type": "application/json"}, **kwargs
        )

    @staticmethod
    def _read(response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValueError as error:
            raise RunApiError(
                f"the run API answered with a {model.__name__} podtask cannot read: {error}",
                response.status_code,
                transient=False,
            ) from error

    def _request(self, method: str, action: str, **kwargs: Any) -> httpx.Response:
        path = protocol.run_path(self._namespace, self._name, action)
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise RunApiError(f"{method} {path}: {type(error).__name__}: {error}") from error
        if response.status_code >= 300:
            raise _refused(method, path, response)
        return response


def _refused(method: str, path: str, response: httpx.Response) -> RunApiError:
    return RunApiError(
        f"{method} {path}: HTTP {response.status_code}: {response.text[:_EXCERPT]}",
        status=response.status_code,
    )
