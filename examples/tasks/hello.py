"""``hello.world``: greet someone.

Payload ``{"name": "Ada"}``; output ``{"greeting": "Hello, Ada!"}``.  Sets the
run's metadata ``progress`` to 0 at the start and 1 at the end.
"""

from __future__ import annotations

from typing import Any

from podtask import metadata, task


@task(id="hello.world", machine="micro")
def hello_world(payload: dict[str, Any]) -> dict[str, str]:
    metadata.set("progress", 0)
    greeting = f"Hello, {payload['name']}!"
    metadata.set("progress", 1)
    return {"greeting": greeting}
