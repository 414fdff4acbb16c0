"""Container instances as local processes: exit codes, session kills, memory limits, logs."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from localcluster import node_logs
from localcluster.node import _log_container_id
from localcluster.node_process import MemoryMonitor, Process, session_members, spawn

PY = sys.executable


def start(tmp_path: Path, code: str, **env: str) -> Process:
    return spawn(
        [PY, "-c", code],
        env={"PATH": os.environ["PATH"], **env},
        cwd=tmp_path,
        log_path=tmp_path / "c.log",
        loop=asyncio.get_running_loop(),
    )


async def test_exit_code_and_log(tmp_path: Path) -> None:
    process = start(
        tmp_path, "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    )
    assert await asyncio.wait_for(process.exited, 10) == 3
    assert sorted((tmp_path / "c.log").read_text().split()) == ["err", "out"]


async def test_env_and_cwd_are_exactly_what_was_given(tmp_path: Path) -> None:
    process = start(tmp_path, "import os; print(sorted(os.environ)); print(os.getcwd())", ONLY="1")
    assert await asyncio.wait_for(process.exited, 10) == 0
    lines = (tmp_path / "c.log").read_text().splitlines()
    assert set(eval(lines[0])) - {"LC_CTYPE"} == {"PATH", "ONLY"}
    assert Path(lines[1]) == tmp_path


async def test_signal_death_is_128_plus_signal(tmp_path: Path) -> None:
    process = start(tmp_path, "import time; time.sleep(60)")
    await asyncio.sleep(0.3)
    assert await asyncio.wait_for(process.stop(grace=5), 10) == 143  # SIGTERM
    ignores = start(
        tmp_path,
        "import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
    )
    await _wait_for_text(tmp_path / "c.log", "up")
    began = time.monotonic()
    assert await asyncio.wait_for(ignores.stop(grace=0.5), 10) == 137  # SIGKILL after grace
    assert time.monotonic() - began < 5


async def test_leader_exit_kills_the_whole_session(tmp_path: Path) -> None:
    # The child outlives its parent unless the session is cleaned up, like a PID namespace.
    process = start(
        tmp_path,
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print('spawned', flush=True)",
    )
    assert await asyncio.wait_for(process.exited, 10) == 0
    await _eventually(lambda: not session_members(process.pid))
    assert session_members(process.pid) == []


async def test_memory_limit_kills_with_oom(tmp_path: Path) -> None:
    monitor = MemoryMonitor()
    try:
        hog = start(tmp_path, "import time; x = bytearray(200 * 1024 * 1024); time.sleep(30)")
        monitor.watch(hog, 64 * 1024 * 1024)
        small = start(tmp_path, "import time; time.sleep(1.5)")
        monitor.watch(small, 64 * 1024 * 1024)
        assert await asyncio.wait_for(hog.exited, 10) == 137
        assert hog.oom_killed
        assert await asyncio.wait_for(small.exited, 10) == 0
        assert not small.oom_killed
    finally:
        await monitor.close()


async def test_missing_executable_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn(
            ["no-such-binary-here"],
            env={"PATH": str(tmp_path)},
            cwd=tmp_path,
            log_path=tmp_path / "c.log",
            loop=asyncio.get_running_loop(),
        )


def _has_text(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def _wait_for_text(path: Path, text: str) -> None:
    await _eventually(lambda: _has_text(path, text))
    assert _has_text(path, text)


async def _eventually(check: Callable[[], bool], attempts: int = 200) -> None:
    for _ in range(attempts):
        if check():
            return
        await asyncio.sleep(0.05)


# --- logs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"x" * 100_000 + b"\nlast\n", 1, b"last\n"),
    ],
)
def test_tail_offset(tmp_path: Path, content: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"previous instance\n" + content)
    start = len(b"previous instance\n")
    offset = node_logs._tail_offset(path, start, path.stat().st_size, lines)
    assert path.read_bytes()[offset:] == expected


async def test_log_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "main.log"
    path.write_bytes(b"old 1\nold 2\nnew 1\nnew 2\nnew 3\n")
    split = len(b"old 1\nold 2\n")
    alive = {"running": True}

    def locate(namespace: str, pod: str, container: str, previous: bool) -> node_logs.LogTarget:
        if pod != "p":
            raise node_logs.LogError(404, f'pod "{pod}" cannot be found - no logs available')
        if previous:
            return node_logs.LogTarget(path, 0, split, lambda: False)
        return node_logs.LogTarget(path, split, None, lambda: alive["running"])

    async with TestClient(TestServer(node_logs.make_app(locate))) as client:

        async def get(query: str) -> tuple[int, str]:
            response = await client.get(f"/containerLogs/ns/p/main{query}")
            return response.status, await response.text()

        assert await get("") == (200, "new 1\nnew 2\nnew 3\n")
        assert await get("?previous=true") == (200, "old 1\nold 2\n")
        assert await get("?tailLines=1") == (200, "new 3\n")
        assert await get("?limitBytes=7") == (200, "new 1\nn")
        assert (await client.get("/containerLogs/ns/q/main")).status == 404

        follow = asyncio.create_task(get("?follow=true&tailLines=1"))
        await asyncio.sleep(0.5)
        with path.open("ab") as log:
            log.write(b"new 4\n")
        await asyncio.sleep(0.5)
        assert not follow.done()  # still following while the container runs
        alive["running"] = False
        assert await asyncio.wait_for(follow, 5) == (200, "new 3\nnew 4\n")


def test_which_instance_kubectl_logs_means() -> None:
    running = {
        "name": "c",
        "containerID": "id-2",
        "state": {"running": {}},
        "lastState": {"terminated": {"containerID": "id-1", "exitCode": 1}},
    }
    assert _log_container_id(running, "c", "p", previous=False) == "id-2"
    assert _log_container_id(running, "c", "p", previous=True) == "id-1"
    crash_looping = {
        "name": "c",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"containerID": "id-1", "exitCode": 1}},
    }
    assert _log_container_id(crash_looping, "c", "p", previous=False) == "id-1"
    fresh = {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}
    with pytest.raises(
        node_logs.LogError, match='container "c" in pod "p" is waiting to start: ContainerCreating'
    ):
        _log_container_id(fresh, "c", "p", previous=False)
    with pytest.raises(
        node_logs.LogError, match='previous terminated container "c" in pod "p" not found'
    ):
        _log_container_id(fresh, "c", "p", previous=True)
