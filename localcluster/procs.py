"""Detached component processes tracked by pid files.

Components outlive the Python process that started them (``python -m
localcluster up`` returns while the cluster keeps running), so everything is
found again through ``pids/<name>.pid``. A pid file records the process start
time as well, because after a reboot or a long idle period the bare pid may
belong to an unrelated process that must not be signalled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

STOP_GRACE_SECONDS = 15.0
DESCENDANT_GRACE_SECONDS = 5.0
KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Memory:
    rss: int
    peak_rss: int  # VmHWM: the high-water mark since the process started


def pid_file(pids_dir: Path, name: str) -> Path:
    return pids_dir / f"{name}.pid"


def log_file(logs_dir: Path, name: str) -> Path:
    return logs_dir / f"{name}.log"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    logs_dir: Path,
    pids_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> psutil.Process:
    logs_dir.mkdir(parents=True, exist_ok=True)
    pids_dir.mkdir(parents=True, exist_ok=True)
    with log_file(logs_dir, name).open("ab") as log:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        log.write(f"--- {stamp} {shlex.join(argv)}\n".encode())
        log.flush()
        # A new session keeps a terminal's Ctrl-C (aimed at the CLI or pytest)
        # from reaching the components; they are stopped only through down().
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    process = psutil.Process(popen.pid)
    pid_file(pids_dir, name).write_text(
        json.dumps({"pid": popen.pid, "create_time": process.create_time(), "argv": list(argv)})
    )
    return process


def find(pids_dir: Path, name: str) -> psutil.Process | None:
    """The live process behind a pid file, or None if it is gone or the pid was reused."""
    try:
        record = json.loads(pid_file(pids_dir, name).read_text())
        process = psutil.Process(int(record["pid"]))
        if abs(process.create_time() - float(record["create_time"])) > 0.5:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return process


def is_alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_dead(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    # psutil.wait_procs counts a zombie as alive; orphaned components are reaped
    # by whatever runs as PID 1, which may take seconds, yet a zombie holds no
    # ports and no files, so it is as good as gone.
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _terminate(processes: list[psutil.Process], grace: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    alive = _wait_dead(processes, grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    # Even with no grace, wait for SIGKILL to land: a restart must find the port free.
    _wait_dead(alive, KILL_WAIT_SECONDS)
    me = os.getpid()
    for process in processes:
        # Reap our own children (a test session that started the cluster) so no
        # zombies linger; anyone else's are PID 1's business.
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if process.ppid() == me:
                process.wait(timeout=KILL_WAIT_SECONDS)


def stop(pids_dir: Path, name: str, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM, wait, SIGKILL; then the same for any descendants left behind."""
    process = find(pids_dir, name)
    # A watchdog running down() must not signal itself half-way through.
    if process is not None and process.pid != os.getpid():
        try:
            # Collected before the parent exits: afterwards orphans are reparented
            # and can no longer be told apart from unrelated processes.
            descendants = process.children(recursive=True)
        except psutil.Error:
            descendants = []
        _terminate([process], grace)
        survivors = [p for p in descendants if is_alive(p)]
        if survivors:
            _terminate(survivors, DESCENDANT_GRACE_SECONDS)
    pid_file(pids_dir, name).unlink(missing_ok=True)


def memory(process: psutil.Process) -> Memory:
    rss = process.memory_info().rss
    peak = rss
    # psutil does not expose the high-water mark; Linux keeps it in /proc.
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return Memory(rss=rss, peak_rss=max(peak, rss))


def log_tail(logs_dir: Path, name: str, lines: int = 40) -> str:
    try:
        text = log_file(logs_dir, name).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    # Every component gets an explicit kubeconfig; an inherited one pointing at
    # some other cluster must not leak into client libraries that read it.
    env.pop("KUBECONFIG", None)
    return env
