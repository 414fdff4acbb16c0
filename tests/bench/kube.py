"""A lean asyncio client for load generation, watching and sampling on a local cluster.

Raw JSON over one httpx connection pool (no model (de)serialisation), so the driver
itself costs little CPU on a small machine, and every timestamp it takes comes from one
clock (``time.monotonic``). It talks only to the loopback API server of a cluster that
``localcluster`` started, with that cluster's admin certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from localcluster import controlplane, procs
from localcluster.components import Layout
from localcluster.pytest_plugin import CRDS_DIR

Obj = dict[str, Any]
EventHandler = Callable[[str, Obj], None]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"})
_METRIC_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# What a benchmark node looks like: it completes pods at once, podtask runs honestly
# (node_instant.py), and has room for every pod the benchmarks leave behind.
INSTANT_NODE = {"instant_runner": "true", "pods": "20000", "cpu": "4000", "memory": "16000Gi"}


def now() -> float:
    return time.monotonic()


class KubeError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")


@dataclass
class Kube:
    """The admin client of the cluster in ``state_dir``."""

    state_dir: Path
    connections: int = 64
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        layout = Layout(self.state_dir.resolve())
        server = json.loads(layout.state_file.read_text())["server"]
        if not server.startswith("https://127.0.0.1:"):
            raise ValueError(f"refusing to load-test a non-loopback API server {server}")
        context = ssl.create_default_context(cafile=str(layout.pki / "serving-ca.crt"))
        context.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
        self.client = httpx.AsyncClient(
            base_url=server,
            verify=context,
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(
                max_connections=self.connections, max_keepalive_connections=self.connections
            ),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        response = await self.client.request(
            method,
            path,
            params=params,
            content=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        if response.status_code >= 400:
            raise KubeError(response.status_code, response.text, f"{method} {path}")
        answer: Obj = response.json() if response.content else {}
        return answer

    async def get(self, path: str, **params: str) -> Obj:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Obj, *, retry_for: float = 60.0) -> bool:
        """Create ``body``; throttling and outages are retried. False if it already existed
        (names are fixed, so a retried create whose first answer was lost finds its own)."""
        give_up = now() + retry_for
        delay = 0.05
        while True:
            try:
                await self.request("POST", path, body)
                return True
            except KubeError as error:
                if error.status == 409:
                    return False
                if error.status not in RETRY_STATUSES or now() > give_up:
                    raise
            except httpx.TransportError:
                if now() > give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def delete(self, path: str, grace: int | None = None) -> bool:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            await self.request("DELETE", path, body)
            return True
        except KubeError as error:
            if error.status == 404:
                return False
            raise

    async def watch(
        self,
        path: str,
        handler: EventHandler,
        *,
        params: dict[str, str] | None = None,
        synced: asyncio.Event | None = None,
        relisted: Callable[[list[Obj]], None] | None = None,
    ) -> None:
        """List then watch ``path`` forever, surviving API server restarts; a relist
        replays ADDED, so handlers must be idempotent (``relisted`` gets the whole list
        first, for views that must drop what vanished meanwhile). Cancel to stop."""
        version: str | None = None
        base = dict(params or {})
        while True:
            try:
                if version is None:
                    listing = await self.get(path, **base)
                    items = listing.get("items") or []
                    if relisted is not None:
                        relisted(items)
                    for item in items:
                        handler("ADDED", item)
                    version = str(listing["metadata"]["resourceVersion"])
                    if synced is not None:
                        synced.set()
                query = {
                    **base,
                    "watch": "true",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "240",
                }
                async with self.client.stream(
                    "GET", path, params=query, timeout=httpx.Timeout(None, connect=10.0)
                ) as response:
                    if response.status_code == 410:
                        version = None
                        continue
                    if response.status_code >= 400:
                        raise KubeError(response.status_code, "", f"watch {path}")
                    async for line in response.aiter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            version = None if obj.get("code") == 410 else version
                            break
                        version = str(obj["metadata"]["resourceVersion"])
                        if kind != "BOOKMARK":
                            handler(kind, obj)
            except (httpx.HTTPError, KubeError, ValueError, OSError):
                await asyncio.sleep(0.5)

    async def metrics_text(self) -> str:
        response = await self.client.get("/metrics")
        response.raise_for_status()
        return response.text


# --- cluster set-up ---------------------------------------------------------------------


@contextmanager
def private_cluster(
    state_dir: Path, nodes: int, node_options: dict[str, str] | None = None
) -> Iterator[Path]:
    """A fresh control plane with instant(-runner) nodes, stopped afterwards.

    A watchdog stops it if this process dies first."""
    controlplane.up(
        state_dir, nodes=nodes, node_options=node_options or INSTANT_NODE, owner_pid=os.getpid()
    )
    try:
        yield state_dir
    finally:
        controlplane.down(state_dir)


def crd_documents() -> list[Obj]:
    documents: list[Obj] = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        documents += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"
        ]
    return documents


async def install_crds(kube: Kube, within: float = 60.0) -> None:
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for crd in crd_documents():
        await kube.create(path, crd)
        names.append(crd["metadata"]["name"])
    deadline = now() + within
    for name in names:
        while True:
            crd = await kube.get(f"{path}/{name}")
            if any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            ):
                break
            if now() > deadline:
                raise TimeoutError(f"CRD {name} not Established")
            await asyncio.sleep(0.1)


async def make_namespace(kube: Kube, name: str, within: float = 60.0) -> str:
    """A namespace ready for pods (its default ServiceAccount and root CA exist)."""
    await kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    deadline = now() + within
    while True:
        try:
            await kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return name
        except KubeError as error:
            if error.status != 404 or now() > deadline:
                raise
        await asyncio.sleep(0.05)


async def wait_until(
    check: Callable[[], bool], within: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``check`` until true; the time it became true. TimeoutError names ``what``."""
    deadline = now() + within
    while not check():
        if now() > deadline:
            raise TimeoutError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
    return now()


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


# --- the API server's request metrics ----------------------------------------------------

MetricKey = tuple[str, str, str, str, str]  # verb, group, resource, subresource, code


def parse_request_totals(text: str) -> dict[MetricKey, float]:
    totals: dict[MetricKey, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        key = (
            labels.get("verb", ""),
            labels.get("group", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        totals[key] = totals.get(key, 0.0) + float(match["value"])
    return totals


def write_deltas(before: dict[MetricKey, float], after: dict[MetricKey, float]) -> dict[str, float]:
    """Write requests between two scrapes, by ``resource[/subresource] VERB``, with the
    answer's code appended when it was not a success (``pods DELETE (404)``)."""
    deltas: dict[str, float] = {}
    for key, value in after.items():
        verb, group, resource, sub, code = key
        if verb not in WRITE_VERBS or not resource:
            continue
        delta = value - before.get(key, 0.0)
        if delta <= 0:
            continue
        name = f"{group + '/' if group else ''}{resource}{'/' + sub if sub else ''} {verb}"
        if not code.startswith("2"):
            name += f" ({code})"
        deltas[name] = deltas.get(name, 0.0) + delta
    return deltas


# --- process accounting ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcUsage:
    cpu_seconds: float
    rss: int
    peak_rss: int


def usage_of(pid: int) -> ProcUsage | None:
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        memory = procs.memory(process)
    except psutil.Error:
        return None
    return ProcUsage(times.user + times.system, memory.rss, memory.peak_rss)


def component_pids(state_dir: Path) -> dict[str, int]:
    layout = Layout(state_dir.resolve())
    state = json.loads(layout.state_file.read_text())
    pids = {}
    for name in state["components"]:
        process = procs.find(layout.pids, name)
        if process is not None:
            pids[name] = process.pid
    return pids


def cpu_by_component(state_dir: Path) -> dict[str, float]:
    result = {}
    for name, pid in component_pids(state_dir).items():
        usage = usage_of(pid)
        if usage is not None:
            result[name] = usage.cpu_seconds
    return result
