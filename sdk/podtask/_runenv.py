"""Which run, if any, this process executes: read from the run pod's environment.

A trigger made inside a run links the child to it (``spec.parentRun``) and scopes
idempotency keys to it; outside a run both are absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from podtask import protocol


@dataclass(frozen=True, slots=True)
class CurrentRun:
    namespace: str
    name: str
    attempt: int


def current_run(env: Mapping[str, str] | None = None) -> CurrentRun | None:
    """The run this process executes, from the variables every run pod carries."""
    env = os.environ if env is None else env
    name = env.get(protocol.ENV_RUN_NAME)
    namespace = env.get(protocol.ENV_NAMESPACE)
    if not name or not namespace:
        return None
    attempt = env.get(protocol.ENV_ATTEMPT, "")
    return CurrentRun(namespace, name, int(attempt) if attempt.isdigit() else 1)
