"""Live views of runs for the run API's events stream (``GET …/events``).

A pod that subscribes to its own run or to one of its children gets the run as the
operator's cache holds it now, then again after every change a subscriber can see
(status, tags, the cancel request), as Server-Sent Events.  Nothing here talks to the
API server: the TaskRun watch that keeps the controller's cache current calls
:meth:`RunWatchers.changed`, and each stream reads the cache when woken, so a thousand
subscribers cost the API server nothing and never see an older state after a newer one.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from podtask import protocol
from podtask._runview import change_key, is_final

RunKey = tuple[str, str]

_DROPPED_METADATA = ("managedFields",)


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event; JSON without indentation has no raw newlines."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


KEEPALIVE = b": keepalive\n\n"


def run_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """The TaskRun as a subscriber gets it: what the API server would give, less the
    bookkeeping of field managers."""
    meta = {k: v for k, v in (run.get("metadata") or {}).items() if k not in _DROPPED_METADATA}
    return {**run, "metadata": meta}


class RunWatchers:
    """Who follows which run; woken by the TaskRun watch, reading ``runs`` (the cache)."""

    def __init__(
        self,
        runs: Mapping[RunKey, dict[str, Any]],
        keepalive: float = protocol.EVENTS_KEEPALIVE_SECONDS,
    ) -> None:
        self._runs = runs
        self.keepalive = keepalive
        self._followers: dict[RunKey, set[asyncio.Event]] = defaultdict(set)
        self._closed = False

    def changed(self, namespace: str, name: str) -> None:
        """The run was added, modified or deleted: its followers look again."""
        for woken in self._followers.get((namespace, name), ()):
            woken.set()

    def close(self) -> None:
        """End every stream (the operator is shutting down; clients reconnect)."""
        self._closed = True
        for followers in self._followers.values():
            for woken in followers:
                woken.set()

    def followers(self, namespace: str, name: str) -> int:
        return len(self._followers.get((namespace, name), ()))

    def may_follow(self, namespace: str, run: str, target: str) -> bool:
        """Whether ``run`` may follow ``target``: itself, or a run whose parent it is."""
        if target == run:
            return True
        found = self._runs.get((namespace, target))
        return found is not None and (found.get("spec") or {}).get("parentRun") == run

    async def follow(
        self, namespace: str, name: str, *, close_on_complete: bool = True
    ) -> AsyncIterator[bytes]:
        """The stream's bytes: the run now, then at each change; a keepalive comment when
        nothing changed for a while.  Ends after a final phase (with
        ``close_on_complete``), after the run is deleted, or when closed."""
        key = (namespace, name)
        woken = asyncio.Event()
        self._followers[key].add(woken)
        try:
            last: str | None = None
            uid: str | None = None
            while not self._closed:
                woken.clear()  # before looking: a change while we look wakes the next wait
                run = self._runs.get(key)
                # A run made again under the name (a released idempotency key) is another
                # run, maybe not the subscriber's to see: the one followed is gone.
                found = None if run is None else (run.get("metadata") or {}).get("uid")
                uid = uid or found
                if run is None or found != uid:
                    yield sse(protocol.EVENT_DELETED, {"namespace": namespace, "name": name})
                    return
                seen = change_key(run)
                if seen != last:
                    last = seen
                    yield sse(protocol.EVENT_RUN, run_view(run))
                    if close_on_complete and is_final(run):
                        return
                try:
                    await asyncio.wait_for(woken.wait(), self.keepalive)
                except TimeoutError:
                    yield KEEPALIVE
        finally:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(woken)
                if not followers:
                    del self._followers[key]
