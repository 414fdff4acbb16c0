"""Runs from any process with access to the cluster: retrieve, list, watch, cancel, replay.

::

    from podtask import runs

    run = runs.retrieve("email-send-welcome-x7k2p")
    for run in runs.subscribe(run):               # live phase and metadata
        print(run.status.phase, run.status.metadata)
    runs.list(task="email.send.welcome", status="FAILED", period="1d")
    runs.replay(run)

Each function takes the run as its name, a handle or a TaskRun, an optional
namespace (default: the current run's, else the kubeconfig context's), and
``api``: an official ``kubernetes`` ``ApiClient`` to use instead of the default
client (kubeconfig or in-cluster credentials).  The async forms are the methods
of :class:`podtask.aio.AsyncClient`.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from podtask._kube import load_api_client
from podtask._runview import parse_phase
from podtask.api.v1alpha1 import OutputRef, Phase, TaskRun
from podtask.client import RunHandle, TaskRunResult, client_for

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "cancel",
    "default_api_client",
    "list",
    "logs",
    "output",
    "parse_phase",
    "poll",
    "read_output_ref",
    "replay",
    "result",
    "retrieve",
    "subscribe",
]

RunRef = str | RunHandle[Any] | TaskRun


def default_api_client() -> ApiClient:
    """An official client from in-cluster credentials, else the kubeconfig."""
    return load_api_client()


def retrieve(run: RunRef, namespace: str | None = None, *, api: ApiClient | None = None) -> TaskRun:
    """The run as stored now; :class:`~podtask.errors.RunNotFoundError` if there is none."""
    return client_for(api).retrieve(run, namespace)


def list(  # Trigger.dev's name: runs.list
    *,
    task: str | Sequence[str] | None = None,
    status: str | Phase | Iterable[str | Phase] | None = None,
    tag: str | Sequence[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    period: str | float | timedelta | None = None,
    batch_id: str | None = None,
    label_selector: str | None = None,
    limit: int | None = None,
    namespace: str | None = None,
    all_namespaces: bool = False,
    api: ApiClient | None = None,
) -> builtins.list[TaskRun]:
    """Runs, newest first, matching every filter given; see :meth:`podtask.Client.list`."""
    return client_for(api).list(
        task=task,
        status=status,
        tag=tag,
        created_after=created_after,
        created_before=created_before,
        period=period,
        batch_id=batch_id,
        label_selector=label_selector,
        limit=limit,
        namespace=namespace,
        all_namespaces=all_namespaces,
    )


def output(
    run: TaskRun | str, *, namespace: str | None = None, api: ApiClient | None = None
) -> Any:
    """The run's output, read back from its Secrets when it was too large to inline."""
    return client_for(api).output(run, namespace)


def read_output_ref(ref: OutputRef, namespace: str, *, api: ApiClient | None = None) -> Any:
    return client_for(api).read_output_ref(ref, namespace)


def cancel(run: RunRef, namespace: str | None = None, *, api: ApiClient | None = None) -> TaskRun:
    """Cancel the run (``spec.cancel: true``): its pod gets SIGTERM, ``on_cancel`` runs."""
    return client_for(api).cancel(run, namespace)


def replay(run: RunRef, namespace: str | None = None, *, api: ApiClient | None = None) -> TaskRun:
    """A new run with the same task, payload and options, linked by ``spec.replayOf``."""
    return client_for(api).replay(run, namespace)


def subscribe(
    run: RunRef,
    namespace: str | None = None,
    *,
    close_on_complete: bool = True,
    timeout: float | None = None,
    api: ApiClient | None = None,
) -> Iterator[TaskRun]:
    """The run now and at every change of status, metadata or tags (a watch)."""
    return client_for(api).subscribe(
        run, namespace, close_on_complete=close_on_complete, timeout=timeout
    )


def poll(
    run: RunRef,
    namespace: str | None = None,
    *,
    timeout: float | None = None,
    api: ApiClient | None = None,
) -> TaskRun:
    """Wait for the run to end; :class:`~podtask.errors.RunTimeoutError` after ``timeout``."""
    return client_for(api).poll(run, namespace, timeout=timeout)


def result(
    run: RunRef,
    namespace: str | None = None,
    *,
    timeout: float | None = None,
    api: ApiClient | None = None,
) -> TaskRunResult[Any]:
    """Wait for the run to end; its outcome (``ok``, ``output``, ``error``, ``unwrap()``)."""
    return client_for(api).result(run, namespace, timeout=timeout)


def logs(
    run: RunRef,
    namespace: str | None = None,
    *,
    attempt: int | None = None,
    follow: bool = False,
    api: ApiClient | None = None,
) -> Iterator[str]:
    """Log lines of an attempt's pod (the latest by default); see :meth:`Client.logs`."""
    return client_for(api).logs(run, namespace, attempt=attempt, follow=follow)
