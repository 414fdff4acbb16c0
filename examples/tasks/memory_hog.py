"""``memory.allocate.mb``: use memory, to test OOMKilled retries on a bigger machine.

Payload ``{"mb": 512, "retry_mb": 10}``.  Runs on ``micro`` (256 MiB).  Attempt 1
allocates ``mb`` MiB (default 512) and holds it for a second, which gets a
``micro`` pod OOMKilled; the retry policy then retries on ``small-2x`` (1 GiB),
where attempt 2+ allocates only ``retry_mb`` MiB (default 10) and returns
``{"attempt": n, "allocated_mb": m}``.
"""

from __future__ import annotations

import time
from typing import Any

from podtask import TaskContext, task

MIB = 1024 * 1024


@task(
    id="memory.allocate.mb",
    machine="micro",
    retry={
        "max_attempts": 3,
        "min_timeout": "1s",
        "randomize": False,
        "out_of_memory": {"machine": "small-2x"},
    },
)
def memory_hog(payload: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    megabytes = int(payload.get("mb", 512) if ctx.attempt == 1 else payload.get("retry_mb", 10))
    # bytearray pages are written, so the memory is resident, not just reserved.
    hog = bytearray(megabytes * MIB)
    for offset in range(0, len(hog), 4096):
        hog[offset] = 1
    time.sleep(1)
    del hog
    return {"attempt": ctx.attempt, "allocated_mb": megabytes}
