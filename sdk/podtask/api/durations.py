"""Durations as people write them: ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2w"``.

Trigger.dev accepts the same shorthand for ``delay``, ``ttl`` and
``idempotencyKeyTTL``; Kubernetes users know it from Go's ``time.ParseDuration``.
The regular expression is also emitted into the CRDs, so the API server rejects
a bad duration at ``kubectl apply`` with the same rule the SDK applies.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
# Units are tried longest first so "ms" is not read as "m" followed by junk.
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"
_PART_RE = re.compile(_PART)
MAX_DURATION_SECONDS = 1000 * 365.25 * 86400
_DURATION_RE = re.compile(DURATION_PATTERN)


class DurationError(ValueError):
    """A string that is not a duration like ``"90s"`` or ``"1h30m"``."""


def parse_duration(text: str) -> timedelta:
    """Parse ``"1h30m"`` into a timedelta; raise DurationError for anything else."""
    if not isinstance(text, str) or not _DURATION_RE.fullmatch(text):
        raise DurationError(
            f"{text!r} is not a duration: use a number and a unit (ms, s, m, h, d, w), "
            'e.g. "90s", "10m", "1h30m"'
        )
    seconds = sum(float(value) * _UNIT_SECONDS[unit] for value, unit in _PART_RE.findall(text))
    # Longer durations overflow dates and timers wherever they are added to "now"; refusing
    # them here (a ValueError) makes validation report them instead of crashing a caller.
    if not seconds <= MAX_DURATION_SECONDS:
        raise DurationError(f"{text!r} is longer than the longest duration, 1000 years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | float) -> str:
    """The shortest canonical spelling: 5400 s -> ``"1h30m"``."""
    total = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if total < 0:
        raise DurationError("a duration cannot be negative")
    millis = round(total * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_UNIT_SECONDS[unit] * 1000)
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _check(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[
    str,
    AfterValidator(_check),
    # The pattern goes only into the JSON schema (and so the CRD); in Python the
    # validator above gives the clearer message.
    Field(json_schema_extra={"pattern": DURATION_PATTERN}),
]
"""A duration string, validated in the SDK and (by pattern) in the CRD."""
