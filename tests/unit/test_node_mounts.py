"""Containers in their own mount namespace: volumes at their mountPath, exec errors, and
the mounts the sandbox refuses because they would hide the host paths a process needs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from localcluster import node_spec as specs
from localcluster.node_process import BindMount, mount_namespaces_available, spawn
from localcluster.node_sandbox import NodeContext, Sandbox

PY = sys.executable
WHY_NOT = mount_namespaces_available()
needs_mount_namespaces = pytest.mark.skipif(
    WHY_NOT is not None, reason=f"no mount namespaces here: {WHY_NOT}"
)


async def run(tmp_path: Path, argv: list[str], mounts: list[BindMount]) -> tuple[int, str]:
    process = spawn(
        argv,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        log_path=tmp_path / "c.log",
        loop=asyncio.get_running_loop(),
        mounts=mounts,
    )
    assert await asyncio.wait_for(process.exec_error, 10) is None
    code = await asyncio.wait_for(process.exited, 10)
    return code, (tmp_path / "c.log").read_text()


@needs_mount_namespaces
async def test_volume_is_at_its_mount_path_and_read_only(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "greeting").write_text("hello")
    target = tmp_path / "inside" / "etc" / "config"  # does not exist yet
    code = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(target)!r})\n"
        "print(p.joinpath('greeting').read_text())\n"
        "try:\n"
        "    p.joinpath('new').write_text('x')\n"
        "except OSError as e:\n"
        "    print('read-only', e.errno)\n"
    )
    status, log = await run(tmp_path, [PY, "-c", code], [BindMount(volume, str(target), True)])
    assert status == 0, log
    assert log.split() == ["hello", "read-only", "30"]  # EROFS
    # The mount lived in the container's namespace only; the host sees the empty mount point.
    assert target.is_dir() and list(target.iterdir()) == []
    assert not (volume / "new").exists()


@needs_mount_namespaces
async def test_nested_mounts_and_a_writable_file_mount(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "a").write_text("inner")
    single = tmp_path / "single.conf"
    single.write_text("one file")
    base = tmp_path / "root"
    code = (
        "import pathlib\n"
        f"b = pathlib.Path({str(base)!r})\n"
        "print(b.joinpath('data/sub/a').read_text())\n"
        "print(b.joinpath('app.conf').read_text())\n"
        "b.joinpath('data/written').write_text('w')\n"
    )
    mounts = [
        BindMount(outer, str(base / "data")),  # parents first, as the sandbox sorts
        BindMount(inner, str(base / "data" / "sub")),
        BindMount(single, str(base / "app.conf")),
    ]
    status, log = await run(tmp_path, [PY, "-c", code], mounts)
    assert status == 0, log
    assert log.split() == ["inner", "one", "file"]
    assert (outer / "written").read_text() == "w"  # writable: the volume itself changed


@needs_mount_namespaces
async def test_missing_executable_is_still_an_os_error(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    volume.mkdir()
    process = spawn(
        ["no-such-binary-here"],
        env={"PATH": str(tmp_path)},
        cwd=tmp_path,
        log_path=tmp_path / "c.log",
        loop=asyncio.get_running_loop(),
        mounts=[BindMount(volume, str(tmp_path / "m"))],
    )
    error = await asyncio.wait_for(process.exec_error, 10)
    assert isinstance(error, FileNotFoundError)
    assert str(error) == "[Errno 2] No such file or directory: 'no-such-binary-here'"
    assert await asyncio.wait_for(process.exited, 10) == 127


async def test_without_mounts_no_wrapper_runs(tmp_path: Path) -> None:
    process = spawn(
        [PY, "-c", "import os; print(os.getpid())"],
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
        log_path=tmp_path / "c.log",
        loop=asyncio.get_running_loop(),
    )
    assert process.exec_error.done() and process.exec_error.result() is None
    assert await asyncio.wait_for(process.exited, 10) == 0
    assert int((tmp_path / "c.log").read_text()) == process.pid


# --- which mounts the sandbox asks for -----------------------------------------------------


def sandbox(tmp_path: Path, volumes: dict[str, Path], read_only: set[str]) -> Sandbox:
    node = NodeContext(
        kube=cast(Any, None),
        node_name="n",
        pods_dir=tmp_path / "pods",
        image_map=lambda: [specs.ImageEnv(match="*", path_prepend=(str(tmp_path / "venv"),))],
        service_env={},
        allocatable={},
        monitor=cast(Any, None),
        mount_namespaces=True,
    )
    box = Sandbox(node, {"metadata": {"namespace": "ns", "name": "p", "uid": "u"}})
    box.volume_dirs.update(volumes)
    box.read_only_volumes.update(read_only)
    return box


def test_sandbox_mounts_parents_first_and_api_volumes_read_only(tmp_path: Path) -> None:
    dirs = {n: tmp_path / "pods" / "v" / n for n in ("token", "config", "scratch", "cache")}
    box = sandbox(tmp_path, dirs, read_only={"token", "config"})
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "volumeMounts": [
            {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "config", "mountPath": "/etc/app/"},
            {"name": "scratch", "mountPath": "/data/scratch/deeper"},
            {"name": "cache", "mountPath": "/data", "readOnly": True},
            {"name": "config", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        ],
    }
    launch = box.launch(container, {})
    assert [(m.target, m.read_only) for m in launch.mounts] == [
        ("/data", True),
        ("/etc/app", True),
        ("/etc/app.conf", True),
        ("/data/scratch/deeper", False),
        ("/var/run/secrets/kubernetes.io/serviceaccount", True),
    ]
    by_target = {m.target: m.source for m in launch.mounts}
    assert by_target["/etc/app.conf"] == dirs["config"] / "app.conf"
    assert by_target["/var/run/secrets/kubernetes.io/serviceaccount"] == dirs["token"]
    # The variables stay, for processes that look for them (and nodes without mounts).
    assert launch.env["PODTASK_NODE_VOLUME_ETC_APP"] == str(dirs["config"])


def test_sandbox_refuses_mounts_that_hide_what_the_process_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = {n: tmp_path / "pods" / "v" / n for n in ("a", "b", "c", "d", "e")}
    box = sandbox(tmp_path, dirs, read_only=set())
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "volumeMounts": [
            {"name": "a", "mountPath": "/etc"},  # a system directory
            {"name": "b", "mountPath": str(tmp_path)},  # the pod's own directory is below
            {"name": "c", "mountPath": str(tmp_path / "venv")},  # on PATH
            {"name": "d", "mountPath": "/proc/sys"},
            {"name": "e", "mountPath": "/srv/ok"},
        ],
    }
    launch = box.launch(container, {})
    assert [m.target for m in launch.mounts] == ["/srv/ok"]
    out = capsys.readouterr().out
    assert "not mounted at /etc (a system directory)" in out
    assert f"not mounted at {tmp_path} (it would hide" in out
    assert f"not mounted at {tmp_path / 'venv'} (it would hide" in out
    assert "not mounted at /proc/sys" in out


def test_no_mounts_without_mount_namespaces(tmp_path: Path) -> None:
    box = sandbox(tmp_path, {"a": tmp_path / "a"}, read_only=set())
    box.node = dataclasses.replace(box.node, mount_namespaces=False)
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "volumeMounts": [{"name": "a", "mountPath": "/srv/a"}],
    }
    launch = box.launch(container, {})
    assert launch.mounts == ()
    assert launch.env["PODTASK_NODE_VOLUME_SRV_A"] == str(tmp_path / "a")
