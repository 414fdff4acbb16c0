"""Pure helpers over TaskRun objects shared by the sync and async clients and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from podtask.api.durations import DurationError, parse_duration
from podtask.api.v1alpha1 import FINAL_PHASES, Phase, RunError, TaskRun
from podtask.errors import InvalidTriggerOptionsError

_PHASES = {phase.value.lower(): phase for phase in Phase}
# Trigger.dev's status names, so `--status SYSTEM_FAILURE` and `--status failed` both work.
_ALIASES = {"canceled": Phase.CANCELED, "cancelled": Phase.CANCELED}


def parse_phase(value: str | Phase) -> Phase:
    """A phase from its podtask or Trigger.dev spelling, any case."""
    if isinstance(value, Phase):
        return value
    key = value.replace("_", "").replace("-", "").replace(" ", "").lower()
    phase = _PHASES.get(key) or _ALIASES.get(key)
    if phase is None:
        known = ", ".join(p.value for p in Phase)
        raise InvalidTriggerOptionsError(f"{value!r} is not a run status; use one of {known}")
    return phase


def phase_of(run: Mapping[str, Any]) -> str | None:
    phase = (run.get("status") or {}).get("phase")
    return str(phase) if phase else None


def is_final(run: Mapping[str, Any]) -> bool:
    return phase_of(run) in {p.value for p in FINAL_PHASES}


def created_at(run: Mapping[str, Any]) -> datetime | None:
    value = (run.get("metadata") or {}).get("creationTimestamp")
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def change_key(run: Mapping[str, Any]) -> str:
    """What a subscriber sees change: status (phase, attempts, metadata, output,
    error...), tags and the cancel request."""
    spec = run.get("spec") or {}
    return json.dumps(
        [run.get("status") or {}, spec.get("tags") or [], spec.get("cancel")],
        sort_keys=True,
        default=str,
    )


@dataclass(frozen=True, slots=True)
class RunFilter:
    """``runs.list`` filters; each given one must match."""

    tasks: frozenset[str] = frozenset()
    phases: frozenset[Phase] = frozenset()
    tags: frozenset[str] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def build(
        cls,
        *,
        task: str | Sequence[str] | None = None,
        status: str | Phase | Iterable[str | Phase] | None = None,
        tag: str | Sequence[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        period: str | float | timedelta | None = None,
        now: datetime | None = None,
    ) -> RunFilter:
        tasks = frozenset([task] if isinstance(task, str) else task or [])
        if status is None:
            phases: frozenset[Phase] = frozenset()
        elif isinstance(status, str | Phase):
            phases = frozenset([parse_phase(status)])
        else:
            phases = frozenset(parse_phase(s) for s in status)
        tags = frozenset([tag] if isinstance(tag, str) else tag or [])
        after = _aware(created_after)
        if period is not None:
            since = (now or datetime.now(UTC)) - _period(period)
            after = max(after, since) if after else since
        return cls(tasks, phases, tags, after, _aware(created_before))

    def matches(self, run: Mapping[str, Any]) -> bool:
        spec = run.get("spec") or {}
        if self.tasks and spec.get("task") not in self.tasks:
            return False
        if self.phases:
            phase = phase_of(run)
            # A run the operator has not seen yet has no phase: it is as good as queued.
            if (Phase(phase) if phase in _VALUES else Phase.QUEUED) not in self.phases:
                return False
        if self.tags and not self.tags & set(spec.get("tags") or []):
            return False
        created = created_at(run)
        if self.created_after and (created is None or created < self.created_after):
            return False
        return not (self.created_before and (created is None or created >= self.created_before))


_VALUES = {p.value for p in Phase}


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.astimezone(UTC)


def _period(value: str | float | timedelta) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except DurationError as error:
            raise InvalidTriggerOptionsError(f"period: {error}") from None
    return timedelta(seconds=float(value))


def newest_first(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(
        runs,
        key=lambda r: (created_at(r) or epoch, (r.get("metadata") or {}).get("name", "")),
        reverse=True,
    )


def attempt_pod(run: TaskRun, attempt: int | None = None) -> str | None:
    """The pod of ``attempt`` (the latest when None), if the run has one."""
    attempts = run.status.attempts if run.status else []
    if not attempts:
        return None
    if attempt is None:
        return attempts[-1].pod
    chosen = [a for a in attempts if a.number == attempt]
    return chosen[-1].pod if chosen else None


def error_text(error: RunError | None) -> str:
    if error is None:
        return ""
    return f"{error.type}: {error.message}" if error.message else error.type
