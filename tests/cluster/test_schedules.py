"""Schedules on the real control plane: every-second crons, policies, an operator
killed across ticks, history limits, conditions, the SDK and a GitOps apply.

Crons use the seconds field (a podtask extension) so each test takes seconds, not
minutes.  Counts are exact where exactness is the point: one run per tick (names
are deterministic), and every tick either ran or is counted in missedRuns.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from podtask import schedules
from podtask.api.v1alpha1 import API_VERSION, FINAL_PHASES
from podtask_operator.schedules import Cron, run_name
from tests.cluster.harness import GROUP, VERSION, OperatorProcess, apply_task, phase_of

KUBECTL = Path(sys.executable).with_name("kubectl")
REPO = Path(__file__).resolve().parents[2]
FINAL = {p.value for p in FINAL_PHASES}
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def custom(api: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def make_schedule(api: ApiClient, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": API_VERSION, "kind": "Schedule", "metadata": {"name": name}, "spec": spec}
    return cast(
        dict[str, Any],
        custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "schedules", body),
    )


def get_schedule(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return cast(
        dict[str, Any],
        custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "schedules", name),
    )


def patch_spec(api: ApiClient, namespace: str, name: str, **spec: Any) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "schedules", name, {"spec": spec}
    )


def delete_schedule(api: ApiClient, namespace: str, name: str) -> None:
    custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, "schedules", name)


def runs_of(api: ApiClient, namespace: str, schedule: str) -> list[dict[str, Any]]:
    body = custom(api).list_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "taskruns",
        label_selector=f"podtask.dev/schedule={schedules.label_value(schedule)}",
    )
    return sorted(cast(dict[str, Any], body)["items"], key=tick_of)


def wait_suspended(api: ApiClient, namespace: str, name: str) -> None:
    """Until the operator has seen spec.suspend (it drops nextScheduleTime)."""
    until(
        lambda: "nextScheduleTime" not in status_of(get_schedule(api, namespace, name)),
        30,
        f"{name}'s suspend to be seen",
    )


def wait_next(api: ApiClient, namespace: str, name: str) -> str:
    """Until the operator has computed the schedule's nextScheduleTime."""
    return str(
        until(
            lambda: status_of(get_schedule(api, namespace, name)).get("nextScheduleTime"),
            30,
            f"{name}'s nextScheduleTime",
        )
    )


def status_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body.get("status") or {})


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def tick_of(run: dict[str, Any]) -> datetime:
    return parse(run["metadata"]["annotations"]["podtask.dev/scheduled-time"])


def created_of(run: dict[str, Any]) -> datetime:
    return parse(run["metadata"]["creationTimestamp"])


def ready(body: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status_of(body).get("conditions", []) if c["type"] == "Ready"), {})


def until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def events_of(api: ApiClient, namespace: str, name: str) -> list[Any]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=Schedule"
    )
    return list(events.items)


def completed(api: ApiClient, namespace: str, schedule: str, count: int) -> list[dict[str, Any]]:
    runs = [r for r in runs_of(api, namespace, schedule) if phase_of(r) == "Completed"]
    return runs if len(runs) >= count else []


def assert_one_run_per_tick(name: str, runs: list[dict[str, Any]]) -> None:
    ticks = [tick_of(r) for r in runs]
    assert len(set(ticks)) == len(ticks), f"a tick ran twice: {sorted(ticks)}"
    for run in runs:
        assert run["metadata"]["name"] == run_name(name, tick_of(run))


def now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- ticking


def test_every_second_schedule_runs_with_the_trigger_dev_payload(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    apply_task(kube_api, namespace, "schedule.typed", "examples.tasks.scheduled:typed")
    schedule = make_schedule(
        kube_api,
        namespace,
        "ticker",
        task="schedule.echo",
        cron="*/2 * * * * *",
        timezone="Europe/Berlin",
        externalId="user 42",
        payload={"report": "weekly"},
        successfulRunsHistoryLimit=10,
    )
    make_schedule(kube_api, namespace, "typed", task="schedule.typed", cron="*/2 * * * * *")
    runs = until(lambda: completed(kube_api, namespace, "ticker", 3), 240, "three runs")
    typed = until(lambda: completed(kube_api, namespace, "typed", 1), 120, "a typed run")
    delete_schedule(kube_api, namespace, "typed")

    assert_one_run_per_tick("ticker", runs)
    for run in runs:
        tick = tick_of(run)
        assert tick.second % 2 == 0 and tick.microsecond == 0
        meta = run["metadata"]
        assert meta["labels"]["podtask.dev/schedule"] == "ticker"
        assert meta["labels"]["podtask.dev/external-id"] == schedules.label_value("user 42")
        assert meta["annotations"]["podtask.dev/external-id"] == "user 42"
        owner = meta["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Schedule",
            "ticker",
            schedule["metadata"]["uid"],
        )
        output = run["status"]["output"]
        assert output == run["spec"]["payload"]
        assert output["type"] == "DECLARATIVE"
        assert output["timestamp"] == tick.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert output["timezone"] == "Europe/Berlin"
        assert output["scheduleId"] == "ticker"
        assert output["externalId"] == "user 42"
        assert output["data"] == {"report": "weekly"}
        assert [parse(t) for t in output["upcoming"]] == [
            tick + timedelta(seconds=2 * k) for k in range(1, 6)
        ]
        # Runs start right at their tick, not a polling interval later (slack: a slow CI).
        assert (created_of(run) - tick).total_seconds() <= 5
    # lastTimestamp is the previous tick that made a run.
    for before, after in itertools.pairwise(runs):
        if tick_of(after) - tick_of(before) == timedelta(seconds=2):
            assert (
                after["spec"]["payload"]["lastTimestamp"] == before["spec"]["payload"]["timestamp"]
            )

    status = status_of(get_schedule(kube_api, namespace, "ticker"))
    last, nxt = parse(status["lastScheduleTime"]), parse(status["nextScheduleTime"])
    assert timedelta(seconds=2) <= nxt - last <= timedelta(seconds=4)
    assert nxt > now() - timedelta(seconds=5)
    assert nxt.second % 2 == 0
    assert status["missedRuns"] == 0
    assert ready(get_schedule(kube_api, namespace, "ticker"))["status"] == "True"
    assert [r["name"] for r in status["lastRuns"]][:1] == [run_name("ticker", last)]

    # A @schedules.task gets its payload parsed into ScheduledPayload.
    output = typed[0]["status"]["output"]
    assert output["type"] == "DECLARATIVE" and output["scheduleId"] == "typed"
    assert output["gapToNext"] == 2.0


def test_suspend_stops_ticks_and_resume_starts_them(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    make_schedule(
        kube_api, namespace, "pausable", task="schedule.echo", cron="* * * * * *", suspend=True
    )
    until(
        lambda: ready(get_schedule(kube_api, namespace, "pausable")).get("reason") == "Suspended",
        30,
        "Ready reason Suspended",
    )
    time.sleep(3)
    assert runs_of(kube_api, namespace, "pausable") == []
    assert "nextScheduleTime" not in status_of(get_schedule(kube_api, namespace, "pausable"))

    patch_spec(kube_api, namespace, "pausable", suspend=False)
    until(lambda: runs_of(kube_api, namespace, "pausable"), 60, "a run after resuming")
    patch_spec(kube_api, namespace, "pausable", suspend=True)
    wait_suspended(kube_api, namespace, "pausable")
    count = len(runs_of(kube_api, namespace, "pausable"))
    time.sleep(4)
    assert len(runs_of(kube_api, namespace, "pausable")) == count
    assert status_of(get_schedule(kube_api, namespace, "pausable")).get("missedRuns", 0) == 0


# --------------------------------------------------------------------------- concurrency


def test_forbid_skips_ticks_while_a_run_is_active(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.slow", "examples.tasks.scheduled:slow")
    make_schedule(
        kube_api,
        namespace,
        "forbid",
        task="schedule.slow",
        cron="*/2 * * * * *",
        concurrencyPolicy="Forbid",
        payload={"seconds": 5},
    )
    most_active = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = runs_of(kube_api, namespace, "forbid")
        most_active = max(most_active, sum(phase_of(r) not in FINAL for r in runs))
        if len([r for r in runs if phase_of(r) == "Completed"]) >= 2:
            break
        time.sleep(0.2)
    patch_spec(kube_api, namespace, "forbid", suspend=True)
    wait_suspended(kube_api, namespace, "forbid")
    runs = runs_of(kube_api, namespace, "forbid")
    done = [r for r in runs if phase_of(r) == "Completed"]
    assert len(done) >= 2, runs
    assert most_active == 1
    assert_one_run_per_tick("forbid", runs)
    # The next run is for a tick after the first one ended: the ticks in between were
    # skipped, not started late.
    finished = parse(done[0]["status"]["finishedAt"])
    assert tick_of(done[1]) >= finished.replace(microsecond=0)
    # Every tick from the first run on either made a run or was counted as missed.
    status = status_of(get_schedule(kube_api, namespace, "forbid"))
    last = max(parse(status["lastScheduleTime"]), parse(status["lastMissedTime"]))
    ticks = Cron.parse("*/2 * * * * *").between(tick_of(runs[0]) - timedelta(seconds=1), last, 999)
    assert status["missedRuns"] == len(ticks) - len(runs) >= 2
    skipped = [e for e in events_of(kube_api, namespace, "forbid") if e.reason == "TickSkipped"]
    assert skipped and "concurrencyPolicy is Forbid" in skipped[0].message


def test_replace_cancels_the_active_run(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.slow", "examples.tasks.scheduled:slow")
    make_schedule(
        kube_api,
        namespace,
        "replace",
        task="schedule.slow",
        cron="*/6 * * * * *",
        concurrencyPolicy="Replace",
        payload={"seconds": 120},
    )
    first = until(
        lambda: next(
            (r for r in runs_of(kube_api, namespace, "replace") if phase_of(r) == "Executing"), None
        ),
        180,
        "an executing run",
    )
    name = first["metadata"]["name"]
    replaced = until(
        lambda: next(
            (
                r
                for r in runs_of(kube_api, namespace, "replace")
                if phase_of(r) == "Canceled" and r["metadata"]["name"] == name
            ),
            None,
        ),
        120,
        f"{name} to be canceled",
    )
    patch_spec(kube_api, namespace, "replace", suspend=True)
    assert replaced["spec"]["cancel"] is True
    # It was canceled by the run of the following tick, which exists.
    successor = tick_of(first) + timedelta(seconds=6)
    assert successor in {tick_of(r) for r in runs_of(kube_api, namespace, "replace")}
    assert parse(replaced["status"]["finishedAt"]) >= successor


# --------------------------------------------------------------------------- restarts


def test_an_operator_killed_across_ticks_neither_loses_nor_doubles_them(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    cron = "*/6 * * * * *"
    every = Cron.parse(cron)
    for name, policy in (
        ("run-once", {"missedRunPolicy": "RunOnce"}),
        ("skip", {"startingDeadlineSeconds": 2}),
    ):
        make_schedule(
            kube_api,
            namespace,
            name,
            task="schedule.echo",
            cron=cron,
            successfulRunsHistoryLimit=50,
            **policy,
        )
    until(lambda: runs_of(kube_api, namespace, "run-once"), 120, "a first run")
    until(lambda: runs_of(kube_api, namespace, "skip"), 60, "a first skip run")
    # Die just after a tick (n), stay dead across the next two (n+6, n+12), and come
    # back 2s after the second: the next tick (n+18) leaves 4s to start up.
    tick = every.next_after(now())
    time.sleep(max(0.0, (tick - now()).total_seconds() + 0.8))
    operator.kill()
    killed = now()
    time.sleep(max(0.0, (tick + timedelta(seconds=14) - now()).total_seconds()))
    operator.start()

    def acted() -> datetime | None:
        status = status_of(get_schedule(kube_api, namespace, "run-once"))
        last = max(parse(status[k]) for k in ("lastScheduleTime", "lastMissedTime") if k in status)
        return now() if last > killed else None

    # The first decision after the restart, give or take one poll.
    back = until(acted, 60, "the restarted operator to act", interval=0.05)
    outage = every.between(killed, back, 99)
    assert len(outage) >= 2, (tick, killed, back)
    until(
        lambda: [r for r in runs_of(kube_api, namespace, "run-once") if tick_of(r) > back],
        60,
        "a tick after the restart",
    )
    time.sleep(1)
    for name in ("run-once", "skip"):
        patch_spec(kube_api, namespace, name, suspend=True)
    for name in ("run-once", "skip"):
        wait_suspended(kube_api, namespace, name)

    for name in ("run-once", "skip"):
        runs = runs_of(kube_api, namespace, name)
        status = status_of(get_schedule(kube_api, namespace, name))
        assert_one_run_per_tick(name, runs)
        last = max(
            parse(status["lastScheduleTime"]),
            parse(status.get("lastMissedTime") or status["lastScheduleTime"]),
        )
        ticks = every.between(tick_of(runs[0]) - timedelta(seconds=1), last, 999)
        ran = {tick_of(r) for r in runs}
        assert ran <= set(ticks)
        # Nothing lost without a trace: each tick ran or is counted as missed.
        assert status["missedRuns"] == len(ticks) - len(ran), (name, status, sorted(ran))
        assert status["missedRuns"] >= 1
        from_outage = sorted(t for t in ran if t in outage)
        if name == "run-once":
            # RunOnce ran exactly one tick of the outage: the latest, after the restart.
            assert from_outage == [outage[-1]], (outage, from_outage)
            assert status["missedRuns"] >= len(outage) - 1
        else:
            # Skip with a 2s deadline: ticks more than 2s old at the restart never ran.
            assert [t for t in from_outage if t < back - timedelta(seconds=2)] == []
            assert status["missedRuns"] >= len(
                [t for t in outage if t < back - timedelta(seconds=2)]
            )
    missed = [e for e in events_of(kube_api, namespace, "skip") if e.reason == "MissedSchedule"]
    assert missed


def test_a_run_made_by_someone_else_for_a_tick_is_not_made_again(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    """What a second operator or a crash between create and status write leaves behind."""
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    cron = "*/4 * * * * *"
    schedule = make_schedule(kube_api, namespace, "shared", task="schedule.echo", cron=cron)
    tick = Cron.parse(cron).next_after(now() + timedelta(seconds=2))
    name = run_name("shared", tick)
    custom(kube_api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "taskruns",
        {
            "apiVersion": API_VERSION,
            "kind": "TaskRun",
            "metadata": {
                "name": name,
                "labels": {"podtask.dev/schedule": "shared"},
                "annotations": {"podtask.dev/scheduled-time": tick.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "Schedule",
                        "name": "shared",
                        "uid": schedule["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"task": "schedule.echo", "payload": {"made": "elsewhere"}},
        },
    )
    after = until(
        lambda: [
            r
            for r in runs_of(kube_api, namespace, "shared")
            if tick_of(r) == tick + timedelta(seconds=4)
        ],
        60,
        "the tick after",
    )[0]
    runs = [r for r in runs_of(kube_api, namespace, "shared") if tick_of(r) == tick]
    status = status_of(get_schedule(kube_api, namespace, "shared"))
    delete_schedule(kube_api, namespace, "shared")
    assert after["spec"]["payload"]["lastTimestamp"] == tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [r["spec"]["payload"] for r in runs] == [{"made": "elsewhere"}]
    assert status["missedRuns"] == 0


# --------------------------------------------------------------------------- history


def test_history_limits_prune_the_oldest_finished_runs(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.odd-fails", "examples.tasks.scheduled:odd_fails")
    make_schedule(
        kube_api,
        namespace,
        "pruned",
        task="schedule.odd-fails",
        cron="* * * * * *",
        successfulRunsHistoryLimit=2,
        failedRunsHistoryLimit=1,
    )
    seen: set[datetime] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(seen) < 8:
        seen |= {tick_of(r) for r in runs_of(kube_api, namespace, "pruned")}
        time.sleep(0.2)
    patch_spec(kube_api, namespace, "pruned", suspend=True)
    wait_suspended(kube_api, namespace, "pruned")
    seen |= {tick_of(r) for r in runs_of(kube_api, namespace, "pruned")}
    # Odd-second ticks fail (no retries), even ones complete.
    keep_ok = sorted(t for t in seen if t.second % 2 == 0)[-2:]
    keep_failed = sorted(t for t in seen if t.second % 2 == 1)[-1:]

    def settled() -> list[dict[str, Any]]:
        runs = runs_of(kube_api, namespace, "pruned")
        done = all(phase_of(r) in FINAL for r in runs)
        return runs if done and {tick_of(r) for r in runs} == {*keep_ok, *keep_failed} else []

    runs = until(settled, 180, f"only {keep_ok} and {keep_failed} to remain")
    assert {tick_of(r): phase_of(r) for r in runs} == {
        **{t: "Completed" for t in keep_ok},
        **{t: "Failed" for t in keep_failed},
    }
    assert len(seen) >= 8


# --------------------------------------------------------------------------- conditions


def test_bad_cron_zone_or_task_is_a_clear_condition(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    make_schedule(kube_api, namespace, "bad-cron", task="schedule.echo", cron="61 * * * *")
    make_schedule(
        kube_api,
        namespace,
        "bad-zone",
        task="schedule.echo",
        cron="* * * * * *",
        timezone="Europe/Berln",
    )
    make_schedule(kube_api, namespace, "no-task", task="does.not.exist", cron="* * * * * *")
    expected = {
        "bad-cron": ("InvalidCron", "cron '61 * * * *' is invalid: the minute field '61'"),
        "bad-zone": ("InvalidTimeZone", "did you mean 'Europe/Berlin'?"),
        "no-task": ("TaskNotFound", "Task 'does.not.exist' does not exist"),
    }

    def check(name: str, reason: str, text: str) -> None:
        condition = until(
            lambda: ready(get_schedule(kube_api, namespace, name)), 30, f"{name}'s condition"
        )
        assert (condition["status"], condition["reason"]) == ("False", reason), condition
        assert text in condition["message"]
        event = until(
            lambda: [e for e in events_of(kube_api, namespace, name) if e.reason == reason],
            30,
            f"{name}'s {reason} event",
        )[0]
        assert event.type == "Warning" and text in event.message

    for name, (reason, text) in expected.items():
        check(name, reason, text)
    time.sleep(2)
    for name in expected:
        assert runs_of(kube_api, namespace, name) == []
    assert "nextScheduleTime" not in status_of(get_schedule(kube_api, namespace, "bad-cron"))
    assert status_of(get_schedule(kube_api, namespace, "no-task"))["missedRuns"] >= 1


# --------------------------------------------------------------------------- SDK and GitOps


def test_sdk_create_again_updates_the_same_schedule(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    apply_task(kube_api, namespace, "schedule.echo", "examples.tasks.scheduled:echo")
    key = "reminder-user-42"
    first = schedules.create(
        "schedule.echo",
        "0 9 * * 1-5",
        key,
        timezone="America/New_York",
        external_id="user-42",
        namespace=namespace,
        api=kube_api,
    )
    again = schedules.create(
        "schedule.echo",
        "30 9 * * 1-5",
        key,
        timezone="America/New_York",
        external_id="user-42",
        namespace=namespace,
        api=kube_api,
    )
    assert first.metadata.name == again.metadata.name == schedules.schedule_name(key)
    assert [s.spec.cron for s in schedules.list(namespace=namespace, api=kube_api)] == [
        "30 9 * * 1-5"
    ]
    assert schedules.list(external_id="user-42", namespace=namespace, api=kube_api)
    assert schedules.list(external_id="user-7", namespace=namespace, api=kube_api) == []
    assert schedules.list(task="other", namespace=namespace, api=kube_api) == []
    name = schedules.schedule_name(key)

    expected = Cron.parse("30 9 * * 1-5", "America/New_York").next_after(now())

    def scheduled() -> dict[str, Any] | None:
        body = get_schedule(kube_api, namespace, name)
        seen = status_of(body).get("observedGeneration") == body["metadata"]["generation"]
        return body if seen and status_of(body).get("nextScheduleTime") else None

    body = until(scheduled, 30, "nextScheduleTime")
    assert parse(status_of(body)["nextScheduleTime"]) == expected
    assert body["metadata"]["labels"]["podtask.dev/schedule-type"] == "imperative"

    schedules.deactivate(name, namespace, api=kube_api)
    until(
        lambda: ready(get_schedule(kube_api, namespace, name)).get("reason") == "Suspended",
        30,
        "Suspended",
    )
    schedules.activate(name, namespace, api=kube_api)
    schedules.update(name, cron="0 12 * * *", namespace=namespace, api=kube_api)
    moved = Cron.parse("0 12 * * *", "America/New_York").next_after(now())
    until(
        lambda: (
            status_of(get_schedule(kube_api, namespace, name)).get("nextScheduleTime")
            == moved.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        30,
        "the updated nextScheduleTime",
    )
    assert schedules.retrieve(name, namespace, api=kube_api).spec.external_id == "user-42"
    schedules.delete(name, namespace, api=kube_api)
    schedules.delete(name, namespace, api=kube_api)  # already gone: fine
    with pytest.raises(ApiException):
        schedules.retrieve(name, namespace, api=kube_api)


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        check=check,
    )


def test_gitops_example_applies_idempotently_and_a_cron_change_moves_the_next_tick(
    operator: OperatorProcess,
    kube_api: ApiClient,
    namespace: str,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(REPO / "examples" / "gitops", overlay)
    (overlay / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: {namespace}\nresources:\n  - {base}\n"
    )
    kubectl(kubeconfig, "apply", "-k", str(overlay))
    names = ("daily-digest", "cleanup-hourly", "customer-42-weekly")
    for name in names:
        wait_next(kube_api, namespace, name)
    generations = {n: get_schedule(kube_api, namespace, n)["metadata"]["generation"] for n in names}

    second = kubectl(kubeconfig, "apply", "-k", str(overlay)).stdout.splitlines()
    assert len(second) == 6 and all(line.endswith(" unchanged") for line in second), second
    diff = kubectl(kubeconfig, "diff", "-k", str(overlay), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    for name in names:
        body = get_schedule(kube_api, namespace, name)
        assert body["metadata"]["generation"] == generations[name]
        assert ready(body)["status"] == "True", ready(body)

    digest = status_of(get_schedule(kube_api, namespace, "daily-digest"))
    assert parse(digest["nextScheduleTime"]) == Cron.parse(
        "0 8 * * 1-5", "Europe/Berlin"
    ).next_after(now())
    (overlay / "kustomization.yaml").write_text(
        (overlay / "kustomization.yaml").read_text()
        + "patches:\n  - target:\n      kind: Schedule\n      name: daily-digest\n"
        "    patch: |-\n      - op: replace\n        path: /spec/cron\n"
        '        value: "15 */2 * * *"\n'
    )
    changed = kubectl(kubeconfig, "apply", "-k", str(overlay)).stdout
    assert "schedule.podtask.dev/daily-digest configured" in changed
    moved = Cron.parse("15 */2 * * *", "Europe/Berlin").next_after(now())
    until(
        lambda: (
            status_of(get_schedule(kube_api, namespace, "daily-digest")).get("nextScheduleTime")
            == moved.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        30,
        "nextScheduleTime to move",
    )
    assert kubectl(kubeconfig, "diff", "-k", str(overlay), check=False).returncode == 0
