"""Run metadata: operations, the size limit, coalesced sending, no-ops outside a run."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from podtask import metadata
from podtask.api.v1alpha1 import MAX_METADATA_BYTES
from podtask.errors import MetadataError, MetadataTooLargeError
from podtask.metadata import RunMetadata


class Sink:
    """Records every document sent, with the time it was sent."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, document: dict[str, Any]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("api down")
            self.sent.append((time.monotonic(), document))

    @property
    def documents(self) -> list[dict[str, Any]]:
        with self.lock:
            return [document for _, document in self.sent]


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_operations() -> None:
    store = RunMetadata({"progress": 0})
    store.set("progress", 0.5)
    store.append("log", "a")
    store.append("log", "b")
    store.append("log", "a")
    store.remove("log", "a")
    store.set("status", "x")
    store.append("status", "y")  # a scalar becomes a list
    store.increment("done")
    store.increment("done", 4)
    store.decrement("left", 2)
    store.set("gone", True)
    store.delete("gone")
    store.delete("never-there")
    store.remove("never-there", 1)
    assert store.current() == {
        "progress": 0.5,
        "log": ["b"],
        "status": ["x", "y"],
        "done": 5,
        "left": -2,
    }
    assert store.get("done") == 5
    assert store.get("missing", "default") == "default"
    store.replace({"fresh": [1]})
    assert store.current() == {"fresh": [1]}


def test_values_are_copied_in_and_out() -> None:
    store = RunMetadata()
    value = {"nested": [1, 2]}
    store.set("k", value)
    value["nested"].append(3)
    store.get("k")["nested"].append(4)
    store.current()["k"]["nested"].append(5)
    assert store.current() == {"k": {"nested": [1, 2]}}


def test_non_json_values_are_refused_and_leave_the_document_alone() -> None:
    store = RunMetadata({"k": 1})
    with pytest.raises(MetadataError, match="not JSON"):
        store.set("k", object())
    with pytest.raises(MetadataError, match="not JSON"):
        store.set("k", float("inf"))
    store.set("text", "abc")
    with pytest.raises(MetadataError, match="not a number"):
        store.increment("text")
    with pytest.raises(MetadataError, match="strings"):
        store.set(1, "x")  # type: ignore[arg-type]
    with pytest.raises(MetadataError, match="object"):
        store.replace([1])  # type: ignore[arg-type]
    assert store.current() == {"k": 1, "text": "abc"}


def test_the_size_limit_is_enforced_before_a_change_applies() -> None:
    store = RunMetadata({"small": "x"})
    store.set("big", "y" * (MAX_METADATA_BYTES - 100))
    with pytest.raises(MetadataTooLargeError, match=f"limit of {MAX_METADATA_BYTES} bytes"):
        store.set("more", "z" * 200)
    with pytest.raises(MetadataTooLargeError):
        store.set("small", "z" * 200)  # an existing key keeps its old value
    with pytest.raises(MetadataTooLargeError):
        store.replace({"huge": "z" * MAX_METADATA_BYTES})
    assert store.get("small") == "x"
    assert store.get("more") is None
    assert len(store.get("big")) == MAX_METADATA_BYTES - 100
    assert isinstance(MetadataTooLargeError("x"), ValueError)


def test_flush_sends_the_whole_document_only_when_it_changed() -> None:
    sink = Sink()
    store = RunMetadata({"a": 1}, sink=sink)
    assert store.flush() is False
    store.set("b", 2)
    store.set("c", 3)
    assert store.unsent
    assert store.flush() is True
    assert not store.unsent
    assert store.flush() is False
    assert sink.documents == [{"a": 1, "b": 2, "c": 3}]


def test_changes_are_coalesced_to_one_send_per_interval() -> None:
    sink = Sink()
    store = RunMetadata(sink=sink)
    store.start_auto_flush(interval=0.2)
    try:
        for i in range(200):
            store.set("progress", i)
            time.sleep(0.002)
        wait_for(lambda: not store.unsent)
    finally:
        store.close()
    times = [sent_at for sent_at, _ in sink.sent]
    assert 1 <= len(times) <= 5  # ~0.4 s of changes, one send per 0.2 s
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(times))
    assert sink.documents[-1] == {"progress": 199}


def test_a_failed_send_is_tried_again() -> None:
    sink = Sink(fail_first=1)
    store = RunMetadata(sink=sink)
    store.start_auto_flush(interval=0.05)
    try:
        store.set("k", "v")
        wait_for(lambda: sink.documents == [{"k": "v"}])
    finally:
        store.close()


def test_close_stops_sending() -> None:
    sink = Sink()
    store = RunMetadata(sink=sink)
    store.start_auto_flush(interval=0.05)
    store.close()
    store.set("k", "v")
    time.sleep(0.2)
    assert sink.documents == []
    assert store.unsent


def test_module_functions_act_on_the_current_run() -> None:
    sink = Sink()
    store = RunMetadata(sink=sink)
    with metadata.using(store):
        assert metadata.active() is store
        metadata.set("progress", 0.25)
        metadata.increment("count", 2)
        metadata.decrement("count")
        metadata.append("log", "one")
        metadata.append("log", "two")
        metadata.remove("log", "one")
        metadata.set("tmp", 1)
        metadata.delete("tmp")
        assert metadata.get("progress") == 0.25
        assert metadata.current() == {"progress": 0.25, "count": 1, "log": ["two"]}
        metadata.flush()
        metadata.replace({"reset": True})
    assert metadata.active() is None
    assert sink.documents == [{"progress": 0.25, "count": 1, "log": ["two"]}]
    assert store.current() == {"reset": True}


def test_module_functions_are_no_ops_outside_a_run() -> None:
    assert metadata.active() is None
    metadata.set("progress", 1)
    metadata.increment("count")
    metadata.decrement("count")
    metadata.append("log", "x")
    metadata.remove("log", "x")
    metadata.delete("progress")
    metadata.replace({"a": 1})
    metadata.flush()
    assert metadata.get("progress") is None
    assert metadata.get("progress", 7) == 7
    assert metadata.current() == {}
