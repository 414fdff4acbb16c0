"""The operator's small parts: retry backoff, deterministic names, the attempt pod,
the keyed work queue, output chunking and settings."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podtask import outputs, protocol
from podtask.api.machines import MACHINE_PRESETS
from podtask.api.v1alpha1 import API_VERSION, RetryPolicy, TaskSpec
from podtask_operator import backoff, naming, podspec
from podtask_operator.settings import Settings
from podtask_operator.workqueue import WorkQueue

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# --------------------------------------------------------------------------- backoff

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 250),
    factor=st.floats(1.0, 10.0),
    min_timeout=st.sampled_from(["100ms", "1s", "2s", "30s"]),
    max_timeout=st.sampled_from(["1s", "10s", "60s", "1h"]),
    randomize=st.booleans(),
)


@given(policy=policies, attempt=st.integers(1, 250), seed=st.integers(0, 2**32 - 1))
def test_retry_delay_is_within_the_policys_bounds(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = backoff.retry_delay(policy, attempt, random.Random(seed))
    low, high = backoff.delay_bounds(policy, attempt)
    cap = {"1s": 1.0, "10s": 10.0, "60s": 60.0, "1h": 3600.0}[policy.max_timeout]
    assert low <= delay <= high <= cap
    if not policy.randomize:
        assert delay == low


def test_trigger_dev_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.factor, policy.min_timeout, policy.max_timeout) == (
        3,
        2.0,
        "1s",
        "60s",
    )
    assert policy.randomize
    assert backoff.delay_bounds(policy, 1) == (1.0, 2.0)
    assert backoff.delay_bounds(policy, 3) == (4.0, 8.0)
    assert backoff.delay_bounds(policy, 7) == (60.0, 60.0)  # 64s capped
    rng = random.Random(3)
    delays = [backoff.retry_delay(policy, 1, rng) for _ in range(200)]
    assert all(1.0 <= d < 2.0 for d in delays)
    assert max(delays) - min(delays) > 0.5  # jitter spreads retries


def test_no_jitter_when_randomize_is_off() -> None:
    policy = RetryPolicy(factor=3, min_timeout="2s", max_timeout="1m", randomize=False)
    assert [backoff.retry_delay(policy, n) for n in range(1, 6)] == [2, 6, 18, 54, 60]
    assert backoff.delay_bounds(policy, 2) == (6.0, 6.0)


def test_the_cap_applies_to_the_jittered_delay() -> None:
    policy = RetryPolicy(min_timeout="40s", max_timeout="60s", randomize=True)

    class High(random.Random):
        def random(self) -> float:
            return 0.99

    assert backoff.retry_delay(policy, 1, High()) == 60.0


# --------------------------------------------------------------------------- naming

run_names = st.from_regex(DNS_SUBDOMAIN, fullmatch=True).filter(lambda n: len(n) <= 253)


def test_pod_names_follow_the_design() -> None:
    assert naming.pod_name("welcome-42", 1) == "welcome-42-1"
    assert naming.pod_name("welcome-42", 12) == "welcome-42-12"
    assert naming.pod_name("welcome-42", 2, 1) == "welcome-42-2-r1"
    assert naming.output_secret("welcome-42", 0) == "welcome-42-output-0"
    assert naming.default_queue("email.send.welcome") == "task-email-send-welcome-f2f646"


@settings(max_examples=300)
@given(run=run_names, attempt=st.integers(1, 250), rerun=st.integers(0, 20))
def test_pod_names_are_valid_bounded_and_deterministic(run: str, attempt: int, rerun: int) -> None:
    name = naming.pod_name(run, attempt, rerun)
    assert len(name) <= naming.MAX_NAME
    assert DNS_SUBDOMAIN.fullmatch(name), name
    assert name == naming.pod_name(run, attempt, rerun)
    suffix = f"-{attempt}" if rerun == 0 else f"-{attempt}-r{rerun}"
    assert name.endswith(suffix)
    if len(run) + len(suffix) <= naming.MAX_NAME:
        assert name == run + suffix


@given(run=run_names, index=st.integers(0, 20))
def test_output_secret_names_are_valid_and_bounded(run: str, index: int) -> None:
    name = naming.output_secret(run, index)
    assert len(name) <= naming.MAX_NAME and DNS_SUBDOMAIN.fullmatch(name)
    assert name.endswith(f"-output-{index}")


def test_long_run_names_keep_distinct_pod_names() -> None:
    a, b = "a" * 250 + "x", "a" * 250 + "y"
    assert naming.pod_name(a, 1) != naming.pod_name(b, 1)
    assert len(naming.pod_name(a, 1)) == naming.MAX_NAME


@settings(max_examples=300)
@given(value=st.text(max_size=200))
def test_label_values_are_always_valid(value: str) -> None:
    label = naming.label_value(value)
    assert len(label) <= naming.MAX_LABEL_VALUE
    assert LABEL_VALUE.fullmatch(label), label
    assert label == naming.label_value(value)
    if len(value) <= naming.MAX_LABEL_VALUE and LABEL_VALUE.fullmatch(value):
        assert label == value


def test_label_values_of_unsafe_or_long_values_are_hashed_apart() -> None:
    assert naming.label_value("email.send") == "email.send"
    long_a, long_b = "q" * 70 + "a", "q" * 70 + "b"
    assert naming.label_value(long_a) != naming.label_value(long_b)
    assert naming.label_value("a b") != naming.label_value("a_b")
    assert naming.label_value("--") == naming.short_hash("--")


@given(name=st.text(alphabet="abc-.", min_size=0, max_size=120), limit=st.integers(20, 253))
def test_fit_bounds_and_keeps_short_names(name: str, limit: int) -> None:
    fitted = naming.fit(name, limit)
    assert len(fitted) <= limit
    assert fitted == naming.fit(name, limit)
    if len(name) <= limit:
        assert fitted == name
    else:
        assert fitted.endswith("-" + naming.short_hash(name))


def test_tasks_without_a_queue_get_distinct_queues() -> None:
    assert naming.default_queue("email.send") != naming.default_queue("email-send")


@given(task=run_names)
def test_default_queue_is_a_valid_queue_name(task: str) -> None:
    queue = naming.default_queue(task)
    assert len(queue) <= 63 and DNS_LABEL.fullmatch(queue), queue


# --------------------------------------------------------------------------- the attempt pod

RUN_BODY: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "TaskRun",
    "metadata": {"name": "welcome-42", "namespace": "team-a", "uid": "uid-1"},
    "spec": {"task": "email.send.welcome"},
}


def pod(
    *,
    snapshot: TaskSpec | None = None,
    machine: str = "micro",
    max_duration: str | None = "1m30s",
    config: Settings | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    return podspec.build_pod(
        run=RUN_BODY,
        snapshot=snapshot or TaskSpec(image="registry.example/app:1", entrypoint="app.tasks:send"),
        pod_name="welcome-42-1",
        attempt=1,
        machine=machine,
        queue="task-email-send-welcome-f2f646",
        max_duration=max_duration,
        token="secret-token",
        settings=config or Settings(api_url="http://api:8080"),
        **kwargs,
    )


def test_the_pod_is_credential_free_and_restricted() -> None:
    spec = pod()["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert spec["restartPolicy"] == "Never"
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    [container] = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "privileged" not in json.dumps(spec)
    assert "volumes" not in spec and "hostNetwork" not in spec
    assert container["command"] == podspec.RUNNER_COMMAND
    assert container["image"] == "registry.example/app:1"
    assert spec["terminationGracePeriodSeconds"] == Settings().cancel_grace_seconds


def test_resources_come_from_the_machine_preset() -> None:
    [container] = pod(machine="micro")["spec"]["containers"]
    assert container["resources"] == {
        "limits": {"cpu": "250m", "memory": "256Mi"},
        "requests": {"cpu": "250m", "memory": "256Mi"},
    }
    expected = {
        "small-1x": ("500m", "512Mi"),
        "small-2x": ("1000m", "1024Mi"),
        "medium-1x": ("1000m", "2048Mi"),
        "medium-2x": ("2000m", "4096Mi"),
        "large-1x": ("4000m", "8192Mi"),
        "large-2x": ("8000m", "16384Mi"),
    }
    for machine, (cpu, memory) in expected.items():
        resources = podspec.resources(machine, Settings())
        assert resources["limits"] == {"cpu": cpu, "memory": memory}
        assert resources["requests"] == resources["limits"]  # Guaranteed by default
    assert set(expected) | {"micro"} == set(MACHINE_PRESETS)


def test_request_ratios_scale_requests_only() -> None:
    config = Settings(cpu_request_ratio=0.75, memory_request_ratio=0.5)
    resources = podspec.resources("micro", config)
    assert resources["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert resources["requests"] == {"cpu": "188m", "memory": "128Mi"}


@pytest.mark.parametrize(
    ("max_duration", "seconds"), [("1m30s", 90), ("5s", 5), ("1500ms", 2), ("2h", 7200)]
)
def test_active_deadline_comes_from_max_duration(max_duration: str, seconds: int) -> None:
    assert pod(max_duration=max_duration)["spec"]["activeDeadlineSeconds"] == seconds


def test_no_active_deadline_without_max_duration() -> None:
    assert "activeDeadlineSeconds" not in pod(max_duration=None)["spec"]


def test_env_carries_the_run_and_the_tasks_variables() -> None:
    snapshot = TaskSpec.model_validate(
        {
            "image": "img",
            "entrypoint": "app.tasks:send",
            "env": [
                {"name": "LOG_LEVEL", "value": "debug"},
                {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "app-config"}}],
        }
    )
    [container] = pod(snapshot=snapshot)["spec"]["containers"]
    env = {var["name"]: var for var in container["env"]}
    assert env[protocol.ENV_API_URL]["value"] == "http://api:8080"
    assert env[protocol.ENV_TOKEN]["value"] == "secret-token"
    assert env[protocol.ENV_NAMESPACE]["value"] == "team-a"
    assert env[protocol.ENV_RUN_NAME]["value"] == "welcome-42"
    assert env[protocol.ENV_ATTEMPT]["value"] == "1"
    assert env[protocol.ENV_ENTRYPOINT]["value"] == "app.tasks:send"
    assert all(name.startswith("PODTASK_") for name in list(env)[:6])
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert env["DB"]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "app-config"}}]
    assert all(isinstance(var.get("value", ""), str) for var in container["env"])


def test_metadata_owner_and_labels() -> None:
    long_task = "t" * 80 + ".send"
    body = dict(RUN_BODY, spec={"task": long_task})
    meta = podspec.build_pod(
        run=body,
        snapshot=TaskSpec(image="img", entrypoint="a:b"),
        pod_name="welcome-42-1",
        attempt=3,
        machine="small-1x",
        queue="q" * 70,
        max_duration=None,
        token="t",
        settings=Settings(labels={"team": "a"}),
    )["metadata"]
    assert meta["name"] == "welcome-42-1" and meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": API_VERSION,
            "kind": "TaskRun",
            "name": "welcome-42",
            "uid": "uid-1",
            "controller": True,
        }
    ]
    labels = meta["labels"]
    assert labels[podspec.LABEL_MANAGED_BY] == "podtask"
    assert labels[podspec.LABEL_RUN_UID] == "uid-1"
    assert labels[podspec.LABEL_RUN] == "welcome-42"
    assert labels[podspec.LABEL_ATTEMPT] == "3"
    assert labels["team"] == "a"
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    assert labels[podspec.LABEL_TASK] == naming.label_value(long_task)
    assert meta["annotations"][podspec.ANNOTATION_RUN] == "welcome-42"


def test_service_account_priority_class_and_user_are_optional() -> None:
    snapshot = TaskSpec(image="img", entrypoint="a:b", service_account_name="runner")
    spec = pod(snapshot=snapshot, config=Settings(run_as_user=1000), priority_class="q-pc")["spec"]
    assert spec["serviceAccountName"] == "runner"
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "q-pc"
    assert spec["securityContext"]["runAsUser"] == 1000


# --------------------------------------------------------------------------- work queue


async def drain(queue: WorkQueue[str]) -> list[str]:
    got = []
    while len(queue):
        key = await asyncio.wait_for(queue.get(), 1)
        got.append(key)
        queue.done(key)
    return got


async def test_workqueue_dedupes_keys_waiting_to_be_worked_on() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ["a", "b", "a", "a", "c", "b"]:
        queue.add(key)
    assert len(queue) == 3
    assert await drain(queue) == ["a", "b", "c"]


async def test_workqueue_redoes_a_key_added_while_active_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # a change arrived while "a" was being worked on
    queue.add("a")
    assert len(queue) == 0  # never handed to a second worker meanwhile
    queue.done(key)
    assert len(queue) == 1
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_workqueue_one_worker_per_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    active: set[str] = set()
    overlaps = 0
    worked: list[str] = []

    async def worker() -> None:
        nonlocal overlaps
        while True:
            key = await queue.get()
            overlaps += key in active
            active.add(key)
            await asyncio.sleep(0.001)
            worked.append(key)
            active.discard(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for _ in range(20):
        for key in "abc":
            queue.add(key)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert overlaps == 0
    assert set(worked) == {"a", "b", "c"}
    assert len(queue) == 0


async def test_workqueue_add_after_keeps_the_earliest_wake_up() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.2)
    queue.add_after("a", 0.01)  # earlier wins
    queue.add_after("a", 0.5)  # later is ignored
    assert await asyncio.wait_for(queue.get(), 0.15) == "a"
    queue.done("a")
    await asyncio.sleep(0.6)
    assert len(queue) == 0  # the 0.2 and 0.5 wake-ups were dropped


async def test_workqueue_forget_cancels_a_pending_wake_up() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.02)
    queue.forget("a")
    queue.forget("never-added")
    await asyncio.sleep(0.05)
    assert len(queue) == 0
    queue.add_after("a", 0.01)  # usable again after forget
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_workqueue_timer_firing_while_active_redoes_the_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add_after("a", 0.01)
    await asyncio.sleep(0.03)
    assert len(queue) == 0
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "a"


# --------------------------------------------------------------------------- outputs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(value=json_values, chunk=st.integers(1, 64))
def test_outputs_split_and_assemble_round_trip(value: Any, chunk: int) -> None:
    data = outputs.encode(value)
    chunks = outputs.split(data, chunk)
    assert all(0 < len(c) <= chunk for c in chunks)
    assert b"".join(chunks) == data
    assert outputs.assemble(chunks, len(data), outputs.digest(data)) == value


def test_output_encoding_is_canonical_compact_utf8() -> None:
    assert outputs.encode({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()
    assert outputs.digest(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_default_chunks_fit_a_secret() -> None:
    data = outputs.encode("x" * (3 * outputs.CHUNK_BYTES))
    chunks = outputs.split(data)
    assert len(chunks) == 4
    assert max(len(c) for c in chunks) == outputs.CHUNK_BYTES
    assert outputs.CHUNK_BYTES * 4 / 3 < 1024 * 1024  # base64 in a Secret stays under 1 MiB


def test_assemble_detects_missing_reordered_or_altered_chunks() -> None:
    data = outputs.encode({"text": "abcdefghij" * 20})
    chunks = outputs.split(data, 50)
    size, sha = len(data), outputs.digest(data)
    with pytest.raises(outputs.OutputIntegrityError, match="expected"):
        outputs.assemble(chunks[:-1], size, sha)
    with pytest.raises(outputs.OutputIntegrityError):
        outputs.assemble([chunks[1], chunks[0], *chunks[2:]], size, sha)
    altered = [chunks[0].replace(b"a", b"b", 1), *chunks[1:]]
    with pytest.raises(outputs.OutputIntegrityError):
        outputs.assemble(altered, size, sha)
    assert issubclass(outputs.OutputIntegrityError, ValueError)


# --------------------------------------------------------------------------- settings


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODTASK_NAMESPACES", "a,b,")
    monkeypatch.setenv("PODTASK_HEARTBEAT_TIMEOUT", "2m")
    monkeypatch.setenv("PODTASK_TASK_GRACE", "500ms")
    monkeypatch.setenv("PODTASK_INFRA_RETRY_LIMIT", "2")
    monkeypatch.setenv("PODTASK_KEEP_FAILED_PODS", "False")
    monkeypatch.setenv("PODTASK_DELETE_FINISHED_PODS", "true")
    monkeypatch.setenv("PODTASK_PHASE_EVENTS", "TRUE")
    monkeypatch.setenv("PODTASK_RUN_API_KEY", "k")
    monkeypatch.setenv("PODTASK_RUN_AS_USER", "1001")
    config = Settings.from_env()
    assert config.namespaces == ("a", "b")
    assert config.heartbeat_timeout == 120.0
    assert config.task_grace == 0.5
    assert config.infra_retry_limit == 2
    assert config.keep_failed_pods is False
    assert config.delete_finished_pods is True and config.phase_events is True
    assert config.run_api_key == b"k"
    assert config.run_as_user == 1001


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PODTASK_"):
            monkeypatch.delenv(name)
    config = Settings.from_env()
    assert config == Settings(labels={})
    assert config.heartbeat_timeout == 300.0
    assert config.ttl_after_finished == 7 * 86400
    assert config.output_inline_limit == 256 * 1024
    assert config.run_api_key is None
    # Kept pods and notable-only Events: the fewest API writes per run (docs/operations.md).
    assert config.delete_finished_pods is False and config.phase_events is False
