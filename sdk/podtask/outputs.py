"""Large run outputs, split across Secrets owned by the run.

Output up to the inline limit lives in ``status.output``.  Beyond it (Trigger.dev
allows 10 MB) the JSON bytes are cut into chunks that each fit a Secret (the API
server caps a Secret at 1 MiB and a request at 1.5 MiB) and ``status.outputRef``
names them with the size and SHA-256, so a reader can verify it got every byte.
The operator writes the chunks; the SDK reads them back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

CHUNK_BYTES = 700 * 1024
CHUNK_KEY = "chunk"
MAX_OUTPUT_BYTES = 10 * 1024 * 1024
"""Trigger.dev's documented output limit."""


class OutputIntegrityError(ValueError):
    """The chunks read back do not add up to the recorded output."""


def encode(value: Any) -> bytes:
    """The canonical JSON bytes of an output (what size and digest refer to)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]


def assemble(chunks: list[bytes], size: int, sha256: str) -> Any:
    data = b"".join(chunks)
    if len(data) != size or digest(data) != sha256:
        raise OutputIntegrityError(
            f"output chunks hold {len(data)} bytes with digest {digest(data)[:12]}; "
            f"expected {size} bytes with digest {sha256[:12]}"
        )
    return json.loads(data)
