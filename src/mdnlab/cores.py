"""How many cores this process may use: the one count behind every thread and job setting."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; a Slurm task's allocation)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():  # unbound jobs see the whole node
        cores = min(cores, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return cores
