"""Per-job control groups: memory and process-count limits on a job's whole tree.

Theory of operation. RLIMIT_AS bounds each process of a job; a job that
forks many children, or children that each stay under the limit, escape it.
A control group bounds the job's whole tree, and no process of it can leave
(it is how the zygote finds a job's processes that shed their session and
environment: `members`). At start-up the daemon finds where it may make
groups (`prepare`). For each cluster it makes a group for the zygote
(`place`); for each job a group inside it with the job's limits (`make`),
handing only what a move needs to the account jobs run as: the job process
moves itself in before user code runs (`join`) but can neither raise its
limit nor move to the node's group. When the job's tree is gone the zygote
reads why it ended (`breach`) and the daemon removes the group (`remove`);
when the cluster goes, whatever is left in its group is killed (`purge`).

Two kinds of host:

- cgroup v1 (`memory` and `pids` hierarchies mounted and writable, as root):
  one directory per hierarchy under the node's own group: the zygote in
  `<own>/dispynode-<pid>/<cluster>`, each job in `<cluster>/job-<n>` (a job
  without a memory limit only in the pids hierarchy, which tracks its tree).
- cgroup v2 with `memory` and `pids` delegated to the node's group (systemd
  `Delegate=yes`, or the root of a container's cgroup namespace). A group
  that passes controllers on to its children may hold no process itself,
  and a process may move between two groups only if its mover may write the
  `cgroup.procs` of their common ancestor (whoever owns the process). Hence::

      <own>/                    +memory +pids for its children
        dispynode-<pid>/        +memory +pids
          daemon/               the daemon moves itself here
          jobs/                 +memory +pids
            <cluster>/          +memory +pids; cgroup.procs: the cluster's account
              zygote/           the daemon places the cluster's zygote here (`place`)
              job-<n>/          memory.max, pids.max; cgroup.procs: the cluster's account

  A job moves from `zygote/` to `job-<n>/` through its cluster's group, and
  can reach no other cluster's groups nor the node's own.

What nodes that died without cleaning up left (their groups are empty once
their jobs are gone) is swept at the next start.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from typing import NamedTuple

from . import fdio

logger = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids")
UNIFIED = "unified"  # the cgroup v2 hierarchy, as a key beside v1's controller names


class JobGroups(NamedTuple):
    """Where the node's job groups live."""

    parents: dict[str, str]  # hierarchy ("memory", "pids" or UNIFIED) -> directory clusters' groups are made in
    roots: tuple[str, ...] = ()  # the node's own directories: removed at exit, swept after a crash
    turned_on: tuple[str, ...] = ()  # v2: controllers the node made its own group pass on (off again at exit)

    def dirs(self, name: str) -> list[str]:
        """A group's directories, one per hierarchy (`name`: a cluster id, or `<cluster>/job-<n>`)."""
        return [os.path.join(parent, name) for parent in self.parents.values()]


def prepare(pid: int | None = None) -> tuple[JobGroups | None, str]:
    """Makes the node's group directories (owned by the node); under cgroup v2 the daemon moves into its leaf.

    Returns:
        (groups, "") when per-job limits can be set, else (None, why not).
    """
    pid = pid or os.getpid()
    mounts = _mounts()
    own = _own_groups()
    if all(c in mounts for c in CONTROLLERS):
        return _prepare_v1(mounts, pid)
    if UNIFIED in mounts:
        return _prepare_v2(mounts[UNIFIED], own[""], pid)
    return None, "neither writable cgroup v1 memory and pids hierarchies nor a cgroup v2 hierarchy"


def _prepare_v1(bases: dict[str, str], pid: int) -> tuple[JobGroups | None, str]:
    parents = {}
    try:
        for controller in CONTROLLERS:
            base = bases[controller]
            _sweep(base)
            path = os.path.join(base, f"dispynode-{pid}")
            _mkdir(path, exist_ok=True)
            parents[controller] = path
    except OSError as exc:
        release(JobGroups(parents, tuple(parents.values())))
        return None, f"cannot make cgroups: {exc}"
    return JobGroups(parents, tuple(parents.values())), ""


def _prepare_v2(base: str, own: str, pid: int) -> tuple[JobGroups | None, str]:
    missing = [c for c in CONTROLLERS if c not in _read(base, "cgroup.controllers").split()]
    if missing:
        return None, f"cgroup v2 group {own} was not delegated {' and '.join(missing)} (systemd: Delegate=yes)"
    if not all(os.access(os.path.join(base, f), os.W_OK) for f in ("cgroup.procs", "cgroup.subtree_control")):
        return None, f"cgroup v2 group {own} is not the node's to manage (systemd: Delegate=yes)"
    if own.endswith((".service", ".scope")) and not _delegated_by_systemd(base):
        logger.warning(
            "cgroup v2 group %s looks like a systemd unit's but not a delegated one; "
            "without Delegate=yes in the unit, systemd and the node both manage it", own
        )  # fmt: skip
    _sweep(base)
    node = os.path.join(base, f"dispynode-{pid}")
    jobs = os.path.join(node, "jobs")
    was_on = _read(base, "cgroup.subtree_control").split()
    groups = JobGroups({UNIFIED: jobs}, (node,), tuple(c for c in CONTROLLERS if c not in was_on))
    try:
        for path in (node, os.path.join(node, "daemon"), jobs):
            _mkdir(path, exist_ok=True)  # exist_ok: our pid's dead namesake's
        _write(os.path.join(node, "daemon", "cgroup.procs"), str(os.getpid()))
        for path in (base, node, jobs):
            _enable(path)
    except OSError as exc:
        release(groups)  # what we changed goes back, if we got as far as our leaf
        _rmdir_tree(node)  # and what we made, if not (the next node's sweep takes what stays)
        if exc.errno == errno.EBUSY:
            why = "holds other processes: the node needs one of its own (systemd: Delegate=yes)"
            return None, f"cgroup v2 group {own} {why}"
        return None, f"cannot make cgroups: {exc}"
    return groups, ""


def _mkdir(path: str, exist_ok: bool = False) -> None:
    """A group directory every account may pass through, whatever the umask (dispynode.service's
    UMask=0077 would make it root's alone): a job's account reaches its own group through the node's."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not exist_ok:
            raise
    os.chmod(path, 0o755)


def _enable(path: str, tries: int = 5) -> None:
    """Passes memory and pids on to the group's children.

    Right after a process moved out, the kernel may still see it for a moment
    (EBUSY): tried again briefly before concluding the group is shared.
    """
    for attempt in range(tries):
        try:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == tries - 1:
                raise
            time.sleep(0.01 * 2**attempt)


def _delegated_by_systemd(path: str) -> bool:
    """systemd marks the groups it delegates (Delegate=yes) with an extended attribute (v249 and later)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def release(groups: JobGroups) -> None:
    """Removes the node's group directories (empty once every job is gone).

    Under v2 it also gives its own group back as it found it: controllers no
    longer passed on (unless another node there still passes them), the daemon
    back in it, so that a node started there next (a restart under the same
    scope) can join it. A crashed node leaves that to systemd, which removes
    a stopped unit's groups, or to the next node's sweep.
    """
    if UNIFIED in groups.parents:
        node = groups.roots[0]
        base = os.path.dirname(node)
        if _mounts().get(UNIFIED) != os.path.join(node, "daemon"):
            return  # not the daemon that made them (a tool, a test): theirs to give back
        _rmdir_tree(os.path.join(node, "jobs"))
        others = [e for e in os.scandir(base) if e.is_dir() and e.path != node]
        steps = [(node, "cgroup.subtree_control", " ".join(f"-{c}" for c in CONTROLLERS))]
        if groups.turned_on and not others:  # another group there may use what we turned on
            steps.append((base, "cgroup.subtree_control", " ".join(f"-{c}" for c in groups.turned_on)))
        steps.append((base, "cgroup.procs", str(os.getpid())))
        for directory, name, text in steps:
            try:
                _write(os.path.join(directory, name), text)
            except OSError:  # still passed on there (EBUSY): we stay in our leaf; the next node sweeps it
                pass
    for path in groups.roots:
        _rmdir_tree(path)


def place(groups: JobGroups, cluster: str, pid: int, uid: int, gid: int) -> None:
    """In the daemon, before a zygote forks any job: makes the cluster's group and, under v2, puts the
    zygote in it, where its jobs (run as uid:gid) can move to their own groups and nowhere else.

    Raises:
        OSError: the group cannot be made or the zygote placed (its jobs could not join their groups).
    """
    purge(groups, cluster)  # a stale one of an earlier load must not be reused
    for hierarchy, path in zip(groups.parents, groups.dirs(cluster), strict=True):
        _mkdir(path)
        if hierarchy == UNIFIED:
            _enable(path)
            os.chown(os.path.join(path, "cgroup.procs"), uid, gid)  # the ancestor of its jobs' moves
            _mkdir(os.path.join(path, "zygote"))
            _write(os.path.join(path, "zygote", "cgroup.procs"), str(pid))
        else:  # v1 has no rule against it: the zygote in the cluster's group, its jobs below
            _write(os.path.join(path, "cgroup.procs"), str(pid))


def make(groups: JobGroups, name: str, memory: int | None, processes: int | None, uid: int, gid: int) -> None:
    """In the daemon: a fresh group per hierarchy for one job (`<cluster>/job-<n>`, inside its cluster's
    group), its limits set, joinable by the job's account.

    Raises:
        OSError: the group cannot be made (the job must not run unbounded).
    """
    for hierarchy, path in zip(groups.parents, groups.dirs(name), strict=True):
        _rmdir_tree(path)  # a stale one (counters and all) must not be reused
        if hierarchy == "memory" and memory is None:
            continue  # v1 tracks the tree by its pids group; a memory group costs, and bounds nothing here
        _mkdir(path)
        for knob, value in _limits(hierarchy, memory, processes):
            if value is not None and os.path.exists(os.path.join(path, knob)):
                _write(os.path.join(path, knob), str(value))
        for entry in ("cgroup.procs", "tasks"):
            if os.path.exists(os.path.join(path, entry)):
                os.chown(os.path.join(path, entry), uid, gid)


def _limits(hierarchy: str, memory: int | None, processes: int | None) -> list[tuple[str, int | None]]:
    if hierarchy == UNIFIED:  # a memory limit that swaps instead is no limit
        return [("memory.max", memory), ("memory.swap.max", memory and 0), ("pids.max", processes)]
    return [("memory.limit_in_bytes", memory)] if hierarchy == "memory" else [("pids.max", processes)]


def join(groups: JobGroups, name: str) -> None:
    """In the job process, before user code runs: moves itself into its groups.

    Raises:
        OSError: a group cannot be joined (the job must not run unbounded).
    """
    # v1's `tasks` with 0 moves only the calling thread (all there is of a fresh fork), which the kernel does
    # without its global lock on every process's membership; a pid written to `cgroup.procs` takes that lock,
    # which waits for an RCU grace period: 10 ms and more for one job in ten on a busy 2-core machine, where
    # `tasks` takes 0.6 ms at most. A v2 domain group has no such file.
    entry, me = ("cgroup.procs", str(os.getpid())) if UNIFIED in groups.parents else ("tasks", "0")
    joined = 0
    for path in groups.dirs(name):
        if os.path.isdir(path):  # the daemon made what the job's limits need, and always one that tracks it
            _write(os.path.join(path, entry), me)
            joined += 1
    if not joined:
        raise FileNotFoundError(f"no control group {name} to join")


def members(groups: JobGroups, name: str) -> list[int]:
    """The pids in the job's group: its whole tree, however its processes detached (empty once it is gone)."""
    tracking = groups.parents.get("pids") or groups.parents[UNIFIED]
    return [int(pid) for pid in _read(os.path.join(tracking, name), "cgroup.procs").split()]


def breach(groups: JobGroups, name: str) -> tuple[bool, bool]:
    """(a process was killed at the memory limit, a fork failed at the process limit), after the fact.

    A count of hitting the memory limit (v1 `memory.failcnt`, v2 `max` in
    `memory.events`) alone is not a breach: it also counts page cache
    reclaimed at the limit, which harms nobody. v1's `failcnt` stands in
    only on kernels without an `oom_kill` count.
    """
    if UNIFIED in groups.parents:  # oom: its own limit was reached (oom_kill alone counts any OOM killer's kills)
        path = os.path.join(groups.parents[UNIFIED], name)
        events = _read(path, "memory.events")
        return _count(events, "oom") > 0 and _count(events, "oom_kill") > 0, _count(
            _read(path, "pids.events"), "max"
        ) > 0
    memory_dir = os.path.join(groups.parents["memory"], name)
    oom = _read(memory_dir, "memory.oom_control")
    if "oom_kill " in oom:
        memory = _count(oom, "oom_kill") > 0
    else:
        failcnt = _read(memory_dir, "memory.failcnt").strip()
        memory = failcnt.isdigit() and int(failcnt) > 0
    return memory, _count(_read(os.path.join(groups.parents["pids"], name), "pids.events"), "max") > 0


def _count(text: str, key: str) -> int:
    """The value of `key N` in a cgroup events file (0 if absent)."""
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(key + " ")), 0)


def purge(groups: JobGroups, cluster: str) -> None:
    """Kills whatever is left in a cluster's groups (what its setup started, a job's process that
    shed its marks before its zygote died), then removes them."""
    for path in groups.dirs(cluster):
        _kill_members(path)
    remove(groups, cluster)


def remove(groups: JobGroups, name: str) -> None:
    """Removes a job's or a cluster's groups (its processes are gone, so they are empty)."""
    for path in groups.dirs(name):
        _rmdir_tree(path)


def _sweep(base: str) -> None:
    """Removes what nodes that died without cleaning up (SIGKILL, a crash) left: their groups, and
    whatever still runs in them (jobs whose zygote died with the node)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        owner = entry.name.removeprefix("dispynode-")
        if entry.name.startswith("dispynode-") and owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            _kill_members(entry.path)
            _rmdir_tree(entry.path)


def _kill_members(path: str, timeout: float = 5.0) -> None:
    """SIGKILLs every process in a group tree until it is empty (or `timeout` passes: a process in D state).

    First no fork may succeed in it (pids.max 0), and where the kernel has it (v2, 5.14+)
    `cgroup.kill` kills the lot at once, so that no fork bomb outruns the listing.
    """
    for directory, _, files in os.walk(path):
        for knob, value in (("pids.max", "0"), ("cgroup.kill", "1")):
            if knob in files:
                try:
                    _write(os.path.join(directory, knob), value)
                except OSError:
                    pass
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(pid) for directory, _, _ in os.walk(path) for pid in _read(directory, "cgroup.procs").split()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # gone already
                pass
        time.sleep(0.02)  # the kernel takes them out of the group as they die: nothing to wait on


def _rmdir_tree(path: str) -> None:
    # cgroup directories hold only kernel files: rmdir, children first, never unlink. A job's group has no
    # children, and is gone or going: one rmdir first, instead of a listing of its few dozen kernel files
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError:  # EBUSY: child groups (or members still)
        pass
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
    # one write(2), no text file object: a job process joins its group with this, each write a fresh fork's
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(directory: str, name: str) -> str:
    """A group file's text ("" if it cannot be read); without a text file object: the zygote reads a
    job's `cgroup.procs` as each job ends."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return fdio.read_to_end(fd).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _mounts() -> dict[str, str]:
    """hierarchy ("memory", "pids", UNIFIED) -> where this process's own group of it is mounted.

    A mount may show only a subtree of its hierarchy (a container's): the
    directory is the mount point plus the own group's path below that subtree.
    """
    found: dict[str, str] = {}
    own = _own_groups()
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, mount = right.split(), left.split()
        if len(fields) < 3 or len(mount) < 5 or fields[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = mount[3].rstrip("/"), mount[4]
        names = [UNIFIED] if fields[0] == "cgroup2" else [c for c in CONTROLLERS if c in fields[2].split(",")]
        for name in names:
            path = own.get("" if name == UNIFIED else name)
            if name in found or path is None or not (path + "/").startswith(root + "/"):
                continue
            if name == UNIFIED or os.access(point, os.W_OK):  # v2: the group's own files are checked
                found[name] = os.path.join(point, path.removeprefix(root).lstrip("/"))
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
