"""``abort.fail.now``: fail at once, without retrying.

Raises ``AbortTaskRunError("no retry")`` on its first attempt; although the retry
policy allows 3 attempts, the run fails after one, with error type
``AbortTaskRunError`` and message ``no retry``.
"""

from __future__ import annotations

from typing import Any

from podtask import AbortTaskRunError, task


@task(id="abort.fail.now", machine="micro", retry={"max_attempts": 3, "min_timeout": "1s"})
def abort(payload: Any) -> None:
    raise AbortTaskRunError("no retry")
