"""Command lines, kubeconfigs and the on-disk layout of the local control plane."""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from localcluster import pki, procs

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_CIDR = "10.0.0.0/24"
LOOPBACK = "127.0.0.1"
CLUSTER_NAME = "podtask-local"

ETCD, APISERVER = "etcd", "kube-apiserver"
CONTROLLER_MANAGER, SCHEDULER = "kube-controller-manager", "kube-scheduler"


@dataclass(frozen=True)
class Options:
    """Tunables; the defaults give the Job controller its best settings for benchmarks."""

    concurrent_job_syncs: int = 50
    kube_api_qps: int = 200
    kube_api_burst: int = 400
    scheduler_qps: int = 200
    scheduler_burst: int = 400
    # Extra flags per component name (etcd, kube-apiserver, ...), appended last so
    # they override the defaults above.
    extra_args: Mapping[str, Sequence[str]] = field(default_factory=dict)
    start_timeout: float = 120.0


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def config(self) -> Path:
        return self.root / "config"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, user: pki.KeyPair, user_name: str) -> None:
    # Certificates are embedded so the file keeps working when copied elsewhere.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": b64(user.cert),
                    "client-key-data": b64(user.key),
                },
            }
        ],
        "contexts": [
            {"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user_name}}
        ],
        "current-context": CLUSTER_NAME,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def etcd_data_dir() -> Path:
    # etcd fsyncs its WAL constantly; tmpfs makes that free, and the data is
    # throw-away anyway.
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="podtask-etcd-", dir=parent))


def etcd_argv(bins: Path, data_dir: Path, client: int, peer: int) -> list[str]:
    client_url, peer_url = f"http://{LOOPBACK}:{client}", f"http://{LOOPBACK}:{peer}"
    return [
        str(bins / "etcd"),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(bins: Path, layout: Layout, etcd: int, port: int) -> list[str]:
    p = layout.pki
    return [
        str(bins / "kube-apiserver"),
        f"--etcd-servers=http://{LOOPBACK}:{etcd}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        # A loopback advertise address keeps startup independent of the host's
        # network; Endpoints reject loopback IPs, so the reconciler is off.
        f"--advertise-address={LOOPBACK}",
        "--endpoint-reconciler-type=none",
        f"--cert-dir={layout.root / 'apiserver-certs'}",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'client-ca.crt'}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        f"--service-account-issuer=https://{LOOPBACK}:{port}",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
    ]


def controller_manager_argv(
    bins: Path, layout: Layout, kubeconfig: Path, port: int, options: Options
) -> list[str]:
    p = layout.pki
    # No --authentication/--authorization-kubeconfig: delegated auth would want the
    # front-proxy CA the apiserver is not given, and the serving endpoints only
    # need to answer the always-allowed health and metrics paths.
    return [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--root-ca-file={p / 'serving-ca.crt'}",
        f"--service-account-private-key-file={p / 'sa.key'}",
        "--controllers=*",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        f"--concurrent-job-syncs={options.concurrent_job_syncs}",
        f"--kube-api-qps={options.kube_api_qps}",
        f"--kube-api-burst={options.kube_api_burst}",
    ]


def scheduler_argv(
    bins: Path, layout: Layout, kubeconfig: Path, port: int, options: Options
) -> list[str]:
    # The scheduler ignores its deprecated --kube-api-qps flag once a config file
    # exists, and a config file is the only non-deprecated way to raise it.
    config = layout.config / "kube-scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {
                    "kubeconfig": str(kubeconfig),
                    "qps": options.scheduler_qps,
                    "burst": options.scheduler_burst,
                },
                "leaderElection": {"leaderElect": False},
            }
        )
    )
    return [
        str(bins / "kube-scheduler"),
        f"--config={config}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
    ]


def node_argv(layout: Layout, name: str, node_options: Mapping[str, str]) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "localcluster.node",
        "--kubeconfig",
        str(layout.kubeconfig),
        "--state-dir",
        str(layout.root),
        "--name",
        name,
    ]
    for key, value in node_options.items():
        argv += [f"--{key.lstrip('-').replace('_', '-')}", str(value)]
    return argv


def node_env() -> dict[str, str]:
    env = procs.base_env()
    # localcluster is a dev-only package at the repo root, not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env
