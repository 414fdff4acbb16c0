"""The run API's wire contract, shared by the runner (client) and the operator (server).

A run pod talks to the operator only through this HTTP API (DESIGN §5); it has no
Kubernetes credentials.  Every request carries ``Authorization: Bearer <token>``,
where the token is valid for that one run only.  The run is addressed by
namespace and name::

    GET  /v1/runs/{namespace}/{name}/context?attempt=N   -> RunContext
    POST /v1/runs/{namespace}/{name}/heartbeat            <- Heartbeat
    POST /v1/runs/{namespace}/{name}/metadata             <- MetadataUpdate
    POST /v1/runs/{namespace}/{name}/complete             <- Completion
    POST /v1/runs/{namespace}/{name}/fail                 <- Failure
    POST /v1/runs/{namespace}/{name}/trigger              <- TriggerRequest -> TriggerResponse
    POST /v1/runs/{namespace}/{name}/wait                 <- WaitRequest -> WaitResponse
    POST /v1/runs/{namespace}/{name}/checkpoint           <- Checkpoint
    POST /v1/runs/{namespace}/{name}/journal              <- JournalUpdate
    POST /v1/runs/{namespace}/{name}/token                <- CreateToken -> TokenInfo
    POST /v1/runs/{namespace}/{name}/complete_token       <- CompleteToken

``trigger``, ``wait``, ``checkpoint``, ``journal`` and ``token`` carry waits and child
runs (checkpoint by replay, ``docs/waits.md``); ``complete_token`` completes any
WaitToken of the run's namespace.

Request bodies refuse unknown fields; responses tolerate them (a newer operator
may add some).  Answers: 200 ``{"ok": true}`` (or the context); 401 missing or invalid token; 403 a
token of another run; 404 unknown run; 409 the attempt is stale or the run has
already ended; 413 body over the limit; 422 a body that does not validate.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from podtask.api.base import FreeJSON, FreeObject, Model, StatusModel
from podtask.api.durations import Duration
from podtask.api.v1alpha1 import (
    MAX_BATCH_WAIT_RUNS,
    MAX_JOURNAL_BYTES,
    MAX_JOURNAL_ENTRIES,
    MAX_TAGS,
    JournalEntry,
    Phase,
    RunError,
    Tag,
    TaskRunSpec,
    TaskSpec,
    WaitingFor,
    json_size,
)

API_PREFIX = "/v1/runs"

# Environment of every run pod.
ENV_API_URL = "PODTASK_API_URL"
ENV_TOKEN = "PODTASK_RUN_TOKEN"
ENV_NAMESPACE = "PODTASK_RUN_NAMESPACE"
ENV_RUN_NAME = "PODTASK_RUN_NAME"
ENV_ATTEMPT = "PODTASK_ATTEMPT"
ENV_ENTRYPOINT = "PODTASK_ENTRYPOINT"
ENV_DEV_SESSION = "PODTASK_DEV_SESSION"
"""Set (by ``podtask dev``, through the Task's env) when the attempt runs on a developer's
machine: the pod's runner then only stands in for it (``podtask.runner``)."""

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
"""Largest request body the API accepts: a 10 MiB output plus JSON overhead."""

EXIT_REPORTED = 0
"""The runner reported the outcome (success or failure) to the API."""
EXIT_NOT_REPORTED = 1
"""The runner could not report: the operator treats the attempt as crashed."""
EXIT_CANCELED = 143
"""SIGTERM: the run was canceled (or the pod evicted); on_cancel ran."""

ENV_TERMINATION_MESSAGE_PATH = "PODTASK_TERMINATION_MESSAGE_PATH"
"""Where the runner writes its termination message; unset in a real pod, where the
container's ``terminationMessagePath`` is the Kubernetes default below."""
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE_BYTES = 4096
"""The kubelet keeps at most this much of the message (MaxContainerTerminationMessageLength)."""
TERMINATION_REPORT_PREFIX = "podtask-outcome/v1 "


class RunInfo(StatusModel):
    """What a run knows about itself (``ctx.run`` in the task)."""

    namespace: str
    name: str
    uid: str
    task: str
    attempt: int
    max_attempts: int
    machine: str
    queue: str | None = None
    tags: list[str] = Field(default_factory=list)
    parent_run: str | None = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    created_at: str | None = None


class RunContext(StatusModel):
    """GET …/context: everything the runner needs to start an attempt."""

    run: RunInfo
    task: TaskSpec
    payload: FreeJSON = None
    metadata: FreeObject = Field(default_factory=dict)
    heartbeat_interval_seconds: float = 30.0
    journal: list[JournalEntry] = Field(default_factory=list)
    """What this attempt did before its last checkpoint: replayed, not redone."""
    resumed: bool = False
    """The attempt resumes after a checkpoint (on_start hooks already ran)."""
    wait_checkpoint_seconds: float = 10.0
    """Waits expected to end sooner sleep in the pod; longer ones checkpoint."""


class Heartbeat(Model):
    attempt: int = Field(ge=1)


class MetadataUpdate(Model):
    """The whole metadata document as the run now sees it (the runner coalesces)."""

    attempt: int = Field(ge=1)
    metadata: FreeObject


class Completion(Model):
    attempt: int = Field(ge=1)
    output: FreeJSON = None


class RetryDecision(Model):
    """What the task (AbortTaskRunError, catch_error) said about retrying."""

    skip: bool = Field(default=False, description="Do not retry (AbortTaskRunError).")
    delay_seconds: float | None = Field(
        default=None, ge=0, description="Retry after this delay instead of the policy's."
    )


class Failure(Model):
    attempt: int = Field(ge=1)
    error: RunError
    retry: RetryDecision = Field(default_factory=RetryDecision)


def run_path(namespace: str, name: str, action: str) -> str:
    return f"{API_PREFIX}/{namespace}/{name}/{action}"


def ok() -> dict[str, Any]:
    return {"ok": True}


# --------------------------------------------------------------------------- waits and children


def _journal_fits(entries: list[JournalEntry]) -> list[JournalEntry]:
    size = json_size([entry.to_wire() for entry in entries])
    if size > MAX_JOURNAL_BYTES:
        raise ValueError(
            f"the journal is {size} bytes as JSON; the limit is {MAX_JOURNAL_BYTES} bytes "
            "(keep step outputs small: store large results elsewhere and return a reference)"
        )
    return entries


JournalEntries = Annotated[
    list[JournalEntry], Field(max_length=MAX_JOURNAL_ENTRIES), AfterValidator(_journal_fits)
]


class ChildRun(Model):
    """One child run to create: its spec (``parentRun`` is set by the operator) and labels."""

    spec: TaskRunSpec
    labels: dict[str, str] = Field(default_factory=dict)


class TriggerRequest(Model):
    """POST …/trigger: create child runs for the journal entry at ``position``.

    Their names are derived from the parent, the attempt, the position and the
    index, so sending the same request again (a retry, a replay) creates nothing new.
    """

    attempt: int = Field(ge=1)
    position: int = Field(ge=0)
    runs: list[ChildRun] = Field(min_length=1, max_length=MAX_BATCH_WAIT_RUNS)


class TriggerResponse(StatusModel):
    runs: list[str]
    """The children's names, in the order of the request."""


class WaitRequest(Model):
    """POST …/wait: is this wait over?  Answers at once when it is, else after at most
    ``block_seconds`` (a long poll), or sooner when checkpointing now is wiser."""

    attempt: int = Field(ge=1)
    waiting_for: WaitingFor
    block_seconds: float = Field(default=0.0, ge=0, le=60)


class ChildResult(StatusModel):
    """A finished child run: Trigger.dev's ``{ok, id, taskIdentifier, output, error}``."""

    name: str
    task: str = ""
    ok: bool
    phase: Phase | None = None
    output: FreeJSON = None
    error: RunError | None = None


class TokenResult(StatusModel):
    """A completed (or timed-out) WaitToken."""

    name: str
    ok: bool
    output: FreeJSON = None
    error: RunError | None = None


class WaitResponse(StatusModel):
    resolved: bool
    checkpoint_now: bool = False
    """Not resolved, and waiting in the pod is pointless (e.g. a child queues behind
    this run's own slot): checkpoint at once."""
    runs: list[ChildResult] = Field(default_factory=list)
    token: TokenResult | None = None


class Checkpoint(Model):
    """POST …/checkpoint: the attempt stops here and resumes in a new pod once
    ``waiting_for`` is over; answered after the journal and the Waiting phase are
    written, so the runner may exit."""

    attempt: int = Field(ge=1)
    waiting_for: WaitingFor
    journal: JournalEntries


class JournalUpdate(Model):
    """POST …/journal: make the journal durable now (after a step), answered once written."""

    attempt: int = Field(ge=1)
    journal: JournalEntries


class CreateToken(Model):
    """POST …/token: create the WaitToken for the journal entry at ``position``."""

    attempt: int = Field(ge=1)
    position: int = Field(ge=0)
    timeout: Duration | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


class TokenInfo(StatusModel):
    name: str
    expires_at: datetime | None = None


class CompleteToken(Model):
    """POST …/complete_token: complete a WaitToken of the run's namespace."""

    attempt: int = Field(ge=1)
    token: str = Field(min_length=1, max_length=253)
    output: FreeJSON = None


class TerminationReport(Model):
    """The attempt's outcome, kept in the container's termination message.

    The runner writes it before it reports over the run API, so that the outcome outlives an
    operator outage longer than the runner's report deadline: the kubelet copies the message
    into the pod's status, where a restarted operator finds it (DESIGN §9: level-triggered).
    An output too large for the message is left out (``output_omitted``); the operator then
    knows the task succeeded but cannot record its output, and retries the attempt.

    Signed with the run's token (HMAC-SHA256): with ``FallbackToLogsOnError`` a crashed
    container's message is its log tail, and a task that logs untrusted text must not let
    that text pose as its outcome.  Wire form: ``<prefix><hex signature> <JSON>``.
    """

    completion: Completion | None = None
    failure: Failure | None = None
    output_omitted: bool = False

    @property
    def attempt(self) -> int | None:
        report = self.completion or self.failure
        return None if report is None else report.attempt

    def encode(self, token: str) -> str:
        body = self.model_dump_json(by_alias=True, exclude_none=True)
        return f"{TERMINATION_REPORT_PREFIX}{_sign(token, body)} {body}"

    @classmethod
    def decode(cls, message: str | None, token: str | None) -> TerminationReport | None:
        """The report in a termination message signed with ``token``; None for anything
        else (logs, garbage, a signature that does not match)."""
        if not message or not token or not message.startswith(TERMINATION_REPORT_PREFIX):
            return None
        signature, _, body = message[len(TERMINATION_REPORT_PREFIX) :].partition(" ")
        if not hmac.compare_digest(signature, _sign(token, body)):
            return None
        try:
            return cls.model_validate_json(body)
        except ValueError:
            return None

    def fits(self) -> bool:
        body = self.model_dump_json(by_alias=True, exclude_none=True)
        signed = len(TERMINATION_REPORT_PREFIX) + _SIGNATURE_LENGTH + 1 + len(body.encode())
        return signed <= MAX_TERMINATION_MESSAGE_BYTES

    @classmethod
    def fitting(cls, report: Completion | Failure) -> TerminationReport:
        """The report, with what does not fit in a termination message left out."""
        whole = cls(completion=report) if isinstance(report, Completion) else cls(failure=report)
        if whole.fits():
            return whole
        if isinstance(report, Completion):
            return cls(completion=Completion(attempt=report.attempt), output_omitted=True)
        for kept in (1000, 0):
            error = report.error.model_copy(
                update={"message": report.error.message[:kept], "stack": None}
            )
            short = cls(failure=report.model_copy(update={"error": error}))
            if short.fits():
                break
        return short


_SIGNATURE_LENGTH = 64  # hex of HMAC-SHA256


def _sign(token: str, body: str) -> str:
    return hmac.new(token.encode(), body.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------- plain triggers and events
#
#   POST /v1/runs/{namespace}/{name}/trigger  <- RunTriggerRequest -> RunTriggerResponse
#   GET  /v1/runs/{namespace}/{name}/events?run=<child>&closeOnComplete=false
#        -> text/event-stream of EVENT_RUN / EVENT_DELETED events

EVENTS_ACTION = "events"
EVENTS_KEEPALIVE_SECONDS = 15.0
"""The events stream sends an SSE comment at least this often, so a dead peer shows."""
EVENT_RUN = "run"
"""An event whose data is the TaskRun as the operator sees it now (status and metadata)."""
EVENT_DELETED = "deleted"
"""The subscribed run was deleted; the stream ends after it."""


class TriggerChild(ChildRun):
    """One run a plain ``trigger``/``batch_trigger`` makes inside a run."""

    annotations: dict[str, str] = Field(default_factory=dict)


class RunTriggerRequest(Model):
    """POST …/trigger: :class:`TriggerRequest`, or with ``detached`` the children of a
    plain ``trigger``/``batch_trigger`` that nobody waits for.

    A detached child with an idempotency key is named by its key (as outside a run), so
    the run holding the key is the answer (``cached``); the others are named by the
    position, as waited-for children are.  Each child answers on its own: one that cannot
    be made is an error item, the others are made all the same.
    """

    attempt: int = Field(ge=1)
    position: int = Field(ge=0)
    runs: list[TriggerChild] = Field(min_length=1, max_length=MAX_BATCH_WAIT_RUNS)
    detached: bool = False
    verify_tasks: bool = False
    """Detached only: a child whose Task is not deployed in the namespace is an error item."""


class TriggeredRun(StatusModel):
    """One child of a detached trigger: made, found under its idempotency key, or refused."""

    name: str = ""
    cached: bool = False
    error: RunError | None = None
    status: int | None = None
    """The API server's HTTP status when it refused the child."""


class RunTriggerResponse(TriggerResponse):
    items: list[TriggeredRun] = Field(default_factory=list)
    """Detached only: one item per child, in the order of the request."""
