"""Regressions from fuzzing (tests/cluster/test_fuzz.py): values the API server accepts that
used to crash the operator instead of being reported."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from podtask.api.durations import DurationError, parse_duration
from podtask.api.v1alpha1 import QueueSpec, TaskRunSpec
from podtask_operator.dispatcher import Dispatcher
from podtask_operator.quantity import parse_quantity
from podtask_operator.settings import Settings

TOO_LONG = ["99999999999999999999w", "9" * 400 + "s", "99999999999999999999ms", "3000000d"]


@pytest.mark.parametrize("text", TOO_LONG)
def test_a_duration_beyond_the_calendar_is_a_duration_error(text: str) -> None:
    # They used to raise OverflowError, which pydantic passes through: the operator's
    # reconcile of such a run failed forever, and a Queue with one stopped its start-up.
    with pytest.raises(DurationError):
        parse_duration(text)
    with pytest.raises(ValidationError):
        TaskRunSpec.model_validate({"task": "t", "delay": text})
    with pytest.raises(ValidationError):
        QueueSpec.model_validate({"concurrencyLimit": 1, "rateLimit": {"limit": 1, "period": text}})


def test_long_but_representable_durations_stay_valid() -> None:
    assert parse_duration("364000d").days == 364000
    TaskRunSpec.model_validate({"task": "t", "delay": "52000w"})


def test_quantity_exponent_overflow_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_quantity("1e999999999")


@pytest.mark.parametrize(("text", "value"), [("1.5Ei", 3 * 2**59), ("2E", 2 * 10**18)])
def test_exa_suffixes_are_suffixes_not_exponents(text: str, value: int) -> None:
    assert parse_quantity(text) == Decimal(value)


class _Kube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((path, patch))
        return {}


def _queue(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "q"}, "spec": spec}


def test_an_unusable_queue_spec_pauses_the_queue_and_says_why() -> None:
    kube = _Kube()
    dispatcher = Dispatcher(kube, Settings(), lambda key: None)  # type: ignore[arg-type]
    # The API server admits this (it matches the quantity pattern); parsing it overflows.
    dispatcher.on_queue(
        "ADDED", _queue({"concurrencyLimit": 3, "resources": {"cpu": "1e999999999"}})
    )
    assert dispatcher.state(("ns", "q")).limits.concurrency == 0
    asyncio.run(dispatcher.write_statuses())
    (path, patch), *_ = kube.patches
    assert path.endswith("/namespaces/ns/queues/q/status")
    (condition,) = patch["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready",
        "False",
        "InvalidSpec",
    )
    assert "1e999999999" in condition["message"]
    # Fixed: the condition goes, the limit applies.
    dispatcher.on_queue("MODIFIED", _queue({"concurrencyLimit": 3}))
    assert dispatcher.state(("ns", "q")).limits.concurrency == 3
    asyncio.run(dispatcher.write_statuses())
    assert kube.patches[-1][1]["status"]["conditions"] == []


def test_a_bad_edit_keeps_the_last_valid_limit() -> None:
    dispatcher = Dispatcher(_Kube(), Settings(), lambda key: None)  # type: ignore[arg-type]
    dispatcher.on_queue("ADDED", _queue({"concurrencyLimit": 4}))
    dispatcher.on_queue(
        "MODIFIED",
        _queue(
            {"concurrencyLimit": 4, "rateLimit": {"limit": 1, "period": "99999999999999999999w"}}
        ),
    )
    assert dispatcher.state(("ns", "q")).limits.concurrency == 4
    assert "stays in force" in dispatcher.invalid[("ns", "q")]
