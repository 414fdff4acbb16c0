"""Fuzzing on the real API server, with the real operator running.

Hypothesis builds malformed TaskRuns, Schedules and Queues (a valid object with some
fields replaced by hostile values, unknown fields, or a spec that is not an object at
all) and applies each. Every one must be either rejected at admission with a message, or
accepted and then say what is wrong: a model-invalid TaskRun ends ``Failed`` with
``INVALID_SPEC`` and a message, a Schedule gets a ``Ready`` condition with a reason, a
Queue gets a status (a model-invalid one a ``Ready=False`` condition). Through it all the
operator must neither crash nor stall: it is still the same process afterwards, it comes
back after a restart with every fuzzed object still in the API server, and a canary run
completes.

The run API is fuzzed the same way: malformed, foreign and missing tokens, other runs'
tokens, oversized and malformed bodies: every one refused with a 4xx, none changes the run.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ValidationError

from podtask import protocol
from podtask.api.machines import MACHINE_PRESETS
from podtask.api.v1alpha1 import API_VERSION, QueueSpec, ScheduleSpec, TaskRunSpec
from tests.cluster.harness import (
    GROUP,
    VERSION,
    OperatorProcess,
    apply_task,
    create_run,
    get_run,
    phase_of,
    wait_final,
    wait_for_phase,
)

EXAMPLES = 60  # per kind; each is one create against the API server
RUN_API_EXAMPLES = 120
SETTLE_SECONDS = 45.0
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PAUSED_QUEUE = "fuzz-paused"
FUZZ_TASK = "fuzz-task"

# --- hostile values -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
big_numbers = st.sampled_from(["9" * 30, "9" * 400, "99999999999999999999", "1" * 19])
durations = st.one_of(
    st.sampled_from(
        [
            "0s",
            "1ms",
            "10m",
            "1h30m",
            "2w",
            "0.5s",
            "1.5h",
            "",
            "-1s",
            "10",
            "s",
            "1x",
            "1e3s",
            "∞s",
            " 1s",
            "1s ",
        ]
    ),
    # Long enough to overflow a date, a timer or an int32 field, short of timedelta's limit.
    st.sampled_from(
        [
            "100000000d",
            "5000000w",
            "999999999d",
            "3000000d",
            "68y",
            "25000d",
            "2147483648s",
            "9223372036854775807ms",
        ]
    ),
    big_numbers.map(lambda n: f"{n}w"),
    big_numbers.map(lambda n: f"{n}ms"),
    st.text(max_size=10),
    json_values,
)
names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
    st.text(max_size=300),
    st.sampled_from(["", "-a", "A", "a_b", "a.b", "a" * 64, "a" * 254]),
    json_values,
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(
        ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-01T00:00:00Z", "yesterday", ""]
    ),
    json_values,
)
ints = st.one_of(st.integers(min_value=-(2**64), max_value=2**64), json_values)
machines = st.one_of(st.sampled_from(sorted(MACHINE_PRESETS)), names)
quantities = st.one_of(
    st.sampled_from(
        [
            "1",
            "500m",
            "2Gi",
            "0",
            "-1",
            "1e3",
            "1e999999999",
            "1.5Ei",
            "1Zi",
            "0.0001m",
            "9" * 40,
            "1e-999999",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64),
    json_values,
)
crons = st.one_of(
    st.sampled_from(
        [
            "*/5 * * * *",
            "@hourly",
            "@daily",
            "@every 1m",
            "* * * * * *",
            "61 * * * *",
            "* 25 * * *",
            "0 0 31 2 *",
            "0 0 * * 8",
            "*/0 * * * *",
            "1-0 * * * *",
            "",
            "@never",
            "TZ=UTC * * * * *",
        ]
    ),
    st.lists(
        st.text(alphabet=string.digits + "*/-,", min_size=1, max_size=4), min_size=1, max_size=7
    ).map(" ".join),
    json_values,
)
zones = st.one_of(
    st.sampled_from(
        [
            "UTC",
            "Europe/Paris",
            "America/Argentina/Buenos_Aires",
            "Mars/Olympus",
            "",
            "utc",
            "+01:00",
            "../etc/passwd",
        ]
    ),
    json_values,
)


def mutated(
    base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """``base`` with some fields replaced, some unknown fields added, or no object at all."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        if draw(st.integers(0, 19)) == 0:
            return draw(json_values)  # the whole spec is not what it should be
        spec = dict(base)
        for name in draw(
            st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)
        ):
            if draw(st.booleans()) and name in spec:
                del spec[name]
            else:
                spec[name] = draw(fields[name])
        if draw(st.integers(0, 4)) == 0:
            spec[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        return spec

    return build()


TASKRUN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "task": names,
    "payload": json_values,
    "payloadFrom": st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"configMapKeyRef": st.fixed_dictionaries({"name": names, "key": st.text(max_size=5)})}
        ),
    ),
    "idempotencyKey": st.one_of(st.text(max_size=300), json_values),
    "idempotencyKeyTTL": durations,
    "concurrencyKey": st.one_of(st.text(max_size=300), json_values),
    # A valid queue other than the paused one would start pods on the shared node.
    "queue": st.one_of(
        st.just(PAUSED_QUEUE),
        names.filter(
            lambda q: (
                not (
                    isinstance(q, str)
                    and q.isascii()
                    and q.replace("-", "").isalnum()
                    and q.islower()
                    and 0 < len(q) <= 63
                    and q[0].isalpha()
                )
            )
        ),
    ),
    "delay": durations,
    "delayUntil": timestamps,
    "ttl": durations,
    "machine": machines,
    "maxAttempts": ints,
    "maxDuration": durations,
    "tags": st.one_of(st.lists(st.text(max_size=140), max_size=12), json_values),
    "metadata": json_values,
    "priority": ints,
    "parentRun": names,
    "replayOf": names,
    "cancel": st.one_of(st.booleans(), json_values),
}
SCHEDULE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "task": names,
    "cron": crons,
    "timezone": zones,
    "externalId": st.one_of(st.text(max_size=300), json_values),
    "deduplicationKey": st.one_of(st.text(max_size=300), json_values),
    "payload": json_values,
    "suspend": st.one_of(st.booleans(), json_values),
    "concurrencyPolicy": st.one_of(
        st.sampled_from(["Allow", "Forbid", "Replace", "allow"]), json_values
    ),
    "startingDeadlineSeconds": ints,
    "missedRunPolicy": st.one_of(st.sampled_from(["Skip", "RunOnce", "CatchUp"]), json_values),
    "successfulRunsHistoryLimit": ints,
    "failedRunsHistoryLimit": ints,
    "queue": names,
    "machine": machines,
    "tags": st.one_of(st.lists(st.text(max_size=140), max_size=12), json_values),
    "ttl": durations,
}
QUEUE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "concurrencyLimit": ints,
    "perKeyLimit": ints,
    "rateLimit": st.one_of(
        json_values, st.fixed_dictionaries({"limit": ints, "period": durations})
    ),
    "resources": st.one_of(
        json_values, st.fixed_dictionaries({}, optional={"cpu": quantities, "memory": quantities})
    ),
}


# --- bookkeeping ------------------------------------------------------------------------------


@dataclass
class Applied:
    kind: str
    plural: str
    name: str
    spec: Any
    valid: bool


@dataclass
class Tally:
    rejected: int = 0
    accepted: list[Applied] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _model_valid(model: type[BaseModel], spec: Any, tally: Tally, what: str) -> bool:
    try:
        model.model_validate(spec)
    except ValidationError:
        return False
    except Exception as error:  # a validator that raises instead of rejecting
        tally.problems.append(f"{what}: {model.__name__} raised {error!r} on {spec!r:.300}")
        return False
    return True


def _apply(
    api: ApiClient,
    namespace: str,
    kind: str,
    plural: str,
    spec: Any,
    model: type[BaseModel],
    tally: Tally,
    counter: Iterator[int],
) -> None:
    name = f"fz-{plural[:3]}-{next(counter):04d}"
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
    custom = client.CustomObjectsApi(api)
    try:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    except ApiException as error:
        message = ""
        try:
            message = json.loads(error.body or "{}").get("message", "")
        except ValueError:
            message = str(error.body)
        if error.status not in (400, 422) or not message:
            tally.problems.append(
                f"{kind} {spec!r:.200}: rejected with {error.status} and message {message!r:.200}"
            )
        tally.rejected += 1
        return
    stored = created.get("spec")
    tally.accepted.append(
        Applied(kind, plural, name, stored, _model_valid(model, stored, tally, f"{kind} {name}"))
    )


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def _settle(
    api: ApiClient,
    namespace: str,
    tally: Tally,
    done: Callable[[Applied, dict[str, Any]], str | None],
) -> None:
    """Wait until ``done`` says each accepted object is settled (None) or time is up;
    what it says about the unsettled ones are problems."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + SETTLE_SECONDS
    pending = {a.name: a for a in tally.accepted}
    last: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for name, applied in list(pending.items()):
            obj = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, applied.plural, name
            )
            verdict = done(applied, obj)
            if verdict is None:
                del pending[name]
            else:
                last[name] = verdict
        time.sleep(0.5)
    for name, applied in pending.items():
        tally.problems.append(
            f"{applied.kind} {name} (spec {applied.spec!r:.300}, model-valid "
            f"{applied.valid}): {last.get(name)}"
        )


def _queue_body(name: str, limit: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"concurrencyLimit": limit},
    }


@pytest.fixture
def fuzz_namespace(kube_api: ApiClient, namespace: str) -> str:
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "queues", _queue_body(PAUSED_QUEUE, 0)
    )
    apply_task(
        kube_api, namespace, FUZZ_TASK, "examples.tasks.hello:hello_world", queue=PAUSED_QUEUE
    )
    return namespace


def _operator_survived(
    operator: OperatorProcess, api: ApiClient, namespace: str, tally: Tally
) -> None:
    """Same process as before, healthy; then a restart with every fuzzed object in the API
    server; then a canary run completes."""
    assert operator.process is not None
    starts = operator.starts
    if operator.process.poll() is not None:
        tally.problems.append(
            f"the operator exited with {operator.process.returncode}: {operator.log()}"
        )
        operator.start()
    assert httpx.get(f"{operator.url}/healthz", timeout=5).status_code == 200
    operator.kill()
    try:
        operator.start()
    except RuntimeError as error:
        tally.problems.append(f"the operator does not start with the fuzzed objects: {error}")
        return
    apply_task(api, namespace, "canary", "examples.tasks.hello:hello_world")
    canary = create_run(api, namespace, "canary", {"name": "fuzz"})
    try:
        run = wait_final(api, namespace, canary, timeout=90)
        if phase_of(run) != "Completed":
            tally.problems.append(f"canary ended {phase_of(run)}: {run.get('status')}")
    except AssertionError as error:
        tally.problems.append(f"canary: {error}; operator log: {operator.log()[-1500:]}")
    assert operator.starts == starts + 1


def _report(tally: Tally, what: str) -> None:
    print(
        f"{what}: {tally.rejected} rejected at admission, {len(tally.accepted)} accepted "
        f"({sum(a.valid for a in tally.accepted)} model-valid)"
    )
    assert not tally.problems, f"{len(tally.problems)} problems:\n" + "\n".join(tally.problems)


# --- the tests ------------------------------------------------------------------------------


def test_malformed_taskruns_are_rejected_or_fail_with_a_reason(
    operator: OperatorProcess, kube_api: ApiClient, fuzz_namespace: str
) -> None:
    tally, counter = Tally(), _counter()
    base = {"task": FUZZ_TASK, "payload": {"name": "x"}}

    @FUZZ_SETTINGS
    @given(mutated(base, TASKRUN_FIELDS))
    # Found by this test once; kept so they are always tried.
    @example({**base, "delay": "3000000d"})
    @example({**base, "ttl": "99999999999999999999ms"})
    @example({**base, "maxDuration": "364000d", "priority": 2**62})
    @example({**base, "delayUntil": "0001-01-01T00:00:00Z"})
    def apply(spec: Any) -> None:
        _apply(kube_api, fuzz_namespace, "TaskRun", "taskruns", spec, TaskRunSpec, tally, counter)

    apply()

    def done(applied: Applied, run: dict[str, Any]) -> str | None:
        status = run.get("status") or {}
        phase, error = status.get("phase"), status.get("error") or {}
        if not applied.valid:
            if phase == "Failed" and error.get("type") == "INVALID_SPEC" and error.get("message"):
                return None
            return f"expected Failed/INVALID_SPEC, have {phase} {error}"
        if phase is None:
            return "no phase yet"
        if phase == "Failed" and not error.get("message"):
            return f"Failed without a reason: {status}"
        return None

    _settle(kube_api, fuzz_namespace, tally, done)
    _operator_survived(operator, kube_api, fuzz_namespace, tally)
    _report(tally, "TaskRuns")


def test_malformed_schedules_are_rejected_or_say_why(
    operator: OperatorProcess, kube_api: ApiClient, fuzz_namespace: str
) -> None:
    tally, counter = Tally(), _counter()
    base = {"task": "fuzz-missing", "cron": "*/5 * * * *", "suspend": False}

    @FUZZ_SETTINGS
    @given(mutated(base, SCHEDULE_FIELDS))
    @example({**base, "ttl": "3000000d"})
    @example({**base, "cron": "0 0 31 2 *"})
    def apply(spec: Any) -> None:
        _apply(
            kube_api, fuzz_namespace, "Schedule", "schedules", spec, ScheduleSpec, tally, counter
        )

    apply()

    def done(applied: Applied, schedule: dict[str, Any]) -> str | None:
        conditions = (schedule.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        if ready is None:
            return "no Ready condition"
        if not applied.valid and not (
            ready.get("status") == "False" and ready.get("reason") and ready.get("message")
        ):
            return f"model-invalid but Ready is {ready}"
        return None

    _settle(kube_api, fuzz_namespace, tally, done)
    _operator_survived(operator, kube_api, fuzz_namespace, tally)
    _report(tally, "Schedules")


def test_malformed_queues_are_rejected_or_say_why(
    operator: OperatorProcess, kube_api: ApiClient, fuzz_namespace: str
) -> None:
    tally, counter = Tally(), _counter()
    base = {"concurrencyLimit": 0}

    @FUZZ_SETTINGS
    @given(mutated(base, QUEUE_FIELDS))
    @example({**base, "resources": {"cpu": "1e999999999"}})
    @example({**base, "rateLimit": {"limit": 1, "period": "99999999999999999999w"}})
    @example({**base, "rateLimit": {"limit": 1, "period": "0s"}})
    def apply(spec: Any) -> None:
        _apply(kube_api, fuzz_namespace, "Queue", "queues", spec, QueueSpec, tally, counter)

    apply()

    def done(applied: Applied, queue: dict[str, Any]) -> str | None:
        status = queue.get("status") or {}
        if applied.valid:
            return None if "running" in status else "no status yet"
        conditions = status.get("conditions") or []
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        if ready and ready.get("status") == "False" and ready.get("reason"):
            return None
        return f"model-invalid, accepted, and its status says nothing: {status}"

    _settle(kube_api, fuzz_namespace, tally, done)
    _operator_survived(operator, kube_api, fuzz_namespace, tally)
    _report(tally, "Queues")


# --- the run API ------------------------------------------------------------------------------

ACTIONS = ("context", "heartbeat", "metadata", "complete", "fail")
token_chars = string.ascii_letters + string.digits + "-_"
visible = "".join(chr(c) for c in range(33, 127))  # what an HTTP header value may hold
tokens = st.one_of(
    st.text(alphabet=token_chars, min_size=43, max_size=43),  # well formed, forged
    st.text(alphabet=visible, min_size=1, max_size=60),
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["attempt", "output", "error", "metadata", "retry", "extra"]),
        json_values,
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)


def _pod_token(core: client.CoreV1Api, namespace: str, run: str) -> str:
    env = core.read_namespaced_pod(f"{run}-1", namespace).spec.containers[0].env
    return str(next(v.value for v in env if v.name == protocol.ENV_TOKEN))


def test_run_api_refuses_bad_tokens_foreign_tokens_and_bad_bodies(
    operator: OperatorProcess, kube_api: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    apply_task(kube_api, namespace, "sleeper", "examples.tasks.sleeper:sleeper")
    target = create_run(kube_api, namespace, "sleeper", {"seconds": 60})
    other = create_run(kube_api, namespace, "sleeper", {"seconds": 60})
    for name in (target, other):
        wait_for_phase(kube_api, namespace, name, {"Executing"})
    own, foreign = _pod_token(core, namespace, target), _pod_token(core, namespace, other)
    base = f"{operator.url}/v1/runs/{namespace}/{target}"
    answers: dict[int, int] = {}
    problems: list[str] = []

    def check(label: str, response: httpx.Response, allowed: set[int]) -> None:
        answers[response.status_code] = answers.get(response.status_code, 0) + 1
        if response.status_code not in allowed:
            problems.append(f"{label}: {response.status_code} {response.text[:200]}")

    with httpx.Client(timeout=30) as http:

        @settings(
            max_examples=RUN_API_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(
            action=st.sampled_from(ACTIONS),
            token=tokens,
            body=bodies,
            use=st.sampled_from(["forged", "foreign", "none", "own"]),
        )
        def call(action: str, token: str, body: bytes, use: str) -> None:
            headers = {"Content-Type": "application/json"}
            bearer = {"forged": token, "foreign": foreign, "own": own}.get(use)
            if bearer is not None:
                headers["Authorization"] = f"Bearer {bearer}"
            method = "GET" if action == "context" else "POST"
            url = f"{base}/{action}" + ("?attempt=1" if method == "GET" else "")
            if use == "own":
                if method == "GET":
                    return  # the pod's own context read is allowed, and changes nothing
                model = {
                    "heartbeat": protocol.Heartbeat,
                    "metadata": protocol.MetadataUpdate,
                    "complete": protocol.Completion,
                    "fail": protocol.Failure,
                }[action]
                try:
                    model.model_validate_json(body)
                    return  # a valid body with the right token would be a real report
                except (ValidationError, ValueError):
                    pass
                check(
                    f"own token, malformed {action} {body!r:.100}",
                    http.request(method, url, headers=headers, content=body),
                    {422},
                )
                return
            allowed = (
                {401}
                if use == "none" or not _well_formed(token if use == "forged" else foreign)
                else {403}
            )
            if use == "forged" and not _well_formed(token):
                allowed = {401}
            check(
                f"{use} token on {action}",
                http.request(method, url, headers=headers, content=body),
                allowed,
            )

        call()
        # Oversized, declared and chunked: refused before being read whole.
        huge = b'{"attempt": 1, "output": "' + b"x" * (protocol.DEFAULT_BODY_LIMIT + 10) + b'"}'
        auth = {"Authorization": f"Bearer {own}", "Content-Type": "application/json"}
        check("oversized body", http.post(f"{base}/complete", headers=auth, content=huge), {413})

        def chunks() -> Iterator[bytes]:
            yield huge[: len(huge) // 2]
            yield huge[len(huge) // 2 :]

        check(
            "oversized chunked body",
            http.post(f"{base}/complete", headers=auth, content=chunks()),
            {413},
        )
    status = get_run(kube_api, namespace, target)["status"]
    assert status["phase"] == "Executing", status  # nothing above changed the run
    assert not status.get("output") and not status.get("metadata"), status
    print(f"run API answers: {dict(sorted(answers.items()))}")
    assert not problems, "\n".join(problems[:30])
    for name in (target, other):
        client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "taskruns", name, {"spec": {"cancel": True}}
        )


def _well_formed(token: str) -> bool:
    from podtask_operator.tokens import is_well_formed

    return is_well_formed(token)
