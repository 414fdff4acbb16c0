"""Machine presets: the one table that sizes every run pod.

The names and sizes are Trigger.dev's (``docs/machines.mdx``), so a task
definition moves between the two without translation.  Limits are the preset;
requests default to the limits (a Guaranteed pod) and the operator may scale
them down by configured ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class MachinePreset:
    name: str
    cpu: float
    """vCPUs."""
    memory_gib: float

    @property
    def cpu_quantity(self) -> str:
        """CPU as a Kubernetes quantity: millicores, exact."""
        return f"{round(self.cpu * 1000)}m"

    @property
    def memory_quantity(self) -> str:
        """Memory as a Kubernetes quantity in MiB, exact for every preset."""
        return f"{round(self.memory_gib * 1024)}Mi"

    @property
    def memory_bytes(self) -> int:
        return round(self.memory_gib * 1024**3)


MachineName = Literal[
    "micro", "small-1x", "small-2x", "medium-1x", "medium-2x", "large-1x", "large-2x"
]

MACHINE_PRESETS: dict[str, MachinePreset] = {
    preset.name: preset
    for preset in (
        MachinePreset("micro", 0.25, 0.25),
        MachinePreset("small-1x", 0.5, 0.5),
        MachinePreset("small-2x", 1, 1),
        MachinePreset("medium-1x", 1, 2),
        MachinePreset("medium-2x", 2, 4),
        MachinePreset("large-1x", 4, 8),
        MachinePreset("large-2x", 8, 16),
    )
}
DEFAULT_MACHINE: MachineName = "small-1x"


def next_larger(name: str) -> str | None:
    """The next preset up by memory (then CPU), for an OOM retry; None at the top."""
    current = MACHINE_PRESETS[name]
    bigger = sorted(
        (
            p
            for p in MACHINE_PRESETS.values()
            if (p.memory_gib, p.cpu) > (current.memory_gib, current.cpu)
        ),
        key=lambda p: (p.memory_gib, p.cpu),
    )
    return bigger[0].name if bigger else None
