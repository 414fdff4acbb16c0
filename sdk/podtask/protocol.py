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

Request bodies refuse unknown fields; responses tolerate them (a newer operator
may add some).  Answers: 200 ``{"ok": true}`` (or the context); 401 missing or invalid token; 403 a
token of another run; 404 unknown run; 409 the attempt is stale or the run has
already ended; 413 body over the limit; 422 a body that does not validate.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from podtask.api.base import FreeJSON, FreeObject, Model, StatusModel
from podtask.api.v1alpha1 import RunError, TaskSpec

API_PREFIX = "/v1/runs"

# Environment of every run pod.
ENV_API_URL = "PODTASK_API_URL"
ENV_TOKEN = "PODTASK_RUN_TOKEN"
ENV_NAMESPACE = "PODTASK_RUN_NAMESPACE"
ENV_RUN_NAME = "PODTASK_RUN_NAME"
ENV_ATTEMPT = "PODTASK_ATTEMPT"
ENV_ENTRYPOINT = "PODTASK_ENTRYPOINT"

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
"""Largest request body the API accepts: a 10 MiB output plus JSON overhead."""

EXIT_REPORTED = 0
"""The runner reported the outcome (success or failure) to the API."""
EXIT_NOT_REPORTED = 1
"""The runner could not report: the operator treats the attempt as crashed."""
EXIT_CANCELED = 143
"""SIGTERM: the run was canceled (or the pod evicted); on_cancel ran."""


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
