"""Waits in the runner, against a fake run API: the journal, checkpoints and replay.

Covers: ``trigger_and_wait`` (by object and by id) creates children once and
checkpoints while they run; the resumed attempt replays the journal (nothing is
triggered again, ``on_start`` hooks do not run again) and continues with the
child's output; a failed child gives ``ok=False`` and ``unwrap()`` raises
``SubtaskUnwrapError``; batch results keep their order; a short ``wait.for_``
sleeps in the pod, a long one checkpoints and replays to the point after it;
``ctx.step`` runs once, journals durably and returns the journalled value on a
replay; tokens; a replay that diverges from the journal and two waits at once
fail the run at once (no retry) with clear messages; a swallowed checkpoint still
checkpoints; waits outside a run raise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from podtask import protocol, wait
from podtask.api.v1alpha1 import JournalEntry, Phase, RunError
from podtask.errors import SubtaskUnwrapError, WaitOutsideRunError
from podtask.hooks import HookSet
from podtask.protocol import (
    Checkpoint,
    ChildResult,
    CompleteToken,
    CreateToken,
    Failure,
    JournalUpdate,
    TokenInfo,
    TokenResult,
    TriggerRequest,
    TriggerResponse,
    WaitRequest,
    WaitResponse,
)
from podtask.runner import Runner, RunnerConfig
from podtask.subtasks import Result
from podtask.tasks import trigger_and_wait
from podtask_operator import naming
from tests.unit import _waits_tasks as tasks
from tests.unit._fake_run_api import NAMESPACE, RUN_NAME, TOKEN, FakeRunApi, make_context

MODULE = "tests.unit._waits_tasks"


@dataclass
class FakeWaitsApi(FakeRunApi):
    """The run API's wait endpoints: children finish when a test says so."""

    results: dict[str, ChildResult] = field(default_factory=dict)
    tokens: dict[str, TokenResult] = field(default_factory=dict)

    def trigger(self, body: TriggerRequest) -> TriggerResponse:
        self._record("trigger", body)
        return TriggerResponse(
            runs=[
                naming.child_run_name(RUN_NAME, body.attempt, body.position, index)
                for index in range(len(body.runs))
            ]
        )

    def wait(self, body: WaitRequest) -> WaitResponse:
        self._record("wait", body)
        waiting = body.waiting_for
        if waiting.kind == "Token":
            token = self.tokens.get(waiting.token or "")
            return WaitResponse(resolved=token is not None, token=token)
        if waiting.kind == "Duration":
            assert waiting.until is not None
            return WaitResponse(resolved=waiting.until <= datetime.now(UTC))
        if all(name in self.results for name in waiting.runs):
            return WaitResponse(resolved=True, runs=[self.results[n] for n in waiting.runs])
        return WaitResponse(resolved=False)

    def checkpoint(self, body: Checkpoint) -> None:
        self._record("checkpoint", body)

    def journal(self, body: JournalUpdate) -> None:
        self._record("journal", body)

    def create_token(self, body: CreateToken) -> TokenInfo:
        self._record("create_token", body)
        return TokenInfo(name=naming.run_token_name(RUN_NAME, body.attempt, body.position))

    def complete_token(self, body: CompleteToken) -> None:
        self._record("complete_token", body)


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    tasks.CALLS.clear()
    yield
    tasks.CALLS.clear()


def child_name(position: int, index: int = 0, attempt: int = 1) -> str:
    return naming.child_run_name(RUN_NAME, attempt, position, index)


def done(name: str, output: Any, task: str = "test.waits.child") -> ChildResult:
    return ChildResult(name=name, task=task, ok=True, phase=Phase.COMPLETED, output=output)


def api_for(
    attribute: str,
    payload: Any = None,
    *,
    journal: list[JournalEntry] | None = None,
    threshold: float = 10.0,
    attempt: int = 1,
) -> FakeWaitsApi:
    context = make_context(f"{MODULE}:{attribute}", payload, attempt=attempt).model_copy(
        update={
            "journal": journal or [],
            "resumed": journal is not None,
            "wait_checkpoint_seconds": threshold,
        }
    )
    return FakeWaitsApi(context)


def run(api: FakeWaitsApi) -> int:
    context = api.run_context
    config = RunnerConfig(
        api_url="http://unused",
        token=TOKEN,
        namespace=NAMESPACE,
        run_name=RUN_NAME,
        attempt=context.run.attempt,
        entrypoint=context.task.entrypoint,
    )
    runner = Runner(api, config, hooks=HookSet(), handle_signals=False, report_deadline=2.0)
    return runner.run()


def checkpointed(api: FakeWaitsApi) -> Checkpoint:
    [body] = api.bodies("checkpoint")
    assert isinstance(body, Checkpoint)
    assert api.bodies("complete") == [] and api.bodies("fail") == []
    return body


def completed_output(api: FakeWaitsApi) -> Any:
    [body] = api.bodies("complete")
    assert api.bodies("checkpoint") == [] and api.bodies("fail") == []
    return body.output


def failed(api: FakeWaitsApi) -> Failure:
    [body] = api.bodies("fail")
    assert isinstance(body, Failure)
    return body


# --------------------------------------------------------------------------- children


def test_trigger_and_wait_checkpoints_while_the_child_runs() -> None:
    api = api_for("parent", {"n": 5})
    assert run(api) == protocol.EXIT_REPORTED
    [trigger] = api.bodies("trigger")
    assert trigger.position == 0 and trigger.attempt == 1
    [spec] = [child.spec for child in trigger.runs]
    assert spec.task == "test.waits.child" and spec.payload == {"n": 5}
    assert spec.tags == ["kid"] and spec.parent_run == RUN_NAME
    [wait_request] = api.bodies("wait")
    assert wait_request.waiting_for.runs == [child_name(0)]
    assert wait_request.block_seconds == 10.0, "it waits in the pod up to the threshold first"
    body = checkpointed(api)
    assert body.waiting_for.kind == "Run" and body.waiting_for.runs == [child_name(0)]
    assert body.waiting_for.position == 0
    assert [e.to_wire() for e in body.journal] == [
        {"kind": "Run", "name": "test.waits.child", "runs": [child_name(0)]}
    ]
    assert tasks.CALLS == ["on_start", "on_start_attempt", "parent"]


def test_the_resumed_attempt_replays_and_continues_with_the_childs_output() -> None:
    journal = [JournalEntry(kind="Run", name="test.waits.child", runs=[child_name(0)])]
    api = api_for("parent", {"n": 5}, journal=journal)
    api.results[child_name(0)] = done(child_name(0), {"n": 5})
    assert run(api) == protocol.EXIT_REPORTED
    assert completed_output(api) == {"child": {"n": 5}, "id": child_name(0), "resumed": True}
    assert api.bodies("trigger") == [], "a replay never triggers a child again"
    assert tasks.CALLS == ["parent", "after-child"], "on_start hooks ran before the checkpoint"


def test_a_child_that_finishes_within_the_threshold_needs_no_checkpoint() -> None:
    api = api_for("parent", {"n": 1})
    api.results[child_name(0)] = done(child_name(0), {"n": 1})
    run(api)
    assert completed_output(api)["child"] == {"n": 1}


def test_a_failed_child_gives_ok_false_and_unwrap_raises_its_error() -> None:
    api = api_for("unwraps", 1)
    error = RunError(type="ValueError", message="child broke")
    api.results[child_name(0)] = ChildResult(
        name=child_name(0), task="test.waits.child", ok=False, phase=Phase.FAILED, error=error
    )
    run(api)
    body = failed(api)
    assert body.error.type == "SubtaskUnwrapError"
    assert "child broke" in body.error.message and child_name(0) in body.error.message
    result: Result[Any] = Result(
        ok=False, id="c", task_identifier="t", error=error, phase=Phase.FAILED
    )
    with pytest.raises(SubtaskUnwrapError) as raised:
        result.unwrap()
    assert raised.value.cause == error and raised.value.run_id == "c"
    assert raised.value.task_id == "t"


def test_batch_results_come_in_item_order() -> None:
    api = api_for("batch", 3)
    for index in (2, 0, 1):
        name = child_name(0, index)
        api.results[name] = done(name, index * 10)
    run(api)
    assert completed_output(api) == {"outputs": [0, 10, 20], "ok": [True, True, True]}
    [trigger] = api.bodies("trigger")
    assert [c.spec.payload for c in trigger.runs] == [0, 1, 2]


def test_by_id_and_by_task_batches_each_take_one_position() -> None:
    api = api_for("by_id")
    api.results[child_name(0)] = done(child_name(0), "one")
    api.results[child_name(1, 0)] = done(child_name(1, 0), "two")
    api.results[child_name(1, 1)] = done(child_name(1, 1), "three", task="test.waits.other")
    run(api)
    assert completed_output(api) == ["one", ["two", "three"]]
    first, second = api.bodies("trigger")
    assert (first.position, second.position) == (0, 1)
    assert [c.spec.task for c in second.runs] == ["test.waits.child", "test.waits.other"]


# --------------------------------------------------------------------------- durations


def test_a_short_wait_sleeps_in_the_pod() -> None:
    api = api_for("sleeper", {"seconds": 0.05}, threshold=1.0)
    run(api)
    assert completed_output(api) == "ok"
    assert tasks.CALLS == ["before", "woke"]


def test_a_long_wait_checkpoints_and_the_replay_continues_after_it() -> None:
    api = api_for("sleeper", {"seconds": 30}, threshold=1.0)
    before = datetime.now(UTC)
    run(api)
    body = checkpointed(api)
    assert body.waiting_for.kind == "Duration" and body.waiting_for.until is not None
    assert before + timedelta(seconds=29) < body.waiting_for.until
    assert tasks.CALLS == ["before"]

    tasks.CALLS.clear()
    past = JournalEntry(kind="Duration", until=datetime.now(UTC) - timedelta(seconds=1))
    resumed = api_for("sleeper", {"seconds": 30}, threshold=1.0, journal=[past])
    run(resumed)
    assert completed_output(resumed) == "ok"
    assert tasks.CALLS == ["before", "woke"]


def test_steps_run_once_and_replay_their_journalled_results() -> None:
    api = api_for("steps", {"seconds": 60})
    run(api)
    [update] = api.bodies("journal")
    assert [e.to_wire() for e in update.journal] == [
        {"kind": "Step", "name": "first", "output": {"n": 1}}
    ], "a step is journalled durably before the function goes on"
    body = checkpointed(api)
    assert [e.kind for e in body.journal] == ["Step", "Duration"]
    assert tasks.CALLS == ["first"]

    tasks.CALLS.clear()
    journal = list(body.journal)
    journal[1] = JournalEntry(kind="Duration", until=datetime.now(UTC))
    resumed = api_for("steps", {"seconds": 60}, journal=journal)
    run(resumed)
    # The second step's tuple comes back as JSON (a list), as a replay would return it.
    assert completed_output(resumed) == {"a": {"n": 1}, "b": [2, 3]}
    assert tasks.CALLS == ["second"], "the first step did not run again"


# --------------------------------------------------------------------------- tokens


def test_tokens_are_created_once_and_waited_for() -> None:
    api = api_for("token_task")
    run(api)
    [create] = api.bodies("create_token")
    assert create.timeout == "1h" and create.tags == ["approval"] and create.position == 0
    token = naming.run_token_name(RUN_NAME, 1, 0)
    body = checkpointed(api)
    assert body.waiting_for.kind == "Token" and body.waiting_for.token == token
    assert [e.kind for e in body.journal] == ["CreateToken", "Token"]

    resumed = api_for("token_task", journal=list(body.journal))
    resumed.tokens[token] = TokenResult(name=token, ok=True, output={"approved": True})
    run(resumed)
    assert resumed.bodies("create_token") == []
    assert completed_output(resumed) == {
        "token": token,
        "ok": True,
        "output": {"approved": True},
        "error": None,
    }

    expired = api_for("token_task", journal=list(body.journal))
    timeout = RunError(type="WaitpointTimeoutError", message="timed out")
    expired.tokens[token] = TokenResult(name=token, ok=False, error=timeout)
    run(expired)
    assert completed_output(expired)["error"] == "WaitpointTimeoutError"


def test_completing_a_token_in_a_run_is_journalled_like_a_step() -> None:
    api = api_for("completes_token", {"token": "approval-1"})
    run(api)
    [complete] = api.bodies("complete_token")
    assert complete.token == "approval-1" and complete.output == {"approved": True}
    body = checkpointed(api)
    assert (body.journal[0].kind, body.journal[0].name) == (
        "Step",
        "wait.complete_token:approval-1",
    )
    resumed = api_for("completes_token", {"token": "approval-1"}, journal=list(body.journal))
    run(resumed)
    assert resumed.bodies("complete_token") == [], "a replay does not complete it again"


# --------------------------------------------------------------------------- mistakes


def test_a_replay_that_diverges_from_the_journal_fails_without_doing_anything() -> None:
    journal = [JournalEntry(kind="Step", name="first", output={"n": 1})]
    api = api_for("parent", {"n": 1}, journal=journal)
    run(api)
    body = failed(api)
    assert body.error.type == "REPLAY_DIVERGED"
    assert body.retry.skip, "retrying a diverged replay cannot help"
    assert "position 0" in body.error.message
    assert "ctx.step('first')" in body.error.message
    assert "trigger_and_wait('test.waits.child')" in body.error.message
    assert api.bodies("trigger") == [] and api.bodies("wait") == []


def test_two_waits_at_once_fail_with_a_pointer_to_the_batch_form() -> None:
    api = api_for("concurrent")
    run(api)
    body = failed(api)
    assert body.error.type == "TASK_DID_CONCURRENT_WAIT"
    assert "batch_trigger_and_wait" in body.error.message
    assert body.retry.skip
    assert len(api.bodies("trigger")) <= 1


def test_waits_inside_a_step_are_refused() -> None:
    api = api_for("nested")
    run(api)
    body = failed(api)
    assert body.error.type == "TASK_DID_CONCURRENT_WAIT"
    assert "inside ctx.step('outer')" in body.error.message


def test_a_checkpoint_the_function_swallowed_still_checkpoints() -> None:
    api = api_for("swallow", threshold=1.0)
    run(api)
    body = checkpointed(api)
    assert body.waiting_for.kind == "Duration"
    assert len(body.journal) == 1, "nothing after the swallowed checkpoint was journalled"
    assert tasks.CALLS == ["swallowed"]


def test_async_tasks_use_the_async_forms() -> None:
    api = api_for("async_parent", "hi")
    api.results[child_name(0)] = done(child_name(0), "hi")
    run(api)
    assert completed_output(api) == {"child": "hi", "step": "stepped"}
    [update] = api.bodies("journal")
    assert [e.kind for e in update.journal] == ["Run", "Duration", "Step"]


def test_waits_outside_a_run_say_where_they_work() -> None:
    with pytest.raises(WaitOutsideRunError, match="inside a task function"):
        wait.for_(seconds=1)
    with pytest.raises(WaitOutsideRunError):
        trigger_and_wait("test.waits.child", 1)
    with pytest.raises(WaitOutsideRunError):
        wait.for_token("t")
    with pytest.raises(ValueError, match="negative"):
        wait.for_(seconds=-1)
