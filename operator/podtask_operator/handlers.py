"""kopf handlers: thin translations of watch events into calls on the controller.

One raw event handler per kind keeps the controller's cache current; every
decision is made by the controller's workers from that cache.  No handler
writes through kopf, so kopf adds no progress annotations or per-cycle PATCHes
to the runs (kopf's own storage names are still ours, set in ``configure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import kopf
from aiohttp import web
from kubernetes_asyncio import client
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from podtask.api.base import GROUP
from podtask.api.v1alpha1 import VERSION
from podtask_operator.controller import Controller
from podtask_operator.dispatcher import Dispatcher
from podtask_operator.kube import GROUP_PATH, Kube
from podtask_operator.metrics import OperatorMetrics
from podtask_operator.runapi import RunApiMetrics, create_app, start_run_api
from podtask_operator.runevents import RunWatchers
from podtask_operator.settings import Settings
from podtask_operator.tokens import RunTokens, load_or_create_key

log = logging.getLogger("podtask.operator")
POD_LABELS = {"app.kubernetes.io/managed-by": "podtask"}
GAUGE_INTERVAL = 5.0


def _plain(body: Any) -> dict[str, Any]:
    return dict(body)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    config = Settings.from_env()
    kube = await Kube.connect()
    key = config.run_api_key or await load_or_create_key(
        client.CoreV1Api(kube.api), config.operator_namespace, config.api_key_secret
    )
    controller = Controller(kube, config, RunTokens(key), OperatorMetrics(REGISTRY))
    dispatcher = Dispatcher(kube, config, controller.queue.add)
    controller.admission = dispatcher
    for namespace in config.namespaces or ("",):
        prefix = f"/namespaces/{namespace}" if namespace else ""
        for queue in (await kube.list(f"{GROUP_PATH}{prefix}/queues")).get("items", []):
            dispatcher.on_queue("ADDED", queue)
    await controller.prime()
    await dispatcher.prime(controller.runs)
    controller.start()
    # Run pods follow runs through the run API; the TaskRun watch below wakes them.
    watchers = RunWatchers(controller.runs)
    app = create_app(controller, RunTokens(key), metrics=RunApiMetrics(REGISTRY), watchers=watchers)
    app.router.add_get("/metrics", _metrics)
    memo.controller = controller
    memo.watchers = watchers
    memo.dispatcher = dispatcher
    memo.queue_status = asyncio.create_task(dispatcher.status_loop())
    memo.kube = kube
    memo.api_runner = await start_run_api(app, config.api_host, config.api_port)
    memo.gauges = asyncio.create_task(_refresh_gauges(controller))
    log.info("podtask operator started: run API on %s:%s", config.api_host, config.api_port)


class EventsOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds a diff base, a deep copy of the whole object, on every watch event
    for change-detecting handlers (on.create/update/field) to compare.  Raw event
    handlers never read it, so with only those the copy is skipped (in the benchmark's
    profile it was half of kopf's time per event)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def has_change_handlers(registry: kopf.OperatorRegistry) -> bool:
    """Whether any on.create/update/delete/field handler is registered (if kopf's
    registry cannot tell, assume so)."""
    changing = getattr(registry, "_changing", None)
    try:
        return bool(changing.get_all_handlers()) if changing is not None else True
    except Exception:  # kopf's internals changed: build diff bases as kopf does
        return True


def configure(settings: kopf.OperatorSettings) -> None:
    """Our own names for everything kopf stores, and quiet, bounded I/O."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    storage = (
        kopf.AnnotationsDiffBaseStorage
        if has_change_handlers(kopf.get_default_registry())
        else EventsOnlyDiffBase
    )
    settings.persistence.diffbase_storage = storage(prefix=GROUP, key="last-handled-configuration")
    # Each posted Event is an API write; ours are posted by the controller.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.scanning.disabled = True


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _refresh_gauges(controller: Controller) -> None:
    while True:
        controller.refresh_gauges()
        await asyncio.sleep(GAUGE_INTERVAL)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in (memo.gauges, memo.queue_status):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await memo.api_runner.cleanup()
    await memo.controller.stop()
    await memo.kube.close()


@kopf.on.event(GROUP, VERSION, "taskruns")
async def taskrun_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.controller.on_run(type, _plain(body))
    memo.watchers.changed(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, "tasks")
async def task_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.controller.on_task(type, _plain(body))


@kopf.on.event(GROUP, VERSION, "queues")
async def queue_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.dispatcher.on_queue(type, _plain(body))


@kopf.on.event(GROUP, VERSION, "waittokens")
async def waittoken_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.controller.on_token(type, _plain(body))


@kopf.on.event("", "v1", "pods", labels=POD_LABELS)
async def pod_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    memo.controller.on_pod(type, _plain(body))


@kopf.on.probe(id="controller")
def controller_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return dict(memo.controller.healthy())
