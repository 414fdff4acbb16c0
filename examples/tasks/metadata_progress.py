"""``metadata.report.progress``: report progress through run metadata.

Payload ``{"steps": 5, "step_seconds": 0.5}``: for each step i in 1..steps
(default 5) sleeps ``step_seconds`` (default 0.5) and sets metadata
``progress`` to i/steps, so watchers see it rise to 1.0.  Returns
``{"steps": steps}``.
"""

from __future__ import annotations

import time
from typing import Any

from podtask import metadata, task


@task(id="metadata.report.progress", machine="micro")
def metadata_progress(payload: dict[str, Any]) -> dict[str, int]:
    steps = int(payload.get("steps", 5))
    step_seconds = float(payload.get("step_seconds", 0.5))
    metadata.set("progress", 0)
    for step in range(1, steps + 1):
        time.sleep(step_seconds)
        metadata.set("progress", step / steps)
    return {"steps": steps}
