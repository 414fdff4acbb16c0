"""A pod's stand-in for a container sandbox: one directory per pod on the node.

    <state-dir>/pods/<namespace>_<pod>_<uid>/
        <container>.log          stdout+stderr of every instance, appended
        volumes/<volume>/        emptyDir, configMap, secret, downwardAPI, projected
        termination/<container>  the terminationMessagePath stand-in
        tmp/                     TMPDIR

Where the node may create mount namespaces (root, or CAP_SYS_ADMIN), each container with
volume mounts gets its own and sees every volume at its ``mountPath`` (configMap, secret,
downwardAPI and projected volumes read-only, as kubelet mounts them), so in-cluster clients
find the service-account token at ``/var/run/secrets/kubernetes.io/serviceaccount``. A mount
that would hide what the process itself needs from the host (its pod directory, working
directory, interpreter, PATH and PYTHONPATH entries, or a system directory such as ``/etc``)
is skipped with a warning. Either way, a volume's host directory is also handed to the
process in ``PODTASK_NODE_VOLUME_<MOUNT_PATH>`` (``/etc/config`` -> ``..._ETC_CONFIG``), the
only way to reach it where mount namespaces are not available, and the termination message
file in ``PODTASK_TERMINATION_MESSAGE_PATH``. Images are not pulled: the image map decides
PATH, env, working directory, entrypoint and cmd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import node_spec as specs
from localcluster.node_kube import Kube
from localcluster.node_process import BindMount, MemoryMonitor

Obj = dict[str, Any]

VOLUME_ENV_PREFIX = "PODTASK_NODE_VOLUME_"
TERMINATION_ENV = "PODTASK_TERMINATION_MESSAGE_PATH"
# All a process inherits from the agent; the rest comes from the image map and the pod.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL")
MAX_TERMINATION_MESSAGE = 4096  # kubecontainer.MaxContainerTerminationMessageLength
MAX_LOG_MESSAGE_BYTES = 2048  # ...MaxContainerTerminationMessageLogLength
MAX_LOG_MESSAGE_LINES = 80  # ...MaxContainerTerminationMessageLogLines
# kubelet mounts these read-only whatever the volumeMount says.
READ_ONLY_VOLUME_KINDS = ("configMap", "secret", "downwardAPI", "projected")
# Mounting over one of these would hide what every process needs from the host.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/usr",
        "/usr/local",
        "/var",
        "/var/lib",
        "/var/run",
    }
)
SYSTEM_TREES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class NodeContext:
    """What every pod on the node shares."""

    kube: Kube
    node_name: str
    pods_dir: Path
    # Called at each container start, so an image map file may change while the agent runs.
    image_map: Callable[[], Sequence[specs.ImageEnv]]
    service_env: Mapping[str, str]
    allocatable: Mapping[str, str]
    monitor: MemoryMonitor
    host_ip: str = "127.0.0.1"
    instant: bool = False
    base_env: Mapping[str, str] = field(default_factory=dict)
    # Give each container with volume mounts its own mount namespace (see node_mountns.py).
    mount_namespaces: bool = False


@dataclass
class Instance:
    """One container instance's slice of the container's log file."""

    container: str
    path: Path
    start: int
    end: int | None = None


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mounts: tuple[BindMount, ...] = ()


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_dir_name(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def remove_pod_files(pods_dir: Path, pod: Obj) -> None:
    """Drop a gone pod's volumes and scratch space (secrets live there); keep its logs."""
    directory = pods_dir / pod_dir_name(pod)
    for sub in ("volumes", "tmp", "termination"):
        shutil.rmtree(directory / sub, ignore_errors=True)


class Sandbox:
    def __init__(self, node: NodeContext, pod: Obj) -> None:
        self.node = node
        self.dir = node.pods_dir / pod_dir_name(pod)
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.volume_dirs: dict[str, Path] = {}
        self.read_only_volumes: set[str] = set()

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def termination_file(self, container: str) -> Path:
        return self.dir / "termination" / container

    # --- API objects the pod refers to ---------------------------------------------

    async def _fetch(self, kind: str, names: set[str]) -> dict[str, Obj | None]:
        found: dict[str, Obj | None] = {}
        for name in sorted(names):
            found[name] = await self.node.kube.get_or_none(
                f"/api/v1/namespaces/{self.namespace}/{kind}/{name}"
            )
        return found

    async def env_context(self, pod: Obj) -> specs.EnvContext:
        configmap_names, secret_names = specs.referenced_objects(pod)
        return specs.EnvContext(
            pod=pod,
            configmaps=await self._fetch("configmaps", configmap_names),
            secrets=await self._fetch("secrets", secret_names),
            service_env=self.node.service_env,
            pod_ip=self.node.host_ip,
            host_ip=self.node.host_ip,
            node_allocatable=self.node.allocatable,
        )

    async def _tokens(self, pod: Obj, volume: Obj) -> dict[str, str]:
        tokens = {}
        account = pod["spec"].get("serviceAccountName") or "default"
        for source in specs.token_sources(volume):
            spec: Obj = {
                "expirationSeconds": source.expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            }
            if source.audience:
                spec["audiences"] = [source.audience]
            response = await self.node.kube.request(
                "POST",
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
                body={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": spec,
                },
            )
            tokens[source.path] = str(response["status"]["token"])
        return tokens

    # --- volumes ------------------------------------------------------------------

    async def prepare(self, pod: Obj) -> None:
        """Create the directory and every volume; raises while a referenced object is missing."""
        await asyncio.to_thread(_make_dirs, [self.dir / "tmp", self.dir / "termination"])
        ctx = await self.env_context(pod)
        for volume in pod["spec"].get("volumes") or []:
            self.volume_dirs[volume["name"]] = await self._materialise(pod, volume, ctx)
            if any(kind in volume for kind in READ_ONLY_VOLUME_KINDS):
                self.read_only_volumes.add(volume["name"])

    async def _materialise(self, pod: Obj, volume: Obj, ctx: specs.EnvContext) -> Path:
        target: Path = self.dir / "volumes" / str(volume["name"])
        if "hostPath" in volume:
            path = Path(str(volume["hostPath"]["path"]))
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                await asyncio.to_thread(_make_dirs, [path])
            return path
        tokens = await self._tokens(pod, volume) if specs.token_sources(volume) else {}
        files = specs.volume_files(volume, ctx, tokens)
        if files is None and "emptyDir" not in volume:
            # PVCs, CSI, ephemeral and image volumes have nothing to stand in for them.
            print(
                f"pod {self.namespace}/{self.name}: volume {volume['name']}: unsupported "
                "kind, mounted as an empty directory",
                flush=True,
            )
        await asyncio.to_thread(_write_files, target, files or {})
        return target

    def mount_path(self, container: Obj, path: str, env: Mapping[str, str]) -> Path | None:
        """The host path behind a path inside the container, if a volume mount covers it."""
        best: tuple[int, Path] | None = None
        for mount in container.get("volumeMounts") or []:
            mount_path = str(mount["mountPath"]).rstrip("/") or "/"
            if path != mount_path and not path.startswith(mount_path.rstrip("/") + "/"):
                continue
            base = self.volume_dirs.get(mount["name"])
            if base is None:
                continue
            sub = mount.get("subPath") or specs.expand(
                mount.get("subPathExpr") or "", specs.mapping_for(env)
            )
            host = (base / sub if sub else base) / path[len(mount_path) :].lstrip("/")
            if best is None or len(mount_path) > best[0]:
                best = (len(mount_path), host)
        return best[1] if best else None

    # --- one container instance ----------------------------------------------------

    def launch(self, container: Obj, env: Mapping[str, str]) -> Launch:
        """argv, environment and working directory for the container, with its resolved env."""
        image = specs.match_image(container.get("image", ""), self.node.image_map())
        # Docker's rules: command replaces the entrypoint (and drops the image's cmd).
        lookup = specs.mapping_for(env)
        command = [specs.expand(p, lookup) for p in container.get("command") or []]
        args = [specs.expand(p, lookup) for p in container.get("args") or []]
        argv = command + args if command else list(image.entrypoint) + (args or list(image.cmd))

        base = dict(self.node.base_env)
        path = image.env.get("PATH") or base.get("PATH") or os.defpath
        result = {**base, **image.env}
        result["PATH"] = os.pathsep.join([*image.path_prepend, path])
        result["TMPDIR"] = str(self.dir / "tmp")
        result["HOSTNAME"] = self.name
        result.update(env)
        for mount in container.get("volumeMounts") or []:
            host = self.mount_path(container, str(mount["mountPath"]), env)
            if host is not None:
                result[specs.env_name_for_path(VOLUME_ENV_PREFIX, mount["mountPath"])] = str(host)
        result[TERMINATION_ENV] = str(self.termination_file(container["name"]))
        cwd = self._cwd(container, image, env)
        mounts: tuple[BindMount, ...] = ()
        if self.node.mount_namespaces:
            keep = [
                self.dir,
                cwd,
                *map(Path, image.path_prepend),
                Path(sys.prefix),
                Path(sys.base_prefix),
                Path(sys.executable).parent,
                *(Path(p) for p in result.get("PYTHONPATH", "").split(os.pathsep) if p),
            ]
            if image.working_dir:
                keep.append(Path(image.working_dir))
            mounts = self.bind_mounts(container, env, keep)
        return Launch(argv=argv, env=result, cwd=cwd, mounts=mounts)

    def bind_mounts(
        self, container: Obj, env: Mapping[str, str], keep: Iterable[Path]
    ) -> tuple[BindMount, ...]:
        """The container's volume mounts as bind mounts, parents first.

        A mount over one of the ``keep`` paths (or an ancestor of one) or over a system
        directory would cut the process off from what it runs on; it is skipped, and the
        volume stays reachable through its PODTASK_NODE_VOLUME_* variable.
        """
        kept = {_resolved(p) for p in keep if p.is_absolute()}
        result: list[BindMount] = []
        for mount in container.get("volumeMounts") or []:
            target = os.path.normpath(str(mount["mountPath"]))
            source = self.mount_path(container, target, env)
            if source is None or not target.startswith("/"):
                continue
            resolved = _resolved(Path(target))
            hidden = [p for p in kept if p == resolved or resolved in p.parents]
            reason = ""
            if (
                target in SYSTEM_DIRS
                or str(resolved) in SYSTEM_DIRS
                or any(
                    str(resolved).startswith(tree + "/") or str(resolved) == tree
                    for tree in SYSTEM_TREES
                )
            ):
                reason = "a system directory"
            elif hidden:
                reason = f"it would hide {hidden[0]}"
            if reason:
                print(
                    f"pod {self.namespace}/{self.name}: container {container['name']}: "
                    f"volume {mount['name']} not mounted at {target} ({reason}); it is at "
                    f"${specs.env_name_for_path(VOLUME_ENV_PREFIX, target)}",
                    flush=True,
                )
                continue
            if not source.exists():
                # kubelet creates a missing subPath as a directory.
                source.mkdir(parents=True, exist_ok=True)
            read_only = bool(mount.get("readOnly")) or mount["name"] in self.read_only_volumes
            result.append(BindMount(source=source, target=target, read_only=read_only))
        result.sort(key=lambda m: m.target.rstrip("/").count("/"))
        return tuple(result)

    def _cwd(self, container: Obj, image: specs.ImageEnv, env: Mapping[str, str]) -> Path:
        working_dir = container.get("workingDir")
        if working_dir:
            mapped = self.mount_path(container, working_dir, env)
            if mapped is not None:
                mapped.mkdir(parents=True, exist_ok=True)
                return mapped
            if Path(working_dir).is_dir():
                return Path(working_dir)
        if image.working_dir:
            return Path(image.working_dir)
        return self.dir

    def termination_message(self, container: Obj, code: int, instance: Instance) -> str:
        """kubelet's: the file's last 4 KiB, else (FallbackToLogsOnError, failed) the log tail."""
        fallback = (
            container.get("terminationMessagePolicy") == "FallbackToLogsOnError" and code != 0
        )
        try:
            data = _read_tail(self.termination_file(container["name"]), MAX_TERMINATION_MESSAGE)
        except OSError:
            data = b""
        if data or not fallback:
            return data.decode(errors="replace")
        try:
            with instance.path.open("rb") as log:
                log.seek(instance.start)
                text = log.read((instance.end or instance.start) - instance.start)
        except OSError:
            return ""
        lines = text.splitlines(keepends=True)[-MAX_LOG_MESSAGE_LINES:]
        return b"".join(lines)[-MAX_LOG_MESSAGE_BYTES:].decode(errors="replace")


def _resolved(path: Path) -> Path:
    """The path with symlinks resolved as far as it exists (``/var/run/x`` -> ``/run/x``)."""
    return Path(os.path.realpath(path))


def _make_dirs(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def _write_files(target: Path, files: specs.VolumeFiles) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)


def _read_tail(path: Path, limit: int) -> bytes:
    # kubelet's tail.ReadAtMost: the last `limit` bytes.
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - limit))
        return handle.read()
