"""The accounts jobs run as: never root.

A node started as root runs its zygotes (which run user code in `setup`) and
their jobs as `--run-as USER` (default `nobody`), with that user's primary
group and no supplementary groups. A node started as an ordinary user runs
them as itself; `--run-as` must then name that same user or be left out.

With `--job-uids FIRST-LAST` (root only) each cluster runs as a uid of its own
from that range instead, as HTCondor's slot users do: jobs of different
clusters (and so of different users) cannot signal, trace or read one
another, nor move into one another's control groups. A uid goes back to the
pool when its cluster is gone from the node, least recently used first, and
without what it left in the shared temporary directories. (SysV IPC objects
it made are not looked for.)
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections import deque
from typing import NamedTuple

import psutil

DEFAULT_RUN_AS = "nobody"


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
            raise ValueError(f"--run-as {run_as} needs a node started as root (it runs as {me.name})")
        return me
    name = run_as or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--run-as: no user {name!r} on this machine") from None
    if entry.pw_uid == 0:
        raise ValueError("--run-as: jobs never run as root; name an unprivileged account")
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


class PoolExhausted(Exception):
    """Every uid of --job-uids serves a cluster already."""


class AccountPool:
    """The uids of --job-uids: one per cluster at a time."""

    def __init__(self, first: int, last: int) -> None:
        if not 0 < first <= last:
            raise ValueError(f"--job-uids {first}-{last} is not a range of unprivileged uids")
        self.first, self.last = first, last
        self._free: deque[int] = deque(range(first, last + 1))

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
        for _ in range(len(self._free)):
            uid = self._free.popleft()
            if uid not in busy:
                return _account_of(uid)
            self._free.append(uid)
        raise PoolExhausted(f"all {len(self)} uids of --job-uids {self.first}-{self.last} are in use")

    @staticmethod
    def uids_in_use() -> set[int]:
        """The uids processes run as (a job left by a crashed node, say): slow, so apart from `acquire`,
        which must not run in two threads at once."""
        return {uid for p in psutil.process_iter(["uids"]) if p.info["uids"] for uid in p.info["uids"][:2]}

    def release(self, acct: Account) -> None:
        if self.first <= acct.uid <= self.last and acct.uid not in self._free:
            self._free.append(acct.uid)


#: shared places where a uid's files would outlive its cluster and meet the uid's next holder
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")


def remove_files_of(uid: int) -> None:
    """Removes what a pool uid left in the shared temporary directories (top level: all it could create)."""
    for top in SHARED_TMP:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # fd-based on Linux: no symlink in it is followed
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


def _account_of(uid: int) -> Account:
    """The passwd entry's name and group where the uid has one, else `uid<N>` with a group of the same number."""
    try:
        entry = pwd.getpwuid(uid)
        return Account(entry.pw_name, uid, entry.pw_gid)
    except KeyError:
        return Account(f"uid{uid}", uid, uid)
