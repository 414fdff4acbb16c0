"""Live run metadata: a JSON object the run updates and watchers see.

Inside a run, the module functions act on the run's metadata::

    from podtask import metadata

    metadata.set("progress", 0.5)
    metadata.increment("processed")
    metadata.append("log", "fetched page 3")

Changes are buffered and sent to the operator as the whole document at most
once a second, and once more before the run reports its outcome; ``flush()``
sends them now.  Outside a run every function is a no-op (``get`` returns the
default, ``current`` an empty dict), as in Trigger.dev, so code that reports
progress also runs in tests and scripts.  The document is limited to 256 KiB
of JSON; a change that would pass the limit raises
:class:`~podtask.errors.MetadataTooLargeError` and is not applied.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from podtask.api.v1alpha1 import MAX_METADATA_BYTES
from podtask.errors import MetadataError, MetadataTooLargeError

__all__ = [
    "RunMetadata",
    "append",
    "current",
    "decrement",
    "delete",
    "flush",
    "get",
    "increment",
    "remove",
    "replace",
    "set",
]

FLUSH_INTERVAL_SECONDS = 1.0

logger = logging.getLogger("podtask.metadata")

MetadataSink = Callable[[dict[str, Any]], None]
"""Sends the whole document (the runner posts it to the run API)."""

_MISSING = object()


def _json_copy(value: Any, what: str) -> Any:
    """A deep copy made only of JSON types, so later edits by the caller don't leak in."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise MetadataError(f"{what} is not JSON-serialisable: {error}") from error


def _json_size(document: dict[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetadataError(f"metadata key {key!r} holds {value!r}, which is not a number")
    return value


class RunMetadata:
    """One run's metadata document, safe to use from several threads.

    Each change bumps a version; ``flush`` sends the document when its version
    moved since the last successful send.  Sends are serialised so an older
    document never arrives after a newer one.
    """

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        *,
        sink: MetadataSink | None = None,
        limit_bytes: int = MAX_METADATA_BYTES,
    ) -> None:
        self._document: dict[str, Any] = _json_copy(initial or {}, "initial metadata")
        self._limit = limit_bytes
        self._sink = sink
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._version = 0
        self._sent_version = 0
        self._closed = False
        self._flusher: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._document.get(key, default))

    def current(self) -> dict[str, Any]:
        """A copy of the whole document."""
        with self._lock:
            return copy.deepcopy(self._document)

    @property
    def unsent(self) -> bool:
        """Whether changes are waiting to be sent."""
        with self._lock:
            return self._version != self._sent_version

    # ------------------------------------------------------------------ changing

    def set(self, key: str, value: Any) -> None:
        new = _json_copy(value, f"the value for metadata key {key!r}")
        self._change(key, lambda _old: new)

    def delete(self, key: str) -> None:
        self._change(key, lambda _old: _MISSING)

    def append(self, key: str, value: Any) -> None:
        """Add ``value`` to the list at ``key``; a missing key starts one, a scalar becomes one."""
        item = _json_copy(value, f"the value appended to metadata key {key!r}")

        def change(old: Any) -> Any:
            if old is _MISSING:
                return [item]
            return [*old, item] if isinstance(old, list) else [old, item]

        self._change(key, change)

    def remove(self, key: str, value: Any) -> None:
        """Remove every element equal to ``value`` from the list at ``key``."""
        item = _json_copy(value, f"the value removed from metadata key {key!r}")
        self._change(
            key, lambda old: [x for x in old if x != item] if isinstance(old, list) else old
        )

    def increment(self, key: str, by: float = 1) -> None:
        """Add ``by`` to the number at ``key`` (a missing key counts as 0)."""
        step = _number(by, key)
        self._change(key, lambda old: (0 if old is _MISSING else _number(old, key)) + step)

    def decrement(self, key: str, by: float = 1) -> None:
        self.increment(key, -_number(by, key))

    def replace(self, document: dict[str, Any]) -> None:
        """Replace the whole document."""
        if not isinstance(document, dict):
            raise MetadataError(f"metadata must be a JSON object, not {type(document).__name__}")
        new = _json_copy(document, "the metadata document")
        with self._lock:
            old = self._document
            self._document = new
            try:
                self._check_size("the new document")
            except MetadataTooLargeError:
                self._document = old
                raise
            self._bump()

    def _change(self, key: str, change: Callable[[Any], Any]) -> None:
        if not isinstance(key, str):
            raise MetadataError(f"metadata keys are strings, not {type(key).__name__}")
        with self._lock:
            old = self._document.get(key, _MISSING)
            new = change(old)
            if new is old:
                return
            if new is _MISSING:
                del self._document[key]
            else:
                self._document[key] = new
                try:
                    self._check_size(f"the change to key {key!r}")
                except MetadataTooLargeError:
                    if old is _MISSING:
                        del self._document[key]
                    else:
                        self._document[key] = old
                    raise
            self._bump()

    def _check_size(self, what: str) -> None:
        size = _json_size(self._document)
        if size > self._limit:
            raise MetadataTooLargeError(
                f"run metadata would be {size} bytes as JSON, over the limit of "
                f"{self._limit} bytes; {what} was not applied"
            )

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    # ------------------------------------------------------------------ sending

    def flush(self) -> bool:
        """Send the document now if it changed; True when something was sent."""
        if self._sink is None:
            return False
        with self._send_lock:
            with self._lock:
                if self._version == self._sent_version:
                    return False
                version = self._version
                document = copy.deepcopy(self._document)
            self._sink(document)
            with self._lock:
                self._sent_version = max(self._sent_version, version)
        return True

    def start_auto_flush(self, interval: float = FLUSH_INTERVAL_SECONDS) -> None:
        """Send changes in the background, at most once per ``interval`` seconds."""
        if self._flusher is not None:
            return
        self._flusher = threading.Thread(
            target=self._flush_loop, args=(interval,), name="podtask-metadata", daemon=True
        )
        self._flusher.start()

    def close(self) -> None:
        """Stop the background sender (without a last send: call ``flush`` for that)."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def _flush_loop(self, interval: float) -> None:
        last_send = -math.inf
        while True:
            with self._lock:
                while not self._closed and self._version == self._sent_version:
                    self._changed.wait()
                # Coalesce: changes made within the interval go out together.
                while not self._closed and (due := last_send + interval - time.monotonic()) > 0:
                    self._changed.wait(due)
                if self._closed:
                    return
            last_send = time.monotonic()
            try:
                self.flush()
            except Exception as error:  # the next change or interval tries again
                logger.warning("could not send run metadata: %s", error)


# ---------------------------------------------------------------------- the current run

_current: RunMetadata | None = None


@contextmanager
def using(store: RunMetadata) -> Iterator[RunMetadata]:
    """Make ``store`` the metadata the module functions act on (the runner does this)."""
    global _current
    previous, _current = _current, store
    try:
        yield store
    finally:
        _current = previous


def active() -> RunMetadata | None:
    """The current run's metadata, or None outside a run."""
    return _current


def set(key: str, value: Any) -> None:
    if _current is not None:
        _current.set(key, value)


def get(key: str, default: Any = None) -> Any:
    return _current.get(key, default) if _current is not None else default


def delete(key: str) -> None:
    if _current is not None:
        _current.delete(key)


def append(key: str, value: Any) -> None:
    if _current is not None:
        _current.append(key, value)


def remove(key: str, value: Any) -> None:
    if _current is not None:
        _current.remove(key, value)


def increment(key: str, by: float = 1) -> None:
    if _current is not None:
        _current.increment(key, by)


def decrement(key: str, by: float = 1) -> None:
    if _current is not None:
        _current.decrement(key, by)


def replace(document: dict[str, Any]) -> None:
    if _current is not None:
        _current.replace(document)


def current() -> dict[str, Any]:
    return _current.current() if _current is not None else {}


def flush() -> None:
    """Send pending changes now (inside a run); a no-op outside one."""
    if _current is not None:
        _current.flush()
