"""``sleep.wait.seconds``: sleep, and record a cancel.

Payload ``{"seconds": 30, "marker": "canceled.txt"}``: sleeps ``seconds`` (default 60)
and returns ``{"slept": seconds}``.  When the run is canceled meanwhile, its
``on_cancel`` hook prints ``sleeper canceled`` and, if ``marker`` is given,
writes ``canceled`` to that file, which a test can check.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from podtask import task


@task(id="sleep.wait.seconds", machine="micro")
def sleeper(payload: dict[str, Any]) -> dict[str, float]:
    seconds = float(payload.get("seconds", 60))
    print(f"sleeping {seconds:g}s", flush=True)
    time.sleep(seconds)
    return {"slept": seconds}


@sleeper.on_cancel
def record_cancel(payload: dict[str, Any]) -> None:
    print("sleeper canceled", flush=True)
    marker = payload.get("marker")
    if marker:
        Path(marker).write_text("canceled")
