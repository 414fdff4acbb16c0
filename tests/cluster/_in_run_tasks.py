"""Tasks for ``test_in_run.py``: plain triggers from inside a run pod.

* ``inrun.parent``: triggers ``inrun.leaf`` by object with every option, again with the
  same idempotency key (cached), and a batch by id with per-item options and one item
  of a task that is not deployed; returns what the handles said.

The subscription example the test runs is ``examples/tasks/in_run.py`` (docs/sdk.md).
"""

from __future__ import annotations

from typing import Any

from podtask import TaskContext, task, tasks


@task(id="inrun.leaf", machine="micro")
def leaf(payload: dict[str, Any]) -> dict[str, Any]:
    return {"n": payload.get("n")}


@task(id="inrun.parent", machine="micro")
def parent(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    one = leaf.trigger(
        {"n": 1},
        idempotency_key="one",
        concurrency_key="tenant-1",
        queue="inrun-queue",
        delay="1h",  # the children wait: this test looks at them, not at their pods
        ttl="2h",
        tags=["in-run"],
        metadata={"from": ctx.run.name},
        machine="small-1x",
        max_attempts=4,
        max_duration="30s",
        priority=7,
        labels={"team": "inrun"},
    )
    again = leaf.trigger({"n": 1}, idempotency_key="one")
    batch = tasks.batch_trigger(
        "inrun.leaf",
        [
            {"payload": {"n": 2}, "options": {"tags": ["b0"], "delay": "1h"}},
            {"payload": {"n": 3}, "options": {"priority": 3, "delay": "1h"}},
            {"payload": {}, "task": "inrun.missing"},
        ],
    )
    return {
        "one": one.id,
        "one_cached": one.is_cached,
        "again": again.id,
        "again_cached": again.is_cached,
        "batch_id": batch.batch_id,
        "batch_runs": [handle.id for handle in batch.runs],
        "batch_errors": [[error.index, error.type] for error in batch.errors],
    }
