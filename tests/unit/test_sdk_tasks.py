"""Task definitions: the decorator, options, ids, schema tasks, the registry, hooks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import podtask
from podtask import AbortTaskRunError, hooks, schema_task, task, tasks
from podtask.api.v1alpha1 import OutOfMemoryPolicy, RetryPolicy, TaskSpec
from podtask.errors import (
    DuplicateTaskIdError,
    InvalidTaskDefinitionError,
    PayloadValidationError,
    PodtaskError,
    TaskNotFoundError,
    error_type_of,
)
from podtask.tasks import Task, validate_task_id


@pytest.fixture(autouse=True)
def _no_global_hooks() -> Iterator[None]:
    hooks.clear()
    yield
    hooks.clear()


@task(
    id="test.sdk.send-welcome",
    machine="small-2x",
    retry={
        "max_attempts": 5,
        "factor": 1.5,
        "min_timeout": "2s",
        "max_timeout": 30,
        "randomize": False,
        "out_of_memory": {"machine": "large-1x"},
    },
    queue="email",
    max_duration="10m",
    ttl=3600,
)
def send_welcome(payload: dict[str, str]) -> dict[str, str]:
    """Send the welcome email.

    More text that is not the summary.
    """
    return {"to": payload["to"]}


class Signup(BaseModel):
    email: str
    plan: str = "free"


@schema_task(id="test.sdk.signup", schema=Signup)
def signup(payload: Signup) -> str:
    return payload.plan


# --------------------------------------------------------------------------- the decorator


def test_a_task_is_still_the_function() -> None:
    assert isinstance(send_welcome, Task)
    assert send_welcome({"to": "a@b.c"}) == {"to": "a@b.c"}
    assert send_welcome.__name__ == "send_welcome"
    assert send_welcome.__doc__ is not None and "welcome email" in send_welcome.__doc__
    # The module name is however pytest imported this file.
    assert send_welcome.entrypoint == f"{__name__}:send_welcome"
    assert repr(send_welcome) == f"<Task test.sdk.send-welcome {__name__}:send_welcome>"


def test_options_are_recorded_and_normalised() -> None:
    assert send_welcome.id == "test.sdk.send-welcome"
    assert send_welcome.machine == "small-2x"
    assert send_welcome.queue == "email"
    assert send_welcome.max_duration == "10m"
    assert send_welcome.ttl == "1h"
    assert send_welcome.description == "Send the welcome email."
    assert send_welcome.retry == RetryPolicy(
        max_attempts=5,
        factor=1.5,
        min_timeout="2s",
        max_timeout="30s",
        randomize=False,
        out_of_memory=OutOfMemoryPolicy(machine="large-1x"),
    )


def test_retry_takes_a_policy_and_durations_take_seconds_or_timedeltas() -> None:
    policy = RetryPolicy(max_attempts=2)
    defined = Task(
        lambda payload: payload,
        id="test.sdk.policy",
        retry=policy,
        max_duration=timedelta(minutes=1, seconds=30),
        ttl=0,
        register=False,
    )
    assert defined.retry is policy
    assert defined.max_duration == "1m30s"
    assert defined.ttl is None  # 0 means no ttl


def test_to_spec_builds_the_task_resource() -> None:
    spec = send_welcome.to_spec("app:1.2", version="20261124.1")
    assert isinstance(spec, TaskSpec)
    assert spec.to_wire() == {
        "image": "app:1.2",
        "entrypoint": f"{__name__}:send_welcome",
        "version": "20261124.1",
        "description": "Send the welcome email.",
        "machine": "small-2x",
        "retry": {
            "maxAttempts": 5,
            "factor": 1.5,
            "minTimeout": "2s",
            "maxTimeout": "30s",
            "randomize": False,
            "outOfMemory": {"machine": "large-1x"},
        },
        "queue": "email",
        "maxDuration": "10m",
        "ttl": "1h",
        "env": [],
        "envFrom": [],
    }


def test_to_spec_of_a_schema_task_carries_the_json_schema() -> None:
    spec = signup.to_spec("app:1")
    assert spec.payload_schema is not None
    assert spec.payload_schema["properties"]["email"] == {"title": "Email", "type": "string"}
    assert spec.payload_schema["required"] == ["email"]
    assert spec.version is None


def test_a_nested_function_cannot_become_a_resource() -> None:
    @task(id="test.sdk.nested")
    def nested(payload: Any) -> None: ...

    assert nested(None) is None  # still usable as a function
    with pytest.raises(InvalidTaskDefinitionError, match="top level"):
        nested.to_spec("app:1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry": {"max_attempts": 0}}, "max_attempts"),
        ({"retry": {"maxAttempts": 2, "bogus": 1}}, "bogus"),
        ({"retry": {"out_of_memory": {"machine": "huge"}}}, "machine"),
        ({"retry": [1]}, "RetryPolicy or a dict"),
        ({"machine": "huge"}, "machine"),
        ({"queue": "Not_A_Queue"}, "queue"),
        ({"max_duration": "2s"}, "at least 5s"),
        ({"max_duration": 3}, "at least 5s"),
        ({"ttl": "ten minutes"}, "not a duration"),
    ],
)
def test_bad_options_fail_at_definition(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Task(lambda payload: payload, id="test.sdk.bad-options", register=False, **options)


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "task_id", ["hello.world", "email.send.welcome", "a", "x-1.y-2", "a" * 253]
)
def test_valid_ids(task_id: str) -> None:
    assert validate_task_id(task_id) == task_id


@pytest.mark.parametrize(
    ("task_id", "message"),
    [
        ("Hello.World", "not a valid Kubernetes object name"),
        ("email_send", "not a valid Kubernetes object name"),
        ("-leading", "not a valid Kubernetes object name"),
        ("trailing.", "not a valid Kubernetes object name"),
        ("double..dot", "not a valid Kubernetes object name"),
        ("a" * 254, "limit is 253"),
        ("", "non-empty"),
    ],
)
def test_invalid_ids_are_refused_clearly(task_id: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task(id=task_id)(lambda payload: payload)


# --------------------------------------------------------------------------- schema tasks


def test_validate_payload_parses_with_the_schema() -> None:
    parsed = signup.validate_payload({"email": "a@b.c"})
    assert parsed == Signup(email="a@b.c", plan="free")
    assert signup.payload_to_json(Signup(email="x@y.z", plan="pro")) == {
        "email": "x@y.z",
        "plan": "pro",
    }


def test_validate_payload_rejects_a_bad_payload() -> None:
    with pytest.raises(PayloadValidationError, match="email") as caught:
        signup.validate_payload({"plan": "pro"})
    assert isinstance(caught.value, ValueError)
    assert error_type_of(caught.value) == "PayloadInvalid"


def test_a_plain_task_passes_the_payload_through() -> None:
    payload = {"anything": object()}
    assert send_welcome.validate_payload(payload) is payload
    assert send_welcome.payload_schema is None


def test_schema_task_takes_any_pydantic_type() -> None:
    counted = schema_task(id="test.sdk.count", schema=list[int])(lambda payload: len(payload))
    assert counted.validate_payload(["1", 2]) == [1, 2]
    with pytest.raises(PayloadValidationError):
        counted.validate_payload(["x"])


# --------------------------------------------------------------------------- registry


def test_registry_finds_tasks_by_id() -> None:
    assert tasks.get("test.sdk.send-welcome") is send_welcome
    assert send_welcome in tasks.all()
    ids = [t.id for t in tasks.all()]
    assert ids == sorted(ids)
    with pytest.raises(TaskNotFoundError, match=r"no task 'test\.sdk\.unknown'"):
        tasks.get("test.sdk.unknown")


def test_an_id_used_by_another_function_is_refused() -> None:
    with pytest.raises(DuplicateTaskIdError, match="already used by"):
        task(id="test.sdk.send-welcome")(lambda payload: payload)
    assert tasks.get("test.sdk.send-welcome") is send_welcome


def test_redefining_the_same_function_replaces_it() -> None:
    def define() -> Task[[Any], Any]:
        @task(id="test.sdk.redefined")
        def redefined(payload: Any) -> Any:
            return payload

        return redefined

    first, second = define(), define()
    assert first is not second
    assert tasks.get("test.sdk.redefined") is second


# --------------------------------------------------------------------------- hooks


def test_hooks_register_by_attribute_and_by_keyword() -> None:
    def on_failure(payload: Any, error: BaseException, ctx: Any) -> None: ...

    defined = Task(
        lambda payload: payload, id="test.sdk.hooks", on_failure=on_failure, register=False
    )

    @defined.on_success
    def on_success(payload: Any, output: Any) -> None: ...

    @defined.middleware
    async def around(payload: Any, ctx: Any, next: Callable[[], Any]) -> Any:
        return await next()

    assert [h.fn for h in defined.hooks.get("on_failure")] == [on_failure]
    assert [(h.fn, h.arguments) for h in defined.hooks.get("on_success")] == [(on_success, 2)]
    [middleware] = defined.hooks.get("middleware")
    assert middleware.is_async
    assert on_success(None, None) is None  # the decorator returns the hook itself


def test_global_hooks_register_through_the_hooks_module() -> None:
    @hooks.on_failure
    def alert(payload: Any) -> None: ...

    hooks.catch_error(lambda payload, error, ctx: None)
    assert [h.fn for h in hooks.global_hooks().get("on_failure")] == [alert]
    assert len(hooks.global_hooks().get("catch_error")) == 1
    hooks.clear()
    assert not hooks.global_hooks()


def test_hooks_with_impossible_signatures_are_refused_when_registered() -> None:
    with pytest.raises(TypeError, match="on_success"):
        hooks.on_success(lambda payload, output, ctx, extra: None)
    with pytest.raises(TypeError, match="on_cancel"):

        @send_welcome.on_cancel
        def needs_keyword(payload: Any, *, reason: str) -> None: ...

    with pytest.raises(TypeError, match="next"):
        hooks.middleware(lambda payload, ctx: None)
    with pytest.raises(TypeError, match="task function"):
        task(id="test.sdk.three-args")(lambda payload, ctx, extra: None)
    assert not hooks.global_hooks()
    assert not send_welcome.hooks.get("on_cancel")


def test_retry_decision_helpers() -> None:
    assert hooks.skip_retrying().skip is True
    assert hooks.retry_after("1m").delay_seconds == 60
    assert hooks.retry_after(2.5).delay_seconds == 2.5
    assert hooks.retry_after(timedelta(seconds=3)).delay_seconds == 3
    later = hooks.retry_at(datetime.now(UTC) + timedelta(seconds=30)).delay_seconds
    assert later is not None and 28 < later <= 30
    assert hooks.retry_at(datetime(2000, 1, 1)).delay_seconds == 0
    with pytest.raises(ValueError, match="negative"):
        hooks.retry_after(-1)


# --------------------------------------------------------------------------- errors and the package


def test_errors_are_typed() -> None:
    assert issubclass(AbortTaskRunError, PodtaskError)
    assert error_type_of(AbortTaskRunError("x")) == "AbortTaskRunError"
    assert error_type_of(KeyError("x")) == "KeyError"
    assert issubclass(InvalidTaskDefinitionError, ValueError)


def test_the_package_exports_the_public_api() -> None:
    assert podtask.task is task
    assert podtask.schema_task is schema_task
    assert podtask.Context is podtask.TaskContext
    assert podtask.metadata.set is not None
    assert podtask.hooks is hooks
    with pytest.raises(AttributeError):
        podtask.no_such_name  # noqa: B018


def test_importing_podtask_and_the_runner_stays_light() -> None:
    code = (
        "import sys, podtask, podtask.runner;"
        "heavy = [m for m in ('kubernetes', 'kopf', 'aiohttp') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
