"""Queue admission as plain Python: who may take a slot now, and which slot.

The dispatcher (``dispatcher.py``) keeps one ``QueueState`` per queue and asks it
here; nothing in this module does I/O, so ordering, per-key limits and rate
limits are unit-tested without a cluster.  Ordering is Trigger.dev's: a run's
rank is its creation time minus its ``priority`` in seconds, lowest first.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from podtask.api.durations import parse_duration
from podtask.api.machines import MACHINE_PRESETS
from podtask.api.v1alpha1 import QueueSpec
from podtask_operator.quantity import parse_quantity

RunKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Usage:
    """What one run's pod may use: its machine preset's limits."""

    cpu: Decimal = Decimal(0)
    memory: Decimal = Decimal(0)

    @classmethod
    def of_machine(cls, machine: str | None) -> Usage:
        preset = MACHINE_PRESETS.get(machine or "")
        if preset is None:
            return cls()
        return cls(Decimal(str(preset.cpu)), Decimal(preset.memory_bytes))


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int
    per_key: int | None = None
    rate: int | None = None
    rate_period: float = 0.0
    cpu: Decimal | None = None
    memory: Decimal | None = None

    @classmethod
    def from_spec(cls, spec: QueueSpec) -> Limits:
        rate = spec.rate_limit
        resources = spec.resources
        return cls(
            concurrency=spec.concurrency_limit,
            per_key=spec.per_key_limit,
            rate=rate.limit if rate else None,
            rate_period=parse_duration(rate.period).total_seconds() if rate else 0.0,
            cpu=parse_quantity(resources.cpu) if resources and resources.cpu else None,
            memory=parse_quantity(resources.memory) if resources and resources.memory else None,
        )


@dataclass(slots=True)
class Waiter:
    rank: float
    concurrency_key: str | None


@dataclass(slots=True)
class QueueState:
    limits: Limits
    holders: dict[RunKey, int] = field(default_factory=dict)
    """Run -> slot index (its Lease is ``<queue>-<index>``)."""
    holder_keys: dict[RunKey, str | None] = field(default_factory=dict)
    holder_usage: dict[RunKey, Usage] = field(default_factory=dict)
    waiting: dict[RunKey, Waiter] = field(default_factory=dict)
    _heap: list[tuple[float, RunKey]] = field(default_factory=list)
    starts: deque[float] = field(default_factory=deque)
    """Admission times within the rate-limit window, oldest first."""

    def wait(self, key: RunKey, rank: float, concurrency_key: str | None) -> None:
        if key in self.holders:
            return
        known = self.waiting.get(key)
        if known is None or known.rank != rank:
            heapq.heappush(self._heap, (rank, key))
        self.waiting[key] = Waiter(rank, concurrency_key)

    def forget(self, key: RunKey) -> None:
        """The run left the queue without a slot (canceled, expired, deleted)."""
        self.waiting.pop(key, None)

    def _key_count(self, concurrency_key: str | None) -> int:
        return sum(1 for k in self.holder_keys.values() if k == concurrency_key)

    def _key_allows(self, concurrency_key: str | None, extra: int = 0) -> bool:
        if self.limits.per_key is None or concurrency_key is None:
            return True
        return self._key_count(concurrency_key) + extra < self.limits.per_key

    def _trim_rate_window(self, now: float) -> None:
        while self.starts and self.starts[0] <= now - self.limits.rate_period:
            self.starts.popleft()

    def rate_allows(self, now: float) -> bool:
        if self.limits.rate is None:
            return True
        self._trim_rate_window(now)
        return len(self.starts) < self.limits.rate

    def rate_reopens_in(self, now: float) -> float:
        """Seconds until the rate limit admits another start (0 if it does now)."""
        if self.rate_allows(now):
            return 0.0
        return max(0.0, self.starts[0] + self.limits.rate_period - now)

    @property
    def free(self) -> int:
        return max(0, self.limits.concurrency - len(self.holders))

    def next_in_line(self, count: int) -> list[RunKey]:
        """Up to ``count`` waiting runs that would be admitted next, best first.

        Runs whose concurrency key is at its per-key limit are passed over, so one
        busy tenant never blocks the others (no head-of-line blocking).
        """
        self._drop_stale_top()
        # Most calls are answered from the head of the heap; scan all of it only
        # when per-key limits passed over the whole head.
        head = heapq.nsmallest(count + 64, self._heap)
        chosen = self._choose(head, count)
        if len(chosen) < count and len(head) < len(self._heap):
            chosen = self._choose(sorted(self._heap), count)
        return chosen

    def _valid(self, rank: float, key: RunKey) -> bool:
        waiter = self.waiting.get(key)
        return waiter is not None and waiter.rank == rank and key not in self.holders

    def _drop_stale_top(self) -> None:
        while self._heap and not self._valid(*self._heap[0]):
            heapq.heappop(self._heap)
        if len(self._heap) > 2 * len(self.waiting) + 64:
            self._compact()

    def _choose(self, entries: list[tuple[float, RunKey]], count: int) -> list[RunKey]:
        chosen: list[RunKey] = []
        taken: dict[str | None, int] = {}
        for rank, key in entries:
            if not self._valid(rank, key):
                continue
            ck = self.waiting[key].concurrency_key
            if not self._key_allows(ck, extra=taken.get(ck, 0)):
                continue
            taken[ck] = taken.get(ck, 0) + 1
            chosen.append(key)
            if len(chosen) >= count:
                break
        return chosen

    def _compact(self) -> None:
        self._heap = [(w.rank, k) for k, w in self.waiting.items() if k not in self.holders]
        heapq.heapify(self._heap)

    def fits(self, usage: Usage) -> bool:
        """Whether a pod of ``usage`` fits the queue's total CPU/memory ceiling."""
        for limit, used, extra in (
            (
                self.limits.cpu,
                sum((u.cpu for u in self.holder_usage.values()), Decimal(0)),
                usage.cpu,
            ),
            (
                self.limits.memory,
                sum((u.memory for u in self.holder_usage.values()), Decimal(0)),
                usage.memory,
            ),
        ):
            if limit is not None and used + extra > limit:
                return False
        return True

    def may_admit(self, key: RunKey, now: float, usage: Usage | None = None) -> bool:
        """Whether ``key`` (already waiting) gets a slot now."""
        if key in self.holders:
            return True
        waiter = self.waiting.get(key)
        if waiter is None or self.free == 0 or not self.rate_allows(now):
            return False
        if not self._key_allows(waiter.concurrency_key) or not self.fits(usage or Usage()):
            return False
        return key in self.next_in_line(self.free)

    def lowest_free_slot(self) -> int:
        used = set(self.holders.values())
        return next(i for i in range(len(used) + 1) if i not in used)

    def admit(
        self,
        key: RunKey,
        slot: int,
        concurrency_key: str | None,
        now: float,
        usage: Usage | None = None,
    ) -> None:
        self.waiting.pop(key, None)
        self.holders[key] = slot
        self.holder_keys[key] = concurrency_key
        self.holder_usage[key] = usage or Usage()
        if self.limits.rate is not None:
            self.starts.append(now)

    def release(self, key: RunKey, started: float | None = None) -> int | None:
        """Free ``key``'s slot; ``started``: its admission time, when the admission is
        being taken back (it then no longer counts against the rate limit)."""
        self.holder_keys.pop(key, None)
        self.holder_usage.pop(key, None)
        self.waiting.pop(key, None)
        if started is not None and started in self.starts:
            self.starts.remove(started)
        return self.holders.pop(key, None)
