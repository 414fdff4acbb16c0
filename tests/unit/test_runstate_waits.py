"""Waiting, checkpoints and resumes in the run state machine (``runstate.decide``).

Covers: a checkpoint report puts the run in Waiting with ``waitingFor`` and the
journal, ends the pod's part of the attempt and frees the slot once the pod has
stopped; the pod is removed mid-wait; a Duration, Token or Run/Batch wait resumes
the run (back to Queued, then a new pod ``<run>-<attempt>-w<k>`` of the *same*
attempt) exactly when it is over, and not before the old pod is gone; a missing
child or token ends the wait; cancel while waiting cancels the children; the
journal survives resumes and infrastructure re-runs but not a new attempt;
maxDuration counts compute time, not the wait.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from podtask.api.v1alpha1 import JournalEntry, WaitingFor
from podtask.protocol import Checkpoint, JournalUpdate
from podtask_operator import naming, runstate
from podtask_operator.runstate import (
    CHECKPOINT_EXIT_GRACE,
    DELETING_RECHECK,
    WAITING_RECHECK,
    ChildView,
    TokenView,
    wait_over,
)
from tests.unit.runbuilder import RUN, T0, RunBuilder, at, completion, iso, make_task

CHILD = f"{RUN}-a1p0-0"


def checkpoint(attempt: int, waiting_for: WaitingFor, *entries: JournalEntry) -> Checkpoint:
    return Checkpoint(attempt=attempt, waiting_for=waiting_for, journal=list(entries))


def for_child(*names: str, position: int = 0) -> WaitingFor:
    return WaitingFor(kind="Run" if len(names) == 1 else "Batch", runs=list(names), position=0)


def run_entry(*names: str) -> JournalEntry:
    return JournalEntry(kind="Run" if len(names) == 1 else "Batch", name="child", runs=list(names))


def checkpointed(run: RunBuilder, waiting_for: WaitingFor, *entries: JournalEntry) -> RunBuilder:
    """An executing run checkpoints at ``waiting_for``; its runner exits 0 after the answer."""
    if run.phase != "Executing":
        run.executing()
    pod = run.current_pod
    run.advance(2).step(checkpoint=checkpoint(run.attempt, waiting_for, *entries))
    run.advance(0.5).pod_ends(pod, 0)
    return run


def kinds(run: RunBuilder) -> list[str]:
    assert run.last is not None
    return [event.reason for event in run.last.events]


# --------------------------------------------------------------------------- the checkpoint


def test_checkpoint_makes_the_run_wait_and_records_the_journal() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    entry = run_entry(CHILD)
    run.children = {CHILD: ChildView("Executing", "other")}
    decision = run.advance(2).step(checkpoint=checkpoint(1, for_child(CHILD), entry))

    status = run.status
    assert status["phase"] == "Waiting"
    assert status["waitingFor"] == {
        "kind": "Run",
        "runs": [CHILD],
        "since": iso(run.now),
        "position": 0,
    }
    assert status["journal"] == {"attempt": 1, "entries": [entry.to_wire()]}
    attempt = run.attempts[-1]
    assert attempt["reason"] == runstate.CHECKPOINTED and attempt["finishedAt"] == iso(run.now)
    assert attempt["counted"] is True and status["attempt"] == 1
    assert kinds(run) == ["Waiting"] and not decision.events[0].routine
    assert f"child run {CHILD}" in decision.events[0].message
    # The pod is still exiting: it keeps its slot (and its quota) until it has stopped.
    assert decision.holds_slot and not decision.wants_slot
    assert decision.delete_pods == [] and decision.create_pod is None
    assert decision.requeue_after == pytest.approx(CHECKPOINT_EXIT_GRACE)

    run.advance(0.5).pod_ends(pod, 0)
    decision = run.step()
    assert run.phase == "Waiting" and decision.status_patch == {}
    assert not decision.holds_slot, "a waiting run whose pod has stopped holds no slot"
    assert decision.delete_pods == [], "a stopped pod is kept (its logs), holding nothing"
    assert decision.requeue_after == pytest.approx(WAITING_RECHECK)


def test_a_pod_that_does_not_exit_after_its_checkpoint_is_deleted() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    run.children = {CHILD: ChildView("Executing")}
    run.advance(2).step(checkpoint=checkpoint(1, for_child(CHILD), run_entry(CHILD)))
    decision = run.advance(CHECKPOINT_EXIT_GRACE - 1).step()
    assert decision.delete_pods == [] and decision.holds_slot
    decision = run.advance(1).step()
    assert decision.delete_pods == [pod]
    assert run.pods[pod].deleting and decision.holds_slot
    run.pod_gone(pod)
    assert not run.step().holds_slot


def test_waiting_is_settled_deciding_again_changes_nothing() -> None:
    run = RunBuilder()
    run.children = {CHILD: ChildView("Executing")}
    checkpointed(run, for_child(CHILD), run_entry(CHILD)).step()
    again = run.redo()
    assert again.status_patch == {} and again.events == []


# --------------------------------------------------------------------------- durations


def test_a_duration_wait_resumes_the_same_attempt_in_a_new_pod_when_it_ends() -> None:
    run = RunBuilder()
    until = at(100)
    duration = WaitingFor(kind="Duration", until=until, position=0)
    checkpointed(run, duration, JournalEntry(kind="Duration", until=until))
    decision = run.step()
    assert run.phase == "Waiting"
    assert decision.requeue_after == pytest.approx((until - run.now).total_seconds())

    run.now = until - timedelta(seconds=1)
    assert run.step().status_patch == {}
    run.now = until
    decision = run.step()
    assert run.phase == "Queued" and decision.wants_slot
    assert "waitingFor" not in run.status
    assert kinds(run) == ["Queued"] and "resumed" in decision.events[0].message
    assert not decision.events[0].routine, "a resume is posted as an Event, as the wait was"

    decision = run.step(slot=True)
    assert run.phase == "Dequeued"
    assert run.attempt == 1, "a resume is the same attempt"
    assert decision.create_pod is not None
    assert decision.create_pod.name == naming.resumed_pod_name(RUN, 1, 1) == f"{RUN}-1-w1"
    assert decision.create_pod.attempt == 1
    assert [a["pod"] for a in run.attempts] == [f"{RUN}-1", f"{RUN}-1-w1"]
    assert run.status["journal"]["attempt"] == 1, "the next pod replays the journal"


def test_resumed_pods_get_fresh_names_each_time() -> None:
    run = RunBuilder()
    for k in (1, 2):
        until = run.now + timedelta(seconds=60)
        checkpointed(run, WaitingFor(kind="Duration", until=until))
        run.now = until
        run.step()
        decision = run.step(slot=True)
        assert decision.create_pod is not None
        assert decision.create_pod.name == f"{RUN}-1-w{k}"
    run.executing()
    run.completes({"done": True})
    assert run.phase == "Completed" and run.attempt == 1


def test_a_wait_already_over_at_the_checkpoint_resumes_once_the_pod_has_stopped() -> None:
    run = RunBuilder().executing()
    pod = run.current_pod
    run.children = {CHILD: ChildView("Completed")}
    decision = run.advance(1).step(checkpoint=checkpoint(1, for_child(CHILD), run_entry(CHILD)))
    # Never two pods of one run: the old one is stopped first.
    assert run.phase == "Waiting"
    assert decision.delete_pods == [pod] and decision.requeue_after == DELETING_RECHECK
    run.pod_gone(pod)
    decision = run.step()
    assert run.phase == "Queued" and decision.wants_slot


# --------------------------------------------------------------------------- children


def test_a_child_wait_resumes_when_every_child_has_ended() -> None:
    children = [f"{RUN}-a1p0-{i}" for i in range(3)]
    run = RunBuilder()
    run.children = {name: ChildView("Executing") for name in children}
    checkpointed(run, for_child(*children), run_entry(*children)).step()
    assert run.status["waitingFor"]["kind"] == "Batch"
    run.children[children[0]] = ChildView("Completed")
    run.children[children[1]] = ChildView("Failed")
    assert run.step().status_patch == {} and run.phase == "Waiting"
    run.children[children[2]] = ChildView("Crashed")
    decision = run.step()
    assert run.phase == "Queued" and decision.wants_slot


def test_a_deleted_child_ends_the_wait_instead_of_blocking_it_forever() -> None:
    run = RunBuilder()
    run.children = {CHILD: ChildView("Queued")}
    checkpointed(run, for_child(CHILD), run_entry(CHILD)).step()
    run.children = {CHILD: None}
    run.step()
    assert run.phase == "Queued"


# --------------------------------------------------------------------------- tokens


def test_a_token_wait_resumes_when_the_token_is_completed() -> None:
    run = RunBuilder()
    run.tokens = {"tok": TokenView(completed=False)}
    waiting = WaitingFor(kind="Token", token="tok")
    checkpointed(run, waiting, JournalEntry(kind="Token", name="tok", token="tok"))
    decision = run.step()
    assert run.phase == "Waiting" and decision.requeue_after == WAITING_RECHECK
    run.tokens = {"tok": TokenView(completed=True)}
    run.step()
    assert run.phase == "Queued"


def test_a_token_wait_ends_when_the_token_expires_even_before_it_is_marked() -> None:
    run = RunBuilder()
    expires = at(300)
    run.tokens = {"tok": TokenView(completed=False, expires_at=expires)}
    checkpointed(run, WaitingFor(kind="Token", token="tok"))
    decision = run.step()
    assert decision.requeue_after == pytest.approx((expires - run.now).total_seconds())
    run.now = expires
    run.step()
    assert run.phase == "Queued"


def test_wait_over_covers_every_kind() -> None:
    now = T0
    assert wait_over(None, {}, {}, now) == (True, None)
    later = WaitingFor(kind="Duration", until=now + timedelta(seconds=5))
    assert wait_over(later, {}, {}, now) == (False, 5.0)
    naive = WaitingFor(kind="Duration", until=(now - timedelta(seconds=1)).replace(tzinfo=None))
    assert wait_over(naive, {}, {}, now) == (True, None)
    token = WaitingFor(kind="Token", token="t")
    assert wait_over(token, {}, {"t": None}, now) == (True, None)
    assert wait_over(token, {}, {"t": TokenView(False)}, now) == (False, None)
    runs = WaitingFor(kind="Batch", runs=["a", "b"])
    views: dict[str, ChildView | None] = {"a": ChildView("Completed"), "b": ChildView("Queued")}
    assert wait_over(runs, views, {}, now) == (False, None)
    views["b"] = ChildView("Canceled")
    assert wait_over(runs, views, {}, now) == (True, None)


# --------------------------------------------------------------------------- cancel


def test_canceling_a_waiting_run_cancels_its_children_still_in_progress() -> None:
    names = [f"{RUN}-a1p1-{i}" for i in range(3)]
    run = RunBuilder()
    run.children = {names[0]: ChildView("Completed"), names[1]: ChildView("Executing")}
    run.children[names[2]] = ChildView("Queued")
    entries = [JournalEntry(kind="Step", name="s", output=1), run_entry(*names)]
    checkpointed(run, for_child(*names), *entries).step()
    # For a canceled run the controller gathers every child, waited on or not.
    run.children["fire-and-forget"] = ChildView("Executing")
    run.cancel()
    decision = run.step()
    assert run.phase == "Canceled"
    assert decision.cancel_runs == [*names[1:], "fire-and-forget"]
    assert not decision.holds_slot
    assert run.redo().cancel_runs == [], "a final run cancels nothing again"


def test_canceling_an_executing_run_cancels_its_children_too() -> None:
    run = RunBuilder().executing()
    run.children = {"child-a": ChildView("Queued"), "child-b": ChildView("Failed")}
    decision = run.cancel().step()
    assert run.phase == "Canceled" and decision.cancel_runs == ["child-a"]


# --------------------------------------------------------------------------- journal lifetime


def test_a_journal_update_is_written_while_executing() -> None:
    run = RunBuilder().executing()
    entry = JournalEntry(kind="Step", name="send", output={"id": 7})
    decision = run.advance(1).step(journal=JournalUpdate(attempt=1, journal=[entry]))
    assert run.status["journal"] == {"attempt": 1, "entries": [entry.to_wire()]}
    assert decision.status_patch == {"journal": {"attempt": 1, "entries": [entry.to_wire()]}}
    stale = JournalUpdate(attempt=2, journal=[])
    assert run.advance(1).step(journal=stale).status_patch == {}


def test_a_new_attempt_starts_with_an_empty_journal_an_infra_rerun_keeps_it() -> None:
    run = RunBuilder()
    step = JournalEntry(kind="Step", name="s", output=1)
    until = at(100)
    checkpointed(run, WaitingFor(kind="Duration", until=until), step)
    run.now = until
    run.step()
    run.step(slot=True)
    run.executing()
    # The resumed pod is evicted: the same attempt runs again and replays the journal.
    pod = run.current_pod
    run.advance(1).pod_update(pod, phase="Failed", disrupted=True, reason="Evicted")
    run.step()
    decision = run.step(slot=True)
    assert decision.create_pod is not None and decision.create_pod.attempt == 1
    assert run.status["journal"]["entries"] == [step.to_wire()]
    # That pod fails for real: attempt 2 starts the function afresh.
    run.executing()
    run.fails()
    run.retry_now()
    assert run.attempt == 2 and "journal" not in run.status


def test_max_duration_counts_compute_time_not_the_wait() -> None:
    task = make_task(max_duration="100s")
    run = RunBuilder(task=task).executing(after=1)
    started = run.now
    run.advance(40)
    until = run.now + timedelta(hours=1)
    pod = run.current_pod
    run.step(checkpoint=checkpoint(1, WaitingFor(kind="Duration", until=until)))
    run.pod_ends(pod, 0)
    assert run.attempts[0]["startedAt"] == iso(started)
    run.now = until
    run.step()
    decision = run.step(slot=True)
    assert decision.create_pod is not None
    assert decision.create_pod.max_duration == "1m"  # 100s less the 40s already used
    run.executing()
    # An hour of waiting did not count: the resumed pod runs on.
    decision = run.advance(30).step(last_heartbeat=run.now)
    assert run.phase == "Executing"
    run.advance(60 + runstate.DEADLINE_SLACK + 1).step(last_heartbeat=run.now)
    assert run.phase == "TimedOut"


def test_a_resumed_run_completes_with_its_output() -> None:
    run = RunBuilder()
    run.children = {CHILD: ChildView("Executing")}
    checkpointed(run, for_child(CHILD), run_entry(CHILD)).step()
    run.children = {CHILD: ChildView("Completed")}
    run.step()
    run.executing()
    run.step(completion=completion(1, {"child": "ok"}))
    assert run.phase == "Completed" and run.status["output"] == {"child": "ok"}
    assert [a["reason"] for a in run.attempts] == [runstate.CHECKPOINTED, "Completed"]
    assert run.status["duration"] is not None
