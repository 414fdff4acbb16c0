"""``python -m localcluster up|down|status|kubeconfig``: the local dev cluster."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from localcluster import controlplane


def _state_dir(value: str | None) -> Path:
    if value:
        return Path(value)
    env = os.environ.get("PODTASK_LOCALCLUSTER_DIR")
    return Path(env) if env else controlplane.DEFAULT_STATE_DIR


def _node_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--node-option wants KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument("--state-dir", help="default: $PODTASK_LOCALCLUSTER_DIR or .localcluster/")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the control plane and node agents")
    start.add_argument("--nodes", type=int, default=1)
    start.add_argument(
        "--node-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to each node agent as --KEY VALUE (e.g. cpu=8)",
    )
    sub.add_parser("down", help="stop everything and drop etcd's data")
    sub.add_parser("status", help="show whether it runs, and each component's memory")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    args = parser.parse_args(argv)
    state_dir = _state_dir(args.state_dir).resolve()

    if args.command == "up":
        try:
            info = controlplane.up(
                state_dir, nodes=args.nodes, node_options=_node_options(args.node_option)
            )
        except controlplane.ControlPlaneError as error:
            print(f"error: {error}\nlogs: {state_dir / 'logs'}", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={shlex.quote(str(info.kubeconfig))}")
        return 0
    if args.command == "down":
        usage = controlplane.memory(state_dir)
        if usage:
            print(f"memory: {controlplane.format_memory(usage)}", file=sys.stderr)
        controlplane.down(state_dir)
        return 0
    if args.command == "status":
        running = controlplane.is_running(state_dir)
        print(f"{'running' if running else 'not running'} ({state_dir})")
        for name, mem in controlplane.memory(state_dir).items():
            mib = 2**20
            print(f"  {name:<24} rss {mem.rss / mib:6.0f} MiB  peak {mem.peak_rss / mib:6.0f} MiB")
        return 0 if running else 1
    print(state_dir / "kubeconfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
