"""The run API client: how a run pod talks to the operator (``podtask.protocol``).

The runner depends on the :class:`RunApi` protocol only, so tests drive it with
an in-memory fake; :class:`HttpRunApi` is the real client.
"""

from __future__ import annotations

import json
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
    TokenInfo,
    TriggerRequest,
    TriggerResponse,
    WaitRequest,
    WaitResponse,
)

__all__ = ["HttpRunApi", "RunApi", "RunApiError"]

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_EXCERPT = 300
# A long poll (POST …/wait) answers within its block_seconds; allow for that on top.
_LONG_POLL_MARGIN = 30.0

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


class RunApi(Protocol):
    """The calls a runner makes for its one run."""

    def context(self, attempt: int) -> RunContext: ...

    def heartbeat(self, body: Heartbeat) -> None: ...

    def metadata(self, body: MetadataUpdate) -> None: ...

    def complete(self, body: Completion) -> None: ...

    def fail(self, body: Failure) -> None: ...

    def trigger(self, body: TriggerRequest) -> TriggerResponse: ...

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
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
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
            raise RunApiError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:_EXCERPT]}",
                status=response.status_code,
            )
        return response
