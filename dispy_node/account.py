"""The accounts jobs run as: never root, and on a root node never one shared by two clusters.

A node started as root gives each cluster a uid of its own, from
`--job-uids FIRST-LAST` (default `DEFAULT_JOB_UIDS`), for its zygote (which
runs user code in `setup`) and its jobs, with a group of the same number and
no supplementary groups, as HTCondor's slot users do: jobs of different
clusters (and so of different users) cannot signal, trace or read one
another, nor move into one another's control groups. `--shared-run-as USER`
runs every cluster as that one account instead (their jobs then can reach one
another: the node warns at start). A node started as an ordinary user runs
them as itself; `--shared-run-as` must then name that same user or be left out.

The default range lies in what systemd's table of uids (systemd.io/UIDS-GIDS)
leaves unused, 1879048192-2147483647: above regular users (1000-60000),
systemd's dynamic service users (61184-65519), the uids shadow-utils hands
out for user namespaces (/etc/subuid: 100000 up to 600100000) and systemd's
container ranges (524288-1879048191), below systemd's foreign-image range
(2147352576-2147418111) and 2^31, where some programs misread uids.

A uid goes back to the pool when its cluster is gone from the node, and only
once nothing of it is left (`AccountPool.give_back`): no process runs as it
and it owns nothing in the shared temporary directories, where what it owns
is removed first, at any depth (not following symbolic links, not crossing
into other file systems). A uid that fails either test stays out of use, with
a log line, until the pool runs dry and it is looked at again. Uids a crashed
node left behind are looked at likewise when a node starts. (SysV IPC
objects and POSIX message queues it made are not looked for.)
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Container
from typing import NamedTuple

import psutil

logger = logging.getLogger(__name__)

#: what the runner's jobs run as, as root, when it is given no account (a root *daemon* always gives one)
DEFAULT_RUN_AS = "nobody"
#: the uids a root node gives its clusters unless told otherwise (see the module's docstring)
DEFAULT_JOB_UIDS = "2000000000-2000000999"
#: the largest uid (2**32 - 1 is "no uid" to the kernel's calls)
MAX_UID = 2**32 - 2
#: the most uids --job-uids may give
MAX_POOL = 1 << 20


class Account(NamedTuple):
    name: str
    uid: int
    gid: int

    @property
    def is_self(self) -> bool:
        return self.uid == os.getuid()


def myself() -> Account:
    me = pwd.getpwuid(os.getuid())
    return Account(me.pw_name, me.pw_uid, me.pw_gid)


def resolve(run_as: str | None) -> Account:
    """The account jobs will run as.

    Raises:
        ValueError: the user does not exist, is root, or differs from ours while we are not root.
    """
    if os.getuid() != 0:
        me = myself()
        if run_as not in (None, me.name, str(me.uid)):
            raise ValueError(f"--shared-run-as {run_as} needs a node started as root (it runs as {me.name})")
        return me
    name = run_as or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--shared-run-as: no user {name!r} on this machine") from None
    if entry.pw_uid == 0:
        raise ValueError("--shared-run-as: jobs never run as root; name an unprivileged account")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def cannot_run_python(acct: Account) -> str | None:
    """Why `acct` cannot start a zygote (this interpreter and dispy_node, as that user), or None.

    Checked once at start-up: an interpreter under a private home directory
    (pyenv under /root, say) would otherwise fail every cluster, one by one.
    """
    if acct.is_self:
        return None
    argv = [sys.executable, "-c", "import cloudpickle, dispy_node.zygote"]
    try:
        done = subprocess.run(
            argv, user=acct.uid, group=acct.gid, extra_groups=[], cwd="/", capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"account {acct.name} cannot run {sys.executable}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return f"account {acct.name} cannot run {sys.executable} with dispy_node: {last}"
    return None


def pool_for(job_uids: str | None, shared: str | None, as_self: bool) -> AccountPool | None:
    """The pool clusters take their uids from: as root, `--job-uids` or the default range; None where
    all jobs run as one account (`--shared-run-as`, `--jobs-as-self`, a node not run as root).

    Raises:
        ValueError: --job-uids together with one of those, or a range that is none.
    """
    one_account = os.getuid() != 0 or shared is not None or as_self
    if job_uids is not None and one_account:
        raise ValueError("--job-uids needs a node run as root, and neither --shared-run-as nor --jobs-as-self")
    return None if one_account else AccountPool.parse(job_uids or DEFAULT_JOB_UIDS)


class PoolExhausted(Exception):
    """Every uid of --job-uids serves a cluster already (or is kept out of use)."""


class AccountPool:
    """The uids of --job-uids: one per cluster at a time.

    `acquire` and `release` are quick and run on the event loop; `give_back`,
    `reclaim` and `survey` look at every process and walk the temporary
    directories, so they run in threads: a lock keeps the free list whole.
    """

    def __init__(self, first: int, last: int) -> None:
        if not 0 < first <= last <= MAX_UID:
            raise ValueError(f"--job-uids {first}-{last} is not a range of unprivileged uids")
        if last - first >= MAX_POOL:  # the free list holds every uid: 1-4294967294 would take tens of GB
            raise ValueError(f"--job-uids {first}-{last}: at most {MAX_POOL} uids (one per cluster loaded at once)")
        self.first, self.last = first, last
        self._free: deque[int] = deque(range(first, last + 1))
        self._held: set[int] = set()  # given back with something left: out of use until looked at again
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> AccountPool:
        """`"3000000-3000255"` → that pool. Raises ValueError."""
        first, sep, last = str(text).partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()):
            raise ValueError(f"--job-uids {text!r} is not FIRST-LAST (such as 3000000-3000255)")
        return cls(int(first), int(last))

    def __len__(self) -> int:
        return self.last - self.first + 1

    def sample(self) -> Account:
        """An account of the pool, for checks that hold for all of them (none has supplementary groups)."""
        return _account_of(self.first)

    def acquire(self, busy: set[int]) -> Account:
        """The least recently used free uid that no process runs as (`busy`: see `uids_in_use`), taken.

        Raises:
            PoolExhausted: none is free.
        """
        with self._lock:
            for _ in range(len(self._free)):
                uid = self._free.popleft()
                if uid not in busy:
                    return _account_of(uid)
                self._free.append(uid)
            held = f" ({len(self._held)} kept out of use for what they left: see the log)" if self._held else ""
        raise PoolExhausted(f"all {len(self)} uids of --job-uids {self.first}-{self.last} are in use{held}")

    @staticmethod
    def uids_in_use() -> set[int]:
        """The uids processes run as (real, effective or saved: a job left by a crashed node, say)."""
        return {uid for p in psutil.process_iter(["uids"]) if p.info["uids"] for uid in p.info["uids"]}

    def survey(self) -> set[int]:
        """Before `acquire` (in a thread): when no uid is free, the held ones are looked at again
        (`reclaim`); returns `uids_in_use()`."""
        with self._lock:
            dry = not self._free and bool(self._held)
            held = set(self._held)
        if dry:
            self.reclaim(held)
        return self.uids_in_use()

    def release(self, acct: Account) -> None:
        """Back to the free list as it is, not looked at: see `give_back`."""
        with self._lock:
            if self.first <= acct.uid <= self.last and acct.uid not in self._free:
                self._held.discard(acct.uid)
                self._free.append(acct.uid)

    def give_back(self, acct: Account) -> None:
        """A cluster's uid, once its cluster is gone: free again if nothing of it is left (see `reclaim`)."""
        if self.first <= acct.uid <= self.last:
            self.reclaim({acct.uid})

    def reclaim(self, uids: set[int] | None = None) -> None:
        """Removes what `uids` (default: the whole range) own in the shared temporary directories,
        and frees each that then owns nothing there and runs no process; the rest are held, each
        with a log line. Slow (every process, a walk of the directories): in a thread."""
        whole = range(self.first, self.last + 1)
        candidates = whole if uids is None else sorted(uid for uid in uids if uid in whole)
        running = self.uids_in_use()
        left = remove_files_of(whole if uids is None else uids)
        running |= self.uids_in_use()  # again: one may have started from a setuid file the walk removed
        with self._lock:
            for uid in candidates:
                if uid in running or uid in left:
                    if uid not in self._held:
                        why = "processes run as it" if uid in running else f"it still owns {', '.join(left[uid][:3])}"
                        logger.error("uid %d stays out of use: %s", uid, why)
                    self._held.add(uid)
                    if uid in self._free:
                        self._free.remove(uid)
                else:
                    self._held.discard(uid)
                    if uid not in self._free:
                        self._free.append(uid)
                        logger.debug("uid %d is free again", uid)


#: shared places where a uid's files would outlive its cluster and meet the uid's next holder
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")


def remove_files_of(uids: Container[int]) -> dict[int, list[str]]:
    """Removes whatever `uids` own in the shared temporary directories, at any depth: in directories
    of others too (a sticky one root made, say), and a directory of theirs with all in it (its owner
    could empty it anyway).

    Others may rename and replace entries of those directories while we walk
    them (root following a symbolic link swapped in would remove the wrong
    files), so every step is taken from a descriptor of the directory it is
    in: no symbolic link is followed, no path is looked up twice. The walk
    stays on each directory's file system, and goes no deeper than
    `MAX_DEPTH` into directories none of `uids` owns.

    Returns:
        By uid, what of it could not be removed.
    """
    left: dict[int, list[str]] = {}
    for top in SHARED_TMP:
        try:
            fd = os.open(top, _DIR_FLAGS)
        except OSError:
            continue
        try:
            _sweep(fd, top, os.fstat(fd).st_dev, uids, left, 0)
        finally:
            os.close(fd)
    return left


#: levels of others' directories searched for a uid's files; a job cannot make such a chain itself
MAX_DEPTH = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _sweep(dir_fd: int, path: str, device: int, uids: Container[int], left: dict[int, list[str]], depth: int) -> None:
    try:
        with os.scandir(dir_fd) as it:
            names = [entry.name for entry in it]
    except OSError:
        return
    for name in names:
        shown = os.path.join(path, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid in uids:
            logger.debug("removing %s, left by uid %d", shown, st.st_uid)
            failed = _remove(dir_fd, name, shown, st)
            if failed:
                left.setdefault(st.st_uid, []).extend(failed)
        elif stat.S_ISDIR(st.st_mode) and st.st_dev == device:
            if depth >= MAX_DEPTH:
                logger.warning("not searched for files of pool uids: below %s (over %d levels)", shown, MAX_DEPTH)
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                if os.path.samestat(os.fstat(fd), st):  # not swapped since we looked
                    _sweep(fd, shown, device, uids, left, depth + 1)
            finally:
                os.close(fd)


def _remove(dir_fd: int, name: str, shown: str, st: os.stat_result) -> list[str]:
    """Removes `name` in `dir_fd`, a directory with all in it; returns what could not be removed."""
    failed: list[str] = []

    def note(_func: object, where: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):  # `where` is relative to dir_fd
            failed.append(f"{os.path.join(os.path.dirname(shown), where)} ({exc_info[0].__name__})")

    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd, onerror=note)  # descriptor-based: follows no symbolic link
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except (OSError, RecursionError) as exc:  # a tree too deep to walk is a tree left
        failed.append(f"{shown} ({type(exc).__name__})")
    return failed


def _account_of(uid: int) -> Account:
    """The passwd entry's name and group where the uid has one, else `uid<N>` with a group of the same number."""
    try:
        entry = pwd.getpwuid(uid)
        return Account(entry.pw_name, uid, entry.pw_gid)
    except KeyError:
        return Account(f"uid{uid}", uid, uid)
