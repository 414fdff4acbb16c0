"""The run state machine (``runstate.decide``), walked through whole lives of runs.

Each test drives a ``RunBuilder``: every step calls ``decide`` like a reconcile
and writes the status patch back as the API server would (a JSON merge patch),
so later steps read exactly what the operator would read after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from podtask import outputs
from podtask.api.v1alpha1 import Phase, RunError
from podtask.protocol import EXIT_CANCELED, Completion, Failure, TerminationReport
from podtask_operator import backoff, naming, runstate
from podtask_operator.runstate import (
    CHECKPOINT_EXIT_GRACE,
    DEADLINE_SLACK,
    DELETING_RECHECK,
    PodView,
    Reports,
)
from podtask_operator.settings import Settings
from tests.unit.runbuilder import (
    RUN,
    T0,
    RunBuilder,
    at,
    completion,
    failure,
    iso,
    make_task,
)

DEFAULT_QUEUE = naming.default_queue("email.send")


def reasons(builder: RunBuilder) -> list[str]:
    assert builder.last is not None
    return [event.reason for event in builder.last.events]


# --------------------------------------------------------------------------- admission


def test_new_run_is_queued_with_a_snapshot_of_its_task() -> None:
    task = make_task(machine="medium-1x", version="20260301.1")
    run = RunBuilder(task=task)
    decision = run.step()

    status = run.status
    assert status["phase"] == "Queued"
    assert status["taskSnapshot"] == task.to_wire()
    assert status["machine"] == "medium-1x"
    assert status["queue"] == DEFAULT_QUEUE == "task-email-send-baf96d"
    assert status["queuedAt"] == iso(T0)
    assert status["createdAt"] == iso(T0)
    assert "expiresAt" not in status
    assert "attempt" not in status and status.get("attempts", []) == []
    assert decision.wants_slot and not decision.holds_slot
    assert decision.create_pod is None
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "Queued")]
    assert DEFAULT_QUEUE in decision.events[0].message


def test_queue_comes_from_the_run_then_the_task_then_the_operator_default() -> None:
    assert RunBuilder(task=make_task(queue="email")).queued().status["queue"] == "email"
    overridden = RunBuilder(task=make_task(queue="email"), queue="urgent").queued()
    assert overridden.status["queue"] == "urgent"
    configured = RunBuilder()
    configured.default_queue = "shared"
    assert configured.queued().status["queue"] == "shared"


def test_run_machine_overrides_the_tasks() -> None:
    run = RunBuilder(task=make_task(machine="micro"), machine="large-2x").queued()
    assert run.status["machine"] == "large-2x"
    assert run.status["taskSnapshot"]["machine"] == "micro"
    decision = run.step(slot=True)
    assert decision.create_pod is not None and decision.create_pod.machine == "large-2x"


def test_ttl_sets_expires_at_from_the_run_or_the_task() -> None:
    assert RunBuilder(ttl="10m").queued().status["expiresAt"] == iso(at(600))
    from_task = RunBuilder(task=make_task(ttl="1h")).queued()
    assert from_task.status["expiresAt"] == iso(at(3600))
    both = RunBuilder(task=make_task(ttl="1h"), ttl="30s").queued()
    assert both.status["expiresAt"] == iso(at(30))


def test_initial_metadata_is_copied_to_the_status() -> None:
    run = RunBuilder(metadata={"progress": 0, "steps": ["a"]}).queued()
    assert run.status["metadata"] == {"progress": 0, "steps": ["a"]}


def test_a_granted_slot_dequeues_attempt_one_and_plans_its_pod() -> None:
    task = make_task(maxDuration="10m")
    run = RunBuilder(task=task).queued()
    decision = run.step(slot=True)

    assert run.phase == "Dequeued"
    assert run.status["attempt"] == 1
    assert run.attempts == [
        {
            "number": 1,
            "pod": f"{RUN}-1",
            "machine": "small-1x",
            "dequeuedAt": iso(run.now),
            "counted": True,
        }
    ]
    plan = decision.create_pod
    assert plan == runstate.PodPlan(
        name=f"{RUN}-1",
        attempt=1,
        machine="small-1x",
        queue=DEFAULT_QUEUE,
        max_duration="10m",
        snapshot=task,
    )
    assert decision.holds_slot and not decision.wants_slot
    assert reasons(run) == ["Dequeued"]


def test_slot_on_the_first_reconcile_queues_and_dequeues_at_once() -> None:
    run = RunBuilder()
    decision = run.step(slot=True)
    assert run.phase == "Dequeued"
    assert run.status["queuedAt"] == iso(T0)
    assert reasons(run) == ["Queued", "Dequeued"]
    assert decision.create_pod is not None and decision.create_pod.name == f"{RUN}-1"


def test_run_max_duration_overrides_the_tasks_in_the_pod_plan() -> None:
    run = RunBuilder(task=make_task(maxDuration="10m"), maxDuration="90s").queued()
    decision = run.step(slot=True)
    assert decision.create_pod is not None and decision.create_pod.max_duration == "90s"


def test_missing_task_waits_for_the_grace_period_then_fails() -> None:
    settings = Settings(task_grace=10.0)
    run = RunBuilder(settings=settings).without_task()

    decision = run.step()
    assert run.phase is None
    assert decision.requeue_after == pytest.approx(10.0)
    assert not decision.wants_slot and not decision.events

    decision = run.at(4).step()
    assert run.phase is None
    assert decision.requeue_after == pytest.approx(6.0)

    decision = run.at(10).step()
    assert run.phase == "Failed"
    assert run.error["type"] == runstate.COULD_NOT_FIND_TASK
    assert "email.send" in run.error["message"]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Failed")]
    assert run.status["finishedAt"] == iso(at(10))
    assert not decision.wants_slot and not decision.holds_slot


def test_a_task_that_appears_within_the_grace_period_is_used() -> None:
    run = RunBuilder(settings=Settings(task_grace=10.0)).without_task()
    run.step()
    run.at(5).with_task().step()
    assert run.phase == "Queued"
    assert run.status["queuedAt"] == iso(at(5))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"maxDuration": "1s"}, "spec.maxDuration"),
        ({"bogus": 1}, "spec.bogus"),
        ({"delay": "10m", "delayUntil": iso(at(60))}, "delay and delayUntil"),
        ({"tags": ["a", "a"]}, "spec.tags"),
    ],
)
def test_invalid_spec_fails_with_a_condition_naming_the_field(
    spec: dict[str, Any], field: str
) -> None:
    run = RunBuilder(**spec)
    decision = run.step(slot=True)

    assert run.phase == "Failed"
    assert run.error["type"] == runstate.INVALID_SPEC
    assert field in run.error["message"]
    [condition] = run.status["conditions"]
    assert condition["type"] == "Valid" and condition["status"] == "False"
    assert condition["reason"] == "InvalidSpec"
    assert field in condition["message"]
    assert condition["lastTransitionTime"]
    assert decision.create_pod is None and not decision.wants_slot
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Failed")]


def test_a_spec_without_a_task_is_invalid() -> None:
    run = RunBuilder()
    del run.run["spec"]["task"]
    run.step()
    assert run.phase == "Failed" and "spec.task" in run.error["message"]


# --------------------------------------------------------------------------- delay and ttl


def test_delay_waits_in_delayed_without_a_slot_then_queues() -> None:
    run = RunBuilder(delay="10m", ttl="1h")
    decision = run.step(slot=True)
    assert run.phase == "Delayed"
    assert run.status["nextAttemptAt"] == iso(at(600))
    assert decision.requeue_after == pytest.approx(600)
    assert decision.create_pod is None
    assert not decision.wants_slot and not decision.holds_slot
    assert "queuedAt" not in run.status and "expiresAt" not in run.status

    decision = run.at(250).step()
    assert run.phase == "Delayed"
    assert decision.status_patch == {} and not decision.events
    assert decision.requeue_after == pytest.approx(350)

    decision = run.at(600).step()
    assert run.phase == "Queued"
    assert "nextAttemptAt" not in run.status
    assert run.status["queuedAt"] == iso(at(600))
    # ttl counts from enqueue, after the delay (Trigger.dev)
    assert run.status["expiresAt"] == iso(at(600 + 3600))
    assert decision.wants_slot


def test_delay_until_waits_until_that_time() -> None:
    run = RunBuilder(delayUntil=iso(at(3600)))
    decision = run.step()
    assert run.phase == "Delayed"
    assert run.status["nextAttemptAt"] == iso(at(3600))
    assert decision.requeue_after == pytest.approx(3600)
    run.at(3600).step()
    assert run.phase == "Queued"


def test_delay_until_in_another_time_zone_is_compared_as_an_instant() -> None:
    plus_two = (T0 + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert plus_two.endswith("+02:00")
    run = RunBuilder(delayUntil=plus_two)
    decision = run.step()
    assert run.phase == "Delayed"
    assert decision.requeue_after == pytest.approx(1800)


def test_delay_until_without_a_time_zone_is_read_as_utc() -> None:
    """A zone-less delayUntil (the API server's date-time format admits one) must not
    crash ``decide`` comparing naive and aware times; like Go, read it as UTC."""
    run = RunBuilder(delayUntil=iso(at(60)).removesuffix("Z"))
    decision = run.step()
    assert run.phase == "Delayed"
    assert decision.requeue_after == pytest.approx(60)
    run.at(60).step()
    assert run.phase == "Queued"


def test_delay_in_the_past_queues_at_once() -> None:
    run = RunBuilder(delay="1m").at(120)
    run.step()
    assert run.phase == "Queued"
    run2 = RunBuilder(delayUntil=iso(at(-5)))
    run2.step()
    assert run2.phase == "Queued"


def test_ttl_passing_while_queued_expires_the_run() -> None:
    run = RunBuilder(ttl="5m").queued()
    decision = run.at(100).step()
    assert decision.wants_slot
    assert decision.requeue_after == pytest.approx(200)  # look again at expiry

    decision = run.at(300).step(slot=True)
    assert run.phase == "Expired"
    assert run.error["type"] == "EXPIRED"
    assert run.status["finishedAt"] == iso(at(300))
    assert decision.create_pod is None
    assert not decision.wants_slot and not decision.holds_slot
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Expired")]


def test_ttl_does_not_expire_a_run_that_already_started() -> None:
    policy = {"maxAttempts": 3, "minTimeout": "10m", "randomize": False}
    run = RunBuilder(ttl="1m", task=make_task(retry=policy)).executing()
    run.fails()
    assert run.phase == "Queued"
    run.at(700).step()
    assert run.phase == "Queued"
    run.step(slot=True)
    assert run.phase == "Dequeued" and run.attempt == 2


# --------------------------------------------------------------------------- running


def test_runner_fetching_its_context_makes_the_run_executing() -> None:
    run = RunBuilder().dequeued()
    decision = run.at(3).step(started=1)
    assert run.phase == "Executing"
    assert run.status["startedAt"] == iso(at(3))
    assert run.attempts[0]["startedAt"] == iso(at(3))
    assert reasons(run) == ["Executing"]
    assert decision.holds_slot and decision.requeue_after is not None


def test_a_running_pod_is_not_yet_executing_until_the_runner_starts() -> None:
    run = RunBuilder().dequeued()
    run.pod(f"{RUN}-1", "Running", started_at=at(2))
    run.at(4).step()
    assert run.phase == "Dequeued"  # the runner may still be importing the task's code
    run.at(5).step(started=1)
    assert run.phase == "Executing"
    assert run.status["startedAt"] == iso(at(5))
    assert run.attempts[0]["startedAt"] == iso(at(5))


def test_heartbeats_mark_a_run_executing_after_an_operator_restart() -> None:
    run = RunBuilder().dequeued()
    run.pod(f"{RUN}-1", "Running", started_at=at(2))
    run.at(40).step(last_heartbeat=at(39))  # the start report died with the old operator
    assert run.phase == "Executing"


def test_a_pending_pod_keeps_the_run_dequeued() -> None:
    run = RunBuilder().dequeued()
    decision = run.at(30).step()
    assert run.phase == "Dequeued"
    assert decision.status_patch == {} and decision.create_pod is None
    assert decision.holds_slot


def test_a_start_report_of_another_attempt_is_ignored() -> None:
    run = RunBuilder().dequeued()
    run.at(3).step(started=2)
    assert run.phase == "Dequeued"


def test_metadata_reports_are_written_to_the_status() -> None:
    run = RunBuilder(metadata={"progress": 0}).executing()
    run.advance(5).step(metadata={"progress": 0.5, "step": "download"})
    assert run.status["metadata"] == {"progress": 0.5, "step": "download"}


def test_metadata_keys_removed_by_the_task_disappear_from_the_status() -> None:
    """The runner sends the whole document; the status must equal it afterwards,
    which a merge patch only achieves if removed keys are sent as null."""
    run = RunBuilder().executing()
    run.advance(5).step(metadata={"progress": 0.5, "step": "download", "nested": {"a": 1}})
    run.advance(5).step(metadata={"progress": 1, "nested": {}})
    assert run.status["metadata"] == {"progress": 1, "nested": {}}


# --------------------------------------------------------------------------- outcomes


def test_completion_stores_small_output_inline() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    decision = run.at(61).completes({"sent": True, "id": 42})

    status = run.status
    assert status["phase"] == "Completed"
    assert status["output"] == {"sent": True, "id": 42}
    assert "outputRef" not in status and "error" not in status
    assert status["finishedAt"] == iso(at(61))
    assert status["duration"] == "1m"
    [attempt] = run.attempts
    assert attempt["reason"] == "Completed" and attempt["exitCode"] == 0
    assert attempt["finishedAt"] == iso(at(61))
    assert decision.output_chunks == []
    assert reasons(run) == ["Completed"]
    # the runner exits by itself after reporting; its pod is left until then, and
    # keeps the slot (a pod still running counts against the queue and its quota)
    assert decision.holds_slot and not decision.wants_slot
    assert decision.delete_pods == []
    assert decision.requeue_after == pytest.approx(CHECKPOINT_EXIT_GRACE)

    run.advance(1).pod_ends(pod, 0)
    decision = run.step()
    # stopped: it holds nothing, and is kept for its logs until the run is deleted
    assert decision.delete_pods == [] and decision.status_patch == {}
    assert not decision.holds_slot


def test_completion_with_no_output_leaves_output_unset() -> None:
    run = RunBuilder().executing()
    run.completes(None)
    assert run.phase == "Completed"
    assert "output" not in run.status and "outputRef" not in run.status


def test_outputs_with_json_null_survive_the_status_write() -> None:
    """A merge patch drops nulls, so {"error": null} would be stored as {}: the
    status is written whole instead."""
    run = RunBuilder().executing()
    run.completes({"error": None, "items": [1, None]})
    stored = run.status.get("output")
    if stored is None and "outputRef" in run.status:
        return  # kept in Secrets: fine
    assert stored == {"error": None, "items": [1, None]}


def test_large_output_goes_to_deterministic_chunk_secrets() -> None:
    settings = Settings(output_inline_limit=1024)
    value = {"blob": "x" * (outputs.CHUNK_BYTES * 2 + 1000), "n": 1}
    data = outputs.encode(value)
    run = RunBuilder(settings=settings).executing()
    decision = run.completes(value)

    assert run.phase == "Completed"
    assert "output" not in run.status
    ref = run.status["outputRef"]
    names = [naming.output_secret(RUN, i) for i in range(3)]
    assert names == [f"{RUN}-output-0", f"{RUN}-output-1", f"{RUN}-output-2"]
    assert ref == {
        "kind": "Secret",
        "names": names,
        "size": len(data),
        "sha256": outputs.digest(data),
    }
    assert [name for name, _ in decision.output_chunks] == names
    chunks = [chunk for _, chunk in decision.output_chunks]
    assert sum(len(chunk) for chunk in chunks) == len(data)
    assert all(len(chunk) <= outputs.CHUNK_BYTES for chunk in chunks)
    assert outputs.assemble(chunks, ref["size"], ref["sha256"]) == value

    # the same completion decided again gives the same chunks (level-triggered)
    again = RunBuilder(settings=settings).executing()
    assert again.completes(value).output_chunks == decision.output_chunks


def test_output_just_at_the_inline_limit_stays_inline() -> None:
    value = "y" * 98
    limit = len(outputs.encode(value))
    assert limit == 100
    run = RunBuilder(settings=Settings(output_inline_limit=limit)).executing()
    run.completes(value)
    assert run.status["output"] == value
    bigger = RunBuilder(settings=Settings(output_inline_limit=limit - 1)).executing()
    bigger.completes(value)
    assert "output" not in bigger.status and bigger.status["outputRef"]["size"] == 100


def test_output_over_ten_mib_fails_the_run() -> None:
    value = "z" * outputs.MAX_OUTPUT_BYTES  # plus two quotes as JSON
    run = RunBuilder().executing()
    decision = run.completes(value)
    assert run.phase == "Failed"
    assert run.error["type"] == runstate.OUTPUT_TOO_LARGE
    assert str(outputs.MAX_OUTPUT_BYTES) in run.error["message"]
    assert "output" not in run.status and "outputRef" not in run.status
    assert decision.output_chunks == []
    assert run.attempts[-1]["reason"] == "Error"


def test_a_completion_of_another_attempt_is_ignored() -> None:
    run = RunBuilder().executing()
    run.advance(1).step(completion=completion(2, "late"))
    assert run.phase == "Executing"


def test_failure_is_retried_after_a_backoff_through_the_queue() -> None:
    run = RunBuilder().executing()
    first_pod = run.current_pod
    decision = run.fails(stack="Traceback ...")

    policy = make_task().retry
    low, high = backoff.delay_bounds(policy, 1)
    assert run.phase == "Queued"
    assert run.attempt == 1
    next_at = run.model.next_attempt_at
    assert next_at is not None
    delay = (next_at - run.now).total_seconds()
    assert low <= delay <= high
    assert decision.requeue_after == pytest.approx(delay)
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "Retrying")]
    # slot freed for the backoff once the failed attempt's pod has stopped
    assert not decision.wants_slot and decision.holds_slot
    run.pod(f"{RUN}-1", "Succeeded", exit_code=0)
    assert not run.redo().holds_slot
    assert run.error == {
        "type": "ValueError",
        "message": "attempt 1 broke",
        "stack": "Traceback ...",
    }
    attempt = run.attempts[0]
    assert attempt["reason"] == "Error" and attempt["message"] == "attempt 1 broke"
    assert attempt["finishedAt"] == iso(run.now) and attempt["counted"] is True

    # not before the backoff ends
    early = run.step(slot=True)
    assert run.phase == "Queued" and early.create_pod is None and not early.wants_slot

    run.now = next_at
    assert run.step().wants_slot
    decision = run.step(slot=True)
    assert run.phase == "Dequeued" and run.attempt == 2
    assert decision.create_pod is not None and decision.create_pod.name == f"{RUN}-2"
    assert [a["pod"] for a in run.attempts] == [first_pod, f"{RUN}-2"]
    assert "nextAttemptAt" not in run.status


def test_backoff_without_randomize_follows_the_formula() -> None:
    policy = {
        "maxAttempts": 4,
        "factor": 3,
        "minTimeout": "2s",
        "maxTimeout": "10s",
        "randomize": False,
    }
    run = RunBuilder(task=make_task(retry=policy)).executing()
    delays = []
    for _ in range(3):
        decision = run.fails()
        delays.append(decision.requeue_after)
        run.retry_now().executing()
    assert delays == [2.0, 6.0, 10.0]


def test_attempts_exhausted_fail_the_run_with_the_last_error() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 2})).executing()
    run.fails()
    run.retry_now().executing()
    decision = run.fails(type="KeyError", message="missing key")

    assert run.phase == "Failed"
    assert run.error == {"type": "KeyError", "message": "missing key"}
    assert "nextAttemptAt" not in run.status
    assert [a["number"] for a in run.attempts] == [1, 2]
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Failed")]
    assert "attempt 2 of 2" in decision.events[0].message


def test_run_max_attempts_overrides_the_task_retry_policy() -> None:
    fewer = RunBuilder(task=make_task(retry={"maxAttempts": 5}), maxAttempts=1).executing()
    fewer.fails()
    assert fewer.phase == "Failed" and len(fewer.attempts) == 1

    more = RunBuilder(task=make_task(retry={"maxAttempts": 1}), maxAttempts=3).executing()
    for _ in range(2):
        more.fails()
        assert more.phase == "Queued"
        more.retry_now().executing()
    more.fails()
    assert more.phase == "Failed" and more.attempt == 3


def test_abort_fails_after_one_attempt() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 5})).executing()
    decision = run.fails(skip=True, type="AbortTaskRunError", message="bad input")
    assert run.phase == "Failed"
    assert run.error == {"type": "AbortTaskRunError", "message": "bad input"}
    assert len(run.attempts) == 1
    assert "Retrying" not in [e.reason for e in decision.events]


def test_a_retry_delay_from_the_task_is_honoured() -> None:
    run = RunBuilder().executing()
    decision = run.fails(delay=42.5)
    assert run.phase == "Queued"
    assert run.status["nextAttemptAt"] == iso(run.now + timedelta(seconds=42.5))
    assert decision.requeue_after == pytest.approx(42.5)


def test_a_failure_of_another_attempt_is_ignored() -> None:
    run = RunBuilder().executing()
    run.advance(1).step(failure=failure(3))
    assert run.phase == "Executing"


def test_the_error_of_a_later_attempt_replaces_the_earlier_one_whole() -> None:
    """A merge patch merges objects key by key: an earlier attempt's stack must not
    linger under the error of a later attempt that has none."""
    run = RunBuilder(task=make_task(retry={"maxAttempts": 3})).executing()
    run.fails(stack="Traceback of attempt 1")
    run.retry_now().executing()
    run.fails(type="KeyError", message="second")
    assert run.error == {"type": "KeyError", "message": "second"}


# --------------------------------------------------------------------------- pod ended unreported


def test_oom_with_an_out_of_memory_policy_retries_on_the_bigger_machine() -> None:
    retry = {"maxAttempts": 3, "outOfMemory": {"machine": "large-1x"}}
    run = RunBuilder(task=make_task(machine="small-1x", retry=retry)).executing()
    pod = run.current_pod
    run.advance(5).pod_ends(pod, 137, reason="OOMKilled")
    decision = run.step()

    assert run.phase == "Queued"
    assert run.status["machine"] == "large-1x"
    attempt = run.attempts[0]
    assert attempt["reason"] == "OOMKilled" and attempt["exitCode"] == 137
    assert attempt["machine"] == "small-1x"
    assert [e.reason for e in decision.events] == ["Retrying"]
    assert "large-1x" in decision.events[0].message

    run.retry_now()
    assert run.last is not None and run.last.create_pod is not None
    assert run.last.create_pod.machine == "large-1x"
    assert run.last.create_pod.name == f"{RUN}-2"
    assert run.attempts[1]["machine"] == "large-1x"


def test_oom_without_a_policy_crashes() -> None:
    run = RunBuilder().executing()
    run.advance(5).pod_ends(run.current_pod, 137, reason="OOMKilled", message="memory")
    decision = run.step()
    assert run.phase == "Crashed"
    assert run.error["type"] == runstate.OOM_KILLED
    assert run.attempts[0]["reason"] == "OOMKilled"
    assert run.attempts[0]["message"] == "memory"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Crashed")]


def test_oom_on_the_last_attempt_crashes_even_with_a_policy() -> None:
    retry = {"maxAttempts": 1, "outOfMemory": {"machine": "large-1x"}}
    run = RunBuilder(task=make_task(retry=retry)).executing()
    run.advance(5).pod_ends(run.current_pod, 137, reason="OOMKilled")
    run.step()
    assert run.phase == "Crashed" and run.error["type"] == runstate.OOM_KILLED
    assert run.status["machine"] == "small-1x"


@pytest.mark.parametrize("exit_code", [143, 137, None])
def test_pod_past_its_active_deadline_times_out(exit_code: int | None) -> None:
    """activeDeadlineSeconds kills the container with SIGTERM (exit 143) or SIGKILL."""
    run = RunBuilder(task=make_task(maxDuration="1m")).executing()
    pod = run.current_pod
    run.advance(61)
    run.pod_update(pod, phase="Failed", reason="DeadlineExceeded", exit_code=exit_code)
    decision = run.step()
    assert run.phase == "TimedOut"
    assert run.error["type"] == runstate.MAX_DURATION_EXCEEDED
    assert "1m" in run.error["message"]
    assert run.attempts[0]["reason"] == "DeadlineExceeded"
    assert run.attempts[0]["counted"] is True
    assert decision.create_pod is None


def test_a_crashed_process_crashes_the_run() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 3})).executing()
    pod = run.current_pod
    run.advance(5).pod_ends(pod, 1, finished_at=at(5.5))
    decision = run.step()
    assert run.phase == "Crashed"
    assert run.error["type"] == runstate.PROCESS_EXITED
    assert "exit code 1" in run.error["message"]
    attempt = run.attempts[0]
    assert attempt["exitCode"] == 1 and attempt["reason"] == "Error"
    assert attempt["finishedAt"] == iso(at(5.5))
    assert decision.delete_pods == []  # the failed pod is kept for its logs


def test_exit_zero_without_a_report_is_a_system_failure() -> None:
    run = RunBuilder().executing()
    run.advance(5).pod_ends(run.current_pod, 0)
    run.step()
    assert run.phase == "SystemFailure"
    assert run.error["type"] == runstate.NO_OUTCOME_REPORTED


RUN_TOKEN = "t" * 43


def _exited_with_report(
    name: str, code: int, report: TerminationReport, token: str = RUN_TOKEN
) -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": "Error", "message": report.encode(token)}
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Failed" if code else "Succeeded",
            "containerStatuses": [{"state": {"terminated": terminated}}],
        },
    }


def test_an_outcome_left_in_the_termination_message_completes_the_run() -> None:
    # The runner could not reach the operator (an outage over its report deadline) and
    # exited 1; the outcome it wrote first is in the pod's status.
    run = RunBuilder(task=make_task(retry={"maxAttempts": 3})).executing()
    pod = run.current_pod
    report = TerminationReport(completion=Completion(attempt=1, output={"sent": True}))
    run.advance(5).pods[pod] = PodView.from_pod(_exited_with_report(pod, 1, report), RUN_TOKEN)
    run.step()
    assert run.phase == "Completed"
    assert run.status["output"] == {"sent": True}
    assert "message" not in run.attempts[0] or "podtask" not in run.attempts[0]["message"]


def test_a_failure_left_in_the_termination_message_is_retried_as_reported() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 3})).executing()
    pod = run.current_pod
    failure = Failure(attempt=1, error=RunError(type="ValueError", message="bad address"))
    report = TerminationReport(failure=failure)
    run.advance(5).pods[pod] = PodView.from_pod(_exited_with_report(pod, 1, report), RUN_TOKEN)
    run.step()
    assert run.phase == "Queued"  # retried like a reported failure, not Crashed
    assert run.status["error"]["type"] == "ValueError"
    assert run.attempts[0]["counted"] is True


def test_a_success_whose_output_was_lost_is_retried_without_using_an_attempt() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 1})).executing()
    pod = run.current_pod
    report = TerminationReport(completion=Completion(attempt=1), output_omitted=True)
    run.advance(5).pods[pod] = PodView.from_pod(_exited_with_report(pod, 1, report), RUN_TOKEN)
    run.step()
    assert run.phase == "Queued"
    assert run.attempts[0]["counted"] is False
    assert "output was too large" in run.attempts[0]["message"]


def test_a_termination_report_not_signed_with_the_runs_token_is_ignored() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    report = TerminationReport(completion=Completion(attempt=1, output="forged"))
    body = _exited_with_report(pod, 1, report, token="u" * 43)
    run.advance(5).pods[pod] = PodView.from_pod(body, RUN_TOKEN)
    run.step()
    assert run.phase == "Crashed"
    assert run.error["type"] == runstate.PROCESS_EXITED


def test_a_termination_report_of_another_attempt_is_ignored() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    report = TerminationReport(completion=Completion(attempt=7, output=1))
    run.advance(5).pods[pod] = PodView.from_pod(_exited_with_report(pod, 1, report), RUN_TOKEN)
    run.step()
    assert run.phase == "Crashed"
    assert run.error["type"] == runstate.PROCESS_EXITED


@pytest.mark.parametrize(("ttl", "seconds"), [(None, 30 * 86400), ("2h", 7200)])
def test_admission_records_when_the_idempotency_key_expires(ttl: str | None, seconds: int) -> None:
    spec: dict[str, Any] = {"idempotencyKey": "order-1"}
    if ttl:
        spec["idempotencyKeyTTL"] = ttl
    run = RunBuilder(**spec)
    run.step()
    assert run.status["idempotencyKeyExpiresAt"] == iso(T0 + timedelta(seconds=seconds))


def test_a_run_without_an_idempotency_key_has_no_expiry() -> None:
    run = RunBuilder()
    run.step()
    assert "idempotencyKeyExpiresAt" not in run.status


def _image_pull_backoff(name: str) -> dict[str, Any]:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}
    return {
        "metadata": {"name": name},
        "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": waiting}}]},
    }


def test_a_pod_that_never_starts_gives_its_slot_back_and_the_attempt_reruns() -> None:
    settings = Settings(start_timeout=600.0)
    run = RunBuilder(settings=settings).dequeued()
    first = run.current_pod
    run.advance(30).pods[first] = PodView.from_pod(_image_pull_backoff(first))
    decision = run.step()
    assert run.phase == "Dequeued" and decision.delete_pods == []
    assert decision.requeue_after is not None and decision.requeue_after <= 571
    run.advance(571)
    decision = run.step()
    assert first in decision.delete_pods
    assert run.phase == "Queued"
    attempt = run.attempts[0]
    assert attempt["counted"] is False and attempt["reason"] == "InfrastructureFailure"
    assert "did not start within 10m" in attempt["message"]
    assert "ImagePullBackOff" in attempt["message"]
    # The old pod is still terminating: no second pod of the run until it is gone.
    decision = run.step()
    assert decision.create_pod is None and run.phase == "Queued"
    run.pod_gone(first)
    decision = run.step(slot=True)
    assert decision.create_pod is not None and decision.create_pod.name != first
    assert run.phase == "Dequeued" and run.status["attempt"] == 1


def test_a_restarted_operator_gives_a_running_pod_time_to_be_heard_from() -> None:
    # The runner called in before the restart, but the write of Executing was lost: the
    # restarted operator must not take the pod for one that never started.
    settings = Settings(start_timeout=600.0, heartbeat_interval=30.0)
    run = RunBuilder(settings=settings).dequeued()
    pod = run.current_pod
    run.advance(700).pod(pod, "Running", started_at=run.now)
    run.operator_started = run.now
    decision = run.step()
    assert run.phase == "Dequeued" and decision.delete_pods == []
    assert decision.requeue_after is not None and decision.requeue_after <= 61
    decision = run.step(last_heartbeat=run.now)
    assert run.phase == "Executing"


def test_a_pod_stuck_deleting_on_a_lost_node_does_not_block_the_rerun() -> None:
    settings = Settings(start_timeout=60.0)
    run = RunBuilder(settings=settings).dequeued()
    first = run.current_pod
    run.advance(61)
    run.step()
    assert run.phase == "Queued" and run.pods[first].deleting
    run.pod_update(first, delete_by=run.now + timedelta(seconds=30))
    assert run.advance(60).step(slot=True).create_pod is None  # within grace + slack
    decision = run.advance(31).step(slot=True)
    assert decision.create_pod is not None and run.phase == "Dequeued"


def test_giving_up_on_a_silent_pod_asks_for_the_pods_to_be_confirmed() -> None:
    run = RunBuilder().executing()
    run.advance(60)
    assert not run.step().confirm_pods
    run.advance(Settings().heartbeat_timeout)
    decision = run.step()
    assert decision.confirm_pods and run.phase == "Crashed"


def test_an_unschedulable_pod_says_why_it_waits() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient memory.",
                }
            ],
        },
    }
    view = PodView.from_pod(pod)
    assert view.waiting == "Unschedulable: 0/1 nodes are available: 1 Insufficient memory."


def disrupted_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True"}],
            "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "Error"}}}],
        },
    }


def evicted_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"},
    }


def sigterm_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": EXIT_CANCELED, "reason": "Error"}}}
            ],
        },
    }


@pytest.mark.parametrize("pod_body", [disrupted_pod, evicted_pod, sigterm_pod])
def test_infrastructure_failures_retry_without_using_an_attempt(pod_body: Any) -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 1})).executing()
    pod = run.current_pod
    run.advance(5)
    run.pods[pod] = PodView.from_pod(pod_body(pod))
    decision = run.step()

    assert run.phase == "Queued"
    assert run.status["nextAttemptAt"] == iso(run.now)
    attempt = run.attempts[0]
    assert attempt["counted"] is False and attempt["reason"] == "InfrastructureFailure"
    assert [e.reason for e in decision.events] == ["Retrying"]
    assert "not counted" in decision.events[0].message
    assert decision.requeue_after is not None and decision.requeue_after < 1

    run.retry_now()
    assert run.attempt == 1
    assert run.last is not None and run.last.create_pod is not None
    assert run.last.create_pod.name == f"{RUN}-1-r1"
    assert run.last.create_pod.attempt == 1
    assert [(a["number"], a["pod"]) for a in run.attempts] == [(1, f"{RUN}-1"), (1, f"{RUN}-1-r1")]

    # the re-run attempt still counts as attempt 1: with maxAttempts 1 a failure now ends it
    run.executing()
    run.fails()
    assert run.phase == "Failed"


def test_an_infrastructure_rerun_and_a_real_retry_number_pods_apart() -> None:
    run = RunBuilder(task=make_task(retry={"maxAttempts": 2})).executing()
    run.advance(5).pod_update(run.current_pod, phase="Failed", disrupted=True, exit_code=137)
    run.step()
    run.retry_now().executing()
    assert run.current_pod == f"{RUN}-1-r1"
    run.fails()
    run.retry_now()
    assert run.current_pod == f"{RUN}-2" and run.attempt == 2
    run.executing().advance(1).pod_update(run.current_pod, phase="Failed", disrupted=True)
    run.step()
    run.retry_now()
    assert run.current_pod == f"{RUN}-2-r1" and run.attempt == 2


def test_too_many_infrastructure_failures_are_a_system_failure() -> None:
    run = RunBuilder(settings=Settings(infra_retry_limit=2)).executing()
    pods = []
    for _ in range(2):
        pods.append(run.current_pod)
        run.advance(5).pod_update(run.current_pod, phase="Failed", disrupted=True)
        run.step()
        assert run.phase == "Queued"
        run.retry_now().executing()
    pods.append(run.current_pod)
    assert pods == [f"{RUN}-1", f"{RUN}-1-r1", f"{RUN}-1-r2"]
    run.advance(5).pod_update(run.current_pod, phase="Failed", disrupted=True)
    decision = run.step()
    assert run.phase == "SystemFailure"
    assert run.error["type"] == runstate.INFRA_RETRIES_EXHAUSTED
    assert "3 infrastructure failures" in run.error["message"]
    assert decision.create_pod is None


# --------------------------------------------------------------------------- pod missing


def test_a_missing_pod_before_start_is_planned_again_under_the_same_name() -> None:
    run = RunBuilder().dequeued()
    first = run.last
    assert first is not None and first.create_pod is not None
    run.pod_gone(f"{RUN}-1")
    decision = run.advance(2).step()
    assert run.phase == "Dequeued"
    assert decision.status_patch == {}
    assert decision.create_pod == first.create_pod
    assert decision.holds_slot


def test_a_pod_vanishing_while_executing_is_an_infrastructure_retry() -> None:
    run = RunBuilder().executing()
    run.advance(10).pod_gone(run.current_pod)
    decision = run.step()
    assert run.phase == "Queued"
    assert run.attempts[0]["counted"] is False
    assert "disappeared" in run.attempts[0]["message"]
    assert decision.create_pod is None
    run.retry_now()
    assert run.current_pod == f"{RUN}-1-r1"


def test_a_terminating_pod_is_waited_for() -> None:
    run = RunBuilder().executing()
    run.advance(10).pod_update(run.current_pod, deleting=True)
    decision = run.step()
    assert run.phase == "Executing"
    assert decision.status_patch == {}
    assert decision.requeue_after == pytest.approx(DELETING_RECHECK)


# --------------------------------------------------------------------------- liveness


def test_no_heartbeat_for_the_timeout_crashes_the_run_and_stops_its_pod() -> None:
    run = RunBuilder(settings=Settings(heartbeat_timeout=300)).executing()
    started = run.now
    pod = run.current_pod

    decision = run.at(1 + 300).step()  # exactly the timeout: not yet
    assert run.phase == "Executing"
    assert decision.requeue_after == pytest.approx(1)

    decision = run.at(1 + 301).step()
    assert run.phase == "Crashed"
    assert run.error["type"] == runstate.HEARTBEAT_TIMEOUT
    assert run.attempts[0]["reason"] == "HeartbeatTimeout"
    assert decision.delete_pods == [pod]
    assert started == at(1)


def test_heartbeats_keep_the_run_alive() -> None:
    run = RunBuilder(settings=Settings(heartbeat_timeout=300)).executing()
    decision = run.at(500).step(last_heartbeat=at(400))
    assert run.phase == "Executing"
    assert decision.requeue_after == pytest.approx(300 - 100 + 1)
    run.at(701).step(last_heartbeat=at(400))
    assert run.phase == "Crashed"


def test_an_operator_restart_gives_a_fresh_grace_period() -> None:
    run = RunBuilder(settings=Settings(heartbeat_timeout=300)).executing()
    run.operator_started = at(1000)  # restarted: heartbeats before it are forgotten
    run.at(1010).step()
    assert run.phase == "Executing"
    run.at(1300).step()
    assert run.phase == "Executing"
    run.at(1301).step()
    assert run.phase == "Crashed"


def test_max_duration_safety_net_times_out_a_pod_the_node_does_not_stop() -> None:
    run = RunBuilder(task=make_task(maxDuration="1m")).executing()  # started at 1
    pod = run.current_pod
    decision = run.at(11).step(last_heartbeat=at(11))
    assert decision.requeue_after == pytest.approx(60 + DEADLINE_SLACK - 10 + 1)

    run.at(1 + 60 + DEADLINE_SLACK).step(last_heartbeat=run.now)
    assert run.phase == "Executing"

    decision = run.at(1 + 60 + DEADLINE_SLACK + 1).step(last_heartbeat=run.now)
    assert run.phase == "TimedOut"
    assert run.error["type"] == runstate.MAX_DURATION_EXCEEDED
    assert run.attempts[0]["reason"] == "DeadlineExceeded"
    assert decision.delete_pods == [pod]


def test_run_max_duration_overrides_the_tasks_for_the_safety_net() -> None:
    run = RunBuilder(task=make_task(maxDuration="1h"), maxDuration="10s").executing()
    run.at(1 + 10 + DEADLINE_SLACK + 1).step(last_heartbeat=run.now)
    assert run.phase == "TimedOut"


# --------------------------------------------------------------------------- Events


def routine(builder: RunBuilder) -> list[tuple[str, bool]]:
    assert builder.last is not None
    return [(event.reason, event.routine) for event in builder.last.events]


def test_only_the_steps_every_run_takes_are_routine_events() -> None:
    run = RunBuilder(delay="1m")
    run.step()
    assert routine(run) == [("Delayed", True)]
    run.at(61).step(slot=True)
    assert routine(run) == [("Queued", True), ("Dequeued", True)]
    run.executing()
    assert routine(run) == [("Executing", True)]
    run.fails()
    assert routine(run) == [("Retrying", False)]  # retries are worth an Event
    run.retry_now().executing()
    run.completes("ok")
    assert routine(run) == [("Completed", True)]


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (lambda r: r.cancel().advance(1).step(), "Canceled"),
        (lambda r: r.at(10_000).step(), "Crashed"),  # heartbeat lost
        (lambda r: r.step(failure=failure(1, skip=True)), "Failed"),
    ],
)
def test_endings_other_than_completed_are_never_routine(
    end: Callable[[RunBuilder], Any], reason: str
) -> None:
    run = RunBuilder().executing()
    end(run)
    assert routine(run) == [(reason, False)]


# --------------------------------------------------------------------------- cancel


def test_cancel_of_a_new_or_delayed_run() -> None:
    fresh = RunBuilder(cancel=True)
    decision = fresh.step(slot=True)
    assert fresh.phase == "Canceled" and decision.create_pod is None
    delayed = RunBuilder(delay="1h")
    delayed.step()
    delayed.cancel().advance(5).step()
    assert delayed.phase == "Canceled"
    assert "nextAttemptAt" not in delayed.status


def test_cancel_while_queued() -> None:
    run = RunBuilder().queued()
    decision = run.cancel().advance(5).step(slot=True)
    assert run.phase == "Canceled"
    assert decision.create_pod is None
    assert not decision.wants_slot and not decision.holds_slot
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "Canceled")]
    assert run.status["finishedAt"] == iso(at(5))


def test_cancel_while_dequeued_deletes_the_pending_pod() -> None:
    run = RunBuilder().dequeued()
    decision = run.cancel().advance(1).step()
    assert run.phase == "Canceled"
    assert decision.delete_pods == [f"{RUN}-1"]
    assert run.attempts[0]["reason"] == "Canceled"
    assert run.attempts[0]["finishedAt"] == iso(at(1))
    assert decision.holds_slot  # until the pod is gone
    run.pods.pop(f"{RUN}-1")
    assert not run.redo().holds_slot


def test_cancel_while_executing_deletes_the_running_pod() -> None:
    run = RunBuilder().executing()
    decision = run.cancel().at(31).step()
    assert run.phase == "Canceled"
    assert decision.delete_pods == [f"{RUN}-1"]
    assert run.status["duration"] == "30s"
    assert decision.holds_slot  # the pod is still stopping
    # the pod terminates (SIGTERM, on_cancel): nothing more to do
    decision = run.advance(1).step()
    assert decision.delete_pods == [] and decision.status_patch == {}


def test_cancel_during_a_retry_backoff() -> None:
    run = RunBuilder().executing()
    run.fails()
    decision = run.cancel().advance(0.1).step()
    assert run.phase == "Canceled"
    assert "nextAttemptAt" not in run.status
    assert run.attempts[0]["reason"] == "Error"  # the ended attempt is not rewritten
    assert decision.create_pod is None


# --------------------------------------------------------------------------- final runs


def test_a_finished_runs_stopped_pods_are_kept_by_default() -> None:
    run = RunBuilder().executing()
    run.fails()
    run.retry_now().executing()
    decision = run.completes("ok")
    assert decision.delete_pods == []  # run-1-1 stopped: kept; run-1-2 still exiting
    run.advance(1).pod_ends(f"{RUN}-2", 0)
    decision = run.step()
    assert decision.delete_pods == [] and not decision.holds_slot
    assert decision.requeue_after == pytest.approx(Settings().ttl_after_finished - 1)


def test_a_runner_that_does_not_exit_after_reporting_is_stopped() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    run.completes("ok")
    decision = run.advance(CHECKPOINT_EXIT_GRACE - 1).step()
    assert decision.delete_pods == [] and decision.holds_slot
    assert decision.requeue_after == pytest.approx(1)
    decision = run.advance(1).step()
    assert decision.delete_pods == [pod] and decision.holds_slot  # until it has stopped
    assert run.pods[pod].deleting
    assert run.advance(1).step().delete_pods == []  # never twice


def test_a_failed_runs_live_pod_may_exit_by_itself_and_keep_its_logs() -> None:
    run = RunBuilder(maxAttempts=1).executing()
    pod = run.current_pod
    decision = run.step(failure=failure(1))
    assert run.phase == "Failed"
    assert decision.delete_pods == [] and decision.holds_slot
    run.advance(1).pod_ends(pod, 0)
    decision = run.step()
    assert decision.delete_pods == [] and not decision.holds_slot


def test_completed_run_deletes_all_its_ended_pods_when_configured() -> None:
    run = RunBuilder(settings=Settings(delete_finished_pods=True)).executing()
    run.fails()
    run.retry_now().executing()
    decision = run.completes("ok")
    assert decision.delete_pods == [f"{RUN}-1"]  # ended: deleted; run-1-2 still exiting
    run.advance(1).pod_ends(f"{RUN}-2", 0)
    decision = run.step()
    assert decision.delete_pods == [f"{RUN}-2"]


@pytest.mark.parametrize("keep", [True, False])
def test_failed_run_keeps_only_its_last_pod_when_configured(keep: bool) -> None:
    settings = Settings(delete_finished_pods=True, keep_failed_pods=keep)
    run = RunBuilder(settings=settings).executing()
    run.fails()
    run.retry_now().executing()
    run.advance(1).pod_ends(f"{RUN}-2", 1)
    decision = run.step()
    assert run.phase == "Crashed"
    expected = [f"{RUN}-1"] if keep else [f"{RUN}-1", f"{RUN}-2"]
    assert sorted(decision.delete_pods) == expected


def test_pods_already_terminating_are_not_deleted_again() -> None:
    run = RunBuilder().executing()
    run.cancel().advance(1).step()
    assert run.pods[f"{RUN}-1"].deleting
    assert run.advance(1).step().delete_pods == []


def test_finished_run_is_deleted_after_its_ttl() -> None:
    run = RunBuilder(settings=Settings(ttl_after_finished=3600)).executing()
    run.completes("ok")
    run.pod_gone(f"{RUN}-1")
    finished = run.now
    decision = run.step()
    assert decision.requeue_after == pytest.approx(3600) and not decision.delete_run
    run.now = finished + timedelta(seconds=3599)
    decision = run.step()
    assert decision.requeue_after == pytest.approx(1) and not decision.delete_run
    run.now = finished + timedelta(seconds=3600)
    assert run.step().delete_run


def test_final_runs_ignore_late_reports_and_pod_events() -> None:
    run = RunBuilder().executing()
    run.completes("done")
    snapshot = dict(run.status)
    run.pod_ends(f"{RUN}-1", 137, reason="OOMKilled")
    decision = run.advance(5).step(
        slot=True,
        started=1,
        failure=failure(1),
        completion=completion(1, "other"),
        metadata={"late": True},
        last_heartbeat=at(-1000),
    )
    assert decision.status_patch == {} and not decision.events
    assert run.status == snapshot
    assert not decision.wants_slot and not decision.holds_slot


# --------------------------------------------------------------------------- PodView


def test_pod_view_reads_a_pod_from_the_api() -> None:
    pod = {
        "metadata": {"name": "p", "deletionTimestamp": "2026-03-01T12:00:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "OOMKilled",
                            "startedAt": "2026-03-01T11:59:00Z",
                            "finishedAt": "2026-03-01T12:00:00Z",
                        }
                    }
                }
            ],
        },
    }
    view = PodView.from_pod(pod)
    assert view == PodView(
        name="p",
        phase="Failed",
        deleting=True,
        exit_code=137,
        reason="OOMKilled",
        started_at=datetime(2026, 3, 1, 11, 59, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        delete_by=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
    )
    assert view.terminal and not view.running and not view.disrupted


def test_pod_view_of_a_running_and_of_a_new_pod() -> None:
    running = PodView.from_pod(
        {
            "metadata": {"name": "p"},
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"state": {"running": {"startedAt": "2026-03-01T12:00:00Z"}}}
                ],
            },
        }
    )
    assert running.running and running.started_at == T0 and not running.terminal
    fresh = PodView.from_pod({"metadata": {"name": "p"}})
    assert fresh.phase == "Pending" and not fresh.terminal and fresh.exit_code is None


def test_pod_view_marks_disruptions_and_evictions() -> None:
    assert PodView.from_pod(disrupted_pod("p")).disrupted
    evicted = PodView.from_pod(evicted_pod("p"))
    assert evicted.disrupted and evicted.reason == "Evicted"
    assert evicted.message == "node low on memory"
    assert not PodView.from_pod(sigterm_pod("p")).disrupted


def test_decision_wake_in_keeps_the_earliest_and_a_floor() -> None:
    decision = runstate.Decision()
    decision.wake_in(30)
    decision.wake_in(60)
    assert decision.requeue_after == 30
    decision.wake_in(-5)
    assert decision.requeue_after == pytest.approx(0.05)


def test_reports_default_to_nothing() -> None:
    assert Reports() == Reports(None, None, None, None, None)


def test_phase_finality_matches_the_design() -> None:
    final = {p.value for p in Phase if p.is_final}
    assert final == {
        "Completed",
        "Failed",
        "Canceled",
        "Crashed",
        "SystemFailure",
        "Expired",
        "TimedOut",
    }
