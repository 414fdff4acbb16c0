"""Start and stop a real, loopback-only Kubernetes control plane.

etcd -> kube-apiserver -> kube-controller-manager + kube-scheduler -> node
agents, each a detached process with its log in ``<state>/logs`` and its pid in
``<state>/pids``. ``cluster.json`` records ports, argv and the etcd data dir so
``down()``, ``is_running()`` and ``restart()`` work from any later process.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from localcluster import build, components, pki, procs
from localcluster.components import (
    APISERVER,
    CONTROLLER_MANAGER,
    ETCD,
    LOOPBACK,
    REPO_ROOT,
    SCHEDULER,
    Layout,
    Options,
)

DEFAULT_STATE_DIR = REPO_ROOT / ".localcluster"
WATCHDOG = "watchdog"
__all__ = [
    "DEFAULT_STATE_DIR",
    "ClusterInfo",
    "ControlPlaneError",
    "Options",
    "down",
    "format_memory",
    "is_running",
    "memory",
    "restart",
    "up",
]


class ControlPlaneError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: Path
    server: str
    state_dir: Path
    nodes: tuple[str, ...] = ()
    # None when up() found the cluster already running.
    startup_seconds: float | None = None


# --- state ------------------------------------------------------------------


def _read_state(layout: Layout) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state


def _write_state(layout: Layout, state: Mapping[str, Any]) -> None:
    tmp = layout.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(layout.state_file)


def _info(layout: Layout, state: Mapping[str, Any], startup: float | None) -> ClusterInfo:
    return ClusterInfo(
        kubeconfig=layout.kubeconfig,
        server=str(state["server"]),
        state_dir=layout.root,
        nodes=tuple(state.get("nodes", ())),
        startup_seconds=startup,
    )


# --- ports and HTTP probes -------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports are distinct.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _admin_context(layout: Layout) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(layout.pki / "serving-ca.crt"))
    context.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    return context


def _insecure_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve with self-signed in-memory
    # certificates; their health endpoints carry nothing worth verifying.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _get(
    url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 0, b""


def _apiserver_ready(layout: Layout, server: str) -> bool:
    try:
        context = _admin_context(layout)
    except (OSError, ssl.SSLError):
        return False
    return _get(f"{server}/readyz", context)[0] == 200


def _api_json(layout: Layout, server: str, path: str) -> Any:
    status, body = _get(f"{server}{path}", _admin_context(layout))
    return json.loads(body) if status == 200 else None


def _nodes_ready(layout: Layout, server: str, names: Sequence[str]) -> bool:
    listing = _api_json(layout, server, "/api/v1/nodes")
    if not listing:
        return False
    ready = {
        item["metadata"]["name"]
        for item in listing.get("items", [])
        for cond in item.get("status", {}).get("conditions", [])
        if cond.get("type") == "Ready" and cond.get("status") == "True"
    }
    return set(names) <= ready


def _ready_check(layout: Layout, state: Mapping[str, Any], name: str) -> Callable[[], bool]:
    port = state["ports"].get(name)
    if name == ETCD:

        def etcd() -> bool:
            status, body = _get(f"http://{LOOPBACK}:{port}/health")
            return status == 200 and b'"true"' in body

        return etcd
    if name == APISERVER:
        return lambda: _apiserver_ready(layout, state["server"])
    if name in (CONTROLLER_MANAGER, SCHEDULER):
        return lambda: _get(f"https://{LOOPBACK}:{port}/healthz", _insecure_context())[0] == 200
    return lambda: _nodes_ready(layout, state["server"], [name])


def _wait(
    what: str,
    check: Callable[[], bool],
    *,
    layout: Layout,
    watched: Sequence[str],
    deadline: float,
) -> None:
    while not check():
        for name in watched:
            if procs.find(layout.pids, name) is None:
                raise ControlPlaneError(
                    f"{name} exited while waiting for {what}; last log lines:\n"
                    + procs.log_tail(layout.logs, name)
                )
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {name}:\n{procs.log_tail(layout.logs, name, 15)}" for name in watched
            )
            raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.1)


# --- public API -------------------------------------------------------------------


def is_running(state_dir: Path) -> bool:
    layout = Layout(Path(state_dir).resolve())
    state = _read_state(layout)
    if state is None:
        return False
    if any(procs.find(layout.pids, name) is None for name in state["components"]):
        return False
    return _apiserver_ready(layout, state["server"])


def up(
    state_dir: Path,
    *,
    nodes: int = 1,
    node_options: Mapping[str, str] | None = None,
    options: Options | None = None,
    owner_pid: int | None = None,
) -> ClusterInfo:
    """Start a cluster in ``state_dir`` (or return the one already running there).

    With ``owner_pid`` a watchdog stops the cluster once that process is gone,
    however it died; test sessions pass their own pid.
    """
    started = time.monotonic()
    layout = Layout(Path(state_dir).resolve())
    state = _read_state(layout)
    if state is not None and is_running(layout.root):
        return _info(layout, state, None)
    down(layout.root)
    options = options or Options()
    bins = build.bin_dir()
    if not build.is_built(bins):
        bins = build.build()
    try:
        state = _start(layout, bins, nodes, dict(node_options or {}), options, started, owner_pid)
    except BaseException:
        down(layout.root)
        raise
    elapsed = time.monotonic() - started
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in state["timings"].items())
    print(
        f"local control plane ready in {elapsed:.1f}s ({timings}); KUBECONFIG={layout.kubeconfig}",
        file=sys.stderr,
        flush=True,
    )
    return _info(layout, state, elapsed)


def _start(
    layout: Layout,
    bins: Path,
    nodes: int,
    node_options: Mapping[str, str],
    options: Options,
    started: float,
    owner_pid: int | None,
) -> dict[str, Any]:
    for directory in (layout.logs, layout.pids, layout.config):
        directory.mkdir(parents=True, exist_ok=True)
    certs = pki.generate(layout.pki)
    etcd_client, etcd_peer, api_port, kcm_port, sched_port = _free_ports(5)
    server = f"https://{LOOPBACK}:{api_port}"
    ca = certs.serving_ca.cert
    kcm_kubeconfig = layout.config / "kube-controller-manager.kubeconfig"
    sched_kubeconfig = layout.config / "kube-scheduler.kubeconfig"
    components.write_kubeconfig(layout.kubeconfig, server, ca, certs.admin, "admin")
    components.write_kubeconfig(
        kcm_kubeconfig, server, ca, certs.controller_manager, "system:kube-controller-manager"
    )
    components.write_kubeconfig(
        sched_kubeconfig, server, ca, certs.scheduler, "system:kube-scheduler"
    )

    node_names = [f"node-{i}" for i in range(1, nodes + 1)]
    etcd_data = components.etcd_data_dir()
    argv: dict[str, list[str]] = {
        ETCD: components.etcd_argv(bins, etcd_data, etcd_client, etcd_peer),
        APISERVER: components.apiserver_argv(bins, layout, etcd_client, api_port),
        CONTROLLER_MANAGER: components.controller_manager_argv(
            bins, layout, kcm_kubeconfig, kcm_port, options
        ),
        SCHEDULER: components.scheduler_argv(bins, layout, sched_kubeconfig, sched_port, options),
        **{name: components.node_argv(layout, name, node_options) for name in node_names},
    }
    for name, extra in options.extra_args.items():
        argv[name] = [*argv[name], *extra]
    state: dict[str, Any] = {
        "server": server,
        "etcd_data_dir": str(etcd_data),
        "ports": {
            ETCD: etcd_client,
            "etcd-peer": etcd_peer,
            APISERVER: api_port,
            CONTROLLER_MANAGER: kcm_port,
            SCHEDULER: sched_port,
        },
        # Start order; down() walks it backwards.
        "components": list(argv),
        "nodes": node_names,
        "argv": argv,
        "timings": {},
    }
    # Written before anything starts so a failed start can still be cleaned up.
    _write_state(layout, state)
    if owner_pid is not None:
        owner = psutil.Process(owner_pid)
        _spawn(
            layout,
            WATCHDOG,
            [
                sys.executable,
                "-m",
                "localcluster.watchdog",
                "--owner-pid",
                str(owner_pid),
                "--owner-create-time",
                str(owner.create_time()),
                "--state-dir",
                str(layout.root),
            ],
            env=components.node_env(),
            cwd=REPO_ROOT,
        )

    deadline = time.monotonic() + options.start_timeout
    mark = started

    def phase(label: str) -> None:
        nonlocal mark
        now = time.monotonic()
        state["timings"][label] = now - mark
        mark = now

    def wait(what: str, check: Callable[[], bool], watched: Sequence[str]) -> None:
        _wait(what, check, layout=layout, watched=watched, deadline=deadline)

    def ready(name: str) -> Callable[[], bool]:
        return _ready_check(layout, state, name)

    phase("prepare")
    _spawn(layout, ETCD, argv[ETCD])
    wait("etcd /health", ready(ETCD), [ETCD])
    phase(ETCD)
    _spawn(layout, APISERVER, argv[APISERVER])
    wait("kube-apiserver /readyz", ready(APISERVER), [ETCD, APISERVER])
    phase(APISERVER)
    _spawn(layout, CONTROLLER_MANAGER, argv[CONTROLLER_MANAGER])
    _spawn(layout, SCHEDULER, argv[SCHEDULER])
    controllers = [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER]
    wait(
        "controller-manager and scheduler /healthz",
        lambda: ready(CONTROLLER_MANAGER)() and ready(SCHEDULER)(),
        controllers,
    )
    # Pods are rejected by the ServiceAccount admission plugin until the
    # serviceaccount controller has created the namespace's default account.
    wait(
        "the default ServiceAccount",
        lambda: (
            _api_json(layout, server, "/api/v1/namespaces/default/serviceaccounts/default")
            is not None
        ),
        controllers,
    )
    phase("controllers")
    for name in node_names:
        _spawn(layout, name, argv[name], env=components.node_env(), cwd=REPO_ROOT)
    wait(
        f"nodes {', '.join(node_names)} Ready",
        lambda: _nodes_ready(layout, server, node_names),
        [*controllers, *node_names],
    )
    phase("nodes")
    _write_state(layout, state)
    return state


def _spawn(
    layout: Layout,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    procs.spawn(
        name,
        argv,
        logs_dir=layout.logs,
        pids_dir=layout.pids,
        env=env if env is not None else procs.base_env(),
        cwd=cwd or layout.root,
    )


def down(state_dir: Path) -> None:
    """Stop every component (node agents first, etcd last) and drop etcd's data."""
    layout = Layout(Path(state_dir).resolve())
    state = _read_state(layout)
    known = list(state["components"]) if state else []
    # Pid files without a state file come from an interrupted start; stop those too.
    strays = sorted(p.stem for p in layout.pids.glob("*.pid") if p.stem not in known)
    order = [*reversed(known), *(s for s in strays if s != WATCHDOG)]
    nodes = [n for n in order if n.startswith("node-")]
    # The watchdog goes first so it cannot start a second down() alongside this one.
    for name in [WATCHDOG, *nodes, *(n for n in order if n not in nodes)]:
        procs.stop(layout.pids, name)
    if state and state.get("etcd_data_dir"):
        shutil.rmtree(state["etcd_data_dir"], ignore_errors=True)


def restart(
    state_dir: Path,
    component: str,
    *,
    wait: bool = True,
    timeout: float = 120.0,
    grace: float = procs.STOP_GRACE_SECONDS,
) -> None:
    """Stop one component and start it again with the same command line (chaos tests).

    ``grace`` is how long SIGTERM gets before SIGKILL; 0 simulates a crash. With
    its clients still connected, kube-apiserver does not finish a graceful
    shutdown within the default grace, so expect a restart to take that long.
    """
    layout = Layout(Path(state_dir).resolve())
    state = _read_state(layout)
    if state is None or component not in state["argv"]:
        raise ControlPlaneError(f"no component {component!r} in {layout.root}")
    procs.stop(layout.pids, component, grace=grace)
    if component in state["nodes"]:
        _spawn(
            layout, component, state["argv"][component], env=components.node_env(), cwd=REPO_ROOT
        )
    else:
        _spawn(layout, component, state["argv"][component])
    if wait:
        ready = _ready_check(layout, state, component)
        _wait(
            f"{component} after restart",
            lambda: ready() and is_running(layout.root),
            layout=layout,
            watched=state["components"],
            deadline=time.monotonic() + timeout,
        )


def memory(state_dir: Path) -> dict[str, procs.Memory]:
    """Current and peak RSS of each running component."""
    layout = Layout(Path(state_dir).resolve())
    state = _read_state(layout)
    result: dict[str, procs.Memory] = {}
    for name in state["components"] if state else []:
        process = procs.find(layout.pids, name)
        if process is not None:
            try:
                result[name] = procs.memory(process)
            except psutil.Error:
                continue
    return result


def format_memory(usage: Mapping[str, procs.Memory]) -> str:
    mib = 1024 * 1024
    return ", ".join(
        f"{name} {m.rss / mib:.0f} MiB (peak {m.peak_rss / mib:.0f} MiB)"
        for name, m in usage.items()
    )
