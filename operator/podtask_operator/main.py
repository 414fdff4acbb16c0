"""``podtask-operator``: the kopf operator's entrypoint."""

from __future__ import annotations

import sys


def main() -> int:
    print("podtask-operator: not implemented yet (operator core, issue 11)", file=sys.stderr)
    return 2
