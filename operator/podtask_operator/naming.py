"""Deterministic names: the same inputs always give the same object name.

Creating an object under a deterministic name is how podtask gets exactly-once
where Kubernetes allows it: a second create answers 409 instead of making a twin.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 253
MAX_LABEL_VALUE = 63
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def short_hash(*parts: str, length: int = 10) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]


def fit(name: str, limit: int) -> str:
    """``name`` if it fits, else a truncated prefix plus a hash of the whole."""
    if len(name) <= limit:
        return name
    suffix = short_hash(name)
    return f"{name[: limit - len(suffix) - 1].rstrip('.-')}-{suffix}"


def pod_name(run: str, attempt: int, infra_retry: int = 0) -> str:
    """``<run>-<attempt>``; an infrastructure re-run of the same attempt adds ``-r<k>``."""
    suffix = f"-{attempt}" if infra_retry == 0 else f"-{attempt}-r{infra_retry}"
    return fit(run, MAX_NAME - len(suffix)) + suffix


def label_value(value: str) -> str:
    """A valid label value carrying ``value`` (hashed when too long or unsafe)."""
    if len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value):
        return value
    hashed = short_hash(value)
    prefix = _LABEL_UNSAFE.sub("-", value)[: MAX_LABEL_VALUE - len(hashed) - 1].strip("-._")
    return f"{prefix}-{hashed}" if prefix else hashed


def default_queue(task: str) -> str:
    """The queue of a task that names none: its own, as in Trigger.dev.

    Queue names are DNS labels (no dots); a task id with dots gets a hash of the id
    too, so ``email.send`` and ``email-send`` never share a queue.
    """
    name = "task-" + task.replace(".", "-")
    if "." not in task:
        return fit(name, MAX_LABEL_VALUE)
    hashed = short_hash(task, length=6)
    return fit(name, MAX_LABEL_VALUE - len(hashed) - 1) + "-" + hashed


def output_secret(run: str, index: int) -> str:
    suffix = f"-output-{index}"
    return fit(run, MAX_NAME - len(suffix)) + suffix


def resumed_pod_name(run: str, attempt: int, segment: int) -> str:
    """``<run>-<attempt>-w<k>``: the pod that resumes an attempt after its k-th pod
    (counting from 0) checkpointed; a fresh name, so the old pod is never mistaken
    for the new one."""
    suffix = f"-{attempt}-w{segment}"
    return fit(run, MAX_NAME - len(suffix)) + suffix


def child_run_name(parent: str, attempt: int, position: int, index: int) -> str:
    """``<parent>-a<attempt>p<position>-<index>``: the index-th child run created at
    ``position`` of the parent's journal in ``attempt``.  A replay or a resent trigger
    meets the same name (409) instead of creating a twin."""
    suffix = f"-a{attempt}p{position}-{index}"
    return fit(parent, MAX_NAME - len(suffix)) + suffix


def run_token_name(run: str, attempt: int, position: int) -> str:
    """``<run>-a<attempt>p<position>-token``: the WaitToken a run creates at ``position``."""
    suffix = f"-a{attempt}p{position}-token"
    return fit(run, MAX_NAME - len(suffix)) + suffix
