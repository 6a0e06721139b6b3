"""The machine a benchmark ran on, for the JSON beside its figures.

`platform.processor()` is empty on most Linux systems, so the CPU's name is read from
/proc/cpuinfo (no `lscpu` subprocess needed); elsewhere it falls back to what platform knows.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name (`AMD EPYC 7B13`, ...), else platform's guess, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
