"""Schedules as pure logic: (schedule, its runs, now) -> what to do.

Nothing here talks to Kubernetes or kopf; ``schedule_controller`` carries the
plan out.  Every decision is rebuilt from what the API server holds, so an
operator that restarts (or a second one) reaches the same plan from the same
inputs, and a tick's run has a deterministic name: creating it twice answers
409 instead of making a twin.

Time zones and daylight saving
------------------------------
Ticks are wall-clock times in the schedule's IANA zone.  croniter matches the
cron against plain calendar times (wall clock read as if it were UTC, so no
zone arithmetic happens inside croniter); this module maps those wall times to
real instants one UTC-offset segment at a time, with explicit rules where the
clocks jump:

* a cron whose **hour field starts with ``*``** (``*/15 * * * *``, ``0 * * * *``,
  every-second crons) follows elapsed time: wall times that do not exist
  (spring forward) have no tick, and a repeated hour (fall back) ticks in both
  copies;
* a cron that **names its hours** (``30 2 * * *``) follows the calendar: a
  wall time the clocks skip fires once, at the instant of the jump, and a
  repeated wall time fires once, at its first occurrence.

This is Vixie cron's rule (there keyed on ``*`` in the minute or hour field),
restricted to the hour field so "every 15 minutes from 02:00 to 02:59" stays a
once-a-day job.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter
from pydantic import ValidationError

from podtask.api.v1alpha1 import (
    API_VERSION,
    FINAL_PHASES,
    ConcurrencyPolicy,
    MissedRunPolicy,
    Phase,
    ScheduleSpec,
    ScheduleStatus,
)
from podtask.schedules import (
    EXTERNAL_ID_ANNOTATION,
    EXTERNAL_ID_LABEL,
    SCHEDULE_LABEL,
    SCHEDULE_TYPE_LABEL,
    SCHEDULED_TIME_ANNOTATION,
)
from podtask_operator.naming import MAX_NAME, fit, label_value

__all__ = ["SCHEDULE_LABEL", "Cron", "Plan", "RunView", "ScheduleError", "decide", "run_name"]

SKIP_TOLERANCE_SECONDS = 10
"""How late a tick may still start under missedRunPolicy Skip when
startingDeadlineSeconds is not set: enough for a slow API call, not for an outage."""
MISSED_COUNT_CAP = 1000
"""Ticks counted one by one after an outage; more are reported as "more than"."""
UPCOMING = 5
"""Ticks listed in a run's payload ``upcoming`` (Trigger.dev lists five)."""
LAST_RUNS = 10
"""Runs listed in status.lastRuns."""

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# croniter's random (R) and hashed (H) fields would give a different tick each time
# they are computed: no two reconciles (or operators) would agree on a tick.
_NONDETERMINISTIC = re.compile(r"(?<![A-Z])[RH](?![A-Z])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCAN_STEP = 6 * 3600
"""Offset probes are this far apart when looking for a zone's transitions; no zone
in tzdata changes its offset and back again within six hours."""
_LOOKBACK = 26 * 3600
"""How far back a transition can still shape the ticks after it (Samoa skipped 24h)."""
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ScheduleError(ValueError):
    """A schedule that cannot tick: ``reason`` is the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- time


def to_seconds(moment: datetime) -> int:
    """Whole Unix seconds at or before ``moment`` (ticks are whole seconds)."""
    return int((moment - _EPOCH) // timedelta(seconds=1))


def from_seconds(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or a ScheduleError saying what is wrong with it."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(_zone_names()), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(
            "InvalidTimeZone",
            f"time zone {name!r} is not an IANA time zone name such as 'UTC', "
            f"'Europe/Berlin' or 'America/New_York'{hint}",
        ) from None


def _cron_error(expression: str, detail: str) -> ScheduleError:
    return ScheduleError(
        "InvalidCron",
        f"cron {expression!r} is invalid: {detail}. Use 5 fields (minute hour day-of-month "
        "month day-of-week), 6 with seconds first (a podtask extension), or a macro like "
        "@hourly or @daily",
    )


@dataclass(frozen=True)
class Cron:
    """A cron expression read in a time zone: the ticks, as UTC instants."""

    expression: str
    """As written (macros not expanded)."""
    zone: ZoneInfo
    seconds: bool
    """Six fields, the first one seconds."""
    by_calendar: bool
    """The hour field names hours: skipped times fire at the jump, repeated ones once."""
    _fields: str = field(repr=False)
    """The fields croniter reads: macros expanded."""

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Cron:
        """Check the expression and the zone; raise ScheduleError with a clear message."""
        text = " ".join(expression.split())
        if text.startswith("@"):
            if text not in _MACROS:
                raise _cron_error(expression, f"unknown macro {text!r} (use {', '.join(_MACROS)})")
            fields = _MACROS[text]
        else:
            fields = text
        parts = fields.split()
        if len(parts) not in (5, 6):
            raise _cron_error(expression, f"it has {len(parts)} fields")
        if any(_NONDETERMINISTIC.search(part.upper()) for part in parts):
            raise _cron_error(
                expression,
                "random (R) and hashed (H) fields are not supported: a tick must be "
                "the same every time it is computed",
            )
        seconds = len(parts) == 6
        if not croniter.is_valid(fields, second_at_beginning=seconds):
            raise _cron_error(expression, _first_bad_field(parts, seconds))
        zone = load_zone(timezone)
        hour = parts[2 if seconds else 1]
        cron = cls(text, zone, seconds, not hour.startswith("*"), fields)
        try:
            cron._wall_next(0)
        except (CroniterBadDateError, CroniterError, OverflowError, ValueError):
            raise _cron_error(expression, "it never matches a date") from None
        return cron

    # -------------------------------------------------------------- offsets

    def _offset(self, seconds: int) -> int:
        offset = datetime.fromtimestamp(seconds, self.zone).utcoffset()
        assert offset is not None
        return int(offset.total_seconds())

    def _transition_after(self, lo: int, hi: int) -> int | None:
        """The first instant in (lo, hi] whose offset differs from lo's."""
        base = self._offset(lo)
        probe = lo
        while probe < hi:
            nxt = min(probe + _SCAN_STEP, hi)
            if self._offset(nxt) != base:
                low, high = probe, nxt
                while high - low > 1:
                    mid = (low + high) // 2
                    if self._offset(mid) == base:
                        low = mid
                    else:
                        high = mid
                return high
            probe = nxt
        return None

    def _transition_before(self, hi: int, lo: int) -> tuple[int, int] | None:
        """The latest transition instant in (lo, hi], with the offset before it."""
        base = self._offset(hi)
        probe = hi
        while probe > lo:
            prev = max(probe - _SCAN_STEP, lo)
            if self._offset(prev) != base:
                low, high = prev, probe
                while high - low > 1:
                    mid = (low + high) // 2
                    if self._offset(mid) == base:
                        high = mid
                    else:
                        low = mid
                return high, self._offset(high - 1)
            probe = prev
        return None

    # -------------------------------------------------------------- wall clock

    def _iter(self, wall: int) -> croniter:
        # The wall clock read as UTC: croniter does calendar arithmetic only.
        return croniter(self._fields, from_seconds(wall), second_at_beginning=self.seconds)

    def _wall_next(self, wall: int) -> int:
        """The first matching wall time after ``wall``."""
        return to_seconds(self._iter(wall).get_next(datetime))

    def _wall_prev(self, wall: int) -> int:
        """The latest matching wall time at or before ``wall``."""
        return to_seconds(self._iter(wall + 1).get_prev(datetime))

    def _gap_has_match(self, start: int, end: int) -> bool:
        """Whether a wall time in [start, end) (clocks skipped them) matches."""
        return self._wall_next(start - 1) < end

    # -------------------------------------------------------------- ticks

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        return from_seconds(self._next(to_seconds(moment)))

    def _next(self, after: int) -> int:
        offset = self._offset(after)
        found = self._transition_before(after, after - _LOOKBACK)
        start, before = found if found else (None, offset)
        known = after  # an instant of the current segment: its offset is `offset`
        lower = after  # ticks must be later than this
        while True:
            candidates = []
            if (
                self.by_calendar
                and start is not None
                and after < start
                and before < offset
                and self._gap_has_match(start + before, start + offset)
            ):
                candidates.append(start)  # spring forward: skipped times fire at the jump
            wall = self._wall_next(lower + offset)
            if self.by_calendar and start is not None and before > offset and wall < start + before:
                # Fall back: these wall times already fired before the clocks went back.
                wall = self._wall_next(start + before - 1)
            candidates.append(wall - offset)
            best = min(candidates)
            jump = self._transition_after(known, best)
            if jump is None:
                return best
            # The offset changes before that tick: carry on in the next segment.
            start, before, offset = jump, offset, self._offset(jump)
            known, lower = jump, jump - 1

    def last_at_or_before(self, moment: datetime) -> datetime:
        """The latest tick at or before ``moment``."""
        return from_seconds(self._last(to_seconds(moment)))

    def _last(self, at: int) -> int:
        upper = at  # ticks must be at or before this; its offset is `offset`
        offset = self._offset(upper)
        while True:
            wall = self._wall_prev(upper + offset)
            tick = wall - offset
            jump = self._transition_before(upper, tick)
            if jump is not None:
                # No matching wall time between the jump and `upper`; a spring-forward
                # jump itself is a tick when a skipped wall time matches.
                start, before = jump
                if (
                    self.by_calendar
                    and before < offset
                    and self._gap_has_match(start + before, start + offset)
                ):
                    return start
                upper, offset = start - 1, before
                continue
            found = self._transition_before(tick, tick - _LOOKBACK)
            if found is not None and self.by_calendar:
                start, before = found
                if before > offset and wall < start + before:
                    # A repeated wall time: it fired before the clocks went back.
                    upper, offset = start - 1, before
                    continue
            return tick

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        current = to_seconds(moment)
        while True:
            current = self._next(current)
            yield from_seconds(current)

    def upcoming(self, moment: datetime, count: int = UPCOMING) -> list[datetime]:
        ticks = self.ticks_after(moment)
        return [next(ticks) for _ in range(count)]

    def between(self, after: datetime, until: datetime, cap: int) -> list[datetime]:
        """Ticks in (after, until], at most ``cap`` of them, oldest first."""
        lo, hi = to_seconds(after), to_seconds(until)
        if hi <= lo:
            return []
        offset = self._offset(lo)
        if self._transition_after(lo - _LOOKBACK, hi) is None and (
            self._offset(lo - _LOOKBACK) == offset
        ):
            # One offset throughout: ticks are the wall times shifted by it (the fast
            # path for counting an outage's ticks of an every-second schedule).
            walls = self._iter(lo + offset)
            found: list[datetime] = []
            while len(found) < cap:
                instant = to_seconds(walls.get_next(datetime)) - offset
                if instant > hi:
                    break
                found.append(from_seconds(instant))
            return found
        found = []
        for tick in self.ticks_after(after):
            if tick > until or len(found) >= cap:
                break
            found.append(tick)
        return found


def _first_bad_field(parts: list[str], seconds: bool) -> str:
    names = ["minute", "hour", "day-of-month", "month", "day-of-week"]
    if seconds:
        names = ["second", *names]
    probe = ["*"] * len(parts)
    for index, part in enumerate(parts):
        probe[index] = part
        if not croniter.is_valid(" ".join(probe), second_at_beginning=seconds):
            return f"the {names[index]} field {part!r} is not valid"
        probe[index] = "*"
    return "the fields do not combine into a valid expression"


# --------------------------------------------------------------------------- names


def run_name(schedule: str, tick: datetime) -> str:
    """``<schedule>-<unix seconds of the tick>``, fitted to 253 characters."""
    suffix = f"-{to_seconds(tick)}"
    return fit(schedule, MAX_NAME - len(suffix)) + suffix


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunView:
    """What a decision needs to know of one of the schedule's TaskRuns."""

    name: str
    uid: str
    tick: datetime
    phase: str | None
    canceling: bool

    @property
    def final(self) -> bool:
        return self.phase in {p.value for p in FINAL_PHASES}

    @property
    def succeeded(self) -> bool:
        return self.phase == Phase.COMPLETED.value

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> RunView:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        tick = parse_time((meta.get("annotations") or {}).get(SCHEDULED_TIME_ANNOTATION))
        if tick is None:
            tail = name.rsplit("-", 1)[-1]
            tick = from_seconds(int(tail)) if tail.isdigit() else None
        if tick is None:
            tick = parse_time(meta.get("creationTimestamp")) or _EPOCH
        return cls(
            name=name,
            uid=str(meta.get("uid", "")),
            tick=tick,
            phase=(body.get("status") or {}).get("phase"),
            canceling=bool((body.get("spec") or {}).get("cancel")),
        )


def owned_by(body: Mapping[str, Any], uid: str) -> bool:
    owners = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "Schedule" and o.get("uid") == uid for o in owners)


def prune(runs: Iterable[RunView], successful_limit: int, failed_limit: int) -> list[RunView]:
    """Finished runs beyond the history limits, oldest first; active runs are kept."""
    finished = sorted((r for r in runs if r.final), key=lambda r: (r.tick, r.name), reverse=True)
    succeeded = [r for r in finished if r.succeeded]
    failed = [r for r in finished if not r.succeeded]
    doomed = succeeded[successful_limit:] + failed[failed_limit:]
    return sorted(doomed, key=lambda r: (r.tick, r.name))


# --------------------------------------------------------------------------- payload


def build_payload(
    name: str,
    spec: ScheduleSpec,
    cron: Cron,
    tick: datetime,
    last: datetime | None,
    schedule_type: str,
) -> dict[str, Any]:
    """What the task receives: Trigger.dev's scheduled payload, plus ``data``."""
    payload: dict[str, Any] = {
        "type": schedule_type,
        "timestamp": format_time(tick),
        "timezone": spec.timezone,
        "scheduleId": name,
        "upcoming": [format_time(t) for t in cron.upcoming(tick)],
    }
    if last is not None:
        payload["lastTimestamp"] = format_time(last)
    if spec.external_id is not None:
        payload["externalId"] = spec.external_id
    if spec.payload is not None:
        payload["data"] = spec.payload
    return payload


def build_run(
    schedule: Mapping[str, Any], spec: ScheduleSpec, tick: datetime, payload: dict[str, Any]
) -> dict[str, Any]:
    meta = schedule["metadata"]
    labels = {SCHEDULE_LABEL: label_value(meta["name"])}
    annotations = {SCHEDULED_TIME_ANNOTATION: format_time(tick)}
    if spec.external_id is not None:
        labels[EXTERNAL_ID_LABEL] = label_value(spec.external_id)
        annotations[EXTERNAL_ID_ANNOTATION] = spec.external_id
    run_spec: dict[str, Any] = {"task": spec.task, "payload": payload}
    if spec.tags:
        run_spec["tags"] = list(spec.tags)
    for key, value in (("queue", spec.queue), ("machine", spec.machine), ("ttl", spec.ttl)):
        if value is not None:
            run_spec[key] = value
    return {
        "apiVersion": API_VERSION,
        "kind": "TaskRun",
        "metadata": {
            "name": run_name(meta["name"], tick),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Schedule",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": run_spec,
    }


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Plan:
    """What the controller should do for one schedule, in this order."""

    cancel: list[str] = field(default_factory=list)
    """Active runs to cancel (spec.cancel: true) before creating, for Replace."""
    create: dict[str, Any] | None = None
    """The TaskRun for the tick; 409 on create means it was fired already."""
    tick: datetime | None = None
    status: dict[str, Any] = field(default_factory=dict)
    """A merge patch for .status (changed keys only), to write after ``create``."""
    delete: list[RunView] = field(default_factory=list)
    """Finished runs beyond the history limits."""
    events: list[Event] = field(default_factory=list)
    wake_at: datetime | None = None
    """When to decide again without any event (the next tick)."""


def _condition(
    current: list[dict[str, Any]],
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The Ready condition; its transition time moves only when its status does."""
    old = next((c for c in current if c.get("type") == "Ready"), None)
    changed = old is None or old.get("status") != status
    condition: dict[str, Any] = {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": format_time(now)
        if changed or old is None
        else old.get("lastTransitionTime"),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _schedule_type(meta: Mapping[str, Any]) -> str:
    kind = (meta.get("labels") or {}).get(SCHEDULE_TYPE_LABEL, "declarative")
    return "IMPERATIVE" if kind == "imperative" else "DECLARATIVE"


@dataclass(frozen=True)
class _Skip:
    reason: str
    message: str
    event: bool = True


def decide(
    schedule: Mapping[str, Any],
    runs: Iterable[Mapping[str, Any]],
    now: datetime,
    task_exists: bool = True,
) -> Plan:
    """The plan for ``schedule`` given its TaskRuns (any order) at ``now``.

    Ticks in (marker, now] are due, where the marker is the latest tick already
    dealt with: ``lastScheduleTime`` (fired), ``lastMissedTime`` (missed) or the
    schedule's creation.  Only the latest due tick may run; earlier ones are missed
    (never backfilled), and so is the latest one when it is later than the deadline
    (startingDeadlineSeconds; by default 10s under Skip and none under RunOnce),
    when the Task does not exist, or under Forbid while a run is active.
    """
    meta = schedule.get("metadata") or {}
    generation = meta.get("generation")
    raw_status: dict[str, Any] = dict(schedule.get("status") or {})
    try:
        status = ScheduleStatus.model_validate(raw_status)
    except ValidationError:
        status = ScheduleStatus()
    conditions: list[dict[str, Any]] = list(raw_status.get("conditions") or [])
    spec_raw = schedule.get("spec") or {}
    plan = Plan()
    kept = _plan_pruning(plan, [RunView.of(body) for body in runs], spec_raw)
    desired: dict[str, Any] = {"observedGeneration": generation} if generation else {}

    def finish(ready: dict[str, Any]) -> Plan:
        desired["conditions"] = [c for c in conditions if c.get("type") != "Ready"] + [ready]
        shown = sorted(kept, key=lambda r: (r.tick, r.name), reverse=True)[:LAST_RUNS]
        desired["lastRuns"] = [
            {"name": r.name, "scheduledTime": format_time(r.tick), **_phase(r)} for r in shown
        ]
        old = next((c for c in conditions if c.get("type") == "Ready"), None)
        if (
            ready["status"] == "False"
            and ready["reason"] != "Suspended"
            and (old is None or old.get("reason") != ready["reason"])
        ):
            plan.events.append(Event("Warning", ready["reason"], ready["message"]))
        plan.status = {k: v for k, v in desired.items() if raw_status.get(k) != v}
        return plan

    # ---- the spec: a bad cron or zone is a condition, never an exception
    try:
        cron = Cron.parse(str(spec_raw.get("cron", "")), str(spec_raw.get("timezone") or "UTC"))
        spec = ScheduleSpec.model_validate(spec_raw)
    except ScheduleError as error:
        desired["nextScheduleTime"] = None
        return finish(_condition(conditions, "False", error.reason, error.message, generation, now))
    except ValidationError as error:
        desired["nextScheduleTime"] = None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in error.errors()
        )
        return finish(_condition(conditions, "False", "InvalidSpec", message, generation, now))

    if spec.suspend:
        desired["nextScheduleTime"] = None
        return finish(
            _condition(
                conditions,
                "False",
                "Suspended",
                "spec.suspend is true: no runs are created",
                generation,
                now,
            )
        )

    created = parse_time(meta.get("creationTimestamp")) or now
    last_fired = status.last_schedule_time
    last_missed = status.last_missed_time
    missed = status.missed_runs
    marker = max(t for t in (last_fired, last_missed, created) if t is not None)
    # A new or changed spec (a new cron, a resume): ticks it has before now were never
    # this schedule's to run, so they are not counted as missed.
    count_misses = status.observed_generation == generation

    # Runs that already exist for due ticks (created before a restart lost the status
    # write, or by another operator): those ticks fired.
    fired = sorted({r.tick for r in kept if marker < r.tick <= now})
    if fired:
        if count_misses:
            gaps = [t for t in cron.between(marker, fired[-1], MISSED_COUNT_CAP) if t not in fired]
            if gaps:
                missed += len(gaps)
                last_missed = max(gaps) if last_missed is None else max(last_missed, *gaps)
        last_fired = fired[-1] if last_fired is None else max(last_fired, fired[-1])
        marker = fired[-1]

    latest = cron.last_at_or_before(now)
    if latest > marker:
        earlier = len(cron.between(marker, latest, MISSED_COUNT_CAP + 2)) - 1
        if earlier > 0:
            last_missed = cron.last_at_or_before(latest - timedelta(seconds=1))
            if count_misses:
                missed += min(earlier, MISSED_COUNT_CAP)
                many = "more than " if earlier > MISSED_COUNT_CAP else ""
                plan.events.append(
                    Event(
                        "Warning",
                        "MissedSchedule",
                        f"missed {many}{min(earlier, MISSED_COUNT_CAP)} tick(s) after "
                        f"{format_time(marker)} (the operator was not running); missed ticks "
                        "are not backfilled",
                    )
                )
        skip = _skip(spec, latest, now, task_exists, [r for r in kept if not r.final])
        if skip is not None:
            last_missed = latest
            # A tick that was already late when the spec changed is superseded, not missed.
            counted = count_misses or skip.reason != "MissedSchedule"
            missed += 1 if counted else 0
            if skip.event and counted:
                kind = "Normal" if skip.reason == "TickSkipped" else "Warning"
                plan.events.append(Event(kind, skip.reason, skip.message))
        else:
            if spec.concurrency_policy == ConcurrencyPolicy.REPLACE:
                plan.cancel = [r.name for r in kept if not r.final and not r.canceling]
            payload = build_payload(
                str(meta.get("name", "")), spec, cron, latest, last_fired, _schedule_type(meta)
            )
            plan.create = build_run(schedule, spec, latest, payload)
            plan.tick = latest
            last_fired = latest
            kept.append(RunView(plan.create["metadata"]["name"], "", latest, None, False))

    upcoming = cron.next_after(max(now, marker))
    plan.wake_at = upcoming
    desired["nextScheduleTime"] = format_time(upcoming)
    if last_fired is not None:
        desired["lastScheduleTime"] = format_time(last_fired)
    if last_missed is not None:
        desired["lastMissedTime"] = format_time(last_missed)
    desired["missedRuns"] = missed
    if not task_exists:
        return finish(
            _condition(
                conditions,
                "False",
                "TaskNotFound",
                f"Task {spec.task!r} does not exist in namespace {meta.get('namespace')!r}; "
                "ticks are skipped until it does",
                generation,
                now,
            )
        )
    return finish(
        _condition(
            conditions,
            "True",
            "Scheduled",
            f"ticking on {spec.cron!r} in {spec.timezone}",
            generation,
            now,
        )
    )


def _skip(
    spec: ScheduleSpec, tick: datetime, now: datetime, task_exists: bool, active: list[RunView]
) -> _Skip | None:
    """Why the due ``tick`` does not run, or None when it does."""
    deadline = spec.starting_deadline_seconds
    if deadline is None and spec.missed_run_policy == MissedRunPolicy.SKIP:
        deadline = SKIP_TOLERANCE_SECONDS
    lateness = (now - tick).total_seconds()
    if deadline is not None and lateness > deadline:
        return _Skip(
            "MissedSchedule",
            f"tick {format_time(tick)} was {lateness:.0f}s late, past the {deadline}s deadline "
            f"(missedRunPolicy {spec.missed_run_policy.value}): skipped",
        )
    if not task_exists:
        # The Ready condition (and its one Event) already says so; no Event per tick.
        return _Skip("TaskNotFound", "", event=False)
    if spec.concurrency_policy == ConcurrencyPolicy.FORBID and active:
        blocker = min(active, key=lambda r: (r.tick, r.name))
        return _Skip(
            "TickSkipped",
            f"tick {format_time(tick)} skipped: concurrencyPolicy is Forbid and run "
            f"{blocker.name} is still {blocker.phase or 'starting'}",
        )
    return None


def _phase(run: RunView) -> dict[str, str]:
    return {"phase": run.phase} if run.phase else {}


def _plan_pruning(plan: Plan, views: list[RunView], spec_raw: Mapping[str, Any]) -> list[RunView]:
    """Plan the history clean-up; return the runs that stay."""
    limits = ScheduleSpec.model_fields
    successful = spec_raw.get("successfulRunsHistoryLimit")
    failed = spec_raw.get("failedRunsHistoryLimit")
    doomed = prune(
        views,
        successful
        if isinstance(successful, int) and successful >= 0
        else int(limits["successful_runs_history_limit"].default),
        failed
        if isinstance(failed, int) and failed >= 0
        else int(limits["failed_runs_history_limit"].default),
    )
    plan.delete = doomed
    gone = {r.name for r in doomed}
    return [r for r in views if r.name not in gone]
