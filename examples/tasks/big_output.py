"""``output.generate.big``: return a large, incompressible string.

Payload ``{"seed": 1, "bytes": 3145728}``: the output is a str of exactly
``bytes`` characters (default 3 MiB): the base64 of bytes drawn from
``random.Random(seed)``, so the same payload always gives the same output and
its size and SHA-256 can be checked.  Used to test outputs stored outside the
TaskRun status.
"""

from __future__ import annotations

import base64
import random
from typing import Any

from podtask import task

DEFAULT_BYTES = 3 * 1024 * 1024


def generate(seed: int, size: int) -> str:
    """``size`` base64 characters derived from ``seed``."""
    raw = random.Random(seed).randbytes(size * 3 // 4 + 3)
    return base64.b64encode(raw).decode()[:size]


@task(id="output.generate.big", machine="small-1x")
def big_output(payload: dict[str, Any]) -> str:
    return generate(int(payload.get("seed", 0)), int(payload.get("bytes", DEFAULT_BYTES)))
