"""Build etcd and the Kubernetes control plane from the pinned Go modules.

The binaries are cached outside the repository, keyed by every input that
changes them (Kubernetes, etcd and Go versions, and a hash of the wrapper
module), so a warm machine reuses them and a changed pin rebuilds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localcluster.gen_gomod import K8SBINS, read_versions

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("PODTASK_CACHE_DIR", str(Path(base) / "podtask")))


def go_version() -> str:
    out = subprocess.run(
        ["go", "env", "GOVERSION"], check=True, capture_output=True, text=True, env=go_env()
    )
    return out.stdout.strip()


def go_env() -> dict[str, str]:
    # GOTOOLCHAIN=local: a go line newer than the installed Go fails at once instead
    # of trying to download a toolchain; CGO_ENABLED=0 matches upstream's static builds.
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}


def wrapper_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(K8SBINS.rglob("*")):
        if path.is_file() and path.suffix in {".go", ".mod", ".sum", ".env"}:
            digest.update(path.relative_to(K8SBINS).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def bin_dir() -> Path:
    pins = read_versions()
    key = (
        f"k8s-{pins['KUBERNETES_VERSION']}-etcd-{pins['ETCD_VERSION']}"
        f"-{go_version()}-{wrapper_digest()}"
    )
    return cache_root() / key / "bin"


def is_built(directory: Path | None = None) -> bool:
    directory = directory or bin_dir()
    return all(os.access(directory / name, os.X_OK) for name in COMPONENTS)


def version_ldflags(kubernetes_version: str) -> str:
    """Stamp the version so /version and `kubectl version` report the real release."""
    major, minor = kubernetes_version.removeprefix("v").split(".")[:2]
    build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {
        "gitVersion": kubernetes_version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def build(force: bool = False) -> Path:
    target = bin_dir()
    if is_built(target) and not force:
        print(f"control plane binaries cached in {target}")
        return target
    pins = read_versions()
    staging = target.with_name("bin.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    print(
        f"building {', '.join(COMPONENTS)} ({pins['KUBERNETES_VERSION']}, etcd "
        f"{pins['ETCD_VERSION']}) into {target}; a cold build takes a while",
        flush=True,
    )
    started = time.monotonic()
    # One `go build` for all four mains so shared packages compile once; -p 2 keeps
    # peak memory near what two compile jobs need on a small machine.
    subprocess.run(
        [
            "go",
            "build",
            "-trimpath",
            "-p",
            str(os.cpu_count() or 2),
            "-ldflags",
            version_ldflags(pins["KUBERNETES_VERSION"]),
            "-o",
            str(staging) + "/",
            *[f"./cmd/{name}" for name in COMPONENTS],
        ],
        cwd=K8SBINS,
        env=go_env(),
        check=True,
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"built in {time.monotonic() - started:.0f}s", flush=True)
    return target


def main(argv: list[str]) -> int:
    directory = build(force="--force" in argv)
    if "--print-dir" in argv:
        print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
