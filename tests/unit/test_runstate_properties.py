"""Properties of ``runstate.decide``: level-triggered idempotence, final phases stay
final, and invariants that hold along any sequence of events (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from podtask.api.v1alpha1 import FINAL_PHASES, Attempt, Phase, RunError, TaskRunStatus
from podtask.protocol import EXIT_CANCELED
from podtask_operator import naming
from podtask_operator.runstate import CHECKPOINT_EXIT_GRACE, Decision, PodView, Reports
from podtask_operator.settings import Settings
from tests.unit.runbuilder import RUN, T0, RunBuilder, at, completion, failure, make_task

# --------------------------------------------------------------------------- idempotence


def assert_settled(run: RunBuilder) -> None:
    """Deciding again on the same inputs after the patch was written changes nothing."""
    again = run.redo()
    assert again.status_patch == {}, again.status_patch
    assert again.events == []
    assert again.output_chunks == [] or run.phase is None
    if again.create_pod is not None:  # only the idempotent re-create of a Dequeued pod
        assert run.phase == "Dequeued"
        assert run.last is not None and run.last.create_pod == again.create_pod


def reach_delayed(run: RunBuilder) -> None:
    run.with_spec(delay="1h").step()


def reach_waiting_for_task(run: RunBuilder) -> None:
    run.without_task().step()


def reach_queued(run: RunBuilder) -> None:
    run.with_spec(ttl="1h").step()


def reach_dequeued(run: RunBuilder) -> None:
    run.queued().step(slot=True)


def reach_dequeued_pod_lost(run: RunBuilder) -> None:
    run.dequeued().pod_gone(f"{RUN}-1").advance(1).step(slot=True)


def reach_executing(run: RunBuilder) -> None:
    run.dequeued().advance(1).pod(f"{RUN}-1", "Running")
    run.step(started=1, last_heartbeat=run.now, metadata={"progress": 1})


def reach_backoff(run: RunBuilder) -> None:
    run.executing()
    run.step(failure=failure(1, stack="trace"))


def reach_infra_retry(run: RunBuilder) -> None:
    run.executing().advance(1).pod_update(f"{RUN}-1", phase="Failed", disrupted=True)
    run.step()


def reach_oom_retry(run: RunBuilder) -> None:
    run.with_task(make_task(retry={"outOfMemory": {"machine": "large-2x"}})).executing()
    run.advance(1).pod_ends(f"{RUN}-1", 137, reason="OOMKilled")
    run.step()


def reach_completed(run: RunBuilder) -> None:
    run.executing().step(completion=completion(1, {"ok": True}))


def reach_completed_large(run: RunBuilder) -> None:
    run.settings = Settings(output_inline_limit=10)
    run.executing().step(completion=completion(1, {"blob": "x" * 100}))


def reach_failed(run: RunBuilder) -> None:
    run.executing().step(failure=failure(1, skip=True, stack="trace"))


def reach_invalid(run: RunBuilder) -> None:
    run.with_spec(maxDuration="1s").step()


def reach_crashed(run: RunBuilder) -> None:
    run.executing().advance(1).pod_ends(f"{RUN}-1", 1)
    run.step()


def reach_heartbeat_crash(run: RunBuilder) -> None:
    run.executing().advance(10_000).step()


def reach_system_failure(run: RunBuilder) -> None:
    run.executing().advance(1).pod_ends(f"{RUN}-1", 0)
    run.step()


def reach_timed_out(run: RunBuilder) -> None:
    run.with_task(make_task(maxDuration="5s")).executing()
    run.advance(1).pod_ends(f"{RUN}-1", EXIT_CANCELED, reason="DeadlineExceeded")
    run.step()


def reach_canceled(run: RunBuilder) -> None:
    run.executing().cancel().advance(1).step()


def reach_expired(run: RunBuilder) -> None:
    run.with_spec(ttl="1m").queued().advance(60).step(slot=True)


WALKS: dict[str, tuple[Callable[[RunBuilder], None], str | None]] = {
    "delayed": (reach_delayed, "Delayed"),
    "waiting-for-task": (reach_waiting_for_task, None),
    "queued": (reach_queued, "Queued"),
    "dequeued": (reach_dequeued, "Dequeued"),
    "dequeued-pod-lost": (reach_dequeued_pod_lost, "Dequeued"),
    "executing": (reach_executing, "Executing"),
    "retry-backoff": (reach_backoff, "Queued"),
    "infra-retry": (reach_infra_retry, "Queued"),
    "oom-retry": (reach_oom_retry, "Queued"),
    "completed": (reach_completed, "Completed"),
    "completed-large-output": (reach_completed_large, "Completed"),
    "failed": (reach_failed, "Failed"),
    "invalid": (reach_invalid, "Failed"),
    "crashed": (reach_crashed, "Crashed"),
    "heartbeat-timeout": (reach_heartbeat_crash, "Crashed"),
    "system-failure": (reach_system_failure, "SystemFailure"),
    "timed-out": (reach_timed_out, "TimedOut"),
    "canceled": (reach_canceled, "Canceled"),
    "expired": (reach_expired, "Expired"),
}


@pytest.mark.parametrize("walk", sorted(WALKS))
def test_deciding_again_after_the_patch_changes_nothing(walk: str) -> None:
    reach, phase = WALKS[walk]
    run = RunBuilder()
    reach(run)
    assert run.phase == phase
    assert_settled(run)


@pytest.mark.parametrize("walk", sorted(WALKS))
def test_status_written_by_decide_round_trips_through_the_model(walk: str) -> None:
    run = RunBuilder()
    WALKS[walk][0](run)
    assert run.model.to_wire() == run.status


# --------------------------------------------------------------------------- final is final

POD_NAMES = [f"{RUN}-1", f"{RUN}-2", f"{RUN}-1-r1"]

pod_views = st.builds(
    PodView,
    name=st.just(""),
    phase=st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]),
    deleting=st.booleans(),
    exit_code=st.one_of(st.none(), st.sampled_from([0, 1, 2, 137, 143])),
    reason=st.one_of(st.none(), st.sampled_from(["OOMKilled", "Evicted", "DeadlineExceeded"])),
    disrupted=st.booleans(),
)

reports = st.builds(
    Reports,
    started=st.one_of(st.none(), st.integers(1, 3)),
    completion=st.one_of(
        st.none(), st.builds(completion, st.integers(1, 3), st.sampled_from([None, 1, "x"]))
    ),
    failure=st.one_of(st.none(), st.builds(failure, st.integers(1, 3), skip=st.booleans())),
    metadata=st.one_of(st.none(), st.just({"late": True})),
    last_heartbeat=st.one_of(st.none(), st.just(at(-10_000)), st.just(at(10**6))),
)


@st.composite
def final_statuses(draw: st.DrawFn) -> dict[str, Any]:
    phase = draw(st.sampled_from(sorted(FINAL_PHASES)))
    count = draw(st.integers(0, 3))
    attempts = [
        Attempt(
            number=i + 1,
            pod=f"{RUN}-{i + 1}",
            machine="small-1x",
            started_at=at(i * 10),
            finished_at=at(i * 10 + 5) if i < count - 1 or draw(st.booleans()) else None,
        )
        for i in range(count)
    ]
    status = TaskRunStatus(
        phase=phase,
        attempt=count or None,
        queue="q",
        machine="small-1x",
        attempts=attempts,
        task_snapshot=make_task(),
        error=None if phase == Phase.COMPLETED else RunError(type="X", message="m"),
        output="out" if phase == Phase.COMPLETED else None,
        queued_at=T0,
        started_at=T0 if count else None,
        finished_at=at(100),
        duration="1m40s" if count else None,
    )
    return status.to_wire()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=final_statuses(),
    spec=st.sampled_from(
        [{}, {"cancel": True}, {"maxDuration": "1s"}, {"delay": "1h"}, {"ttl": "1s"}]
    ),
    task_present=st.booleans(),
    pods=st.dictionaries(st.sampled_from(POD_NAMES), pod_views, max_size=3),
    seen=reports,
    now=st.floats(0, 30 * 86400),
    slot=st.booleans(),
    keep=st.booleans(),
    delete_finished=st.booleans(),
    restarted=st.booleans(),
)
def test_a_final_phase_never_changes(
    status: dict[str, Any],
    spec: dict[str, Any],
    task_present: bool,
    pods: dict[str, PodView],
    seen: Reports,
    now: float,
    slot: bool,
    keep: bool,
    delete_finished: bool,
    restarted: bool,
) -> None:
    settings_ = Settings(
        keep_failed_pods=keep, delete_finished_pods=delete_finished, ttl_after_finished=86400
    )
    run = RunBuilder(settings=settings_, **spec)
    run.run["status"] = status
    if not task_present:
        run.without_task()
    for name, pod in pods.items():
        run.pods[name] = replace(pod, name=name)
    run.at(now)
    run.operator_started = run.now if restarted else None

    decision = run.step(slot=slot, reports=seen)

    assert decision.status_patch == {}
    assert decision.events == [] and decision.output_chunks == []
    assert decision.create_pod is None
    assert not decision.wants_slot
    # A final run holds its slot only while one of its pods has not stopped yet.
    assert decision.holds_slot == any(not pod.terminal for pod in run.pods.values())
    deleted = set(decision.delete_pods)
    assert len(deleted) == len(decision.delete_pods) and deleted <= set(pods)
    last_pod = status["attempts"][-1]["pod"] if status.get("attempts") else None
    reported = status["phase"] in ("Completed", "Failed")
    for name, pod in pods.items():
        if pod.deleting:
            assert name not in deleted  # already on its way: never deleted twice
        elif pod.terminal:
            # Stopped pods are kept (logs; they hold nothing) unless configured otherwise,
            # and then the last pod of a run that did not complete is kept when asked.
            kept_for_logs = keep and status["phase"] != "Completed" and name == last_pod
            assert (name in deleted) == (delete_finished and not kept_for_logs)
        elif reported:
            # A runner that reported exits by itself; stopped only if it has not by then.
            assert (name in deleted) == (now >= 100 + CHECKPOINT_EXIT_GRACE)
        else:
            assert name in deleted  # canceled, timed out, crashed: stopped at once
    assert decision.delete_run == (now >= 100 + 86400)


# --------------------------------------------------------------------------- random walks

# Common events more often than the ones that end a run outright.
ACTIONS = st.sampled_from(
    [
        *["tick"] * 3,
        "long-tick",
        *["start"] * 8,
        *["heartbeat"] * 2,
        "complete",
        *["fail"] * 3,
        "abort",
        "exit-0",
        "exit-1",
        *["oom"] * 2,
        "deadline",
        *["evicted"] * 2,
        "sigterm",
        *["vanish"] * 2,
        "cancel",
        "task-gone",
        "operator-restart",
    ]
)


def act(run: RunBuilder, action: str, slot: bool) -> Decision:
    """Play one event against the run, then reconcile (``slot``: the dispatcher admits it)."""
    current = run.attempts[-1]["pod"] if run.attempts else None
    number = run.status.get("attempt") or 1
    # The run API takes reports only from the current attempt of a run in flight.
    in_flight = run.phase in ("Dequeued", "Executing")
    fields: dict[str, Any] = {}
    if action == "tick":
        run.advance(7)
    elif action == "long-tick":
        run.advance(400)
    elif action == "start" and current in run.pods and run.phase == "Dequeued":
        run.pod(current, "Running")
        fields = {"started": number, "last_heartbeat": run.now}
    elif action == "heartbeat":
        fields = {"last_heartbeat": run.now}
    elif action == "complete" and in_flight:
        fields = {"completion": completion(number, {"n": number})}
    elif action in ("fail", "abort") and in_flight:
        fields = {"failure": failure(number, skip=action == "abort")}
    elif action == "cancel":
        run.cancel()
    elif action == "task-gone":
        run.without_task()
    elif action == "operator-restart":
        run.operator_started = run.now
    elif action == "vanish" and current is not None:
        run.pod_gone(current)
    elif current in run.pods:
        ends: dict[str, tuple[int, dict[str, Any]]] = {
            "exit-0": (0, {}),
            "exit-1": (1, {}),
            "oom": (137, {"reason": "OOMKilled"}),
            "deadline": (EXIT_CANCELED, {"reason": "DeadlineExceeded"}),
            "evicted": (137, {"reason": "Evicted", "disrupted": True}),
            "sigterm": (EXIT_CANCELED, {}),
        }
        if action in ends:
            code, extra = ends[action]
            run.pod_ends(current, code, **extra)
    return run.reconcile(admit=slot, **fields)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(
        st.tuples(ACTIONS, st.sampled_from([True, True, True, False])), min_size=1, max_size=60
    ),
    max_attempts=st.integers(1, 4),
    oom_policy=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants_hold_along_any_history(
    actions: list[tuple[str, bool]], max_attempts: int, oom_policy: bool, seed: int
) -> None:
    retry: dict[str, Any] = {"maxAttempts": max_attempts}
    if oom_policy:
        retry["outOfMemory"] = {"machine": "large-1x"}
    task = make_task(retry=retry, maxDuration="10m")
    run = RunBuilder(task=task, seed=seed, settings=Settings(infra_retry_limit=2))
    run.reconcile(admit=False)
    for action, slot in actions:
        before = run.phase
        decision = act(run, action, slot)
        after = run.phase

        if before is not None and Phase(before).is_final:
            assert after == before and decision.status_patch == {}
        live_pod = any(not pod.terminal for pod in run.last_facts.pods.values())
        assert decision.holds_slot == (after in ("Dequeued", "Executing") or live_pod)
        if decision.wants_slot:
            assert after == "Queued"
        if decision.create_pod is not None:
            assert after == "Dequeued"
            assert decision.create_pod.name == run.attempts[-1]["pod"]
        assert_settled(run)

        attempts = run.attempts
        numbers = [a["number"] for a in attempts]
        assert numbers == sorted(numbers)
        assert len({a["pod"] for a in attempts}) == len(attempts)  # a new pod each time
        reruns: dict[int, int] = {}
        for attempt in attempts:
            k = reruns.get(attempt["number"], 0)
            assert attempt["pod"] == naming.pod_name(RUN, attempt["number"], k)
            reruns[attempt["number"]] = k + 1
        assert all(a.get("finishedAt") for a in attempts[:-1])
        assert sum(1 for a in attempts if not a["counted"]) <= 3
        assert max(numbers, default=0) <= max_attempts
        if after is not None and Phase(after).is_final:
            assert run.status.get("finishedAt")
            assert "nextAttemptAt" not in run.status
            if after == "Completed":
                assert "error" not in run.status
            elif after != "Canceled":
                assert "error" in run.status
        if after == "Completed":
            assert run.status.get("output") == {"n": run.attempt}
    event(f"ended {run.phase} after {len(run.attempts)} pod(s)")


def test_retry_times_are_reproducible_with_the_same_random_source() -> None:
    def next_attempt(seed: int) -> Any:
        run = RunBuilder(seed=seed).executing()
        run.fails()
        return run.status["nextAttemptAt"]

    assert next_attempt(1) == next_attempt(1)
    assert len({next_attempt(seed) for seed in range(5)}) > 1


def test_a_completion_races_a_pod_exit_in_one_reconcile() -> None:
    run = RunBuilder().executing()
    run.advance(1).pod_ends(f"{RUN}-1", 0)
    run.step(completion=completion(1, "won"))
    assert run.phase == "Completed" and run.status["output"] == "won"
    assert_settled(run)
    assert run.now - T0 == timedelta(seconds=2)
