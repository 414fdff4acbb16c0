"""Start a container's command in its own mount namespace, with its volumes at their paths.

    python -I -S node_mountns.py SPEC ERRFD -- ARGV...
    python -I -S node_mountns.py --probe

The node agent runs this as each container's first process (the session leader it
watches): it unshares the mount namespace, makes every mount private (so nothing it
mounts reaches the host), bind-mounts each volume directory at its ``mountPath`` (read-only
where asked), then execs ARGV in place, keeping the pid. SPEC is JSON:
``{"mounts": [{"source": ..., "target": ..., "readOnly": bool}]}``, parents first.

Mount points that do not exist are created on the host filesystem (an empty directory, or
an empty file for a file volume), as a container runtime creates them in the image's root.
A mount that fails is reported on stderr (the container's log) and skipped: the process
still finds the volume through ``PODTASK_NODE_VOLUME_<MOUNT_PATH>``. If exec fails, the
error goes to the pipe ERRFD as JSON ``{"errno", "strerror", "filename"}`` so the agent
reports a StartError exactly as when it spawns the command itself; a successful exec
closes the pipe (close-on-exec) with nothing written.

Standalone on purpose: ``-I -S`` and stdlib only, so starting it costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
EXEC_FAILED = 127


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare_private(libc: Any) -> None:
    """A new mount namespace whose mounts never propagate back to the host's."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / rprivate")


def bind(libc: Any, source: str, target: str, read_only: bool) -> None:
    if Path(source).is_dir():
        Path(target).mkdir(parents=True, exist_ok=True)
    elif not Path(target).exists():
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).touch()
    src, dst = os.fsencode(source), os.fsencode(target)
    _check(libc.mount(src, dst, None, MS_BIND | MS_REC, None), f"bind {source} at {target}")
    if read_only:
        # A bind mount takes MS_RDONLY only on a remount (mount(8) does the same).
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        _check(libc.mount(None, dst, None, flags, None), f"remount {target} read-only")


def probe() -> int:
    """Exit 0 if this process may unshare its mount namespace and bind-mount in it."""
    libc = _libc()
    try:
        unshare_private(libc)
        with tempfile.TemporaryDirectory() as scratch:
            source, target = Path(scratch) / "a", Path(scratch) / "b"
            source.mkdir()
            (source / "probe").write_text("ok")
            bind(libc, str(source), str(target), read_only=True)
            if (target / "probe").read_text() != "ok":
                raise OSError("the bind mount shows different contents")
            _check(libc.umount2(os.fsencode(target), 0), "umount")
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def run(spec: dict[str, Any], errfd: int, argv: list[str]) -> int:
    fcntl.fcntl(errfd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    libc = _libc()
    mounts = spec.get("mounts") or []
    if mounts:
        try:
            unshare_private(libc)
        except OSError as error:
            print(
                f"podtask-node: no mount namespace ({error}); volumes are only in "
                "$PODTASK_NODE_VOLUME_* ",
                file=sys.stderr,
                flush=True,
            )
            mounts = []
    for mount in mounts:
        try:
            bind(libc, str(mount["source"]), str(mount["target"]), bool(mount.get("readOnly")))
        except OSError as error:
            print(
                f"podtask-node: volume not mounted at {mount['target']}: {error}",
                file=sys.stderr,
                flush=True,
            )
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as error:
        # Named as Popen names it: the command as given, not the last PATH entry tried.
        report = {"errno": error.errno, "strerror": error.strerror, "filename": argv[0]}
        os.write(errfd, json.dumps(report).encode())
    return EXEC_FAILED


def main(args: list[str]) -> int:
    if args == ["--probe"]:
        return probe()
    if len(args) < 4 or args[2] != "--":
        print("usage: node_mountns.py SPEC ERRFD -- ARGV... | --probe", file=sys.stderr)
        return 2
    return run(json.loads(args[0]), int(args[1]), args[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
