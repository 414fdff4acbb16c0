"""The dispatcher's Leases against an in-memory API server: a released slot's Lease
lingers and the next run takes it over with one resourceVersion-checked update (no
delete and create); unused, it is deleted exactly as last seen; conflicts, deletions
behind its back and restarts are handled; admissions do not wait for each other.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import pytest

from podtask_operator import dispatcher as dispatcher_module
from podtask_operator.dispatcher import LEASES, Dispatcher, lease_name
from podtask_operator.kube import ApiError
from podtask_operator.settings import Settings

NS = "team-a"
QUEUE = "q"
LEASE_PATH = LEASES.format(namespace=NS)
Calls = list[tuple[str, str]]  # (verb, Lease name); within LeaseServer ``list`` is a method


class LeaseServer:
    """Leases as the API server keeps them: resourceVersions, preconditions, 404/409."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.calls: Calls = []
        self.version = itertools.count(10)
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self.version))
        self.leases[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    async def _call(self, verb: str, path: str) -> None:
        self.calls.append((verb, path.rsplit("/", 1)[-1]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if not path.startswith(LEASE_PATH):
            return body  # PriorityClass, ResourceQuota: not what these tests look at
        await self._call("POST", f"{path}/{body['metadata']['name']}")
        if body["metadata"]["name"] in self.leases:
            raise ApiError(409, {"reason": "AlreadyExists"})
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = f"lease-uid-{next(self.version)}"
        return self._store(body)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return patch

    async def list(self, path: str, **_: str) -> dict[str, Any]:
        # Every namespace (the settings watch the whole cluster): all the Leases there are.
        return {"items": [copy.deepcopy(lease) for lease in self.leases.values()]}

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        await self._call(method, path)
        name = path.rsplit("/", 1)[-1]
        found = self.leases.get(name)
        if found is None:
            raise ApiError(404, {"reason": "NotFound"})
        if method == "GET":
            return copy.deepcopy(found)
        assert method == "PUT"
        if body["metadata"].get("resourceVersion") != found["metadata"]["resourceVersion"]:
            raise ApiError(409, {"reason": "Conflict"})
        return self._store(body)

    async def delete(self, path: str, *, resource_version: str | None = None, **_: Any) -> None:
        await self._call("DELETE", path)
        name = path.rsplit("/", 1)[-1]
        found = self.leases.get(name)
        if found is None:
            return
        if resource_version and found["metadata"]["resourceVersion"] != resource_version:
            raise ApiError(409, {"reason": "Conflict"})
        del self.leases[name]

    def holder(self, slot: int) -> str | None:
        lease = self.leases.get(lease_name(QUEUE, slot))
        return None if lease is None else str(lease["spec"]["holderIdentity"])

    def writes(self) -> Calls:
        return [(verb, name) for verb, name in self.calls if verb != "GET"]


def run(name: str, phase: str | None = None, created: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"queue": QUEUE}
    if phase:
        status["phase"] = phase
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "creationTimestamp": f"2026-03-01T12:00:{created:02d}Z",
        },
        "spec": {"task": "t"},
        "status": status,
    }


@pytest.fixture
def linger(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(dispatcher_module, "LEASE_LINGER_SECONDS", 0.05)
    return 0.05


def make(server: LeaseServer, limit: int = 1) -> tuple[Dispatcher, list[tuple[str, str]]]:
    woken: list[tuple[str, str]] = []
    dispatcher = Dispatcher(server, Settings(), woken.append)  # type: ignore[arg-type]
    dispatcher.on_queue(
        "ADDED", {"metadata": {"namespace": NS, "name": QUEUE}, "spec": {"concurrencyLimit": limit}}
    )
    return dispatcher, woken


async def admit(dispatcher: Dispatcher, body: dict[str, Any]) -> bool:
    return await dispatcher.acquire((NS, body["metadata"]["name"]), body, QUEUE)


async def test_the_next_run_takes_a_released_lease_over_with_one_update(linger: float) -> None:
    server = LeaseServer()
    dispatcher, woken = make(server)
    first, second = run("a", created=1), run("b", created=2)
    assert await admit(dispatcher, first)
    assert not await admit(dispatcher, second)  # the queue is full: b waits
    assert server.writes() == [("POST", lease_name(QUEUE, 0))]

    await dispatcher.release((NS, "a"), first)
    assert woken == [(NS, "b")]
    assert server.writes() == [("POST", lease_name(QUEUE, 0))], "a release writes nothing"
    assert server.holder(0) == "uid-a"  # lingering, naming its last holder

    assert await admit(dispatcher, second)
    assert server.writes()[1:] == [("PUT", lease_name(QUEUE, 0))]
    lease = server.leases[lease_name(QUEUE, 0)]
    assert lease["spec"]["holderIdentity"] == "uid-b"
    assert lease["metadata"]["labels"]["podtask.dev/run-uid"] == "uid-b"
    assert [o["uid"] for o in lease["metadata"]["ownerReferences"]] == ["uid-b"]
    await asyncio.sleep(linger * 3)
    assert server.holder(0) == "uid-b", "a lease taken over is not deleted after lingering"


async def test_an_unused_released_lease_is_deleted_as_last_seen(linger: float) -> None:
    server = LeaseServer()
    dispatcher, _ = make(server)
    body = run("a")
    assert await admit(dispatcher, body)
    await dispatcher.release((NS, "a"), body)
    await asyncio.sleep(linger * 4)
    assert server.leases == {}
    assert server.writes() == [("POST", lease_name(QUEUE, 0)), ("DELETE", lease_name(QUEUE, 0))]
    assert dispatcher.leases == {}


async def test_a_lease_changed_behind_our_back_is_not_deleted(linger: float) -> None:
    server = LeaseServer()
    dispatcher, _ = make(server)
    body = run("a")
    assert await admit(dispatcher, body)
    await dispatcher.release((NS, "a"), body)
    name = lease_name(QUEUE, 0)
    server.leases[name]["spec"]["holderIdentity"] = "someone-else"
    server.leases[name]["metadata"]["resourceVersion"] = "999"
    await asyncio.sleep(linger * 4)
    assert server.holder(0) == "someone-else"


async def test_a_takeover_that_conflicts_reads_the_lease_and_tries_again(linger: float) -> None:
    server = LeaseServer()
    dispatcher, _ = make(server)
    first, second = run("a"), run("b")
    assert await admit(dispatcher, first)
    await dispatcher.release((NS, "a"), first)
    server.leases[lease_name(QUEUE, 0)]["metadata"]["resourceVersion"] = "999"
    assert await admit(dispatcher, second)
    name = lease_name(QUEUE, 0)
    assert server.calls[1:] == [("PUT", name), ("GET", name), ("PUT", name)]
    assert server.holder(0) == "uid-b"


async def test_a_lease_deleted_behind_our_back_is_created_again(linger: float) -> None:
    server = LeaseServer()
    dispatcher, _ = make(server)
    first, second = run("a"), run("b")
    assert await admit(dispatcher, first)
    await dispatcher.release((NS, "a"), first)
    server.leases.clear()  # garbage-collected with its holder, say
    assert await admit(dispatcher, second)
    name = lease_name(QUEUE, 0)
    assert server.calls[1:] == [("PUT", name), ("GET", name), ("POST", name)]
    assert server.holder(0) == "uid-b"


async def test_admissions_to_one_queue_write_their_leases_at_once() -> None:
    server = LeaseServer()
    server.delay = 0.05
    dispatcher, _ = make(server, limit=3)
    bodies = [run(n, created=i) for i, n in enumerate("abc")]
    results = await asyncio.gather(*(admit(dispatcher, b) for b in bodies))
    assert results == [True, True, True]
    assert server.most_in_flight == 3
    assert sorted(server.holder(slot) or "" for slot in range(3)) == ["uid-a", "uid-b", "uid-c"]


async def test_a_failed_lease_write_gives_the_reserved_slot_back() -> None:
    server = LeaseServer()
    dispatcher, _ = make(server)
    first = run("a")

    async def refuse(path: str, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiError(500, {"message": "etcd is away"})

    server.create = refuse  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        await admit(dispatcher, first)
    state = dispatcher.state((NS, QUEUE))
    assert state.holders == {} and state.free == 1
    assert (NS, "a") in state.waiting  # still in line
    assert dispatcher.uids == {}


async def test_a_restart_finds_lingering_and_held_leases(linger: float) -> None:
    server = LeaseServer()
    before, _ = make(server, limit=3)
    done, executing = run("done", "Completed"), run("exec", "Executing")
    assert await admit(before, done)
    assert await admit(before, executing)
    await before.release((NS, "done"), done)  # its Lease lingers when the operator dies
    lost = run("lost", "Dequeued")  # in flight, its Lease never written

    after, _ = make(server, limit=3)
    await after.prime({(NS, "done"): done, (NS, "exec"): executing, (NS, "lost"): lost})
    state = after.state((NS, QUEUE))
    # The lingering Lease's last holder holds its slot until its first reconcile, and
    # the run without a Lease gets a slot no Lease names.
    assert state.holders == {(NS, "done"): 0, (NS, "exec"): 1, (NS, "lost"): 2}
    await after.release((NS, "done"), done)
    newcomer = run("new")
    calls = len(server.calls)
    assert await admit(after, newcomer)
    assert server.calls[calls:] == [("PUT", lease_name(QUEUE, 0))]  # known from the list
    assert server.holder(0) == "uid-new"
