from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from podtask.api.v1alpha1 import Phase, RunError, TaskSpec
from podtask.protocol import (
    Checkpoint,
    ChildResult,
    CompleteToken,
    Completion,
    CreateToken,
    Failure,
    Heartbeat,
    JournalUpdate,
    MetadataUpdate,
    RetryDecision,
    RunContext,
    RunInfo,
    RunTriggerRequest,
    RunTriggerResponse,
    TokenInfo,
    TriggeredRun,
    TriggerRequest,
    TriggerResponse,
    WaitRequest,
    WaitResponse,
    run_path,
)
from podtask_operator.runapi import (
    RejectedError,
    RunApiMetrics,
    RunFinishedError,
    StaleAttemptError,
    TokenCompletedError,
    UnknownRunError,
    UnknownTokenError,
    bound_port,
    create_app,
    start_run_api,
)
from podtask_operator.runevents import RunWatchers
from podtask_operator.tokens import RunTokens

KEY = b"0123456789abcdef0123456789abcdef"
NS = "team-a"
RUN = "run-1"
OTHER = "run-2"
UID = "11111111-1111-4111-8111-111111111111"
OTHER_UID = "22222222-2222-4222-8222-222222222222"
TOKENS = RunTokens(KEY)
TOKEN = TOKENS.issue(NS, RUN, UID)
OTHER_TOKEN = TOKENS.issue(NS, OTHER, OTHER_UID)

REQUESTS = "podtask_run_api_requests_total"
SECONDS_COUNT = "podtask_run_api_request_seconds_count"


def make_context(attempt: int) -> RunContext:
    return RunContext(
        run=RunInfo(
            namespace=NS,
            name=RUN,
            uid=UID,
            task="email.send",
            attempt=attempt,
            max_attempts=3,
            machine="small-1x",
            tags=["a"],
        ),
        task=TaskSpec(image="example/app:1", entrypoint="app.tasks:send"),
        # Nulls inside the payload are data and must survive the trip.
        payload={"to": "a@b.c", "cc": None, "list": [1, None]},
        metadata={"progress": 0.5},
    )


class FakeBackend:
    """Records what the API passed on; raises what a test puts in ``raises``."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], str] = {(NS, RUN): UID, (NS, OTHER): OTHER_UID}
        self.calls: list[tuple[str, str, str, Any]] = []
        self.raises: dict[str, Exception] = {}

    def run_uid(self, namespace: str, name: str) -> str | None:
        return self.runs.get((namespace, name))

    def _record(self, action: str, namespace: str, name: str, arg: Any) -> None:
        self.calls.append((action, namespace, name, arg))
        if action in self.raises:
            raise self.raises[action]

    async def context(self, namespace: str, name: str, attempt: int) -> RunContext:
        self._record("context", namespace, name, attempt)
        return make_context(attempt)

    async def heartbeat(self, namespace: str, name: str, body: Heartbeat) -> None:
        self._record("heartbeat", namespace, name, body)

    async def metadata(self, namespace: str, name: str, body: MetadataUpdate) -> None:
        self._record("metadata", namespace, name, body)

    async def complete(self, namespace: str, name: str, body: Completion) -> None:
        self._record("complete", namespace, name, body)

    async def fail(self, namespace: str, name: str, body: Failure) -> None:
        self._record("fail", namespace, name, body)

    async def trigger(self, namespace: str, name: str, body: TriggerRequest) -> TriggerResponse:
        self._record("trigger", namespace, name, body)
        return TriggerResponse(
            runs=[f"{name}-a1p{body.position}-{i}" for i in range(len(body.runs))]
        )

    async def trigger_detached(
        self, namespace: str, name: str, body: RunTriggerRequest
    ) -> RunTriggerResponse:
        self._record("trigger_detached", namespace, name, body)
        names = [f"{name}-a1p{body.position}-{i}" for i in range(len(body.runs))]
        return RunTriggerResponse(runs=names, items=[TriggeredRun(name=n) for n in names])

    async def wait(self, namespace: str, name: str, body: WaitRequest) -> WaitResponse:
        self._record("wait", namespace, name, body)
        results = [
            ChildResult(name=child, task="t", ok=True, phase=Phase.COMPLETED, output=None)
            for child in body.waiting_for.runs
        ]
        return WaitResponse(resolved=True, runs=results)

    async def checkpoint(self, namespace: str, name: str, body: Checkpoint) -> None:
        self._record("checkpoint", namespace, name, body)

    async def journal(self, namespace: str, name: str, body: JournalUpdate) -> None:
        self._record("journal", namespace, name, body)

    async def create_token(self, namespace: str, name: str, body: CreateToken) -> TokenInfo:
        self._record("token", namespace, name, body)
        return TokenInfo(name=f"{name}-token")

    async def complete_token(self, namespace: str, name: str, body: CompleteToken) -> None:
        self._record("complete_token", namespace, name, body)


@dataclass
class Harness:
    client: TestClient[Any, Any]
    backend: FakeBackend
    registry: CollectorRegistry
    body_limit: int
    runs: dict[tuple[str, str], dict[str, Any]]
    """The cache the events stream reads (the controller's ``runs``)."""
    watchers: RunWatchers

    async def call(
        self,
        action: str,
        *,
        body: bytes | str | dict[str, Any] | None = None,
        token: str | None = TOKEN,
        name: str = RUN,
        namespace: str = NS,
        query: str = "attempt=1",
        authorization: str | None = None,
    ) -> aiohttp.ClientResponse:
        headers: dict[str, str] = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        path = run_path(namespace, name, action)
        if action == "context":
            return await self.client.get(f"{path}?{query}", headers=headers)
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers["Content-Type"] = "application/json"
        return await self.client.post(path, data=body or b"", headers=headers)

    def count(self, route: str, code: int) -> float:
        value = self.registry.get_sample_value(REQUESTS, {"route": route, "code": str(code)})
        return value or 0.0


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness() -> AsyncIterator[MakeHarness]:
    clients: list[TestClient[Any, Any]] = []

    async def make(*, body_limit: int = 1024 * 1024, keepalive: float = 15.0) -> Harness:
        backend = FakeBackend()
        registry = CollectorRegistry()
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        watchers = RunWatchers(runs, keepalive=keepalive)
        app = create_app(
            backend,
            TOKENS,
            body_limit=body_limit,
            metrics=RunApiMetrics(registry),
            watchers=watchers,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return Harness(client, backend, registry, body_limit, runs, watchers)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_harness: MakeHarness) -> Harness:
    return await make_harness()


BODIES: dict[str, tuple[dict[str, Any], BaseModel]] = {
    "heartbeat": ({"attempt": 2}, Heartbeat(attempt=2)),
    "metadata": (
        {"attempt": 2, "metadata": {"step": "b", "n": None}},
        MetadataUpdate(attempt=2, metadata={"step": "b", "n": None}),
    ),
    "complete": (
        {"attempt": 2, "output": {"sent": True, "id": [1, 2]}},
        Completion(attempt=2, output={"sent": True, "id": [1, 2]}),
    ),
    "fail": (
        {
            "attempt": 2,
            "error": {"type": "ValueError", "message": "bad", "stack": "line 1"},
            "retry": {"skip": False, "delaySeconds": 5},
        },
        Failure(
            attempt=2,
            error=RunError(type="ValueError", message="bad", stack="line 1"),
            retry=RetryDecision(skip=False, delay_seconds=5),
        ),
    ),
}
POST_ACTIONS = sorted(BODIES)
ALL_ACTIONS = ["context", *POST_ACTIONS]


def valid_body(action: str) -> dict[str, Any] | None:
    return BODIES[action][0] if action in BODIES else None


async def assert_error(response: aiohttp.ClientResponse, status: int, error_type: str) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    document = await response.json()
    assert document["ok"] is False
    assert document["error"]["type"] == error_type
    message = document["error"]["message"]
    assert isinstance(message, str)
    assert message
    return message


# --- happy paths --------------------------------------------------------------------------


async def test_healthz_needs_no_token(api: Harness) -> None:
    response = await api.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"ok": True}
    assert api.count("healthz", 200) == 1


async def test_context(api: Harness) -> None:
    response = await api.call("context", query="attempt=2")
    assert response.status == 200
    assert response.content_type == "application/json"
    raw = await response.json()
    assert raw["run"]["maxAttempts"] == 3  # camelCase on the wire
    assert raw["payload"] == {"to": "a@b.c", "cc": None, "list": [1, None]}
    assert RunContext.model_validate(raw) == make_context(2)
    assert api.backend.calls == [("context", NS, RUN, 2)]


@pytest.mark.parametrize("action", POST_ACTIONS)
async def test_post_routes(api: Harness, action: str) -> None:
    body, expected = BODIES[action]
    response = await api.call(action, body=body)
    assert response.status == 200, await response.text()
    assert await response.json() == {"ok": True}
    assert api.backend.calls == [(action, NS, RUN, expected)]
    assert api.count(action, 200) == 1


async def test_bearer_scheme_is_case_insensitive(api: Harness) -> None:
    response = await api.call("heartbeat", body={"attempt": 1}, authorization=f"bearer {TOKEN}")
    assert response.status == 200


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ALL_ACTIONS)
async def test_no_token_is_401(api: Harness, action: str) -> None:
    response = await api.call(action, body=valid_body(action), token=None)
    await assert_error(response, 401, "Unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.backend.calls == []
    assert api.count(action, 401) == 1


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}A",
        f"Bearer {TOKEN[:-1]}=",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
    ],
)
async def test_malformed_token_is_401(api: Harness, authorization: str) -> None:
    response = await api.call("heartbeat", body={"attempt": 1}, authorization=authorization)
    await assert_error(response, 401, "Unauthorized")
    assert api.backend.calls == []


@pytest.mark.parametrize("action", ALL_ACTIONS)
async def test_token_of_another_run_is_403(api: Harness, action: str) -> None:
    response = await api.call(action, body=valid_body(action), token=OTHER_TOKEN)
    await assert_error(response, 403, "Forbidden")
    assert api.backend.calls == []
    assert api.count(action, 403) == 1
    # The same token does open its own run.
    response = await api.call(action, body=valid_body(action), token=OTHER_TOKEN, name=OTHER)
    assert response.status == 200


async def test_well_formed_forged_token_is_403(api: Harness) -> None:
    response = await api.call("heartbeat", body={"attempt": 1}, token="A" * len(TOKEN))
    await assert_error(response, 403, "Forbidden")
    assert api.backend.calls == []


async def test_token_of_a_deleted_and_recreated_run_is_403(api: Harness) -> None:
    api.backend.runs[(NS, RUN)] = "33333333-3333-4333-8333-333333333333"
    response = await api.call("heartbeat", body={"attempt": 1}, token=TOKEN)
    await assert_error(response, 403, "Forbidden")
    assert api.backend.calls == []


async def test_unknown_run_answers_exactly_like_a_wrong_token(api: Harness) -> None:
    """No 404 before the caller proved it holds the run's token: no existence oracle."""
    # A token the operator would have issued, had the run existed with that uid.
    ghost_token = TOKENS.issue(NS, "ghost", UID)
    unknown = await api.call("heartbeat", body={"attempt": 1}, name="ghost", token=ghost_token)
    wrong = await api.call("heartbeat", body={"attempt": 1}, name=OTHER, token=TOKEN)
    assert unknown.status == wrong.status == 403
    assert await unknown.json() == await wrong.json()
    assert api.backend.calls == []


async def test_unknown_run_without_token_is_401(api: Harness) -> None:
    response = await api.call("heartbeat", body={"attempt": 1}, name="ghost", token=None)
    await assert_error(response, 401, "Unauthorized")


async def test_name_that_cannot_exist_is_404_before_auth(api: Harness) -> None:
    response = await api.call("heartbeat", body={"attempt": 1}, name="Not_A_Name", token=None)
    await assert_error(response, 404, "NotFound")
    response = await api.call("heartbeat", body={"attempt": 1}, name="a" * 254)
    await assert_error(response, 404, "NotFound")


async def test_unknown_endpoint_and_method_are_json(api: Harness) -> None:
    response = await api.call("sleep", body={"attempt": 1})
    await assert_error(response, 404, "NotFound")
    response = await api.client.get(run_path(NS, RUN, "heartbeat"))
    await assert_error(response, 405, "MethodNotAllowed")
    assert "POST" in response.headers["Allow"]
    response = await api.client.head(run_path(NS, RUN, "context") + "?attempt=1")
    assert response.status == 405
    assert api.count("unmatched", 404) == 1
    assert api.count("unmatched", 405) == 2
    assert api.backend.calls == []


# --- body size ----------------------------------------------------------------------------


def padded_heartbeat(size: int) -> bytes:
    """A valid heartbeat body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = b'{"attempt": 1}'
    assert size >= len(body)
    return body + b" " * (size - len(body))


async def test_body_at_the_limit_passes_and_one_byte_more_is_413(
    make_harness: MakeHarness,
) -> None:
    api = await make_harness(body_limit=256)
    response = await api.call("heartbeat", body=padded_heartbeat(256))
    assert response.status == 200, await response.text()
    response = await api.call("heartbeat", body=padded_heartbeat(257))
    message = await assert_error(response, 413, "BodyTooLarge")
    assert "256" in message
    assert [call[0] for call in api.backend.calls] == ["heartbeat"]
    assert api.count("heartbeat", 413) == 1


async def test_oversized_body_without_token_is_401_first(make_harness: MakeHarness) -> None:
    api = await make_harness(body_limit=256)
    response = await api.call("heartbeat", body=padded_heartbeat(4096), token=None)
    await assert_error(response, 401, "Unauthorized")


async def raw_exchange(api: Harness, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` as is and read one response, without finishing the body.

    If the server waited for the whole body before answering, this times out.
    """
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                header, _, value = line.decode().partition(":")
                if header.strip().lower() == "content-length":
                    length = int(value)
            document = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert isinstance(document, dict)
    return status, document


def request_head(extra: str) -> bytes:
    path = run_path(NS, RUN, "complete")
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


async def test_declared_oversize_is_refused_before_reading_the_body(
    make_harness: MakeHarness,
) -> None:
    api = await make_harness(body_limit=256)
    # Declares 10 MB, sends 12 bytes and waits: only an answer from the header can come back.
    request = request_head("Content-Length: 10000000\r\n") + b'{"attempt":1'
    status, document = await raw_exchange(api, request)
    assert status == 413
    assert document["error"]["type"] == "BodyTooLarge"
    assert api.backend.calls == []
    assert api.count("complete", 413) == 1


async def test_chunked_oversize_is_refused_while_streaming(make_harness: MakeHarness) -> None:
    api = await make_harness(body_limit=256)
    chunk = b" " * 100
    # 300 bytes in chunks and no terminating chunk: the server must stop at the limit.
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))
    request = request_head("Transfer-Encoding: chunked\r\n") + chunks
    status, document = await raw_exchange(api, request)
    assert status == 413
    assert document["error"]["type"] == "BodyTooLarge"
    assert api.backend.calls == []


async def test_chunked_body_within_the_limit_passes(make_harness: MakeHarness) -> None:
    api = await make_harness(body_limit=256)
    body = padded_heartbeat(200)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    response = await api.client.post(
        run_path(NS, RUN, "heartbeat"),
        data=chunks(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status == 200, await response.text()
    assert api.backend.calls == [("heartbeat", NS, RUN, Heartbeat(attempt=1))]


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "body", "fields", "in_message"),
    [
        ("heartbeat", b"", ["body"], "Invalid JSON"),
        ("heartbeat", b'{"attempt": 1', ["body"], "Invalid JSON"),
        ("heartbeat", b"[1]", ["body"], "object"),
        ("heartbeat", {"attempt": "one"}, ["attempt"], "attempt:"),
        ("heartbeat", {"attempt": 0}, ["attempt"], "attempt:"),
        ("heartbeat", {}, ["attempt"], "attempt: Field required"),
        ("heartbeat", {"attempt": 1, "extra": 1}, ["extra"], "extra: Extra inputs"),
        ("metadata", {"attempt": 1, "metadata": [1]}, ["metadata"], "metadata:"),
        ("complete", {"attempt": 1.5}, ["attempt"], "attempt:"),
        ("fail", {"attempt": 1}, ["error"], "error: Field required"),
        ("fail", {"attempt": 1, "error": {"type": 5}}, ["error.type"], "error.type:"),
        (
            "fail",
            {"attempt": 1, "error": {"type": "E"}, "retry": {"delaySeconds": -1}},
            ["retry.delaySeconds"],
            "retry.delaySeconds:",
        ),
    ],
)
async def test_invalid_body_is_422_naming_the_field(
    api: Harness, action: str, body: bytes | dict[str, Any], fields: list[str], in_message: str
) -> None:
    response = await api.call(action, body=body)
    message = await assert_error(response, 422, "InvalidRequest")
    assert in_message in message
    assert (await response.json())["error"]["fields"] == fields
    assert api.backend.calls == []
    assert api.count(action, 422) == 1


@pytest.mark.parametrize("query", ["", "attempt=", "attempt=abc", "attempt=0", "attempt=-1"])
async def test_bad_attempt_query_is_422(api: Harness, query: str) -> None:
    response = await api.call("context", query=query)
    message = await assert_error(response, 422, "InvalidRequest")
    assert message.startswith("attempt")
    assert (await response.json())["error"]["fields"] == ["attempt"]
    assert api.backend.calls == []


async def test_attempt_staleness_is_left_to_the_backend(api: Harness) -> None:
    response = await api.call("heartbeat", body={"attempt": 99})
    assert response.status == 200
    assert api.backend.calls == [("heartbeat", NS, RUN, Heartbeat(attempt=99))]


# --- backend errors -----------------------------------------------------------------------


@pytest.mark.parametrize("action", ALL_ACTIONS)
@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (UnknownRunError("run team-a/run-1 was deleted"), 404, "UnknownRun"),
        (StaleAttemptError("attempt 1 is not current (2)"), 409, "StaleAttempt"),
        (RunFinishedError("run already Completed"), 409, "RunFinished"),
    ],
)
async def test_backend_errors_map_to_status(
    api: Harness, action: str, error: Exception, status: int, error_type: str
) -> None:
    api.backend.raises[action] = error
    response = await api.call(action, body=valid_body(action))
    message = await assert_error(response, status, error_type)
    assert message == str(error)
    assert len(api.backend.calls) == 1
    assert api.count(action, status) == 1


async def test_unexpected_backend_error_is_500_without_details(api: Harness) -> None:
    api.backend.raises["complete"] = RuntimeError("secret internals")
    response = await api.call("complete", body={"attempt": 1})
    message = await assert_error(response, 500, "InternalError")
    assert "secret" not in message
    assert api.count("complete", 500) == 1


# --- metrics ------------------------------------------------------------------------------


async def test_metrics_count_every_answer(make_harness: MakeHarness) -> None:
    api = await make_harness(body_limit=256)
    await api.call("heartbeat", body={"attempt": 1})
    await api.call("heartbeat", body={"attempt": 1})
    await api.call("heartbeat", body={"attempt": 1}, token=None)
    await api.call("heartbeat", body={"attempt": 1}, token=OTHER_TOKEN)
    await api.call("heartbeat", body=padded_heartbeat(300))
    await api.call("heartbeat", body=b"{")
    await api.call("context")
    assert api.count("heartbeat", 200) == 2
    assert api.count("heartbeat", 401) == 1
    assert api.count("heartbeat", 403) == 1
    assert api.count("heartbeat", 413) == 1
    assert api.count("heartbeat", 422) == 1
    assert api.count("context", 200) == 1
    assert api.count("heartbeat", 404) == 0
    assert api.registry.get_sample_value(SECONDS_COUNT, {"route": "heartbeat"}) == 6
    assert api.registry.get_sample_value(SECONDS_COUNT, {"route": "context"}) == 1


async def test_app_without_metrics_serves() -> None:
    app = create_app(FakeBackend(), TOKENS)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/healthz")
        assert response.status == 200
        response = await client.post(run_path(NS, RUN, "heartbeat"), data=b"{}")
        assert response.status == 401


def test_invalid_body_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="body_limit"):
        create_app(FakeBackend(), TOKENS, body_limit=0)


# --- serving ------------------------------------------------------------------------------


@asynccontextmanager
async def served(app: aiohttp.web.Application) -> AsyncIterator[int]:
    runner = await start_run_api(app, "127.0.0.1", 0)
    try:
        yield bound_port(runner)
    finally:
        await runner.cleanup()


async def test_start_run_api_on_a_free_port() -> None:
    backend = FakeBackend()
    async with served(create_app(backend, TOKENS)) as port:
        assert port > 0
        url = f"http://127.0.0.1:{port}{run_path(NS, RUN, 'complete')}"
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                url,
                json={"attempt": 1, "output": 42},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status == 200
            assert await response.json() == {"ok": True}
    assert backend.calls == [("complete", NS, RUN, Completion(attempt=1, output=42))]


# --- waits and child runs -------------------------------------------------------------------

WAIT_BODIES: dict[str, dict[str, Any]] = {
    "trigger": {"attempt": 1, "position": 2, "runs": [{"spec": {"task": "child", "payload": 1}}]},
    "wait": {"attempt": 1, "waitingFor": {"kind": "Run", "runs": ["c-0"]}, "blockSeconds": 5},
    "checkpoint": {
        "attempt": 1,
        "waitingFor": {"kind": "Duration", "until": "2026-01-01T00:00:00Z"},
        "journal": [{"kind": "Duration", "until": "2026-01-01T00:00:00Z"}],
    },
    "journal": {"attempt": 1, "journal": [{"kind": "Step", "name": "s", "output": None}]},
    "token": {"attempt": 1, "position": 0, "timeout": "1h", "tags": ["a"]},
    "complete_token": {"attempt": 1, "token": "t-1", "output": {"ok": None}},
}


async def test_trigger_creates_children_and_names_them(api: Harness) -> None:
    response = await api.call("trigger", body=WAIT_BODIES["trigger"])
    assert response.status == 200, await response.text()
    assert await response.json() == {"runs": [f"{RUN}-a1p2-0"]}
    [(action, _, _, body)] = api.backend.calls
    assert action == "trigger" and body.runs[0].spec.task == "child"
    assert api.count("trigger", 200) == 1


async def test_wait_answers_the_results(api: Harness) -> None:
    response = await api.call("wait", body=WAIT_BODIES["wait"])
    assert response.status == 200, await response.text()
    answer = await response.json()
    # A null output is left out on the wire and reads back as None.
    assert answer == {
        "resolved": True,
        "checkpointNow": False,
        "runs": [{"name": "c-0", "task": "t", "ok": True, "phase": "Completed"}],
    }
    [(_, _, _, body)] = api.backend.calls
    assert body.block_seconds == 5 and body.waiting_for.runs == ["c-0"]


@pytest.mark.parametrize("action", ["checkpoint", "journal", "complete_token"])
async def test_wait_routes_answer_ok(api: Harness, action: str) -> None:
    response = await api.call(action, body=WAIT_BODIES[action])
    assert response.status == 200, await response.text()
    assert await response.json() == {"ok": True}
    assert [call[0] for call in api.backend.calls] == [action]


async def test_token_route_answers_the_tokens_name(api: Harness) -> None:
    response = await api.call("token", body=WAIT_BODIES["token"])
    assert await response.json() == {"name": f"{RUN}-token"}


@pytest.mark.parametrize("action", sorted(WAIT_BODIES))
async def test_wait_routes_refuse_another_runs_token(api: Harness, action: str) -> None:
    response = await api.call(action, body=WAIT_BODIES[action], token=OTHER_TOKEN)
    await assert_error(response, 403, "Forbidden")
    assert api.backend.calls == []


async def test_an_oversized_journal_is_refused_naming_the_field(api: Harness) -> None:
    big = {"kind": "Step", "name": "s", "output": "x" * (300 * 1024)}
    response = await api.call("journal", body={"attempt": 1, "journal": [big]})
    message = await assert_error(response, 422, "InvalidRequest")
    assert "journal" in message and "262144" in message


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (UnknownTokenError("no token"), 404, "UnknownToken"),
        (TokenCompletedError("done before"), 409, "TokenCompleted"),
        (RejectedError("bad child"), 422, "InvalidRequest"),
    ],
)
async def test_wait_errors_map_to_statuses(
    api: Harness, error: Exception, status: int, error_type: str
) -> None:
    api.backend.raises["complete_token"] = error
    response = await api.call("complete_token", body=WAIT_BODIES["complete_token"])
    assert await assert_error(response, status, error_type) == str(error)


async def test_a_detached_trigger_reaches_its_own_backend_call(api: Harness) -> None:
    body = {
        "attempt": 1,
        "position": 3,
        "runs": [
            {
                "spec": {"task": "child", "payload": 1, "idempotencyKey": "k"},
                "labels": {"team": "a"},
                "annotations": {"podtask.dev/batch-index": "4"},
            }
        ],
        "detached": True,
        "verifyTasks": True,
    }
    response = await api.call("trigger", body=body)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer == {
        "runs": [f"{RUN}-a1p3-0"],
        "items": [{"name": f"{RUN}-a1p3-0", "cached": False}],
    }
    [(action, namespace, name, request)] = api.backend.calls
    assert (action, namespace, name) == ("trigger_detached", NS, RUN)
    assert isinstance(request, RunTriggerRequest)
    assert request.verify_tasks and request.position == 3
    [child] = request.runs
    assert child.spec.idempotency_key == "k"
    assert child.annotations == {"podtask.dev/batch-index": "4"}
    assert api.count("trigger", 200) == 1


async def test_a_detached_trigger_refuses_unknown_fields(api: Harness) -> None:
    body = {**WAIT_BODIES["trigger"], "detached": True, "runAs": "admin"}
    message = await assert_error(await api.call("trigger", body=body), 422, "InvalidRequest")
    assert "runAs" in message
    assert api.backend.calls == []


# --- the events stream ----------------------------------------------------------------------


def taskrun(name: str, phase: str | None = "Executing", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "podtask.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": "u",
            "resourceVersion": "1",
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {"task": "t", **spec},
        "status": {"phase": phase} if phase else {},
    }


async def open_events(
    api: Harness, query: str = "", token: str = TOKEN, name: str = RUN
) -> aiohttp.ClientResponse:
    path = run_path(NS, name, "events") + (f"?{query}" if query else "")
    return await api.client.get(path, headers={"Authorization": f"Bearer {token}"})


async def next_event(response: aiohttp.ClientResponse) -> tuple[str, Any] | None:
    """The next event of the stream, keepalives skipped; None at its end."""
    fields: dict[str, str] = {}
    async with asyncio.timeout(5):
        while True:
            raw = await response.content.readline()
            if not raw:
                assert not fields, "the stream ended inside an event"
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if not line:
                if fields:
                    return fields["event"], json.loads(fields["data"])
                continue
            key, _, value = line.partition(": ")
            fields[key] = value


def change(api: Harness, name: str, **status: Any) -> None:
    run = api.runs[(NS, name)]
    api.runs[(NS, name)] = {**run, "status": {**run["status"], **status}}
    api.watchers.changed(NS, name)


async def test_events_stream_the_run_then_each_change_and_end_after_the_final_one(
    api: Harness,
) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    response = await open_events(api)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    event = await next_event(response)
    assert event is not None
    kind, run = event
    assert kind == "run" and run["status"] == {"phase": "Executing"}
    assert "managedFields" not in run["metadata"] and run["metadata"]["uid"] == "u"
    change(api, RUN, metadata={"progress": 0.5})
    event = await next_event(response)
    assert event is not None
    assert event[1]["status"] == {"phase": "Executing", "metadata": {"progress": 0.5}}
    # A change no subscriber can see (here: none at all) sends nothing.
    api.watchers.changed(NS, RUN)
    await asyncio.sleep(0.05)  # the stream looks at the cache meanwhile
    change(api, RUN, phase="Completed", output={"n": 1})
    event = await next_event(response)
    assert event is not None and event[1]["status"]["output"] == {"n": 1}
    assert await next_event(response) is None
    assert api.watchers.followers(NS, RUN) == 0
    assert api.count("events", 200) == 1


async def test_a_run_may_follow_its_children_and_nothing_else(api: Harness) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    api.runs[(NS, "kid")] = taskrun("kid", "Queued", parentRun=RUN)
    api.runs[(NS, OTHER)] = taskrun(OTHER)
    api.runs[(NS, "not-mine")] = taskrun("not-mine", parentRun=OTHER)
    response = await open_events(api, "run=kid")
    event = await next_event(response)
    assert event is not None and event[1]["metadata"]["name"] == "kid"
    response.close()
    refused = {}
    for target in (OTHER, "not-mine", "ghost"):
        answer = await open_events(api, f"run={target}")
        refused[target] = (answer.status, (await answer.json())["error"]["type"])
    assert refused == {t: (403, "Forbidden") for t in (OTHER, "not-mine", "ghost")}
    # The other run's own token opens its own stream and its child's.
    mine = await open_events(api, "run=not-mine", token=OTHER_TOKEN, name=OTHER)
    assert mine.status == 200
    mine.close()


async def test_events_need_the_runs_token(api: Harness) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    await assert_error(await open_events(api, token=OTHER_TOKEN), 403, "Forbidden")
    no_token = await api.client.get(run_path(NS, RUN, "events"))
    await assert_error(no_token, 401, "Unauthorized")


@pytest.mark.parametrize("query", ["run=Not_A_Name", "closeOnComplete=maybe", "run=" + "a" * 254])
async def test_events_refuse_bad_queries(api: Harness, query: str) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    await assert_error(await open_events(api, query), 422, "InvalidRequest")


async def test_a_deleted_run_ends_its_stream_with_a_deleted_event(api: Harness) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    api.runs[(NS, "kid")] = taskrun("kid", parentRun=RUN)
    response = await open_events(api, "run=kid")
    assert (await next_event(response) or ("", {}))[0] == "run"
    del api.runs[(NS, "kid")]
    api.watchers.changed(NS, "kid")
    assert await next_event(response) == ("deleted", {"namespace": NS, "name": "kid"})
    assert await next_event(response) is None


async def test_close_on_complete_false_follows_a_final_run_until_it_goes(api: Harness) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    api.runs[(NS, "kid")] = taskrun("kid", "Completed", parentRun=RUN)
    response = await open_events(api, "run=kid&closeOnComplete=false")
    assert (await next_event(response) or ("", {}))[1]["status"] == {"phase": "Completed"}
    change(api, "kid", metadata={"late": True})
    event = await next_event(response)
    assert event is not None and event[1]["status"]["metadata"] == {"late": True}
    del api.runs[(NS, "kid")]
    api.watchers.changed(NS, "kid")
    assert (await next_event(response) or ("", {}))[0] == "deleted"


async def test_quiet_streams_send_keepalives_and_notice_a_subscriber_gone(
    make_harness: MakeHarness,
) -> None:
    api = await make_harness(keepalive=0.05)
    api.runs[(NS, RUN)] = taskrun(RUN)
    response = await open_events(api)
    await next_event(response)
    async with asyncio.timeout(5):
        assert (await response.content.readline()) == b": keepalive\n"
    assert api.watchers.followers(NS, RUN) == 1
    response.close()
    # The server learns of it at its next write: the next keepalive.
    for _ in range(250):
        if not api.watchers.followers(NS, RUN):
            break
        await asyncio.sleep(0.02)
    assert api.watchers.followers(NS, RUN) == 0


async def test_shutting_down_ends_open_streams(api: Harness) -> None:
    api.runs[(NS, RUN)] = taskrun(RUN)
    response = await open_events(api)
    await next_event(response)
    await api.client.server.app.shutdown()
    assert await next_event(response) is None


async def test_an_app_without_watchers_serves_no_events() -> None:
    app = create_app(FakeBackend(), TOKENS)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(
            run_path(NS, RUN, "events"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        await assert_error(response, 404, "NotFound")
