"""The resources a node advertises in each Heartbeat (psutil).

Every call here is a few system calls, cheap enough to run on the event loop
once per heartbeat. `cpu_percent(None)` compares with the previous call, so
`prime()` runs once at start-up to make the first report meaningful.
"""

from __future__ import annotations

import socket
import time
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


def addresses() -> list[str]:
    """This host's IPv4 and IPv6 interface addresses."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                found.append(a.address.split("%", 1)[0])  # no IPv6 zone suffix
    return found


def _free_disk(path: Path) -> int:
    try:
        return int(psutil.disk_usage(str(path)).free)
    except OSError:  # work_dir removed under us: report no room rather than no heartbeat
        return 0


class LoadMeter:
    """The CPU load not caused by this node's jobs, in CPUs, between two calls of `outside()`.

    Ours is the CPU time of the daemon's whole process tree: live processes'
    own time, plus what reaped children left in their parent's `children_*`
    times (each zygote reaps its jobs, the daemon reaps zygotes). The
    machine's is psutil's busy time of all CPUs. The difference is someone
    else's: the machine's owner.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._last = (time.monotonic(), _busy_seconds(), self._ours())

    def outside(self) -> float:
        now, busy, ours = time.monotonic(), _busy_seconds(), self._ours()
        then, busy0, ours0 = self._last
        self._last = (now, busy, ours)
        if now <= then:
            return 0.0
        return max(0.0, (busy - busy0) - max(0.0, ours - ours0)) / (now - then)

    def _ours(self) -> float:
        total = 0.0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))
