"""kopf handlers for Schedules: watch events in, the schedule controller decides.

kopf keeps one watch per resource kind however many handlers use it, so the
TaskRun and Task handlers here share the run controller's streams.  No handler
writes through kopf: the controller writes status itself.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from podtask.api.base import GROUP
from podtask.api.v1alpha1 import VERSION
from podtask_operator.kube import Kube
from podtask_operator.schedule_controller import ScheduleController
from podtask_operator.schedules import SCHEDULE_LABEL
from podtask_operator.settings import Settings

log = logging.getLogger("podtask.schedules")


def _plain(body: Any) -> dict[str, Any]:
    return dict(body)


def _controller(memo: Any) -> ScheduleController | None:
    return getattr(memo, "schedule_controller", None)


@kopf.on.startup()
async def start_schedules(memo: kopf.Memo, **_: Any) -> None:
    # Its own client: the schedule controller's requests never queue behind a burst
    # of the run controller's pod writes.
    kube = await Kube.connect()
    controller = ScheduleController(kube, Settings.from_env().namespaces)
    await controller.prime()
    controller.start()
    memo.schedule_controller = controller
    memo.schedule_kube = kube
    log.info("schedule controller started with %d schedules", len(controller.schedules))


@kopf.on.cleanup()
async def stop_schedules(memo: kopf.Memo, **_: Any) -> None:
    controller = _controller(memo)
    if controller is not None:
        await controller.stop()
    kube = getattr(memo, "schedule_kube", None)
    if kube is not None:
        with contextlib.suppress(Exception):
            await kube.close()


@kopf.on.event(GROUP, VERSION, "schedules")
async def schedule_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    controller = _controller(memo)
    if controller is not None:
        controller.on_schedule(type, _plain(body))


@kopf.on.event(GROUP, VERSION, "taskruns", labels={SCHEDULE_LABEL: kopf.PRESENT})
async def scheduled_run_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    controller = _controller(memo)
    if controller is not None:
        controller.on_run(type, _plain(body))


@kopf.on.event(GROUP, VERSION, "tasks")
async def task_event_for_schedules(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    controller = _controller(memo)
    if controller is not None:
        controller.on_task(type, _plain(body))


@kopf.on.probe(id="schedules")
def schedules_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    controller = _controller(memo)
    return controller.healthy() if controller is not None else {"primed": False}
