"""Registering the process kubelet's Node and keeping it Ready.

The node-lifecycle controller marks a node NotReady (and taints it, then evicts its pods)
when neither its Lease nor its Ready condition has been renewed within the grace period,
so the Lease is renewed every 10 s like kubelet's, and the conditions get a heartbeat too.
"""

from __future__ import annotations

import asyncio
import platform
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from localcluster import node_status as st
from localcluster.node_kube import MERGE, ApiError, Kube

Obj = dict[str, Any]

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
# kubelet reports an unchanged status only every nodeStatusReportFrequency (5 min) and
# lets the Lease prove liveness; a shorter period keeps heartbeats visible in tests.
STATUS_HEARTBEAT_SECONDS = 30.0
HOST_IP = "127.0.0.1"
STALE_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
AGENT_LABEL = "podtask.dev/node-agent"

NODE_CONDITIONS = (
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
)


def log(message: str) -> None:
    print(message, flush=True)


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _read_id(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return uuid.uuid4().hex


class NodeRegistration:
    def __init__(self, kube: Kube, name: str, capacity: dict[str, str], instant: bool) -> None:
        self.kube = kube
        self.name = name
        self.capacity = capacity
        self.instant = instant
        self.log_port = 0
        self.node_uid = ""
        self.condition_since: dict[str, str] = {}

    def _node_status(self, version: str) -> Obj:
        now = st.now_time()
        conditions = []
        for kind, status, reason, message in NODE_CONDITIONS:
            since = self.condition_since.setdefault(kind, now)
            conditions.append(
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": since,
                }
            )
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                # The API server prefers Hostname when it dials the node (for
                # logs); a literal IP needs no resolver, as with
                # kubelet --hostname-override.
                {"type": "Hostname", "address": HOST_IP},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": _read_id("/etc/machine-id"),
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "bootID": _read_id("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": f"podtask process kubelet ({platform.system()})",
                "containerRuntimeVersion": "process://0.1.0",
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _architecture(),
            },
        }

    async def register(self) -> str:
        version = str((await self.kube.get("/version"))["gitVersion"])
        path = f"/api/v1/nodes/{self.name}"
        arch = _architecture()
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch,
            AGENT_LABEL: "instant" if self.instant else "process",
        }
        existing = await self.kube.get_or_none(path)
        if existing is None:
            try:
                existing = await self.kube.request(
                    "POST",
                    "/api/v1/nodes",
                    body={
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {"name": self.name, "labels": labels},
                        "status": self._node_status(version),
                    },
                )
            except ApiError as error:
                if error.status != 409:
                    raise
                existing = await self.kube.get(path)
        assert existing is not None
        taints = (existing.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") not in STALE_TAINTS]
        patch: Obj = {"metadata": {"labels": labels}}
        if kept != taints:
            # Left by the node-lifecycle controller while no agent was heartbeating.
            patch["spec"] = {"taints": kept or None}
        node = await self.kube.patch(path, patch, MERGE)
        self.node_uid = str(node["metadata"]["uid"])
        for condition in (node.get("status") or {}).get("conditions") or []:
            wanted = {c[0]: c[1] for c in NODE_CONDITIONS}
            if wanted.get(condition["type"]) == condition.get("status"):
                self.condition_since[condition["type"]] = condition["lastTransitionTime"]
        await self.kube.patch(f"{path}/status", {"status": self._node_status(version)})
        await self.renew_lease()
        return version

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": st.now_micro(),
        }
        try:
            await self.kube.patch(path, {"spec": spec}, MERGE)
        except ApiError as error:
            if error.status != 404:
                raise
            await self.kube.request(
                "POST",
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.name,
                                "uid": self.node_uid,
                            }
                        ],
                    },
                    "spec": spec,
                },
            )

    async def heartbeat(self, version: str) -> None:
        since_status = 0.0
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            since_status += LEASE_RENEW_SECONDS
            try:
                await self.renew_lease()
                if since_status >= STATUS_HEARTBEAT_SECONDS:
                    since_status = 0.0
                    await self.kube.patch(
                        f"/api/v1/nodes/{self.name}/status", {"status": self._node_status(version)}
                    )
            except ApiError as error:
                if error.status != 404:
                    log(f"heartbeat failed: {error}")
                    continue
                # The Node was deleted under us: register it again.
                try:
                    version = await self.register()
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as again:
                    log(f"re-registering failed: {again!r}")
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                log(f"heartbeat failed: {error!r}")
