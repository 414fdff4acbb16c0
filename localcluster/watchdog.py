"""Stop a cluster when the process that owns it dies.

Components run detached, so a test session killed without teardown (SIGKILL,
or SIGTERM from ``timeout``, which skips Python's finalizers) would leave
etcd, the API server and a tmpfs data dir behind for good. ``up(owner_pid=...)``
starts this beside them; it polls the owner and runs ``down()`` once it is gone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

from localcluster import controlplane

POLL_SECONDS = 1.0


def owner_alive(pid: int, create_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(
            abs(process.create_time() - create_time) < 0.5
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.watchdog")
    parser.add_argument("--owner-pid", type=int, required=True)
    parser.add_argument("--owner-create-time", type=float, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    while owner_alive(args.owner_pid, args.owner_create_time):
        time.sleep(POLL_SECONDS)
    print(f"owner {args.owner_pid} is gone; stopping the cluster", flush=True)
    controlplane.down(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
