"""Schedules as pure logic: ticks across DST, clear errors, names, policies, pruning.

Policy tests drive ``decide`` like the controller does: each step's status patch
is merged into the schedule as the API server would, and the runs it creates
join the run list, so later steps read exactly what a restarted operator reads.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from podtask import schedules as sdk
from podtask.errors import InvalidTaskDefinitionError
from podtask_operator import naming
from podtask_operator.schedules import (
    MISSED_COUNT_CAP,
    SKIP_TOLERANCE_SECONDS,
    Cron,
    Plan,
    RunView,
    ScheduleError,
    build_payload,
    decide,
    format_time,
    prune,
    run_name,
    to_seconds,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(zone: str, moment: datetime) -> str:
    """``moment`` on the zone's wall clock with its offset, for readable expectations."""
    return moment.astimezone(ZoneInfo(zone)).isoformat()


def ticks(expression: str, zone: str, after: datetime, count: int) -> list[str]:
    cron = Cron.parse(expression, zone)
    out, moment = [], after
    for _ in range(count):
        moment = cron.next_after(moment)
        out.append(local(zone, moment))
    return out


# --------------------------------------------------------------------------- DST, by example


def test_berlin_spring_forward_interval_cron_keeps_real_time_rhythm() -> None:
    # 2024-03-31 02:00 CET -> 03:00 CEST: 02:xx does not exist.
    assert ticks("*/30 * * * *", "Europe/Berlin", utc(2024, 3, 31, 0, 0), 4) == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:30:00+02:00",
        "2024-03-31T04:00:00+02:00",
    ]


def test_berlin_spring_forward_calendar_cron_fires_once_at_the_jump() -> None:
    assert ticks("30 2 * * *", "Europe/Berlin", utc(2024, 3, 29, 12, 0), 4) == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 02:30 was skipped: it fires when the clocks jump
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]
    # Two skipped times still make one tick.
    assert ticks("0,30 2 * * *", "Europe/Berlin", utc(2024, 3, 30, 12, 0), 2) == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:00:00+02:00",
    ]


def test_berlin_fall_back_hourly_fires_in_both_copies_of_the_hour() -> None:
    # 2024-10-27 03:00 CEST -> 02:00 CET: 02:xx happens twice.
    assert ticks("0 * * * *", "Europe/Berlin", utc(2024, 10, 26, 23, 30), 4) == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
        "2024-10-27T04:00:00+01:00",
    ]


def test_berlin_fall_back_calendar_cron_fires_once() -> None:
    assert ticks("30 2 * * *", "Europe/Berlin", utc(2024, 10, 25, 12, 0), 3) == [
        "2024-10-26T02:30:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
    assert ticks("30 2 * * *", "America/New_York", utc(2024, 3, 9, 12, 0), 2) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
    ]
    assert ticks("30 1 * * *", "America/New_York", utc(2024, 11, 2, 12, 0), 2) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    assert ticks("*/30 * * * *", "America/New_York", utc(2024, 11, 3, 4, 50), 5) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T01:30:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]


def test_sydney_fall_back_in_april_and_spring_forward_in_october() -> None:
    # 2024-04-07 03:00 AEDT -> 02:00 AEST; 2024-10-06 02:00 AEST -> 03:00 AEDT.
    assert ticks("15 2 * * *", "Australia/Sydney", utc(2024, 4, 5, 0, 0), 3) == [
        "2024-04-06T02:15:00+11:00",
        "2024-04-07T02:15:00+11:00",
        "2024-04-08T02:15:00+10:00",
    ]
    assert ticks("15 2 * * *", "Australia/Sydney", utc(2024, 10, 4, 0, 0), 3) == [
        "2024-10-05T02:15:00+10:00",
        "2024-10-06T03:00:00+11:00",
        "2024-10-07T02:15:00+11:00",
    ]
    assert ticks("0 * * * *", "Australia/Sydney", utc(2024, 10, 5, 14, 30), 3) == [
        "2024-10-06T01:00:00+10:00",
        "2024-10-06T03:00:00+11:00",
        "2024-10-06T04:00:00+11:00",
    ]


def test_every_second_cron_across_fall_back_never_stalls_or_doubles() -> None:
    cron = Cron.parse("*/20 * * * * *", "Europe/Berlin")
    found = cron.between(utc(2024, 10, 27, 0, 59, 0), utc(2024, 10, 27, 1, 1, 0), 100)
    assert [to_seconds(t) % 60 for t in found] == [20, 40, 0] * 2
    assert all((b - a) == timedelta(seconds=20) for a, b in itertools.pairwise(found))


def test_last_at_or_before_mirrors_next_after_at_a_gap() -> None:
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    jump = utc(2024, 3, 31, 1, 0)  # 03:00 CEST
    assert cron.last_at_or_before(jump) == jump
    assert cron.last_at_or_before(jump - timedelta(seconds=1)) == utc(2024, 3, 30, 1, 30)
    assert cron.next_after(jump - timedelta(seconds=1)) == jump


# --------------------------------------------------------------------------- DST, exhaustively


def _transitions(zone: ZoneInfo, year: int) -> list[int]:
    """Every instant in ``year`` where the zone's UTC offset changes (brute force)."""
    start = to_seconds(utc(year, 1, 1))
    end = to_seconds(utc(year + 1, 1, 1))
    found = []

    def offset(s: int) -> timedelta | None:
        return datetime.fromtimestamp(s, zone).utcoffset()

    for hour in range(start, end, 3600):
        if offset(hour) != offset(hour + 3600):
            low, high = hour, hour + 3600
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if offset(mid) == offset(hour) else (low, mid)
            found.append(high)
    return found


def _reference(expression: str, zone_name: str, lo: int, hi: int, step: int) -> list[int]:
    """The documented rules, applied by brute force to every ``step`` in (lo, hi]."""
    zone = ZoneInfo(zone_name)
    cron = Cron.parse(expression, zone_name)
    fields, seconds = cron._fields, cron.seconds

    def matches(wall: datetime) -> bool:
        return bool(croniter.match(fields, wall, second_at_beginning=seconds))

    out = set()
    for s in range(lo - lo % step + step, hi + 1, step):
        here = datetime.fromtimestamp(s, zone)
        # A repeated wall time runs again only for crons that follow elapsed time.
        if matches(here.replace(tzinfo=None)) and (not cron.by_calendar or here.fold == 0):
            out.add(s)
    if cron.by_calendar:
        for jump in _transitions(zone, datetime.fromtimestamp(lo, UTC).year):
            before = datetime.fromtimestamp(jump - 1, zone)
            after = datetime.fromtimestamp(jump, zone)
            skipped = int((after.utcoffset() - before.utcoffset()).total_seconds())  # type: ignore[operator]
            wall = before.replace(tzinfo=None) + timedelta(seconds=1)
            # Wall times the clocks skipped fire at the jump when any of them matches.
            if lo < jump <= hi and any(
                matches(wall + timedelta(seconds=k)) for k in range(0, skipped, step)
            ):
                out.add(jump)
    return sorted(out)


def _ours(expression: str, zone: str, lo: int, hi: int) -> list[int]:
    cron = Cron.parse(expression, zone)
    forward = [
        to_seconds(t)
        for t in cron.between(
            datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC), 10_000
        )
    ]
    backward, moment = [], datetime.fromtimestamp(hi, UTC)
    while (moment := cron.last_at_or_before(moment)) > datetime.fromtimestamp(lo, UTC):
        backward.append(to_seconds(moment))
        moment -= timedelta(seconds=1)
    assert forward == sorted(backward), "next_after and last_at_or_before disagree"
    return forward


ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Santiago",  # transitions at midnight
]
MINUTE_CRONS = [
    "*/15 * * * *",
    "0 * * * *",
    "30 * * * *",
    "30 2 * * *",
    "0 2 * * *",
    "0,30 2 * * *",
    "*/20 2 * * *",
    "45 1 * * *",
    "0 */2 * * *",
    "0 0 * * *",
    "*/10 1-3 * * *",
    "@hourly",
    "@daily",
]


@pytest.mark.parametrize("zone", ZONES)
def test_minute_crons_match_the_reference_around_every_2024_transition(zone: str) -> None:
    transitions = _transitions(ZoneInfo(zone), 2024)
    assert len(transitions) == 2
    for jump in transitions:
        lo, hi = jump - 6 * 3600, jump + 6 * 3600
        for expression in MINUTE_CRONS:
            assert _ours(expression, zone, lo, hi) == _reference(expression, zone, lo, hi, 60), (
                zone,
                expression,
                datetime.fromtimestamp(jump, UTC),
            )


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_second_crons_match_the_reference_around_transitions(zone: str) -> None:
    for jump in _transitions(ZoneInfo(zone), 2024):
        lo, hi = jump - 1800, jump + 1800
        for expression in ("*/20 * * * * *", "0 30 2 * * *", "*/30 */30 2 * * *", "0 0 * * * *"):
            assert _ours(expression, zone, lo, hi) == _reference(expression, zone, lo, hi, 1), (
                zone,
                expression,
            )


def test_samoa_skipping_a_whole_day_makes_one_tick_for_a_calendar_cron() -> None:
    # Pacific/Apia jumped from 2011-12-29 23:59:59 (-10) to 2011-12-31 00:00 (+14).
    cron = Cron.parse("0 9 * * *", "Pacific/Apia")
    found = cron.between(utc(2011, 12, 29, 12), utc(2012, 1, 1, 12), 10)
    assert [local("Pacific/Apia", t) for t in found] == [
        "2011-12-29T09:00:00-10:00",
        "2011-12-31T00:00:00+14:00",  # 30 Dec never happened: its 09:00 fires at the jump
        "2011-12-31T09:00:00+14:00",
        "2012-01-01T09:00:00+14:00",
    ]


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
    expression=st.sampled_from([*MINUTE_CRONS, "0 0 1 1 *", "0 0 29 2 *", "*/7 * * * * *"]),
    zone=st.sampled_from([*ZONES, "UTC", "Asia/Kolkata", "Europe/London"]),
)
def test_next_and_last_are_inverse(moment: datetime, expression: str, zone: str) -> None:
    cron = Cron.parse(expression, zone)
    at = moment.replace(tzinfo=UTC)
    nxt = cron.next_after(at)
    last = cron.last_at_or_before(at)
    assert last <= at < nxt
    assert cron.next_after(last) == nxt
    assert cron.last_at_or_before(nxt) == nxt
    assert cron.last_at_or_before(nxt - timedelta(seconds=1)) == last


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("61 * * * *", ["minute field '61'"]),
        ("0 25 * * *", ["hour field '25'"]),
        ("*/0 * * * * *", ["second field '*/0'"]),
        ("* * * *", ["has 4 fields", "5 fields", "6 with seconds first"]),
        ("0 0 1 1 * 2030 x", ["has 7 fields"]),
        ("@reboot", ["unknown macro '@reboot'"]),
        ("0 0 30 2 *", ["never matches"]),
        ("R * * * *", ["random (R)"]),
        ("", ["has 0 fields"]),
    ],
)
def test_a_bad_cron_is_rejected_with_a_clear_message(expression: str, words: list[str]) -> None:
    with pytest.raises(ScheduleError) as caught:
        Cron.parse(expression)
    assert caught.value.reason == "InvalidCron"
    assert f"cron {expression!r} is invalid" in caught.value.message
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    ("zone", "hint"),
    [
        ("Mars/Olympus_Mons", None),
        ("Europe/Berln", "did you mean 'Europe/Berlin'?"),
        ("america/new_york", "did you mean 'America/New_York'?"),
        ("", None),
        ("../etc/passwd", None),
    ],
)
def test_a_bad_zone_is_rejected_with_a_clear_message(zone: str, hint: str | None) -> None:
    with pytest.raises(ScheduleError) as caught:
        Cron.parse("0 * * * *", zone)
    assert caught.value.reason == "InvalidTimeZone"
    assert f"time zone {zone!r} is not an IANA time zone name" in caught.value.message
    if hint:
        assert hint in caught.value.message


def test_macros_and_seconds() -> None:
    assert Cron.parse("@hourly").by_calendar is False
    assert Cron.parse("@daily").by_calendar is True
    every_two = Cron.parse("*/2 * * * * *")
    assert every_two.seconds
    assert every_two.next_after(utc(2024, 1, 1, 0, 0, 0)) == utc(2024, 1, 1, 0, 0, 2)
    # A five-field cron is minutes, never seconds.
    assert Cron.parse("*/2 * * * *").next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 2)


# --------------------------------------------------------------------------- names


def test_run_names_are_the_schedule_and_the_ticks_unix_seconds() -> None:
    tick = utc(2024, 1, 1, 0, 0, 4)
    assert run_name("nightly", tick) == "nightly-1704067204"
    long = "a" * 253
    name = run_name(long, tick)
    assert len(name) == 253 and name.endswith("-1704067204")
    assert name == run_name(long, tick)
    assert run_name("a" * 252 + "b", tick) != name  # the hash keeps long names apart


def test_schedule_names_come_from_the_deduplication_key() -> None:
    assert sdk.schedule_name("user-42-reminder") == sdk.schedule_name("user-42-reminder")
    assert sdk.schedule_name("User 42") != sdk.schedule_name("user 42")
    name = sdk.schedule_name("Ünïcode / key" * 40)
    assert len(name) <= 63 and naming.label_value(name) == name
    with pytest.raises(ValueError):
        sdk.schedule_name("")


@pytest.mark.parametrize("value", ["user-42", "x" * 80, "a b/c", "-lead", "Ünï", ""])
def test_sdk_and_operator_make_the_same_label_values(value: str) -> None:
    assert sdk.label_value(value) == naming.label_value(value)


# --------------------------------------------------------------------------- decide, driven


@dataclass
class Sim:
    """A schedule, its runs and the API server's merge-patch behaviour."""

    spec: dict[str, Any]
    created: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    task_exists: bool = True
    schedule: dict[str, Any] = field(init=False)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: list[Plan] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.schedule = {
            "metadata": {
                "name": "every",
                "namespace": "ns",
                "uid": "uid-1",
                "generation": 1,
                "creationTimestamp": format_time(self.created),
                "labels": {},
            },
            "spec": self.spec,
        }

    def step(self, now: datetime, write_status: bool = True) -> Plan:
        plan = decide(self.schedule, list(self.runs.values()), now, self.task_exists)
        self.plans.append(plan)
        for name in plan.cancel:
            self.runs[name]["spec"]["cancel"] = True
        if plan.create is not None:
            name = plan.create["metadata"]["name"]
            assert name not in self.runs, f"{name} created twice"
            self.runs[name] = {
                **plan.create,
                "metadata": {**plan.create["metadata"], "uid": f"u-{name}"},
            }
        if write_status:
            status = self.schedule.setdefault("status", {})
            for key, value in plan.status.items():
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = value
            for run in plan.delete:
                del self.runs[run.name]
        return plan

    def finish(self, name: str, phase: str = "Completed") -> None:
        self.runs[name]["status"] = {"phase": phase}

    def edit(self, **spec: Any) -> None:
        self.schedule["spec"] = {**self.schedule["spec"], **spec}
        self.schedule["metadata"]["generation"] += 1

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.schedule.get("status") or {})


EVERY_2S = {"task": "t", "cron": "*/2 * * * * *"}
T0 = utc(2024, 1, 1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_each_tick_makes_one_run_with_trigger_dev_payload() -> None:
    sim = Sim(
        {
            **EVERY_2S,
            "externalId": "user-42",
            "payload": {"report": "x"},
            "timezone": "Europe/Berlin",
        }
    )
    assert sim.step(at(0.5)).create is None  # created at T0: its tick was before it
    first = sim.step(at(2.1))
    assert first.create is not None
    assert first.create["metadata"]["name"] == "every-1704067202"
    payload = first.create["spec"]["payload"]
    assert payload == {
        "type": "DECLARATIVE",
        "timestamp": "2024-01-01T00:00:02Z",
        "timezone": "Europe/Berlin",
        "scheduleId": "every",
        "externalId": "user-42",
        "upcoming": [format_time(at(s)) for s in (4, 6, 8, 10, 12)],
        "data": {"report": "x"},
    }
    assert first.create["metadata"]["labels"] == {
        "podtask.dev/schedule": "every",
        "podtask.dev/external-id": "user-42",
    }
    assert first.create["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert sim.status["lastScheduleTime"] == "2024-01-01T00:00:02Z"
    assert sim.status["nextScheduleTime"] == "2024-01-01T00:00:04Z"
    assert first.wake_at == at(4)
    second = sim.step(at(4.0))
    assert second.create is not None
    assert second.create["spec"]["payload"]["lastTimestamp"] == "2024-01-01T00:00:02Z"
    assert sim.status["missedRuns"] == 0
    assert [r["name"] for r in sim.status["lastRuns"]] == ["every-1704067204", "every-1704067202"]


def test_the_same_inputs_give_the_same_plan_and_a_second_step_does_nothing() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    before = dict(sim.schedule)
    one = decide(before, [], at(2.2))
    two = decide(before, [], at(2.2))
    assert one.create == two.create and one.status == two.status
    sim.step(at(2.2))
    again = sim.step(at(2.3))
    assert again.create is None and again.status == {} and again.events == []


def test_a_run_made_before_a_lost_status_write_is_not_made_again_nor_missed() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    sim.step(at(2.1), write_status=False)  # the operator died after the create
    plan = sim.step(at(3.5))
    assert plan.create is None
    assert sim.status["lastScheduleTime"] == format_time(at(2))
    assert sim.status["missedRuns"] == 0


def test_skip_drops_ticks_missed_during_an_outage() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    sim.step(at(2.1))
    plan = sim.step(at(62.5))  # down for a minute: ticks 4..60 missed, 62 is on time
    assert plan.tick == at(62)
    assert sim.status["missedRuns"] == 29
    assert sim.status["lastMissedTime"] == format_time(at(60))
    assert [e.reason for e in plan.events] == ["MissedSchedule"]
    assert "missed 29 tick(s)" in plan.events[0].message
    assert sim.status["nextScheduleTime"] == format_time(at(64))
    hourly = Sim({"task": "t", "cron": "0 * * * *"})
    hourly.step(at(1))
    late = hourly.step(at(3600 + 30))  # back 30s after the hour: that tick is dropped
    assert late.create is None
    assert hourly.status["missedRuns"] == 1
    assert hourly.status["lastMissedTime"] == format_time(at(3600))
    assert [e.reason for e in late.events] == ["MissedSchedule"]
    assert "30s late" in late.events[0].message
    assert hourly.status["nextScheduleTime"] == format_time(at(7200))


def test_skip_still_runs_a_tick_a_few_seconds_late() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    plan = sim.step(at(2 + SKIP_TOLERANCE_SECONDS))
    assert plan.create is not None and plan.tick == at(2 + SKIP_TOLERANCE_SECONDS)
    sim2 = Sim({"task": "t", "cron": "0 * * * *"})
    sim2.step(at(1))
    assert sim2.step(at(3600 + SKIP_TOLERANCE_SECONDS - 1)).tick == at(3600)
    assert sim2.step(at(7200 + SKIP_TOLERANCE_SECONDS + 1)).create is None


def test_run_once_runs_the_latest_missed_tick_once() -> None:
    sim = Sim({**EVERY_2S, "missedRunPolicy": "RunOnce"})
    sim.step(at(1))
    sim.step(at(2.1))
    plan = sim.step(at(61))  # ticks 4..60 missed
    assert plan.tick == at(60)
    assert sim.status["missedRuns"] == 28
    assert sim.status["lastMissedTime"] == format_time(at(58))
    assert sim.status["lastScheduleTime"] == format_time(at(60))
    assert sim.step(at(61.5)).create is None


def test_run_once_respects_the_starting_deadline() -> None:
    sim = Sim({**EVERY_2S, "missedRunPolicy": "RunOnce", "startingDeadlineSeconds": 5})
    sim.step(at(1))
    assert sim.step(at(20 + 5)).tick == at(24)  # 1s late: within the deadline
    sim.step(at(25))
    plan = sim.step(at(40 + 7 - 0.5))  # latest tick 46, 0.5s late
    assert plan.tick == at(46)
    hourly = Sim(
        {
            "task": "t",
            "cron": "0 * * * *",
            "missedRunPolicy": "RunOnce",
            "startingDeadlineSeconds": 300,
        }
    )
    hourly.step(at(1))
    assert hourly.step(at(3600 + 301)).create is None
    assert hourly.status["missedRuns"] == 1


def test_forbid_skips_a_tick_while_a_run_is_active() -> None:
    sim = Sim({**EVERY_2S, "concurrencyPolicy": "Forbid"})
    sim.step(at(1))
    first = sim.step(at(2.1)).create
    assert first is not None
    blocked = sim.step(at(4.1))
    assert blocked.create is None
    assert sim.status["missedRuns"] == 1 and sim.status["lastMissedTime"] == format_time(at(4))
    assert [(e.type, e.reason) for e in blocked.events] == [("Normal", "TickSkipped")]
    sim.finish(first["metadata"]["name"])
    # The skipped tick stays skipped after the run ends; the next tick runs.
    assert sim.step(at(5)).create is None
    assert sim.step(at(6.1)).tick == at(6)


def test_replace_cancels_the_active_run_and_starts_the_new_one() -> None:
    sim = Sim({**EVERY_2S, "concurrencyPolicy": "Replace"})
    sim.step(at(1))
    first = sim.step(at(2.1)).create
    assert first is not None
    plan = sim.step(at(4.1))
    assert plan.cancel == [first["metadata"]["name"]]
    assert plan.tick == at(4)
    # A run already being canceled is not canceled again.
    assert sim.step(at(6.1)).cancel == ["every-1704067204"]


def test_allow_lets_runs_overlap() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    sim.step(at(2.1))
    plan = sim.step(at(4.1))
    assert plan.tick == at(4) and plan.cancel == []


def test_suspend_stops_ticks_and_resuming_does_not_backfill() -> None:
    sim = Sim(dict(EVERY_2S))
    sim.step(at(1))
    sim.step(at(2.1))
    sim.edit(suspend=True)
    plan = sim.step(at(3))
    assert plan.wake_at is None and "nextScheduleTime" not in sim.status
    ready = sim.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "Suspended")
    assert sim.step(at(30)).create is None
    sim.edit(suspend=False)
    resumed = sim.step(at(41))
    assert resumed.tick == at(40)  # the current tick; the suspended ones are not backfilled
    assert sorted(sim.runs) == ["every-1704067202", "every-1704067240"]
    assert sim.status["missedRuns"] == 0  # suspended ticks are not misses
    assert sim.status["nextScheduleTime"] == format_time(at(42))
    hourly = Sim(
        {
            "task": "t",
            "cron": "0 * * * *",
            "missedRunPolicy": "RunOnce",
            "startingDeadlineSeconds": 20,
        }
    )
    hourly.step(at(1))
    hourly.edit(suspend=True)
    hourly.step(at(2))
    hourly.edit(suspend=False)
    assert hourly.step(at(3600 + 30)).create is None
    assert hourly.status["missedRuns"] == 0


def test_a_changed_cron_moves_the_next_tick_without_counting_misses() -> None:
    sim = Sim({"task": "t", "cron": "0 0 * * *"})
    sim.step(at(1))
    assert sim.status["nextScheduleTime"] == "2024-01-02T00:00:00Z"
    sim.edit(cron="*/5 * * * *")
    sim.step(at(3600 + 30))
    assert sim.status["nextScheduleTime"] == "2024-01-01T01:05:00Z"
    assert sim.status["missedRuns"] == 0


def test_missing_task_skips_ticks_with_one_warning() -> None:
    sim = Sim(dict(EVERY_2S), task_exists=False)
    first = sim.step(at(1))
    ready = sim.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "TaskNotFound")
    assert "Task 't' does not exist" in ready["message"]
    assert [e.reason for e in first.events] == ["TaskNotFound"]
    plan = sim.step(at(2.1))
    assert plan.create is None and plan.events == []
    assert sim.status["missedRuns"] == 1
    sim.task_exists = True
    assert sim.step(at(4.1)).tick == at(4)
    assert sim.status["conditions"][0]["status"] == "True"


@pytest.mark.parametrize(
    ("spec", "reason", "text"),
    [
        ({"task": "t", "cron": "61 * * * *"}, "InvalidCron", "minute field '61'"),
        ({"task": "t", "cron": "0 0 30 2 *"}, "InvalidCron", "never matches"),
        (
            {"task": "t", "cron": "0 * * * *", "timezone": "Mars/Base"},
            "InvalidTimeZone",
            "'Mars/Base' is not an IANA time zone",
        ),
        ({"task": "t", "cron": "0 * * * *", "machine": "huge"}, "InvalidSpec", "machine"),
    ],
)
def test_a_bad_spec_is_a_condition_and_one_event(
    spec: dict[str, Any], reason: str, text: str
) -> None:
    sim = Sim(spec)
    plan = sim.step(at(3600.5))
    assert plan.create is None and plan.wake_at is None
    ready = sim.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", reason)
    assert text in ready["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", reason)]
    assert text in plan.events[0].message
    assert sim.step(at(7200.5)).events == []  # said once, not every reconcile


def test_missed_ticks_are_counted_up_to_a_cap() -> None:
    sim = Sim({"task": "t", "cron": "* * * * * *"})
    sim.step(at(0.5))
    plan = sim.step(at(86400.5))
    assert sim.status["missedRuns"] == MISSED_COUNT_CAP  # the latest tick itself ran
    assert "more than" in plan.events[0].message


# --------------------------------------------------------------------------- history


def view(name: str, second: int, phase: str | None) -> RunView:
    return RunView(name, f"u-{name}", at(second), phase, False)


def test_prune_keeps_the_newest_successes_and_failures_and_every_active_run() -> None:
    runs = [
        view("a", 1, "Completed"),
        view("b", 2, "Failed"),
        view("c", 3, "Completed"),
        view("d", 4, "Canceled"),
        view("e", 5, "Completed"),
        view("f", 6, "Executing"),
        view("g", 0, None),
    ]
    assert [r.name for r in prune(runs, 2, 1)] == ["a", "b"]
    assert [r.name for r in prune(runs, 0, 0)] == ["a", "b", "c", "d", "e"]


def test_history_limits_prune_after_the_status_is_written() -> None:
    sim = Sim({**EVERY_2S, "successfulRunsHistoryLimit": 1, "failedRunsHistoryLimit": 1})
    sim.step(at(1))
    for second in (2, 4, 6, 8):
        plan = sim.step(at(second + 0.1))
        assert plan.create is not None
        sim.finish(plan.create["metadata"]["name"], "Failed" if second == 4 else "Completed")
    sim.step(at(9))
    deleted = [r.name for plan in sim.plans for r in plan.delete]
    assert deleted == ["every-1704067202", "every-1704067206"]  # each as soon as it was surplus
    assert sorted(sim.runs) == ["every-1704067204", "every-1704067208"]
    assert [r["name"] for r in sim.status["lastRuns"]] == ["every-1704067208", "every-1704067204"]


# --------------------------------------------------------------------------- simulation


@settings(max_examples=30, deadline=None)
@given(
    policy=st.sampled_from(["Skip", "RunOnce"]),
    downtimes=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 30)), max_size=4),
    lost_writes=st.sets(st.integers(0, 100), max_size=10),
    seed=st.integers(0, 1000),
)
def test_every_tick_runs_at_most_once_and_is_accounted_for(
    policy: str, downtimes: list[tuple[int, int]], lost_writes: set[int], seed: int
) -> None:
    """Operators crash and restart at random (some losing their status write): each tick
    makes at most one run, and every tick is either run or counted as missed."""
    rng = random.Random(seed)
    sim = Sim({**EVERY_2S, "missedRunPolicy": policy})
    # Down at times, but never before the schedule was first seen (a schedule created
    # while no operator runs is covered by the spec-change tests).
    down = {s for start, length in downtimes for s in range(start + 1, start + 1 + length)}
    step = 0
    moment = at(0.5)
    end = at(120)
    while moment < end:
        if int((moment - T0).total_seconds()) not in down:
            # The first write is never lost: until a status exists the schedule has not
            # been seen, the case the spec-change tests cover (see above).
            sim.step(moment, write_status=step == 0 or step not in lost_writes)
            step += 1
        moment += timedelta(seconds=rng.choice([0.3, 0.7, 1.1, 2.5]))
    sim.step(end)  # a final, clean reconcile
    fired = {
        run["metadata"]["annotations"]["podtask.dev/scheduled-time"] for run in sim.runs.values()
    }
    assert len(fired) == len(sim.runs)
    every = Cron.parse("*/2 * * * * *").between(at(0), end, 1000)
    assert sim.status["missedRuns"] + len(sim.runs) == len(every)


# --------------------------------------------------------------------------- SDK


def test_schedules_task_declares_a_task_and_a_schedule() -> None:
    from examples.tasks import scheduled

    assert scheduled.typed.id == "schedule.typed"
    declared = {s.metadata.name: s for s in sdk.declared("prod")}
    schedule = declared["schedule.typed"]
    assert schedule.metadata.namespace == "prod"
    assert schedule.metadata.labels == {"podtask.dev/schedule-type": "declarative"}
    assert (schedule.spec.task, schedule.spec.cron, schedule.spec.timezone) == (
        "schedule.typed",
        "*/2 * * * * *",
        "Europe/Berlin",
    )
    assert scheduled.typed.payload_schema is not None


def test_schedules_task_rejects_a_bad_cron_or_zone_at_import() -> None:
    with pytest.raises(InvalidTaskDefinitionError, match="not a valid cron"):
        sdk.task(id="bad.cron", cron="61 * * * *")
    with pytest.raises(InvalidTaskDefinitionError, match="not an IANA time zone"):
        sdk.task(id="bad.zone", cron="0 * * * *", timezone="Mars/Base")


def test_the_payload_parses_into_the_sdk_model() -> None:
    from podtask.api.v1alpha1 import ScheduleSpec

    cron = Cron.parse("0 9 * * 1-5", "America/New_York")
    spec = ScheduleSpec(
        task="t",
        cron="0 9 * * 1-5",
        timezone="America/New_York",
        external_id="u-1",
        payload={"k": 1},
    )
    tick = cron.next_after(utc(2024, 3, 8, 15))
    wire = build_payload("sched", spec, cron, tick, utc(2024, 3, 7, 14), "IMPERATIVE")
    parsed = sdk.ScheduledPayload.model_validate(wire)
    assert parsed.type == "IMPERATIVE"
    assert parsed.timestamp == tick == utc(2024, 3, 11, 13)  # Monday 09:00 EDT
    assert parsed.last_timestamp == utc(2024, 3, 7, 14)
    assert parsed.external_id == "u-1" and parsed.schedule_id == "sched"
    assert parsed.data == {"k": 1}
    assert len(parsed.upcoming) == 5 and parsed.upcoming[0] == utc(2024, 3, 12, 13)


def test_timezones_lists_iana_names() -> None:
    names = sdk.timezones()
    assert names == sorted(names)
    assert {"UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney"} <= set(names)


# --------------------------------------------------------------------------- the controller


class FakeKube:
    """Just enough of ``Kube`` for the schedule controller, recording every call."""

    def __init__(self, create_status: int = 201, patch_status: int = 200) -> None:
        self.create_status = create_status
        self.patch_status = patch_status
        self.calls: list[tuple[str, str, Any]] = []
        self.existing: dict[str, dict[str, Any]] = {}

    async def list(self, path: str, **query: str) -> dict[str, Any]:
        return {"items": []}

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from podtask_operator.kube import ApiError

        self.calls.append(("create", path, body))
        if path.endswith("/taskruns") and self.create_status == 409:
            # Someone made it first: the GET that follows finds theirs.
            meta = {**body["metadata"], "uid": "theirs", "resourceVersion": "6"}
            self.existing[f"{path}/{meta['name']}"] = {**body, "metadata": meta}
            raise ApiError(409, {"reason": "AlreadyExists"})
        return {**body, "metadata": {**body["metadata"], "uid": "new", "resourceVersion": "7"}}

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        from podtask_operator.kube import ApiError

        self.calls.append(("patch", path, patch))
        if path.endswith("/status") and self.patch_status == 409:
            raise ApiError(409, {"reason": "Conflict"})
        return {"metadata": {"resourceVersion": "99"}, "status": patch.get("status")}

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        self.calls.append((method, path, body))
        return self.existing[path]

    async def delete(self, path: str, **_: Any) -> None:
        self.calls.append(("delete", path, None))


def _live_schedule(**spec: Any) -> dict[str, Any]:
    moment = datetime.now(UTC)
    return {
        "metadata": {
            "name": "live",
            "namespace": "ns",
            "uid": "uid-live",
            "generation": 1,
            "resourceVersion": "5",
            "creationTimestamp": format_time(moment - timedelta(seconds=30)),
        },
        "spec": {"task": "t", "cron": "* * * * * *", **spec},
        "status": {
            "observedGeneration": 1,
            "lastScheduleTime": format_time(moment - timedelta(seconds=3)),
        },
    }


async def test_the_controller_creates_the_tick_then_writes_status_conditionally() -> None:
    from podtask_operator.schedule_controller import ScheduleController

    kube = FakeKube()
    controller = ScheduleController(kube)  # type: ignore[arg-type]
    controller.on_task("ADDED", {"metadata": {"namespace": "ns", "name": "t"}})
    controller.on_schedule("ADDED", _live_schedule())
    await controller.reconcile(("ns", "live"))
    kinds = [(c[0], c[1].rsplit("/", 1)[-1]) for c in kube.calls]
    assert kinds[:2] == [("create", "taskruns"), ("patch", "status")]
    patch = kube.calls[1][2]
    assert patch["metadata"] == {"resourceVersion": "5"}  # refused if the copy was stale
    created = kube.calls[0][2]["metadata"]["name"]
    assert patch["status"]["lastScheduleTime"] == format_time(RunView.of(kube.calls[0][2]).tick)
    assert created in controller.runs["uid-live"]
    controller.queue.forget(("ns", "live"))


async def test_a_409_on_create_is_a_tick_already_fired() -> None:
    from podtask_operator.schedule_controller import ScheduleController

    kube = FakeKube(create_status=409)
    controller = ScheduleController(kube)  # type: ignore[arg-type]
    controller.on_task("ADDED", {"metadata": {"namespace": "ns", "name": "t"}})
    controller.on_schedule("ADDED", _live_schedule())
    await controller.reconcile(("ns", "live"))
    assert [c[0] for c in kube.calls][:3] == ["create", "GET", "patch"]
    made = kube.calls[0][2]
    assert made["metadata"]["name"] in controller.runs["uid-live"]  # recorded as its run
    assert kube.calls[2][2]["status"]["lastScheduleTime"] == format_time(RunView.of(made).tick)
    controller.queue.forget(("ns", "live"))


async def test_a_conflicting_status_write_rereads_and_retries_without_side_effects() -> None:
    from podtask_operator.schedule_controller import ScheduleController, schedules_path

    kube = FakeKube(patch_status=409)
    controller = ScheduleController(kube)  # type: ignore[arg-type]
    controller.on_task("ADDED", {"metadata": {"namespace": "ns", "name": "t"}})
    schedule = _live_schedule(successfulRunsHistoryLimit=0)
    controller.on_schedule("ADDED", schedule)
    finished = {
        "metadata": {
            "name": "live-1",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "3",
            "annotations": {"podtask.dev/scheduled-time": "2024-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "podtask.dev/v1alpha1",
                    "kind": "Schedule",
                    "name": "live",
                    "uid": "uid-live",
                }
            ],
        },
        "status": {"phase": "Completed"},
    }
    controller.on_run("ADDED", finished)
    newer = {**schedule, "metadata": {**schedule["metadata"], "resourceVersion": "8"}}
    kube.existing[schedules_path("ns", "live")] = newer
    await controller.reconcile(("ns", "live"))
    methods = [c[0] for c in kube.calls]
    assert "delete" not in methods  # pruning waits for a status that records the tick
    assert methods[-1] == "GET"
    assert controller.schedules[("ns", "live")]["metadata"]["resourceVersion"] == "8"
    assert len(controller.queue) == 1  # decided again with the fresh copy
