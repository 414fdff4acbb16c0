"""Child runs triggered and followed from inside a run, through the run API (docs/sdk.md).

* ``children.fanout``: payload ``{"names": ["Ada", "Grace"]}``; one ``hello.world`` run
  per name, triggered as a batch without waiting; returns the batch id and the children.
* ``children.watch``: payload ``{"steps": 5}``; triggers ``metadata.report.progress`` and
  subscribes to it from inside its own pod; returns every ``[phase, progress]`` it saw and
  the child's output.
"""

from __future__ import annotations

from typing import Any

from examples.tasks.hello import hello_world
from examples.tasks.metadata_progress import metadata_progress
from podtask import runs, task


@task(id="children.fanout", machine="micro")
def fanout(payload: dict[str, Any]) -> dict[str, Any]:
    batch = hello_world.batch_trigger([{"payload": {"name": n}} for n in payload["names"]])
    return {"batch": batch.batch_id, "children": [handle.id for handle in batch.runs]}


@task(id="children.watch", machine="micro")
def watch(payload: dict[str, Any]) -> dict[str, Any]:
    child = metadata_progress.trigger({"steps": payload.get("steps", 5), "step_seconds": 1.0})
    seen: list[list[Any]] = []
    for run in runs.subscribe(child, timeout=120):  # live, from the run API's events
        status = run.status
        if status is not None:
            seen.append([status.phase, (status.metadata or {}).get("progress")])
    return {"child": child.id, "seen": seen, "output": child.result(timeout=60).unwrap()}
