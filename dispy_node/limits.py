"""A job's resource limits: where they come from, how they are set, how their breach is named.

Theory of operation. Three layers give a job its limits: the node's caps
(`dispynode --max-memory`, `--max-cpu-time`, `--max-job-time`,
`--max-open-files`), the cluster's defaults (`LoadCluster.options`) and the
job's own (`RunJob.options`, e.g. `{"timeout": S}` from
`submit(..., dispy_job_timeout=S)`). The job's value wins over the cluster's,
and neither may exceed the node's cap: a user may ask for less, never more.
The daemon merges them (`effective`) and sends the numbers to the zygote, so
no option ever needs unpickling. The job process calls `apply` before user
code runs; the zygote enforces the wall clock itself.

Option keys (all optional, positive numbers): `timeout` (wall-clock seconds),
`memory` (bytes of address space, and of the whole tree where the node has
cgroups), `cpu_time` (CPU seconds), `open_files`, `processes` (processes at
once in the job's tree; needs cgroups).
"""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from typing import Any, NamedTuple

from dispy_wire.limits import format_size

from . import NodeError

#: RLIMIT_CPU's hard limit is this much above the soft one: SIGXCPU first, SIGKILL if ignored
CPU_HARD_SLACK = 2


class BadOption(NodeError):
    """A cluster or job option the node cannot honour; the text says which and why."""


class Limits(NamedTuple):
    """One job's limits; None means unlimited. Travels to the zygote as a msgpack array."""

    memory: int | None = None  # bytes of address space (RLIMIT_AS)
    cpu_time: int | None = None  # CPU seconds (RLIMIT_CPU)
    wall: float | None = None  # seconds from fork to kill
    open_files: int | None = None  # RLIMIT_NOFILE
    processes: int | None = None  # processes at once in the job's tree (cgroup pids.max)

    def processes_text(self) -> str:
        assert self.processes is not None
        return f"process limit {self.processes} reached"

    def memory_text(self) -> str:
        assert self.memory is not None
        return f"memory limit {format_size(self.memory)} exceeded"

    def wall_text(self) -> str:
        assert self.wall is not None
        return f"wall-clock limit {self.wall:g} s exceeded"

    def open_files_text(self) -> str:
        assert self.open_files is not None
        return f"open files limit {self.open_files} reached"

    def cpu_text(self) -> str:
        assert self.cpu_time is not None
        return f"CPU time limit {self.cpu_time} s exceeded"


_KEYS = {"memory": "memory", "cpu_time": "cpu_time", "timeout": "wall", "open_files": "open_files", "processes": "processes"}


def effective(caps: Limits, cluster: Mapping[str, Any], job: Mapping[str, Any]) -> Limits:
    """Merges the node's caps with the cluster's and the job's options.

    Raises:
        BadOption: an option is not a positive number.
    """
    merged = caps._asdict()
    for key, field in _KEYS.items():
        asked = job.get(key, cluster.get(key))
        if asked is None:
            continue
        if isinstance(asked, bool) or not isinstance(asked, int | float) or not 0 < asked < math.inf:
            raise BadOption(f"option {key}={asked!r} is not a positive number")
        if field != "wall":
            asked = max(1, int(asked))
        cap = merged[field]
        merged[field] = asked if cap is None else min(cap, asked)
    return Limits(**merged)


def apply(limits: Limits) -> None:
    """Sets the rlimits in the job process (before user code runs). Only ever lowers them."""
    if limits.memory is not None:
        _lower(resource.RLIMIT_AS, limits.memory, limits.memory)
    if limits.cpu_time is not None:
        _lower(resource.RLIMIT_CPU, limits.cpu_time, limits.cpu_time + CPU_HARD_SLACK)
    if limits.open_files is not None:
        _lower(resource.RLIMIT_NOFILE, limits.open_files, limits.open_files)


def _lower(which: int, soft: int, hard: int) -> None:
    old_soft, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
        hard = min(hard, old_hard)
    resource.setrlimit(which, (min(soft, hard), hard))
