"""What this machine offers a new process: physical CPU cores and available memory, from psutil.

psutil reads both the same way on Linux, macOS and Windows (sysfs and /proc/meminfo exist only on Linux).
Loads nothing and starts nothing.
"""

from __future__ import annotations

import math
import os

import psutil


def physical_cores() -> int:
    """Physical cores this process may run on: llama.cpp's threads default. llama-cpp-python's own default,
    half the logical CPUs, is too low without SMT; all logical CPUs oversubscribe the cores with SMT.

    The cores are intersected with the CPU affinity (a container or `taskset`) by the machine's
    threads per core, since psutil tells the core count but not which logical CPUs share a core."""
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or logical
    try:
        allowed = len(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error, OSError):  # macOS has no affinity
        allowed = logical
    if allowed >= logical:
        return max(1, cores)
    threads_per_core = max(1, round(logical / cores))
    return max(1, min(cores, math.ceil(allowed / threads_per_core)))


def available_memory() -> int | None:
    """Memory this machine can give a new process now without swapping (psutil's `available`: MemAvailable
    on Linux, free + inactive on macOS); None when the system does not tell."""
    try:
        return int(psutil.virtual_memory().available)
    except (psutil.Error, OSError, RuntimeError):
        return None
