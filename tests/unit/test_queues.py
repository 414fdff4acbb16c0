"""Queue admission logic: order, per-key limits, rate limits, resource ceilings."""

from __future__ import annotations

from decimal import Decimal

import pytest

from podtask.api.v1alpha1 import QueueSpec
from podtask_operator.quantity import parse_quantity
from podtask_operator.queues import Limits, QueueState, Usage


def key(name: str) -> tuple[str, str]:
    return ("ns", name)


def admit_all(state: QueueState, now: float = 0.0) -> list[str]:
    admitted = []
    for k, waiter in sorted(state.waiting.items(), key=lambda item: item[1].rank):
        if state.may_admit(k, now):
            state.admit(k, state.lowest_free_slot(), waiter.concurrency_key, now)
            admitted.append(k[1])
    return admitted


def test_lower_rank_first_and_never_over_the_limit() -> None:
    state = QueueState(Limits(concurrency=2))
    state.wait(key("old"), 100.0, None)
    state.wait(key("new"), 200.0, None)
    state.wait(key("urgent"), 150.0 - 60, None)  # created at 150 with priority 60
    assert state.next_in_line(2) == [key("urgent"), key("old")]
    assert not state.may_admit(key("new"), 0)
    assert admit_all(state) == ["urgent", "old"]
    assert state.free == 0 and not state.may_admit(key("new"), 0)
    assert sorted(state.holders.values()) == [0, 1]
    assert state.release(key("old")) == 1
    assert state.may_admit(key("new"), 0)
    assert state.lowest_free_slot() == 1


def test_per_key_limit_passes_over_a_busy_key() -> None:
    state = QueueState(Limits(concurrency=3, per_key=1))
    state.wait(key("a1"), 1, "a")
    state.wait(key("a2"), 2, "a")
    state.wait(key("b1"), 3, "b")
    assert state.next_in_line(3) == [key("a1"), key("b1")]
    assert admit_all(state) == ["a1", "b1"]
    assert not state.may_admit(key("a2"), 0)
    state.release(key("a1"))
    assert state.may_admit(key("a2"), 0)


def test_rate_limit_counts_starts_in_a_sliding_window() -> None:
    state = QueueState(Limits(concurrency=10, rate=2, rate_period=4.0))
    for i in range(4):
        state.wait(key(f"r{i}"), i, None)
    assert admit_all(state, now=0.0) == ["r0", "r1"]
    assert not state.may_admit(key("r2"), 3.9)
    assert state.rate_reopens_in(3.0) == pytest.approx(1.0)
    assert state.may_admit(key("r2"), 4.0)


def test_resource_ceiling_counts_the_machines_of_holders() -> None:
    spec = QueueSpec(concurrency_limit=10, resources={"cpu": "1", "memory": "1Gi"})
    state = QueueState(Limits.from_spec(spec))
    small = Usage.of_machine("small-1x")  # 0.5 CPU, 0.5 GiB
    for i in range(3):
        state.wait(key(f"s{i}"), i, None)
    for i in range(2):
        assert state.may_admit(key(f"s{i}"), 0, small)
        state.admit(key(f"s{i}"), i, None, 0, small)
    assert not state.may_admit(key("s2"), 0, small)
    state.release(key("s0"))
    assert state.may_admit(key("s2"), 0, small)


def test_forgotten_and_readmitted_runs_leave_no_stale_order() -> None:
    state = QueueState(Limits(concurrency=1))
    state.wait(key("gone"), 1, None)
    state.wait(key("stays"), 2, None)
    state.forget(key("gone"))
    assert state.next_in_line(1) == [key("stays")]
    state.wait(key("stays"), 0.5, None)  # re-ranked: a later priority bump
    assert state.next_in_line(1) == [key("stays")]


def test_zero_limit_pauses_the_queue() -> None:
    state = QueueState(Limits(concurrency=0))
    state.wait(key("a"), 1, None)
    assert not state.may_admit(key("a"), 0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        (2, "2"),
        ("1Gi", str(2**30)),
        ("1G", "1000000000"),
        ("512Mi", str(512 * 2**20)),
        ("1.5", "1.5"),
        ("1e3", "1000"),
    ],
)
def test_parse_quantity(text: str | int, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "1Xi", "abc", "1.2.3"])
def test_bad_quantity(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|suffix"):
        parse_quantity(text)
