"""podtask-runner: one attempt against a fake run API, in process and as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from podtask import hooks as global_hook_registry
from podtask import protocol
from podtask._run_error import run_error
from podtask.api.v1alpha1 import RunError
from podtask.hooks import HookSet, retry_after
from podtask.protocol import Completion, Failure, MetadataUpdate, RetryDecision
from podtask.runapi import HttpRunApi, RunApiError
from podtask.runner import Runner, RunnerConfig, run_from_env
from tests.unit import _runner_tasks as tasks
from tests.unit._fake_run_api import (
    NAMESPACE,
    RUN_NAME,
    TOKEN,
    FakeRunApi,
    FakeRunApiServer,
    make_context,
    runner_env,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(sys.executable).parent / "podtask-runner"
MODULE = "tests.unit._runner_tasks"


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    tasks.CALLS.clear()
    yield
    tasks.CALLS.clear()


def run(
    attribute: str,
    payload: Any = None,
    *,
    attempt: int = 1,
    max_attempts: int = 3,
    hooks: HookSet | None = None,
    api: FakeRunApi | None = None,
    **runner_options: Any,
) -> tuple[int, FakeRunApi]:
    entrypoint = f"{MODULE}:{attribute}"
    api = api or FakeRunApi(
        make_context(
            entrypoint,
            payload,
            task=f"test.runner.{attribute.replace('_', '-')}",
            attempt=attempt,
            max_attempts=max_attempts,
        )
    )
    config = RunnerConfig(
        api_url="http://unused",
        token=TOKEN,
        namespace=NAMESPACE,
        run_name=RUN_NAME,
        attempt=attempt,
        entrypoint=entrypoint,
    )
    runner = Runner(
        api,
        config,
        hooks=hooks if hooks is not None else HookSet(),
        handle_signals=False,
        report_deadline=runner_options.pop("report_deadline", 2.0),
        **runner_options,
    )
    return runner.run(), api


def completed(api: FakeRunApi) -> Completion:
    [body] = api.bodies("complete")
    assert isinstance(body, Completion)
    assert api.bodies("fail") == []
    return body


def failed(api: FakeRunApi) -> Failure:
    [body] = api.bodies("fail")
    assert isinstance(body, Failure)
    assert api.bodies("complete") == []
    return body


# --------------------------------------------------------------------------- outcomes


def test_success_reports_the_output() -> None:
    code, api = run("echo", {"hello": ["world", 1]})
    assert code == protocol.EXIT_REPORTED
    body = completed(api)
    assert body.attempt == 1
    assert body.output == {"hello": ["world", 1]}
    assert api.actions()[0] == "context"
    assert api.bodies("context") == [1]


def test_the_function_gets_a_context() -> None:
    code, api = run("with_context", attempt=3, max_attempts=3)
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {
        "attempt": 3,
        "run": RUN_NAME,
        "namespace": NAMESPACE,
        "task": "test.runner.context",
        "version": "20260101.1",
        "tags": ["unit"],
        "last": True,
    }


def test_a_plain_function_entrypoint_runs_as_a_task() -> None:
    code, api = run("plain_function", {"a": 2, "b": 3})
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"sum": 5}


def test_async_function() -> None:
    code, api = run("async_double", {"n": 21}, attempt=2)
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"doubled": 42, "attempt": 2}


def test_failure_reports_the_error_and_lets_the_policy_retry() -> None:
    code, api = run("fails", attempt=1, max_attempts=3)
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "ValueError"
    assert body.error.message == "it broke"
    assert body.error.stack is not None
    assert 'raise ValueError("it broke")' in body.error.stack
    # The runner's own frames are left out of the user's stack.
    assert "_execution.py" not in body.error.stack
    assert body.retry.skip is False
    assert body.retry.delay_seconds is None


def test_abort_skips_retrying() -> None:
    code, api = run("aborts", attempt=1, max_attempts=3)
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert (body.error.type, body.error.message) == ("AbortTaskRunError", "stop now")
    assert body.retry.skip is True


def test_long_stacks_are_trimmed_to_about_8_kb() -> None:
    def recurse(depth: int) -> None:
        if depth == 0:
            raise RuntimeError("deep " + "y" * 10_000)
        recurse(depth - 1)

    try:
        recurse(200)
    except RuntimeError as error:
        reported = run_error(error)
    assert reported.stack is not None
    assert len(reported.stack) <= 8 * 1024 + 100
    assert reported.stack.startswith("… (")
    assert len(reported.message) <= 4 * 1024


def test_output_that_is_not_json_fails() -> None:
    code, api = run("returns_object")
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "OutputNotSerializable"
    assert "object" in body.error.message


def test_nan_is_not_json() -> None:
    code, api = run("returns_nan")
    assert code == protocol.EXIT_REPORTED
    assert failed(api).error.type == "OutputNotSerializable"


def test_complete_task_with_output_ends_successfully() -> None:
    code, api = run("completes_early")
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"early": True}


# --------------------------------------------------------------------------- schema_task


def test_schema_task_parses_the_payload_and_dumps_a_model_output() -> None:
    code, api = run("order", {"item": "tea", "quantity": "4"})
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"item": "tea", "total": 12}
    assert tasks.CALLS == ["run:Order"]


def test_schema_task_rejects_a_bad_payload_without_running_or_retrying() -> None:
    code, api = run("order", {"item": "tea", "quantity": "many"})
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "PayloadInvalid"
    assert "quantity" in body.error.message
    assert body.retry.skip is True
    assert tasks.CALLS == []


# --------------------------------------------------------------------------- hooks


def test_hooks_and_middleware_run_in_order_on_success() -> None:
    global_hooks = HookSet()
    for kind in ("init", "on_start", "on_start_attempt", "on_success", "on_complete"):
        global_hooks.add(kind, lambda *args, kind=kind: tasks.CALLS.append(f"global.{kind}"))
    global_hooks.add("middleware", tasks._middleware("global.middleware"))

    code, api = run("hooked", {}, attempt=1, hooks=global_hooks)

    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == "hooked"
    assert tasks.CALLS == [
        "global.middleware:before",
        "task.middleware:before",
        "global.init",
        "task.init",
        "global.on_start",
        "task.on_start",
        "global.on_start_attempt",
        "task.on_start_attempt",
        "run",
        "task.middleware:after",
        "global.middleware:after",
        "global.on_success",
        "task.on_success",
        "global.on_complete",
        "task.on_complete:ok",
    ]


def test_on_start_runs_only_on_the_first_attempt() -> None:
    code, _ = run("hooked", {}, attempt=2, max_attempts=2)
    assert code == protocol.EXIT_REPORTED
    assert "task.on_start" not in tasks.CALLS
    assert "task.on_start_attempt" in tasks.CALLS


def test_failure_hooks_wait_for_the_last_attempt() -> None:
    code, api = run("hooked", {"fail": True}, attempt=1, max_attempts=2)
    assert code == protocol.EXIT_REPORTED
    assert failed(api).error.type == "RuntimeError"
    assert "task.on_failure" not in tasks.CALLS
    assert not any(call.startswith("task.on_complete") for call in tasks.CALLS)

    tasks.CALLS.clear()
    code, api = run("hooked", {"fail": True}, attempt=2, max_attempts=2)
    assert code == protocol.EXIT_REPORTED
    assert tasks.CALLS[-2:] == ["task.on_failure", "task.on_complete:error"]
    assert "task.on_success" not in tasks.CALLS


def test_abort_runs_failure_hooks_at_once() -> None:
    global_hooks = HookSet()
    global_hooks.add("on_failure", lambda payload, error: tasks.CALLS.append(str(error)))
    global_hooks.add("catch_error", lambda *args: tasks.CALLS.append("catch_error"))
    code, api = run("aborts", attempt=1, max_attempts=3, hooks=global_hooks)
    assert code == protocol.EXIT_REPORTED
    assert failed(api).retry.skip is True
    assert tasks.CALLS == ["stop now"]


def test_async_hooks_and_async_middleware() -> None:
    code, api = run("async_hooked")
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == "async-hooked+wrapped"
    assert tasks.CALLS == [
        "async-middleware:before",
        "async-on_start_attempt:True",
        "run",
        "async-middleware:after",
        "async-on_success:async-hooked+wrapped",
    ]


def test_sync_middleware_around_an_async_function() -> None:
    code, api = run("sync_around_async")
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == "inner"
    assert tasks.CALLS == ["sync-middleware:before", "run", "sync-middleware:after"]


def test_a_raising_success_hook_is_ignored() -> None:
    code, api = run("success_hook_raises")
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == "still ok"


def test_a_raising_start_hook_fails_the_attempt() -> None:
    code, api = run("start_hook_raises")
    assert code == protocol.EXIT_REPORTED
    assert failed(api).error.type == "KeyError"
    assert tasks.CALLS == []


def test_global_hooks_registered_through_the_module() -> None:
    try:
        global_hook_registry.on_success(lambda payload, output: tasks.CALLS.append(f"g:{output}"))
        code, _ = run("echo", "hi", hooks=global_hook_registry.global_hooks())
    finally:
        global_hook_registry.clear()
    assert code == protocol.EXIT_REPORTED
    assert tasks.CALLS == ["run", "g:hi"]


# --------------------------------------------------------------------------- catch_error


@pytest.mark.parametrize(
    ("decision", "skip", "delay"),
    [("skip", True, None), ("delay", False, 7.0), ("none", False, None)],
)
def test_catch_error_decides_about_retrying(decision: str, skip: bool, delay: float | None) -> None:
    code, api = run("caught", {"decision": decision}, attempt=1, max_attempts=3)
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "ConnectionError"
    assert (body.retry.skip, body.retry.delay_seconds) == (skip, delay)
    assert tasks.CALLS == ["task.catch_error:ConnectionError"]


def test_the_task_catch_error_is_asked_before_the_global_one() -> None:
    def global_catch_error(*args: Any) -> RetryDecision:
        tasks.CALLS.append("global")
        return retry_after(3)

    global_hooks = HookSet()
    global_hooks.add("catch_error", global_catch_error)
    _, api = run("caught", {"decision": "delay"}, hooks=global_hooks)
    assert failed(api).retry.delay_seconds == 7.0
    assert tasks.CALLS == ["task.catch_error:ConnectionError"]

    tasks.CALLS.clear()
    _, api = run("caught", {"decision": "none"}, hooks=global_hooks)
    assert failed(api).retry.delay_seconds == 3.0
    assert tasks.CALLS == ["task.catch_error:ConnectionError", "global"]


@pytest.mark.parametrize("decision", ["raise", "bad"])
def test_a_broken_catch_error_fails_the_run_without_retrying(decision: str) -> None:
    code, api = run("caught", {"decision": decision})
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "CatchErrorFailed"
    assert "ConnectionError" in body.error.message
    assert body.retry.skip is True


# --------------------------------------------------------------------------- loading


def test_a_missing_module_fails_the_run_without_retrying() -> None:
    api = FakeRunApi(make_context("no.such.module:task"))
    config = RunnerConfig("http://unused", TOKEN, NAMESPACE, RUN_NAME, 1, "no.such.module:task")
    code = Runner(api, config, hooks=HookSet(), handle_signals=False).run()
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "TaskNotFound"
    assert "no.such.module" in body.error.message
    assert body.retry.skip is True


def test_a_missing_attribute_fails_the_run_without_retrying() -> None:
    code, api = run("no_such_task")
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert body.error.type == "TaskNotFound"
    assert body.retry.skip is True


# --------------------------------------------------------------------------- metadata, heartbeats


def test_metadata_is_flushed_before_the_outcome() -> None:
    code, api = run("writes_metadata", {"steps": 50}, metadata_interval=60.0)
    assert code == protocol.EXIT_REPORTED
    actions = api.actions()
    assert actions[-2:] == ["metadata", "complete"]
    # Fifty steps, one update: changes are coalesced.
    [update] = api.bodies("metadata")
    assert isinstance(update, MetadataUpdate)
    assert update.attempt == 1
    assert update.metadata["step"] == 50
    assert update.metadata["count"] == 50
    assert len(update.metadata["log"]) == 50


def test_heartbeats_are_sent_while_the_function_runs() -> None:
    api = FakeRunApi(make_context(f"{MODULE}:sleeps", {"seconds": 0.5}, heartbeat_interval=0.1))
    code, api = run("sleeps", api=api)
    assert code == protocol.EXIT_REPORTED
    beats = api.bodies("heartbeat")
    assert len(beats) >= 3
    assert all(beat.attempt == 1 for beat in beats)
    # No heartbeat after the outcome: the attempt is over.
    assert api.actions()[-1] == "complete"


# --------------------------------------------------------------------------- talking to the API


def test_transient_report_errors_are_retried() -> None:
    api = FakeRunApi(make_context(f"{MODULE}:echo", "x"))
    api.failures["complete"] = [RunApiError("down", None), RunApiError("busy", 503)]
    code, api = run("echo", api=api)
    assert code == protocol.EXIT_REPORTED
    assert api.actions().count("complete") == 3


def test_an_unreportable_outcome_exits_not_reported() -> None:
    api = FakeRunApi(make_context(f"{MODULE}:echo", "x"))
    api.failures["complete"] = [RunApiError("busy", 503)] * 100
    code, api = run("echo", api=api, report_deadline=0.5)
    assert code == protocol.EXIT_NOT_REPORTED


def test_the_outcome_is_kept_in_the_termination_message(tmp_path: Path) -> None:
    api = FakeRunApi(make_context(f"{MODULE}:echo", "x"))
    api.failures["complete"] = [RunApiError("busy", 503)] * 100
    message = tmp_path / "termination-log"
    code, api = run("echo", api=api, report_deadline=0.3, termination_message=message)
    assert code == protocol.EXIT_NOT_REPORTED
    report = protocol.TerminationReport.decode(message.read_text(), TOKEN)
    assert report is not None and report.completion is not None
    assert report.completion.attempt == 1 and not report.output_omitted
    assert report.completion.output == "x"


def test_a_failure_is_kept_in_the_termination_message(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    code, api = run("fails", termination_message=message)
    assert code == protocol.EXIT_REPORTED
    report = protocol.TerminationReport.decode(message.read_text(), TOKEN)
    assert report is not None and report.failure == failed(api)


def test_an_output_too_large_for_the_termination_message_is_left_out(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    code, _ = run("echo", "x" * 10_000, termination_message=message)
    assert code == protocol.EXIT_REPORTED
    text = message.read_text()
    assert len(text.encode()) <= protocol.MAX_TERMINATION_MESSAGE_BYTES
    report = protocol.TerminationReport.decode(text, TOKEN)
    assert report is not None and report.output_omitted
    assert report.completion is not None and report.completion.output is None


def test_a_long_error_is_shortened_to_fit_the_termination_message() -> None:
    error = RunError(type="ValueError", message="m" * 20_000, stack="s" * 20_000)
    report = protocol.TerminationReport.fitting(protocol.Failure(attempt=2, error=error))
    assert len(report.encode(TOKEN).encode()) <= protocol.MAX_TERMINATION_MESSAGE_BYTES
    assert report.failure is not None and report.failure.error.type == "ValueError"
    assert protocol.TerminationReport.decode(report.encode(TOKEN), TOKEN) == report


def test_only_podtask_reports_are_read_from_a_termination_message() -> None:
    decode = protocol.TerminationReport.decode
    assert decode(None, TOKEN) is None
    assert decode("Traceback (most recent call last): ...", TOKEN) is None
    assert decode(protocol.TERMINATION_REPORT_PREFIX + "{not json", TOKEN) is None
    report = protocol.TerminationReport(completion=Completion(attempt=1, output="x"))
    assert decode(report.encode(TOKEN), TOKEN) == report
    # A log tail (FallbackToLogsOnError) imitating a report, without the run's token:
    assert decode(report.encode("another-runs-token"), TOKEN) is None
    assert decode(report.encode(TOKEN), None) is None
    unsigned = protocol.TERMINATION_REPORT_PREFIX + report.model_dump_json(by_alias=True)
    assert decode(unsigned, TOKEN) is None


def test_heartbeats_go_on_while_the_outcome_is_being_reported() -> None:
    # An operator that cannot write the outcome yet (API server down) answers 503; if the
    # pod fell silent meanwhile, the operator would declare it dead.
    context = make_context(f"{MODULE}:echo", "x").model_copy(
        update={"heartbeat_interval_seconds": 0.05}
    )
    api = FakeRunApi(context)
    api.failures["complete"] = [RunApiError("busy", 503)] * 3
    code, api = run("echo", api=api)
    assert code == protocol.EXIT_REPORTED
    actions = api.actions()
    first_try = actions.index("complete")
    assert "heartbeat" in actions[first_try:]


def test_a_stale_attempt_is_not_retried() -> None:
    api = FakeRunApi(make_context(f"{MODULE}:echo", "x"))
    api.failures["complete"] = [RunApiError("stale", 409)]
    code, api = run("echo", api=api)
    assert code == protocol.EXIT_REPORTED
    assert api.actions().count("complete") == 1


def test_a_refused_output_is_reported_as_a_failure() -> None:
    api = FakeRunApi(make_context(f"{MODULE}:echo", "x"))
    api.failures["complete"] = [RunApiError("too big", 413)]
    code, api = run("echo", api=api)
    assert code == protocol.EXIT_REPORTED
    [body] = api.bodies("fail")
    assert body.error.type == "OutputTooLarge"


def test_an_unreachable_api_exits_not_reported() -> None:
    env = runner_env("http://127.0.0.1:9", f"{MODULE}:echo")  # port 9: discard, closed
    started = time.monotonic()
    code = run_from_env(env, connect_deadline=1.0)
    elapsed = time.monotonic() - started
    assert code == protocol.EXIT_NOT_REPORTED
    assert 0.9 <= elapsed < 10


def test_a_refused_token_is_not_retried() -> None:
    server = FakeRunApiServer(make_context(f"{MODULE}:echo"))
    with server.running():
        env = runner_env(server.url, f"{MODULE}:echo") | {protocol.ENV_TOKEN: "wrong"}
        started = time.monotonic()
        code = run_from_env(env, connect_deadline=20.0)
    assert code == protocol.EXIT_NOT_REPORTED
    assert time.monotonic() - started < 5
    assert server.actions() == ["context"]


def test_an_incomplete_environment_exits_not_reported() -> None:
    env = runner_env("http://127.0.0.1:9", f"{MODULE}:echo")
    del env[protocol.ENV_RUN_NAME]
    assert run_from_env(env) == protocol.EXIT_NOT_REPORTED
    assert run_from_env(env | {protocol.ENV_RUN_NAME: "r", protocol.ENV_ATTEMPT: "0"}) == 1


def test_http_client_speaks_the_protocol() -> None:
    context = make_context(f"{MODULE}:echo", {"a": 1})
    server = FakeRunApiServer(context)
    with server.running():
        api = HttpRunApi(server.url, TOKEN, NAMESPACE, RUN_NAME)
        try:
            assert api.context(2) == context
            api.complete(Completion(attempt=2, output={"x": None}))
            with pytest.raises(RunApiError) as refused:
                HttpRunApi(server.url, "wrong", NAMESPACE, RUN_NAME).context(2)
        finally:
            api.close()
    first, second = server.requests[:2]
    assert (first.method, first.action, first.query) == ("GET", "context", {"attempt": ["2"]})
    assert first.authorization == f"Bearer {TOKEN}"
    assert (second.method, second.action, second.body) == (
        "POST",
        "complete",
        {"attempt": 2, "output": {"x": None}},
    )
    assert refused.value.status == 401
    assert not refused.value.transient


# --------------------------------------------------------------------------- as a process


def start_runner(
    env: dict[str, str], cwd: Path = REPO_ROOT, pythonpath: str | None = None
) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PODTASK_")}
    full_env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        full_env["PYTHONPATH"] = pythonpath
    return subprocess.Popen(
        [str(RUNNER)],
        env=full_env | env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_runner_process_runs_the_hello_example() -> None:
    entrypoint = "examples.tasks.hello:hello_world"
    server = FakeRunApiServer(make_context(entrypoint, {"name": "Ada"}, task="hello.world"))
    with server.running():
        process = start_runner(runner_env(server.url, entrypoint))
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == protocol.EXIT_REPORTED, stderr
    assert server.bodies("complete") == [{"attempt": 1, "output": {"greeting": "Hello, Ada!"}}]
    assert server.bodies("metadata")[-1] == {"attempt": 1, "metadata": {"progress": 1}}
    assert server.actions()[-1] == "complete"
    assert stdout == ""
    logs = [json.loads(line) for line in stderr.splitlines()]
    assert any(entry["msg"] == "attempt succeeded" for entry in logs)
    assert all(entry["run"] == RUN_NAME and entry["attempt"] == 1 for entry in logs)


def test_runner_imports_from_the_working_directory_and_pythonpath(tmp_path: Path) -> None:
    (tmp_path / "cwd_tasks.py").write_text(
        "def greet(payload):\n    print('from cwd')\n    return 'cwd:' + payload\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "path_tasks.py").write_text("def greet(payload):\n    return 'path:' + payload\n")
    for entrypoint, expected in [("cwd_tasks:greet", "cwd:x"), ("path_tasks:greet", "path:x")]:
        server = FakeRunApiServer(make_context(entrypoint, "x"))
        with server.running():
            process = start_runner(
                runner_env(server.url, entrypoint), cwd=tmp_path, pythonpath=str(elsewhere)
            )
            stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == protocol.EXIT_REPORTED, stderr
        assert server.bodies("complete") == [{"attempt": 1, "output": expected}]
        if entrypoint.startswith("cwd"):
            assert stdout == "from cwd\n"


def _cancel_when_running(server: FakeRunApiServer, process: subprocess.Popen[str]) -> float:
    """SIGTERM the runner once its function runs (its first heartbeat); the signal's time."""
    wait_for(lambda: server.actions().count("heartbeat") >= 2)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    return sent


def test_sigterm_cancels_a_sync_task_and_runs_on_cancel(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    entrypoint = "examples.tasks.sleeper:sleeper"
    context = make_context(
        entrypoint, {"seconds": 60, "marker": str(marker)}, heartbeat_interval=0.1
    )
    server = FakeRunApiServer(context)
    with server.running():
        process = start_runner(runner_env(server.url, entrypoint))
        sent = _cancel_when_running(server, process)
        stdout, stderr = process.communicate(timeout=60)
        ended = time.monotonic()
    assert process.returncode == protocol.EXIT_CANCELED, stderr
    assert ended - sent < 10  # the 60 s sleep was interrupted
    assert marker.read_text() == "canceled"
    assert stdout == "sleeping 60s\nsleeper canceled\n"
    assert "complete" not in server.actions()
    assert "fail" not in server.actions()


def test_sigterm_cancels_an_async_task(tmp_path: Path) -> None:
    (tmp_path / "async_sleeper.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            from pathlib import Path
            from podtask import task

            @task(id="test.async.sleeper")
            async def sleeper(payload):
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    Path(payload["marker"]).write_text("cancelled-error")
                    raise
                return "finished"

            @sleeper.on_cancel
            async def on_cancel(payload):
                await asyncio.sleep(0)
                path = Path(payload["marker"])
                path.write_text(path.read_text() + "+on_cancel")
            """
        )
    )
    marker = tmp_path / "marker"
    entrypoint = "async_sleeper:sleeper"
    context = make_context(entrypoint, {"marker": str(marker)}, heartbeat_interval=0.1)
    server = FakeRunApiServer(context)
    with server.running():
        process = start_runner(runner_env(server.url, entrypoint), cwd=tmp_path)
        sent = _cancel_when_running(server, process)
        _, stderr = process.communicate(timeout=60)
        ended = time.monotonic()
    assert process.returncode == protocol.EXIT_CANCELED, stderr
    assert ended - sent < 10
    assert marker.read_text() == "cancelled-error+on_cancel"
    assert "complete" not in server.actions()
    assert "fail" not in server.actions()


# --------------------------------------------------------------------------- the example tasks


def run_example(
    entrypoint: str, payload: Any, *, attempt: int = 1, max_attempts: int = 3
) -> tuple[int, FakeRunApi]:
    api = FakeRunApi(make_context(entrypoint, payload, attempt=attempt, max_attempts=max_attempts))
    config = RunnerConfig("http://unused", TOKEN, NAMESPACE, RUN_NAME, attempt, entrypoint)
    code = Runner(api, config, hooks=HookSet(), handle_signals=False).run()
    return code, api


@pytest.mark.parametrize(("attempt", "succeeds"), [(1, False), (2, False), (3, True)])
def test_example_flaky_succeeds_on_the_requested_attempt(attempt: int, succeeds: bool) -> None:
    code, api = run_example("examples.tasks.flaky:flaky", {}, attempt=attempt, max_attempts=5)
    assert code == protocol.EXIT_REPORTED
    if succeeds:
        assert completed(api).output == {"attempt": 3}
    else:
        body = failed(api)
        assert body.error.type == "RuntimeError"
        assert body.retry.skip is False


def test_example_flaky_retry_policy() -> None:
    from examples.tasks.flaky import flaky

    spec = flaky.to_spec("runner:test")
    assert spec.retry.to_wire() == {
        "maxAttempts": 5,
        "factor": 2.0,
        "minTimeout": "1s",
        "maxTimeout": "4s",
        "randomize": False,
    }


def test_example_abort_fails_without_retrying() -> None:
    code, api = run_example("examples.tasks.abort:abort", None)
    assert code == protocol.EXIT_REPORTED
    body = failed(api)
    assert (body.error.type, body.error.message, body.retry.skip) == (
        "AbortTaskRunError",
        "no retry",
        True,
    )


def test_example_big_output_is_deterministic_and_sized() -> None:
    code, api = run_example("examples.tasks.big_output:big_output", {"seed": 7})
    assert code == protocol.EXIT_REPORTED
    output = completed(api).output
    assert isinstance(output, str)
    assert len(output) == 3 * 1024 * 1024
    _, again = run_example("examples.tasks.big_output:big_output", {"seed": 7, "bytes": 1000})
    assert completed(again).output == output[:1000]
    _, other = run_example("examples.tasks.big_output:big_output", {"seed": 8, "bytes": 1000})
    assert completed(other).output != output[:1000]


def test_example_memory_hog_allocates_less_on_a_retry() -> None:
    from examples.tasks.memory_hog import memory_hog

    spec = memory_hog.to_spec("runner:test")
    assert spec.machine == "micro"
    assert spec.retry.out_of_memory is not None
    assert spec.retry.out_of_memory.machine == "small-2x"
    _, api = run_example("examples.tasks.memory_hog:memory_hog", {"mb": 3, "retry_mb": 2})
    assert completed(api).output == {"attempt": 1, "allocated_mb": 3}
    _, api = run_example(
        "examples.tasks.memory_hog:memory_hog", {"mb": 3, "retry_mb": 2}, attempt=2
    )
    assert completed(api).output == {"attempt": 2, "allocated_mb": 2}


def test_example_metadata_progress_reaches_one() -> None:
    code, api = run_example(
        "examples.tasks.metadata_progress:metadata_progress", {"steps": 4, "step_seconds": 0.01}
    )
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"steps": 4}
    assert api.bodies("metadata")[-1].metadata == {"progress": 1.0}


def test_example_sleeper_returns_after_sleeping() -> None:
    code, api = run_example("examples.tasks.sleeper:sleeper", {"seconds": 0.01})
    assert code == protocol.EXIT_REPORTED
    assert completed(api).output == {"slept": 0.01}


def test_an_unreadable_context_exits_not_reported() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"run": {"name": "only-a-name"}})

    api = HttpRunApi(
        "http://run-api", TOKEN, NAMESPACE, RUN_NAME, transport=httpx.MockTransport(answer)
    )
    config = RunnerConfig("http://run-api", TOKEN, NAMESPACE, RUN_NAME, 1, f"{MODULE}:echo")
    started = time.monotonic()
    code = Runner(api, config, hooks=HookSet(), handle_signals=False).run()
    assert code == protocol.EXIT_NOT_REPORTED
    assert time.monotonic() - started < 5  # not retried: it would not get better
