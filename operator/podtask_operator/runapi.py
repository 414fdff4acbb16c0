"""The run API server: the one path from run pods into the operator (DESIGN §5).

An aiohttp application served inside the operator's asyncio loop.  The wire contract
(paths, bodies, status codes) is :mod:`podtask.protocol`; what a request *does* is the
operator core's business, reached through the :class:`RunBackend` protocol.

Every request is handled in this order, and the first check that fails answers:

1. **Route.**  An unknown path or method, or a namespace/name that cannot be a
   Kubernetes name: 404 / 405.  Nothing about any run is consulted.
2. **Token shape.**  No ``Authorization`` header, a scheme other than ``Bearer``, or a
   token that is not 43 base64url characters: **401** (with ``WWW-Authenticate``).
3. **Token for this run.**  The token is checked against the *addressed* run's uid
   (:mod:`podtask_operator.tokens`).  A token that does not verify: **403**.  A run the
   backend does not know also gets **403**, with the same body, never 404: a well-formed
   token costs nothing to forge, so answering 404 there would let any pod probe which run
   names exist in any namespace (run names derived from idempotency keys would confirm a
   guessed key).  No token can be valid for a run that does not exist, so 403 is also
   true.  To keep the two cases indistinguishable by timing as well, an unknown run still
   costs one HMAC.
4. **Body.**  Over ``body_limit``: **413**, decided from ``Content-Length`` before a byte
   is read, else while reading (chunked bodies), so an oversized body is never held in
   memory.  A body (or ``?attempt=``) that does not validate against the protocol model:
   **422**, naming the field(s).
5. **Backend.**  :class:`UnknownRunError` → **404** (the run went away after its token
   verified: only a caller that proved it holds that run's token learns this),
   :class:`StaleAttemptError` / :class:`RunFinishedError` → **409**,
   :class:`UnknownTokenError` → **404**, :class:`TokenCompletedError` → **409**,
   :class:`RejectedError` (the API server refused a child run or token) → **422**, any
   other exception → 500 (logged).

Consequently a runner sees 404 only for a run deleted while it was talking to it, and
403 both for a token of another run and for a run the operator does not (or does not
yet) know.  The backend should therefore not start answering before its run index is
built, or a pod of a live run will be turned away after an operator restart.

Every answer that is not 200 has the body ``{"ok": false, "error": {"type": T, "message":
M}}`` (422 adds ``"fields"``: the dotted locations that failed), with ``T`` one of the
``ERROR_*`` constants below.  Every answer, errors included, is counted in
:class:`RunApiMetrics`.

``GET …/events`` streams a run as Server-Sent Events (:mod:`podtask_operator.runevents`):
the addressed run itself, or with ``?run=<name>`` one of its children (a run whose
``spec.parentRun`` it is); any other run gets **403**, with the same body whether it
exists or not.  ``?closeOnComplete=false`` keeps the stream open after a final phase.

``GET /healthz`` answers 200 without a token, for the operator's probes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from podtask import protocol
from podtask.api.base import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from podtask.protocol import (
    Checkpoint,
    ChildRun,
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

from .runevents import RunWatchers
from .tokens import RunTokens, is_well_formed

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_BODY_TOO_LARGE",
    "ERROR_FORBIDDEN",
    "ERROR_INTERNAL",
    "ERROR_INVALID_REQUEST",
    "ERROR_METHOD_NOT_ALLOWED",
    "ERROR_NOT_FOUND",
    "ERROR_RUN_FINISHED",
    "ERROR_STALE_ATTEMPT",
    "ERROR_TOKEN_COMPLETED",
    "ERROR_UNAUTHORIZED",
    "ERROR_UNKNOWN_RUN",
    "ERROR_UNKNOWN_TOKEN",
    "RejectedError",
    "RunApiError",
    "RunApiMetrics",
    "RunBackend",
    "RunFinishedError",
    "StaleAttemptError",
    "TokenCompletedError",
    "UnknownRunError",
    "UnknownTokenError",
    "bound_port",
    "create_app",
    "start_run_api",
]

# The "type" of an error answer, stable for clients to match on.
ERROR_UNAUTHORIZED: Final = "Unauthorized"
ERROR_FORBIDDEN: Final = "Forbidden"
ERROR_NOT_FOUND: Final = "NotFound"
ERROR_METHOD_NOT_ALLOWED: Final = "MethodNotAllowed"
ERROR_UNKNOWN_RUN: Final = "UnknownRun"
ERROR_STALE_ATTEMPT: Final = "StaleAttempt"
ERROR_RUN_FINISHED: Final = "RunFinished"
ERROR_BODY_TOO_LARGE: Final = "BodyTooLarge"
ERROR_INVALID_REQUEST: Final = "InvalidRequest"
ERROR_INTERNAL: Final = "InternalError"
ERROR_UNKNOWN_TOKEN: Final = "UnknownToken"
ERROR_TOKEN_COMPLETED: Final = "TokenCompleted"

ROUTE_UNMATCHED: Final = "unmatched"
"""Metrics ``route`` label of requests no route matched (404/405)."""

_NAMESPACE_RE: Final = re.compile(DNS_LABEL_PATTERN)
_NAME_RE: Final = re.compile(DNS_SUBDOMAIN_PATTERN)
_ATTEMPT_RE: Final = re.compile(r"[0-9]{1,9}")
_MAX_NAMESPACE: Final = 63
_MAX_NAME: Final = 253
_MAX_ERRORS_IN_MESSAGE: Final = 5


# --- what the backend raises ------------------------------------------------------------


class RunApiError(Exception):
    """Base of the errors a :class:`RunBackend` raises to choose the answer.

    The exception's message is sent to the pod as the error message.
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = ERROR_INTERNAL


class UnknownRunError(RunApiError):
    """The run does not exist (any more): 404."""

    status = 404
    error_type = ERROR_UNKNOWN_RUN


class StaleAttemptError(RunApiError):
    """The request names an attempt that is not the run's current one: 409."""

    status = 409
    error_type = ERROR_STALE_ATTEMPT


class RunFinishedError(RunApiError):
    """The run is already in a terminal phase: 409."""

    status = 409
    error_type = ERROR_RUN_FINISHED


class UnknownTokenError(RunApiError):
    """No WaitToken of that name in the run's namespace: 404."""

    status = 404
    error_type = ERROR_UNKNOWN_TOKEN


class TokenCompletedError(RunApiError):
    """The WaitToken was completed (or timed out) before: 409."""

    status = 409
    error_type = ERROR_TOKEN_COMPLETED


class RejectedError(RunApiError):
    """The API server refused an object made for the request (a child run, a token): 422."""

    status = 422
    error_type = ERROR_INVALID_REQUEST


class RunBackend(Protocol):
    """What the run API needs from the operator core.

    Called only after the request's token has been verified for ``namespace/name``
    (except :meth:`run_uid`, which is how it is verified) and its body validated.  The
    ``attempt`` in a body or query is passed through unchecked: whether it is current is
    the backend's call (raise :class:`StaleAttemptError`).
    """

    def run_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the run, or None if unknown.  Called on every request: keep it cheap
        and non-blocking (an in-memory index)."""
        ...

    async def context(self, namespace: str, name: str, attempt: int) -> RunContext:
        """Everything the runner needs to start ``attempt``."""
        ...

    async def heartbeat(self, namespace: str, name: str, body: Heartbeat) -> None:
        """The attempt is alive."""
        ...

    async def metadata(self, namespace: str, name: str, body: MetadataUpdate) -> None:
        """The run's whole metadata document, as the runner now sees it."""
        ...

    async def complete(self, namespace: str, name: str, body: Completion) -> None:
        """The attempt succeeded with ``body.output``."""
        ...

    async def fail(self, namespace: str, name: str, body: Failure) -> None:
        """The attempt failed; ``body.retry`` carries the task's retry decision."""
        ...

    async def trigger(self, namespace: str, name: str, body: TriggerRequest) -> TriggerResponse:
        """Create the child runs of one journal position (idempotently)."""
        ...

    async def trigger_detached(
        self, namespace: str, name: str, body: RunTriggerRequest
    ) -> RunTriggerResponse:
        """Create the runs of a plain trigger at one journal position (idempotently), one
        answer item per run."""
        ...

    async def wait(self, namespace: str, name: str, body: WaitRequest) -> WaitResponse:
        """Whether a wait is over (with its results), waiting up to ``block_seconds``."""
        ...

    async def checkpoint(self, namespace: str, name: str, body: Checkpoint) -> None:
        """The attempt stops at a wait; answer once Waiting and the journal are written."""
        ...

    async def journal(self, namespace: str, name: str, body: JournalUpdate) -> None:
        """Make the journal durable; answer once written."""
        ...

    async def create_token(self, namespace: str, name: str, body: CreateToken) -> TokenInfo:
        """Create (idempotently) the WaitToken of one journal position."""
        ...

    async def complete_token(self, namespace: str, name: str, body: CompleteToken) -> None:
        """Complete a WaitToken of the run's namespace."""
        ...


# --- metrics ------------------------------------------------------------------------------


class RunApiMetrics:
    """Prometheus metrics of the run API, registered on ``registry`` (default: global)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.requests = Counter(
            "podtask_run_api_requests_total",
            "Run API answers, by route and HTTP status code.",
            ["route", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "podtask_run_api_request_seconds",
            "Time to answer a run API request, by route.",
            ["route"],
            registry=registry,
        )

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route=route, code=str(code)).inc()
        self.seconds.labels(route=route).observe(seconds)


# --- answers ------------------------------------------------------------------------------


@dataclass(eq=False)
class _RejectError(Exception):
    """Raised inside a handler to answer with an error."""

    status: int
    error_type: str
    message: str
    fields: list[str] | None = None
    headers: Mapping[str, str] | None = None


def _error_response(
    status: int,
    error_type: str,
    message: str,
    *,
    fields: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if fields is not None:
        error["fields"] = fields
    return web.json_response({"ok": False, "error": error}, status=status, headers=headers)


def _ok_response() -> web.Response:
    return web.json_response(protocol.ok())


def _model_response(model: BaseModel) -> web.Response:
    # exclude_none drops unset optional fields only; nulls inside outputs stay.
    return web.Response(
        text=model.model_dump_json(by_alias=True, exclude_none=True),
        content_type="application/json",
    )


# aiohttp's own HTTP errors (router 404/405, read() over client_max_size) re-dressed
# in the API's JSON shape.
_AIOHTTP_ERRORS: Final[dict[int, tuple[str, str]]] = {
    404: (ERROR_NOT_FOUND, "no such endpoint"),
    405: (ERROR_METHOD_NOT_ALLOWED, "method not allowed"),
    413: (ERROR_BODY_TOO_LARGE, "request body too large"),
}
_PASS_HEADERS: Final = frozenset({hdrs.ALLOW, hdrs.WWW_AUTHENTICATE})


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    error_type, message = _AIOHTTP_ERRORS.get(exc.status, (exc.reason, exc.reason))
    headers = {k: v for k, v in exc.headers.items() if k in _PASS_HEADERS}
    return _error_response(exc.status, error_type, message, headers=headers)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _middleware(metrics: RunApiMetrics | None) -> Middleware:
    @web.middleware
    async def answer(request: web.Request, handler: _Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except _RejectError as exc:
            response = _error_response(
                exc.status, exc.error_type, exc.message, fields=exc.fields, headers=exc.headers
            )
        except RunApiError as exc:
            response = _error_response(exc.status, exc.error_type, str(exc) or exc.error_type)
        except web.HTTPException as exc:
            response = _from_http_exception(exc)
        except Exception:
            logger.exception("run API: %s %s failed", request.method, request.path)
            response = _error_response(500, ERROR_INTERNAL, "internal error")
        if metrics is not None:
            route = request.match_info.route.name or ROUTE_UNMATCHED
            metrics.observe(route, response.status, time.perf_counter() - start)
        return response

    return answer


# --- the application ----------------------------------------------------------------------

_BACKEND: Final = web.AppKey("backend", RunBackend)
_TOKENS: Final = web.AppKey("tokens", RunTokens)
_BODY_LIMIT: Final = web.AppKey("body_limit", int)
_WATCHERS: Final = web.AppKey("watchers", RunWatchers)

_M = TypeVar("_M", bound=BaseModel)

# An HMAC over a uid no run has keeps the unknown-run answer as slow as a wrong token's.
_NO_UID: Final = "-"


def _authorize(request: web.Request) -> tuple[str, str]:
    """(namespace, name) of the addressed run, once the request's token is proven for it."""
    namespace = request.match_info["namespace"]
    name = request.match_info["name"]
    if not (
        len(namespace) <= _MAX_NAMESPACE
        and len(name) <= _MAX_NAME
        and _NAMESPACE_RE.fullmatch(namespace)
        and _NAME_RE.fullmatch(name)
    ):
        raise _RejectError(404, ERROR_NOT_FOUND, "not a valid run namespace/name")

    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not is_well_formed(token):
        raise _RejectError(
            401,
            ERROR_UNAUTHORIZED,
            "missing or malformed bearer token",
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="podtask-run-api"'},
        )

    uid = request.app[_BACKEND].run_uid(namespace, name)
    tokens = request.app[_TOKENS]
    valid = tokens.verify(token, namespace, name, _NO_UID if uid is None else uid)
    if uid is None or not valid:
        logger.warning("run API: token refused for run %s/%s", namespace, name)
        raise _RejectError(403, ERROR_FORBIDDEN, "the token is not valid for this run")
    return namespace, name


def _validation_failure(exc: ValidationError, *, root: str) -> _RejectError:
    fields: list[str] = []
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or root
        if field not in fields:
            fields.append(field)
        if len(parts) < _MAX_ERRORS_IN_MESSAGE:
            parts.append(f"{field}: {error['msg']}")
    return _RejectError(422, ERROR_INVALID_REQUEST, "; ".join(parts), fields=fields)


async def _read_body(request: web.Request, model: type[_M]) -> _M:
    limit = request.app[_BODY_LIMIT]
    too_large = _RejectError(413, ERROR_BODY_TOO_LARGE, f"request body exceeds {limit} bytes")
    # Refuse a declared oversize body before reading any of it; read() then enforces the
    # same limit (client_max_size) chunk by chunk for bodies without a Content-Length.
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_failure(exc, root="body") from None


def _attempt_query(request: web.Request) -> int:
    value = request.query.get("attempt")
    if value is None or not _ATTEMPT_RE.fullmatch(value) or int(value) < 1:
        raise _RejectError(
            422,
            ERROR_INVALID_REQUEST,
            "attempt: query parameter must be an integer >= 1",
            fields=["attempt"],
        )
    return int(value)


async def _context(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    attempt = _attempt_query(request)
    context = await request.app[_BACKEND].context(namespace, name, attempt)
    # exclude_none drops unset optional fields only; nulls inside payload/metadata stay.
    return web.Response(
        text=context.model_dump_json(by_alias=True, exclude_none=True),
        content_type="application/json",
    )


async def _heartbeat(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, Heartbeat)
    await request.app[_BACKEND].heartbeat(namespace, name, body)
    return _ok_response()


async def _metadata(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, MetadataUpdate)
    await request.app[_BACKEND].metadata(namespace, name, body)
    return _ok_response()


async def _complete(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, Completion)
    await request.app[_BACKEND].complete(namespace, name, body)
    return _ok_response()


async def _fail(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, Failure)
    await request.app[_BACKEND].fail(namespace, name, body)
    return _ok_response()


async def _trigger(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    # A superset of TriggerRequest: what a runner that waits for its children sends fits.
    body = await _read_body(request, RunTriggerRequest)
    # The operator would read it with its own rights and give it to the child's pod: a
    # run pod must not reach the namespace's Secrets and ConfigMaps that way.
    borrowed = [
        f"runs.{i}.spec.payloadFrom" for i, c in enumerate(body.runs) if c.spec.payload_from
    ]
    if borrowed:
        raise _RejectError(
            422,
            ERROR_INVALID_REQUEST,
            f"{borrowed[0]}: a run's child runs take their payload inline",
            fields=borrowed,
        )
    backend = request.app[_BACKEND]
    if body.detached:
        return _model_response(await backend.trigger_detached(namespace, name, body))
    waited = TriggerRequest(
        attempt=body.attempt,
        position=body.position,
        runs=[ChildRun(spec=child.spec, labels=child.labels) for child in body.runs],
    )
    return _model_response(await backend.trigger(namespace, name, waited))


async def _wait(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, WaitRequest)
    return _model_response(await request.app[_BACKEND].wait(namespace, name, body))


async def _checkpoint(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, Checkpoint)
    await request.app[_BACKEND].checkpoint(namespace, name, body)
    return _ok_response()


async def _journal(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, JournalUpdate)
    await request.app[_BACKEND].journal(namespace, name, body)
    return _ok_response()


async def _token(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, CreateToken)
    return _model_response(await request.app[_BACKEND].create_token(namespace, name, body))


async def _complete_token(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    body = await _read_body(request, CompleteToken)
    await request.app[_BACKEND].complete_token(namespace, name, body)
    return _ok_response()


def _flag_query(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise _RejectError(
            422, ERROR_INVALID_REQUEST, f"{name}: must be true or false", fields=[name]
        )
    return value == "true"


async def _events(request: web.Request) -> web.StreamResponse:
    namespace, name = _authorize(request)
    watchers = request.app.get(_WATCHERS)
    if watchers is None:
        raise _RejectError(404, ERROR_NOT_FOUND, "this operator serves no events")
    target = request.query.get("run") or name
    if len(target) > _MAX_NAME or not _NAME_RE.fullmatch(target):
        raise _RejectError(422, ERROR_INVALID_REQUEST, "run: not a run name", fields=["run"])
    close_on_complete = _flag_query(request, "closeOnComplete", True)
    if not watchers.may_follow(namespace, name, target):
        # The same answer for a run that exists and one that does not: no probing.
        raise _RejectError(
            403,
            ERROR_FORBIDDEN,
            f"run {name} may follow only itself and its child runs, not {target}",
        )
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: "text/event-stream",
            hdrs.CACHE_CONTROL: "no-cache",
            "X-Accel-Buffering": "no",  # proxies must pass events on at once
        }
    )
    await response.prepare(request)
    try:
        async for chunk in watchers.follow(namespace, target, close_on_complete=close_on_complete):
            await response.write(chunk)
    except ConnectionError:
        pass  # the subscriber went away
    except Exception:
        # The answer has begun: it can end, but no longer become an error answer.
        logger.exception("run API: events of %s/%s failed", namespace, target)
    return response


async def _healthz(request: web.Request) -> web.StreamResponse:
    return _ok_response()


# (method, action, handler) of each per-run route, under /v1/runs/{namespace}/{name}/.
# The action is also the route's name and its metrics label.  A new endpoint is one
# more row.
_RUN_ROUTES: Final[tuple[tuple[str, str, _Handler], ...]] = (
    (hdrs.METH_GET, "context", _context),
    (hdrs.METH_POST, "heartbeat", _heartbeat),
    (hdrs.METH_POST, "metadata", _metadata),
    (hdrs.METH_POST, "complete", _complete),
    (hdrs.METH_POST, "fail", _fail),
    (hdrs.METH_POST, "trigger", _trigger),
    (hdrs.METH_POST, "wait", _wait),
    (hdrs.METH_POST, "checkpoint", _checkpoint),
    (hdrs.METH_POST, "journal", _journal),
    (hdrs.METH_POST, "token", _token),
    (hdrs.METH_POST, "complete_token", _complete_token),
    (hdrs.METH_GET, protocol.EVENTS_ACTION, _events),
)


def create_app(
    backend: RunBackend,
    tokens: RunTokens,
    *,
    body_limit: int = protocol.DEFAULT_BODY_LIMIT,
    metrics: RunApiMetrics | None = None,
    watchers: RunWatchers | None = None,
) -> web.Application:
    """The run API as an aiohttp application (serve it with :func:`start_run_api`).

    ``watchers`` serves ``GET …/events``; without it that endpoint answers 404.
    """
    if body_limit < 1:
        raise ValueError("body_limit must be positive")
    app = web.Application(client_max_size=body_limit, middlewares=[_middleware(metrics)])
    app[_BACKEND] = backend
    app[_TOKENS] = tokens
    app[_BODY_LIMIT] = body_limit
    if watchers is not None:
        app[_WATCHERS] = watchers

        async def end_streams(_: web.Application) -> None:
            # Open streams would hold shutdown for its whole timeout; clients reconnect.
            watchers.close()

        app.on_shutdown.append(end_streams)
    for method, action, handler in _RUN_ROUTES:
        path = protocol.run_path("{namespace}", "{name}", action)
        app.router.add_route(method, path, handler, name=action)
    app.router.add_route(hdrs.METH_GET, "/healthz", _healthz, name="healthz")
    return app


async def start_run_api(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 10.0
) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` in the running loop; stop with ``runner.cleanup()``.

    ``port=0`` picks a free port: read it back with :func:`bound_port`.
    """
    # Heartbeats would flood an access log; the metrics count every request instead.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port ``runner`` (from :func:`start_run_api`) listens on."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the run API is not listening on a TCP port")
