"""``podtask-runner``: the entrypoint of every run pod."""

from __future__ import annotations

import sys


def main() -> int:
    print("podtask-runner: not implemented yet (operator core, issue 11)", file=sys.stderr)
    return 2
