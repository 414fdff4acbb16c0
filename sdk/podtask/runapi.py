"""The run API client: how a run pod talks to the operator (``podtask.protocol``).

The runner depends on the :class:`RunApi` protocol only, so tests drive it with
an in-memory fake; :class:`HttpRunApi` is the real client.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import httpx

from podtask import protocol
from podtask.api.base import Model
from podtask.errors import PodtaskError
from podtask.protocol import Completion, Failure, Heartbeat, MetadataUpdate, RunContext

__all__ = ["HttpRunApi", "RunApi", "RunApiError"]

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_EXCERPT = 300


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

    def close(self) -> None:
        self._client.close()

    def _post(self, action: str, body: Model) -> None:
        # Strict JSON: NaN and Infinity are not JSON, and the server would refuse them.
        content = json.dumps(body.to_wire(), allow_nan=False, ensure_ascii=False).encode()
        self._request("POST", action, content=content, headers={"Content-Type": "application/json"})

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
