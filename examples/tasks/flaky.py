"""``flaky.fail.until``: fail the first attempts, then succeed.

Raises ``RuntimeError`` while the attempt number is below ``payload["succeed_on"]``
(default 3), then returns ``{"attempt": <attempt number>}``.  The retry policy
waits 1s, 2s, 4s (no jitter) between at most 5 attempts, so with the default
payload the run completes on attempt 3 after about 3 seconds of backoff.
"""

from __future__ import annotations

from typing import Any

from podtask import TaskContext, task


@task(
    id="flaky.fail.until",
    machine="micro",
    retry={
        "max_attempts": 5,
        "factor": 2,
        "min_timeout": "1s",
        "max_timeout": "4s",
        "randomize": False,
    },
)
def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    succeed_on = int(payload.get("succeed_on", 3))
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose (succeeds on {succeed_on})")
    return {"attempt": ctx.attempt}
