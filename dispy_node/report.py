"""The resources a node advertises in each Heartbeat (psutil).

Every call here is a few system calls, cheap enough to run on the event loop
once per heartbeat. `cpu_percent(None)` compares with the previous call, so
`prime()` runs once at start-up to make the first report meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil


def prime() -> None:
    """Starts psutil's CPU-usage interval."""
    psutil.cpu_percent(None)


def total_cpus() -> int:
    return psutil.cpu_count() or 1


def avail(cpus: int, busy: int, work_dir: Path) -> dict[str, Any]:
    """The `Heartbeat.avail` mapping.

    Args:
        cpus: CPUs offered to the scheduler.
        busy: jobs running (or queued for a loading cluster) on this node.
        work_dir: where clusters' files go; its file system's free space is reported.
    """
    return {
        "cpus": cpus,
        "busy": busy,
        "cpu_percent": psutil.cpu_percent(None),
        "memory": psutil.virtual_memory().available,
        "disk": _free_disk(work_dir),
        "swap": psutil.swap_memory().percent,
    }


def _free_disk(path: Path) -> int:
    try:
        return int(psutil.disk_usage(str(path)).free)
    except OSError:  # work_dir removed under us: report no room rather than no heartbeat
        return 0
