"""Fake run APIs for the runner tests: in memory, and over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from podtask import protocol
from podtask.api.v1alpha1 import TaskSpec
from podtask.protocol import (
    Completion,
    Failure,
    Heartbeat,
    MetadataUpdate,
    RunContext,
    RunInfo,
)
from podtask.runapi import RunApiError

NAMESPACE = "default"
RUN_NAME = "run-abc"
TOKEN = "secret-token"


def make_context(
    entrypoint: str,
    payload: Any = None,
    *,
    task: str = "test.task",
    attempt: int = 1,
    max_attempts: int = 3,
    metadata: dict[str, Any] | None = None,
    heartbeat_interval: float = 30.0,
) -> RunContext:
    return RunContext(
        run=RunInfo(
            namespace=NAMESPACE,
            name=RUN_NAME,
            uid="uid-1",
            task=task,
            attempt=attempt,
            max_attempts=max_attempts,
            machine="micro",
            queue="default",
            tags=["unit"],
        ),
        task=TaskSpec(image="runner:test", entrypoint=entrypoint, version="20260101.1"),
        payload=payload,
        metadata=metadata or {},
        heartbeat_interval_seconds=heartbeat_interval,
    )


@dataclass
class FakeRunApi:
    """An in-memory RunApi: answers with ``run_context`` and records every call."""

    run_context: RunContext
    calls: list[tuple[str, Any]] = field(default_factory=list)
    failures: dict[str, list[RunApiError]] = field(default_factory=dict)
    """Errors to raise, first to last, before an action succeeds."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, action: str, body: Any) -> None:
        with self.lock:
            self.calls.append((action, body))
            pending = self.failures.get(action)
            if pending:
                raise pending.pop(0)

    def context(self, attempt: int) -> RunContext:
        self._record("context", attempt)
        return self.run_context

    def heartbeat(self, body: Heartbeat) -> None:
        self._record("heartbeat", body)

    def metadata(self, body: MetadataUpdate) -> None:
        self._record("metadata", body)

    def complete(self, body: Completion) -> None:
        self._record("complete", body)

    def fail(self, body: Failure) -> None:
        self._record("fail", body)

    def close(self) -> None:
        pass

    def actions(self) -> list[str]:
        with self.lock:
            return [action for action, _ in self.calls]

    def bodies(self, action: str) -> list[Any]:
        with self.lock:
            return [body for name, body in self.calls if name == action]


@dataclass
class Recorded:
    method: str
    action: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None


class FakeRunApiServer:
    """The run API over real HTTP, for a runner in a subprocess."""

    def __init__(self, run_context: RunContext) -> None:
        self.run_context = run_context
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.on_request: Callable[[Recorded], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def actions(self) -> list[str]:
        with self.lock:
            return [r.action for r in self.requests]

    def bodies(self, action: str) -> list[Any]:
        with self.lock:
            return [r.body for r in self.requests if r.action == action]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self
        prefix = f"{protocol.API_PREFIX}/{self.run_context.run.namespace}/"
        prefix += f"{self.run_context.run.name}/"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, document: Any) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                recorded = Recorded(
                    method=method,
                    action=url.path.removeprefix(prefix),
                    query=parse_qs(url.query),
                    body=json.loads(raw) if raw else None,
                    authorization=self.headers.get("Authorization"),
                )
                with fake.lock:
                    fake.requests.append(recorded)
                if fake.on_request is not None:
                    fake.on_request(recorded)
                if recorded.authorization != f"Bearer {TOKEN}":
                    self._answer(401, {"error": "bad token"})
                elif not url.path.startswith(prefix):
                    self._answer(404, {"error": "unknown run"})
                elif method == "GET" and recorded.action == "context":
                    self._answer(200, fake.run_context.to_wire())
                else:
                    self._answer(200, protocol.ok())

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        return Handler

    @contextmanager
    def running(self) -> Iterator[FakeRunApiServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def runner_env(api_url: str, entrypoint: str, attempt: int = 1) -> dict[str, str]:
    return {
        protocol.ENV_API_URL: api_url,
        protocol.ENV_TOKEN: TOKEN,
        protocol.ENV_NAMESPACE: NAMESPACE,
        protocol.ENV_RUN_NAME: RUN_NAME,
        protocol.ENV_ATTEMPT: str(attempt),
        protocol.ENV_ENTRYPOINT: entrypoint,
    }
