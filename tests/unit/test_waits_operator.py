"""The operator's pure wait helpers (``podtask_operator.waits``) and wait names.

Covers: child runs are linked to their parent whatever the request said; a
child's result (completed, failed, canceled without an error, deleted); when a
child counts as blocked behind its parent's slot; WaitToken expiry, results
(output, timeout, missing) and the status bodies that complete or time it out;
deterministic, valid, bounded names for resumed pods, children and tokens.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podtask.api.v1alpha1 import TaskRunSpec
from podtask.protocol import ChildRun
from podtask_operator import naming, waits

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PARENT = {"metadata": {"name": "parent-run", "namespace": "team-a", "uid": "u-1"}}


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "tok",
            "namespace": "team-a",
            "creationTimestamp": stamp(T0),
            "resourceVersion": "7",
        },
        "spec": {"timeout": "10m"},
        "status": status,
    }


# --------------------------------------------------------------------------- children


def test_a_child_is_linked_to_its_parent_whatever_the_request_said() -> None:
    spec = TaskRunSpec(task="email.send", payload={"to": "a"}, parent_run="someone-else")
    spec = spec.model_copy(update={"cancel": True, "replay_of": "old"})
    body = waits.child_body(PARENT, "parent-run-a1p0-0", ChildRun(spec=spec, labels={"x": "y"}))
    assert body["metadata"] == {
        "name": "parent-run-a1p0-0",
        "namespace": "team-a",
        "labels": {
            "x": "y",
            "podtask.dev/task": "email.send",
            "podtask.dev/parent-run": "parent-run",
        },
    }
    assert body["spec"] == {
        "task": "email.send",
        "payload": {"to": "a"},
        "tags": [],
        "parentRun": "parent-run",
    }


def run(phase: str, **status: Any) -> dict[str, Any]:
    return {"spec": {"task": "child.task"}, "status": {"phase": phase, **status}}


def test_child_results() -> None:
    done = waits.child_result("c", run("Completed", output={"n": 1}))
    assert (done.ok, done.output, done.task, done.error) == (True, {"n": 1}, "child.task", None)
    big = run("Completed", outputRef={"kind": "Secret", "names": ["s"], "size": 2, "sha256": "x"})
    assert waits.child_result("c", big, output=[1]).output == [1]
    failed = waits.child_result(
        "c", run("Failed", error={"type": "ValueError", "message": "no"}, output="x")
    )
    assert not failed.ok and failed.output is None
    assert failed.error is not None and failed.error.type == "ValueError"
    canceled = waits.child_result("c", run("Canceled"))
    assert canceled.error is not None and canceled.error.type == "RUN_CANCELED"
    gone = waits.child_result("c", None)
    assert not gone.ok and gone.error is not None
    assert gone.error.type == waits.CHILD_RUN_NOT_FOUND


def test_a_child_is_blocked_behind_its_parent_only_in_the_parents_queue_after_a_while() -> None:
    queued = run("Queued", queue="one", queuedAt=stamp(T0))
    later = T0 + timedelta(seconds=2)
    assert waits.blocked_behind_parent("one", queued, later, 1.0)
    assert not waits.blocked_behind_parent("one", queued, T0, 1.0)
    assert not waits.blocked_behind_parent("other", queued, later, 1.0)
    assert not waits.blocked_behind_parent("one", run("Executing", queue="one"), later, 1.0)
    assert not waits.blocked_behind_parent(None, queued, later, 1.0)
    assert not waits.blocked_behind_parent("one", None, later, 1.0)


# --------------------------------------------------------------------------- tokens


def test_token_expiry_and_views() -> None:
    assert waits.token_expiry(token()) == T0 + timedelta(minutes=10)
    forever = token()
    forever["spec"] = {}
    assert waits.token_expiry(forever) is None
    view = waits.token_view(token())
    assert view is not None and not view.completed
    assert waits.token_view(None) is None


def test_token_results() -> None:
    now = T0 + timedelta(minutes=1)
    ok = waits.token_result("tok", token(completed=True, output={"a": 1}), now)
    assert (ok.ok, ok.output, ok.error) == (True, {"a": 1}, None)
    timed_out = waits.token_result("tok", token(completed=True, timedOut=True), now)
    assert not timed_out.ok and timed_out.error is not None
    assert timed_out.error.type == "WaitpointTimeoutError" and "10m" in timed_out.error.message
    # Past expiresAt but not yet marked: already a timeout for the waiting run.
    late = waits.token_result("tok", token(), T0 + timedelta(minutes=11))
    assert late.error is not None and late.error.type == "WaitpointTimeoutError"
    missing = waits.token_result("tok", None, now)
    assert missing.error is not None and missing.error.type == waits.TOKEN_NOT_FOUND
    with pytest.raises(ValueError, match="still open"):
        waits.token_result("tok", token(), now)


def test_token_status_bodies_keep_the_resource_version() -> None:
    now = T0 + timedelta(minutes=3)
    completed = waits.completed_token(token(expiresAt="x"), {"ok": True}, now)
    assert completed["metadata"]["resourceVersion"] == "7"
    assert completed["status"] == {
        "expiresAt": "x",
        "completed": True,
        "output": {"ok": True},
        "completedAt": stamp(now),
    }
    expired = waits.timed_out_token(token(), now)
    assert expired["status"] == {
        "completed": True,
        "timedOut": True,
        "completedAt": stamp(now),
        "expiresAt": stamp(T0 + timedelta(minutes=10)),
    }
    with_expiry = waits.with_expiry(token())
    assert with_expiry is not None
    assert with_expiry["status"] == {"expiresAt": stamp(T0 + timedelta(minutes=10))}
    assert waits.with_expiry(with_expiry) is None, "written once"
    assert waits.with_expiry(token(completed=True)) is None


def test_a_run_token_is_owned_by_its_run() -> None:
    body = waits.token_body(PARENT, "parent-run-a1p0-token", "1h", ["a"])
    assert body["spec"] == {"timeout": "1h", "tags": ["a"]}
    [owner] = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("TaskRun", "parent-run", "u-1")


# --------------------------------------------------------------------------- names


def test_wait_names_follow_the_design() -> None:
    assert naming.resumed_pod_name("run", 1, 1) == "run-1-w1"
    assert naming.child_run_name("run", 2, 3, 17) == "run-a2p3-17"
    assert naming.run_token_name("run", 1, 4) == "run-a1p4-token"


@given(
    run=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,250}[a-z0-9])?", fullmatch=True),
    attempt=st.integers(1, 250),
    position=st.integers(0, 10_000),
    index=st.integers(0, 999),
)
def test_wait_names_are_valid_bounded_and_distinct(
    run: str, attempt: int, position: int, index: int
) -> None:
    names = {
        naming.resumed_pod_name(run, attempt, index + 1),
        naming.child_run_name(run, attempt, position, index),
        naming.child_run_name(run, attempt, position, index + 1),
        naming.child_run_name(run, attempt, position + 1, index),
        naming.run_token_name(run, attempt, position),
    }
    assert len(names) == 5
    for name in names:
        assert len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name), name
