"""One line that names the machine, for every results file (benchmarks and ``ditaccel eval``)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess

import torch


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (lscpu), or what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "?"


def machine_description() -> str:
    """CPU/GPU model, cores, torch version and thread count, for results files."""
    cpu = cpu_model()
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    load = f"; load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} logical cores visible{gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{load}")
