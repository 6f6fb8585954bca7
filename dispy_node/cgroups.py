"""Per-job control groups: memory and process-count limits on a job's whole tree.

Theory of operation. RLIMIT_AS bounds each process of a job; a job that
forks many children, or children that each stay under the limit, escape it.
A control group bounds the job's whole tree. At start-up the daemon finds
where it may make groups (`prepare`): with cgroup v1 (this kind of host:
`memory` and `pids` hierarchies mounted and writable), one directory per
controller under its own group, `dispynode-<pid>`. For each job with a limit
the daemon makes the job's group and writes the limit (`make`), and hands
only the group's `cgroup.procs` to the account jobs run as: the job process
moves itself in before user code runs (`join`) but can neither raise its
limit nor move to the node's group. When the job's tree is gone the zygote reads why it ended
(`breach`) and the daemon removes the group (`remove`).

cgroup v2 (a unified hierarchy with `memory` and `pids` delegated, as under
systemd `Delegate=yes`) needs the daemon to move itself into a leaf and to
place each zygote in the jobs' subtree before its jobs can migrate; that is
not built yet, and `prepare` says so rather than pretending.
"""

from __future__ import annotations

import os
from typing import NamedTuple

CONTROLLERS = ("memory", "pids")


class JobGroups(NamedTuple):
    """Where jobs make their groups: controller -> parent directory (cgroup v1)."""

    parents: dict[str, str]

    def path(self, controller: str, name: str) -> str:
        return os.path.join(self.parents[controller], name)


def prepare(pid: int | None = None) -> tuple[JobGroups | None, str]:
    """Makes the node's group directories (owned by the node).

    Returns:
        (groups, "") when per-job limits can be set, else (None, why not).
    """
    mounts = _v1_mounts()
    own = _own_groups()
    if not all(c in mounts and c in own for c in CONTROLLERS):
        if "" in own and not mounts:
            return None, "cgroup v2 only: per-job groups need a delegated v2 subtree, which is not supported yet"
        return None, "no writable cgroup v1 memory and pids hierarchies"
    parents = {}
    try:
        for controller in CONTROLLERS:
            base = os.path.join(mounts[controller], own[controller].lstrip("/"))
            _sweep(base)
            path = os.path.join(base, f"dispynode-{pid or os.getpid()}")
            os.makedirs(path, exist_ok=True)
            parents[controller] = path
    except OSError as exc:
        release(JobGroups(parents))
        return None, f"cannot make cgroups: {exc}"
    return JobGroups(parents), ""


def release(groups: JobGroups) -> None:
    """Removes the node's group directories (empty once every job is gone)."""
    for path in groups.parents.values():
        _rmdir_tree(path)


def make(groups: JobGroups, name: str, memory: int | None, processes: int | None, uid: int, gid: int) -> None:
    """In the daemon: a fresh group per controller for one job, its limits set, joinable by the job's account.

    Raises:
        OSError: the group cannot be made (the job must not run unbounded).
    """
    limits = {"memory": ("memory.limit_in_bytes", memory), "pids": ("pids.max", processes)}
    for controller in CONTROLLERS:
        path = groups.path(controller, name)
        _rmdir_tree(path)  # a stale one (counters and all) must not be reused
        os.mkdir(path)
        knob, value = limits[controller]
        if value is not None:
            _write(os.path.join(path, knob), str(value))
        for entry in ("cgroup.procs", "tasks"):
            if os.path.exists(os.path.join(path, entry)):
                os.chown(os.path.join(path, entry), uid, gid)


def join(groups: JobGroups, name: str) -> None:
    """In the job process, before user code runs: moves itself into its groups.

    Raises:
        OSError: a group cannot be joined (the job must not run unbounded).
    """
    for controller in CONTROLLERS:
        _write(os.path.join(groups.path(controller, name), "cgroup.procs"), str(os.getpid()))


def breach(groups: JobGroups, name: str) -> tuple[bool, bool]:
    """(a process was killed at the memory limit, a fork failed at the process limit), after the fact.

    `memory.failcnt` alone is not a breach: it also counts page cache
    reclaimed at the limit, which harms nobody. It stands in only on kernels
    without an `oom_kill` count.
    """
    oom = _read(groups.path("memory", name), "memory.oom_control")
    kills = [int(line.split()[1]) for line in oom.splitlines() if line.startswith("oom_kill ")]
    if kills:
        memory = kills[0] > 0
    else:
        failcnt = _read(groups.path("memory", name), "memory.failcnt").strip()
        memory = failcnt.isdigit() and int(failcnt) > 0
    pids = _read(groups.path("pids", name), "pids.events")
    pid_max = next((int(line.split()[1]) for line in pids.splitlines() if line.startswith("max ")), 0)
    return memory, pid_max > 0


def remove(groups: JobGroups, name: str) -> None:
    """Removes the job's groups (its tree is gone, so they are empty)."""
    for controller in CONTROLLERS:
        _rmdir_tree(groups.path(controller, name))


def _sweep(base: str) -> None:
    """Removes what nodes that died without cleaning up (SIGKILL, a crash) left: their groups are empty now."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        owner = entry.name.removeprefix("dispynode-")
        if entry.name.startswith("dispynode-") and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            _rmdir_tree(entry.path)


def _rmdir_tree(path: str) -> None:
    # cgroup directories hold only kernel files: rmdir, children first, never unlink
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmdir_tree(entry.path)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read()
    except OSError:
        return ""


def _v1_mounts() -> dict[str, str]:
    """controller -> mount point of its cgroup v1 hierarchy."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if len(fields) < 3 or fields[0] != "cgroup":
                    continue
                options = fields[2]
                mount_point = left.split()[4]
                for controller in CONTROLLERS:
                    if controller in options.split(",") and os.access(mount_point, os.W_OK):
                        found[controller] = mount_point
    except OSError:
        pass
    return found


def _own_groups() -> dict[str, str]:
    """controller -> this process's group path ("" for the v2 unified entry)."""
    groups: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    groups[controller] = path
    except (OSError, ValueError):
        pass
    return groups

