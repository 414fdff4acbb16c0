"""Container instances as local processes: spawn, reap, signal, memory limits.

Each container instance is the leader of its own session, which stands in for the
container's PID namespace: everything it spawns is found again by session id, killed
when the leader exits (as the kernel kills a namespace whose init dies) and counted
against the memory limit. Exits are noticed through pidfds on the event loop, so
hundreds of containers need no thread each.

A container with volume mounts starts through ``node_mountns.py``, which gives it its own
mount namespace with the volumes at their paths and then execs the command (same pid);
an exec failure comes back through a pipe, so it is still a StartError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
MEMORY_SAMPLE_SECONDS = 0.15
MOUNTNS_SCRIPT = Path(__file__).with_name("node_mountns.py")
PROBE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class BindMount:
    """A host directory (or file) shown at ``target`` inside the container."""

    source: Path
    target: str
    read_only: bool = False

    def spec(self) -> dict[str, object]:
        return {"source": str(self.source), "target": self.target, "readOnly": self.read_only}


def mount_namespaces_available() -> str | None:
    """None if containers can get their own mount namespace here, else why not."""
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", str(MOUNTNS_SCRIPT), "--probe"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return repr(error)
    if result.returncode != 0:
        return result.stderr.strip() or f"probe exited with {result.returncode}"
    return None


def _sessions() -> Iterator[tuple[int, int]]:
    """(pid, session id) of every process; /proc is read directly because psutil's
    per-process objects would cost far more at a few samples per second."""
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            raw = (PROC / entry.name / "stat").read_bytes()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        # Zombies hold no memory and cannot be killed again; their reaper is elsewhere.
        if not fields or fields[0] in {b"Z", b"X"}:
            continue
        with contextlib.suppress(IndexError, ValueError):
            yield int(entry.name), int(fields[3])


def _peak_rss(pid: int) -> int:
    """VmHWM (bytes), so a spike between two samples still counts, as it would for a cgroup."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    peak = rss = 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return max(peak, rss)


def session_members(sid: int) -> list[int]:
    return [pid for pid, session in _sessions() if session == sid]


def exit_code(wait_status: int) -> int:
    """A runtime's exit code: 128 + signal number for a signal death."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Process:
    """One running container instance."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        loop: asyncio.AbstractEventLoop,
        exec_fd: int | None = None,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.oom_killed = False
        self.exited: asyncio.Future[int] = loop.create_future()
        # The exec failure reported by node_mountns.py (None: the command runs).
        self.exec_error: asyncio.Future[OSError | None] = loop.create_future()
        self._exec_fd = exec_fd
        self._exec_report = b""
        self._loop = loop
        if exec_fd is None:
            self.exec_error.set_result(None)
        else:
            os.set_blocking(exec_fd, False)
            loop.add_reader(exec_fd, self._read_exec_report)
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self.poll)

    def _read_exec_report(self) -> None:
        assert self._exec_fd is not None
        try:
            chunk = os.read(self._exec_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._exec_report += chunk
            return
        # EOF: the exec succeeded (close-on-exec) or the wrapper is gone.
        self._loop.remove_reader(self._exec_fd)
        os.close(self._exec_fd)
        self._exec_fd = None
        if not self.exec_error.done():
            self.exec_error.set_result(_exec_report(self._exec_report))

    def poll(self) -> None:
        """Reap the process if it has exited (called by the loop, or by the sampler)."""
        if self.exited.done():
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code = exit_code(status)
        # Reaped here, so Popen must not try again (and must not warn when collected).
        self.popen.returncode = code
        # The leader is gone: like a PID namespace losing its init, the rest die too.
        self.kill_session()
        self.exited.set_result(code)

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_session(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in session_members(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def stop(self, grace: float) -> int:
        """What a runtime's StopContainer does: SIGTERM the main process, SIGKILL after grace."""
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
            except TimeoutError:
                self.kill_session()
        return await self.exited


def _exec_report(data: bytes) -> OSError | None:
    if not data:
        return None
    try:
        report = json.loads(data)
        return OSError(int(report["errno"]), str(report["strerror"]), report.get("filename"))
    except (ValueError, KeyError, TypeError):
        return OSError(f"exec failed: {data[:200]!r}")


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    loop: asyncio.AbstractEventLoop,
    mounts: Sequence[BindMount] = (),
) -> Process:
    """Start argv in a new session with stdout and stderr appended to log_path.

    Raises OSError when the executable or working directory is missing (StartError).
    With ``mounts`` the process gets its own mount namespace; then a missing executable
    is only known once the wrapper tried to exec it: await ``Process.exec_error``.
    """
    command = list(argv)
    read_fd: int | None = None
    pass_fds: tuple[int, ...] = ()
    if mounts:
        read_fd, write_fd = os.pipe()
        pass_fds = (write_fd,)
        spec = json.dumps({"mounts": [m.spec() for m in mounts]})
        command = [
            sys.executable,
            "-I",
            "-S",
            str(MOUNTNS_SCRIPT),
            spec,
            str(write_fd),
            "--",
            *command,
        ]
    try:
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
            )
    except BaseException:
        if read_fd is not None:
            os.close(read_fd)
        raise
    finally:
        for fd in pass_fds:
            os.close(fd)
    return Process(popen, loop, read_fd)


class MemoryMonitor:
    """Samples each limited container's session RSS; over the limit -> SIGKILL (OOMKilled)."""

    def __init__(self) -> None:
        self._limits: dict[int, tuple[Process, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, process: Process, limit: int) -> None:
        self._limits[process.pid] = (process, limit)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._limits:
            await asyncio.sleep(MEMORY_SAMPLE_SECONDS)
            # Sampled off the loop: a /proc walk over many processes takes a few ms.
            usage = await asyncio.to_thread(self._sample, set(self._limits))
            for sid, (process, limit) in list(self._limits.items()):
                if not process.alive:
                    del self._limits[sid]
                elif usage.get(sid, 0) > limit:
                    process.oom_killed = True
                    process.kill_session()
                    del self._limits[sid]

    @staticmethod
    def _sample(sids: set[int]) -> dict[int, int]:
        usage: dict[int, int] = {}
        for pid, sid in _sessions():
            if sid in sids:
                usage[sid] = usage.get(sid, 0) + _peak_rss(pid)
        return usage

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
