"""``podtask-operator``: run the kopf operator.

Flags mirror the chart's values; each also reads a PODTASK_* variable so the
Deployment can set them either way.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="podtask-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n for n in os.environ.get("PODTASK_NAMESPACES", "").split(",") if n],
        help="watch this namespace (repeatable); default: the whole cluster",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("PODTASK_PEERING", ""),
        help="kopf peering name for a single active replica; empty runs standalone",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("PODTASK_LIVENESS", "http://0.0.0.0:8081/healthz"),
        help="liveness endpoint URL ('' to disable)",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
        '"message":"%(message)s"}',
    )
    # kopf logs every handled event at INFO; at thousands of runs that is noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.namespace:
        os.environ["PODTASK_NAMESPACES"] = ",".join(args.namespace)
    from podtask_operator import handlers, handlers_schedules  # noqa: F401  (registers handlers)

    asyncio.run(
        kopf.operator(
            namespaces=args.namespace,
            clusterwide=not args.namespace,
            standalone=not args.peering,
            peering_name=args.peering or None,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
