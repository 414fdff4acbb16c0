"""The process kubelet's status rules, checked against what kubelet itself reports."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import node_status as st

Obj = dict[str, Any]


def running() -> Obj:
    return {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


def terminated(code: int, reason: str = "") -> Obj:
    return {"terminated": {"exitCode": code, "reason": reason or st.terminated_reason(code, False)}}


def waiting(reason: str = st.CONTAINER_CREATING) -> Obj:
    return {"waiting": {"reason": reason}}


def status(name: str, state: Obj, last: Obj | None = None, ready: bool = False) -> Obj:
    return {"name": name, "state": state, "lastState": last or {}, "ready": ready}


def spec(policy: str = "Never", apps: int = 1, inits: int = 0) -> Obj:
    return {
        "restartPolicy": policy,
        "containers": [{"name": f"c{i}"} for i in range(apps)],
        "initContainers": [{"name": f"i{i}"} for i in range(inits)],
    }


# --- phase ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Never", [waiting()], "Pending"),
        ("Never", [running()], "Running"),
        ("Never", [terminated(0)], "Succeeded"),
        ("Never", [terminated(3)], "Failed"),
        ("Never", [terminated(0), running()], "Running"),
        ("Never", [terminated(0), terminated(1)], "Failed"),
        ("OnFailure", [terminated(0)], "Succeeded"),
        ("OnFailure", [terminated(1)], "Running"),  # about to restart
        ("OnFailure", [terminated(0), terminated(2)], "Running"),
        ("Always", [terminated(0)], "Running"),
        ("Always", [running(), waiting()], "Pending"),
    ],
)
def test_pod_phase(policy: str, states: list[Obj], phase: str) -> None:
    apps = [status(f"c{i}", s) for i, s in enumerate(states)]
    assert st.pod_phase(spec(policy, len(states)), [], apps, False) == phase


def test_crash_looping_container_counts_as_stopped() -> None:
    apps = [status("c0", waiting(st.CRASH_LOOP_BACK_OFF), last=terminated(1))]
    assert st.pod_phase(spec("Always"), [], apps, False) == "Running"


def test_terminal_pod_ends_with_terminal_phase_whatever_the_policy() -> None:
    assert st.pod_phase(spec("Always"), [], [status("c0", terminated(143))], True) == "Failed"
    assert st.pod_phase(spec("Always"), [], [status("c0", terminated(0))], True) == "Succeeded"


def test_init_containers_phase() -> None:
    two = spec("Never", inits=2)
    assert st.pod_phase(two, [status("i0", running())], [status("c0", waiting())], False) == (
        "Pending"
    )
    assert (
        st.pod_phase(
            two,
            [status("i0", terminated(0)), status("i1", terminated(1))],
            [status("c0", waiting(st.POD_INITIALIZING))],
            False,
        )
        == "Failed"
    )
    on_failure = spec("OnFailure", inits=1)
    assert (
        st.pod_phase(
            on_failure,
            [status("i0", terminated(1))],
            [status("c0", waiting(st.POD_INITIALIZING))],
            False,
        )
        == "Pending"
    )


# --- conditions ---------------------------------------------------------------------------


def by_type(conditions: list[Obj]) -> dict[str, tuple[str, str | None, str | None]]:
    return {c["type"]: (c["status"], c.get("reason"), c.get("message")) for c in conditions}


def test_conditions_while_running_and_after_success() -> None:
    apps = [status("c0", running(), ready=True)]
    assert by_type(st.pod_conditions(spec(), [], apps, "Running")) == {
        "PodReadyToStartContainers": ("True", None, None),
        "Initialized": ("True", None, None),
        "Ready": ("True", None, None),
        "ContainersReady": ("True", None, None),
        "PodScheduled": ("True", None, None),
    }
    done = [status("c0", terminated(0))]
    conditions = by_type(st.pod_conditions(spec(), [], done, "Succeeded"))
    assert conditions["Ready"] == ("False", "PodCompleted", None)
    assert conditions["ContainersReady"] == ("False", "PodCompleted", None)
    assert conditions["Initialized"] == ("True", "PodCompleted", None)
    failed = by_type(st.pod_conditions(spec(), [], [status("c0", terminated(1))], "Failed"))
    assert failed["Ready"] == ("False", "PodFailed", None)


def test_conditions_while_pending_with_init_containers() -> None:
    conditions = by_type(
        st.pod_conditions(
            spec(inits=2, apps=2),
            [status("i0", terminated(0), ready=True), status("i1", running())],
            [
                status("c0", waiting(st.POD_INITIALIZING)),
                status("c1", waiting(st.POD_INITIALIZING)),
            ],
            "Pending",
        )
    )
    assert conditions["Initialized"] == (
        "False",
        "ContainersNotInitialized",
        "containers with incomplete status: [i1]",
    )
    assert conditions["ContainersReady"] == (
        "False",
        "ContainersNotReady",
        "containers with unready status: [c0 c1]",
    )
    assert conditions["Ready"] == conditions["ContainersReady"]


def test_last_transition_time_moves_only_on_flips() -> None:
    old = [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2000-01-01T00:00:00Z"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2000-01-01T00:00:00Z"},
    ]
    conditions = {
        c["type"]: c
        for c in st.pod_conditions(spec(), [], [status("c0", terminated(0))], "Succeeded", old)
    }
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert conditions["Ready"]["lastTransitionTime"] != "2000-01-01T00:00:00Z"


# --- the status patch -------------------------------------------------------------------------


def pod(policy: str = "Never", **extra: Any) -> Obj:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 2},
        "spec": {"restartPolicy": policy, "containers": [{"name": "main"}], **extra},
        "status": {"phase": "Pending"},
    }


FACTS = st.PodFacts(host_ip="127.0.0.1", pod_ip="127.0.0.1", start_time="2026-01-01T00:00:00Z")


def test_pod_status_patch_shape() -> None:
    record = st.ContainerRecord(
        name="main",
        image="python:3.11",
        state=running(),
        container_id="process://abc",
        resources={"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}},
    )
    patch = st.pod_status(pod(), [], [record], FACTS)
    assert patch["phase"] == "Running"
    assert (patch["podIP"], patch["hostIP"], patch["startTime"]) == (
        "127.0.0.1",
        "127.0.0.1",
        "2026-01-01T00:00:00Z",
    )
    assert patch["podIPs"] == patch["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert patch["observedGeneration"] == 2
    assert "initContainerStatuses" not in patch
    assert patch["containerStatuses"] == [
        {
            "name": "main",
            "image": "python:3.11",
            "imageID": "",
            "state": running(),
            "lastState": {},
            "ready": True,
            "restartCount": 0,
            "started": True,
            "containerID": "process://abc",
            "resources": record.resources,
            "allocatedResources": {"memory": "64Mi"},
        }
    ]
    for condition in patch["conditions"]:
        # Explicit nulls, so the strategic merge removes a stale reason or message.
        assert "reason" in condition
        assert "message" in condition
        assert condition["observedGeneration"] == 2


def test_deadline_eviction_overrides_phase() -> None:
    record = st.ContainerRecord(name="main", image="i", state=running())
    facts = st.PodFacts(
        "127.0.0.1", "127.0.0.1", "t", evicted=(st.DEADLINE_REASON, st.DEADLINE_MESSAGE)
    )
    patch = st.pod_status(pod(), [], [record], facts)
    assert (patch["phase"], patch["reason"], patch["message"]) == (
        "Failed",
        "DeadlineExceeded",
        "Pod was active on the node longer than the specified deadline",
    )


def test_terminal_phase_never_regresses() -> None:
    done = pod()
    done["status"]["phase"] = "Succeeded"
    record = st.ContainerRecord(name="main", image="i", state=waiting())
    assert st.pod_status(done, [], [record], FACTS)["phase"] == "Succeeded"


def test_init_container_ready_when_completed() -> None:
    record = st.ContainerRecord(name="i", image="i", init=True, state=terminated(0))
    assert record.api()["ready"] is True
    assert record.api()["started"] is False
    assert (
        st.ContainerRecord(name="i", image="i", init=True, state=running()).api()["ready"] is False
    )


# --- TerminatePod --------------------------------------------------------------------------------


def test_terminate_defaults_marks_unfinished_containers_unknown() -> None:
    apps = [
        st.ContainerRecord("a", "i", state=terminated(0)),
        st.ContainerRecord("b", "i", state=waiting()),
    ]
    st.terminate_defaults([], apps)
    assert apps[0].state == terminated(0)
    assert apps[1].state == {
        "terminated": {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod was terminated",
        }
    }


def test_terminate_defaults_with_uninitialized_pod() -> None:
    inits = [
        st.ContainerRecord("i0", "i", init=True, state=terminated(0)),
        st.ContainerRecord("i1", "i", init=True, state=running()),
        st.ContainerRecord("i2", "i", init=True, state=waiting(st.POD_INITIALIZING)),
    ]
    apps = [st.ContainerRecord("c", "i", state=waiting(st.POD_INITIALIZING))]
    st.terminate_defaults(inits, apps)
    assert apps[0].state == waiting(st.POD_INITIALIZING)  # never started
    assert inits[0].state == terminated(0)
    assert inits[1].state["terminated"]["reason"] == "ContainerStatusUnknown"
    assert "waiting" in inits[2].state  # the never-started suffix stays waiting
    fresh = [st.ContainerRecord("i0", "i", init=True, state=waiting(st.POD_INITIALIZING))]
    st.terminate_defaults(fresh, [st.ContainerRecord("c", "i", state=waiting())])
    assert fresh[0].state["terminated"]["exitCode"] == 137  # the first one always counts


# --- backoff -------------------------------------------------------------------------------------


def test_crash_loop_backoff_sequence() -> None:
    backoff = st.Backoff()
    t = 1000.0
    assert backoff.delay("c", t, t) == 0  # first restart is immediate
    t += 1  # ran one second, failed again
    assert backoff.delay("c", t, t) == 10
    assert backoff.current("c") == 10
    assert backoff.delay("c", t, t + 10) == 0  # waited it out: restart, next is 20 s
    t += 11
    assert backoff.delay("c", t, t) == 20
    waits = []
    for _ in range(7):
        wait = backoff.delay("c", t, t)
        waits.append(wait)
        assert backoff.delay("c", t, t + wait) == 0  # restarts once the wait is over
        t += wait + 1  # ...and fails again a second later
    assert waits == [20, 40, 80, 160, 300, 300, 300]  # doubling, capped at five minutes


def test_backoff_resets_after_long_run() -> None:
    backoff = st.Backoff()
    backoff.delay("c", 0, 0)
    backoff.delay("c", 1, 100)  # -> 20 s
    assert backoff.current("c") == 20
    assert backoff.delay("c", 1000, 1000) == 0  # 999 s later: more than 2 x max, reset
    assert backoff.current("c") == 10


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10s"), (40, "40s"), (80, "1m20s"), (160, "2m40s"), (300, "5m0s"), (3600, "1h0m0s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert st.go_duration(seconds) == text


def test_crash_loop_message() -> None:
    assert st.crash_loop_message(20, "main", pod()) == (
        "back-off 20s restarting failed container=main pod=p_ns(u)"
    )
