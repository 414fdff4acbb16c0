"""Tasks for schedules (used by the schedule tests and docs).

* ``schedule.echo`` returns the payload it got, exactly as the schedule sent it.
* ``schedule.slow`` sleeps ``data.seconds`` (default 10) and returns the tick.
* ``schedule.odd-fails`` fails (without retrying) for ticks on an odd second.
* ``schedule.typed`` is a ``@schedules.task``: it gets a parsed
  :class:`~podtask.schedules.ScheduledPayload` and reports what it read.
"""

from __future__ import annotations

import time
from typing import Any

from podtask import AbortTaskRunError, schedules, task


@task(id="schedule.echo", machine="micro")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@task(id="schedule.slow", machine="micro")
def slow(payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float((payload.get("data") or {}).get("seconds", 10))
    time.sleep(seconds)
    return {"timestamp": payload["timestamp"], "slept": seconds}


@task(id="schedule.odd-fails", machine="micro", retry={"max_attempts": 1})
def odd_fails(payload: dict[str, Any]) -> dict[str, Any]:
    second = int(payload["timestamp"][17:19])
    if second % 2:
        raise AbortTaskRunError(f"tick {payload['timestamp']} is on an odd second")
    return {"timestamp": payload["timestamp"]}


@schedules.task(
    id="schedule.typed", cron="*/2 * * * * *", timezone="Europe/Berlin", machine="micro"
)
def typed(payload: schedules.ScheduledPayload) -> dict[str, Any]:
    return {
        "type": payload.type,
        "timestamp": payload.timestamp.isoformat(),
        "timezone": payload.timezone,
        "scheduleId": payload.schedule_id,
        "gapToNext": (payload.upcoming[0] - payload.timestamp).total_seconds(),
    }
