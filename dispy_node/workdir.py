"""Where a cluster's and a job's files live on the node, and who owns them.

Layout, under the node's `--work-dir` (0700, or 0711 when jobs run as another
account, so that account can reach its own directories but list nothing):

    <work_dir>/<cluster_id>/            0700, owned by the account jobs run as
        files/                          depends files and modules; setup's cwd; on sys.path
        jobs/<job_id>/                  0700: one job's cwd, with a symlink to everything in files/

A cluster directory belongs to one cluster, hence to one user: clusters never
share one. The daemon makes the cluster directory (it may need to `chown` it);
the zygote fills `files/`; each job process makes its own directory, so it is
owned by the job's account and costs the zygote nothing. Depends files are
symlinked, not copied: jobs of one cluster on one node share them, as they
share `setup`'s globals, and a job should write its outputs to new files.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: pathlib is 10-30 ms of a zygote's start, and it runs jobs without it
    from pathlib import Path

FILES = "files"
JOBS = "jobs"
TMP = "tmp"  # the cluster's $TMPDIR: its temporary files go with its directory


def prepare_cluster_dir(path: Path, uid: int, gid: int) -> None:
    """Makes an empty cluster directory (leftovers of a previous session go), owned by uid:gid."""
    if os.path.lexists(path):
        shutil.rmtree(path)
    path.mkdir(mode=0o700)
    if (uid, gid) != (os.getuid(), os.getgid()):
        os.chown(path, uid, gid)


def make_cluster_layout(cluster_dir: str) -> str:
    """Makes `files/`, `jobs/` and `tmp/` in a cluster directory; returns the files directory."""
    files = os.path.join(cluster_dir, FILES)
    os.mkdir(files, 0o700)
    os.mkdir(os.path.join(cluster_dir, JOBS), 0o700)
    os.mkdir(os.path.join(cluster_dir, TMP), 0o700)
    return files


def job_dir(cluster_dir: str, job_id: int) -> str:
    return os.path.join(cluster_dir, JOBS, str(job_id))


def enter_job_dir(cluster_dir: str, job_id: int) -> None:
    """In the job process: makes the job's directory, links what the cluster's directory holds, chdirs there.

    That is the depends files and modules, what `send_file` added, and what
    `setup` left in its working directory: as in dispy, where jobs run where
    setup ran.
    """
    path = job_dir(cluster_dir, job_id)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # a kept earlier run of the job left it
        pass
    with os.scandir(os.path.join(cluster_dir, FILES)) as entries:
        for entry in entries:
            link = os.path.join(path, entry.name)
            if not os.path.lexists(link):
                os.symlink(entry.path, link)
    os.chdir(path)


def enter_worker_dir(cluster_dir: str, name: str) -> None:
    """In a reused worker, before each job: its directory, made once, as a fresh job directory would be.

    Links to what `files/` holds now, and nothing a previous job left there
    (removed): one directory per worker instead of a `mkdir` and an `rmtree`
    per job, which cost milliseconds on some filesystems. The two directory
    scans that takes are skipped while neither directory changed since the
    last job (`_Unchanged`): two `stat`s instead, for the many small jobs
    this mode is for.
    """
    path = os.path.join(cluster_dir, JOBS, name)
    try:
        os.chdir(path)  # made by an earlier job: one call instead of makedirs' checks
    except FileNotFoundError:
        os.makedirs(path, 0o700, exist_ok=True)
        os.chdir(path)
    files = os.path.join(cluster_dir, FILES)
    files_before = os.stat(files)
    if _unchanged.holds(path, files_before):
        return
    with os.scandir(files) as entries:
        wanted = {entry.name: entry.path for entry in entries}
    with os.scandir(".") as entries:
        for entry in entries:
            if entry.is_symlink() and wanted.get(entry.name) == os.readlink(entry.path):
                del wanted[entry.name]
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for entry_name, target in wanted.items():
        os.symlink(target, entry_name)
    _unchanged.note(path, files_before)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


class _Unchanged:
    """Whether a worker's directory and `files/` are as its last `enter_worker_dir` left them.

    A directory's ctime moves whenever an entry in it is made, removed or
    renamed, or the directory's own mode or owner changes: the same
    signature (device, inode, mtime, ctime) means the same entries, so the
    scans would find nothing to do. A regular file a job wrote in its own
    directory was made there, which moved that ctime. The clock files are
    stamped by is coarse (a kernel tick), so a change within the tick of the
    last look could leave the signature as it was: a signature younger than
    `RACY` seconds when noted is not trusted (the next job scans again), as
    git does with its index ("racily clean" entries).
    """

    RACY = 0.05  # seconds: well above a kernel tick (HZ 100: 10 ms)

    def __init__(self) -> None:
        self._seen: tuple[str, tuple[int, ...], tuple[int, ...]] | None = None

    def holds(self, path: str, files: os.stat_result) -> bool:
        return self._seen == (path, _signature(os.stat(".")), _signature(files))

    def note(self, path: str, files_before: os.stat_result) -> None:
        """After a scan: remember both signatures, unless one is too young to be trusted.

        `files_before`: `files/` as it was before it was scanned (a change during the scan is a change after).
        """
        here = os.stat(".")
        old_enough = time.time_ns() - int(self.RACY * 1e9)
        if here.st_ctime_ns < old_enough and files_before.st_ctime_ns < old_enough:
            self._seen = (path, _signature(here), _signature(files_before))
        else:
            self._seen = None


#: this process's (a worker's) last directory: a worker runs one job at a time
_unchanged = _Unchanged()


def remove_worker_dir(cluster_dir: str, name: str) -> None:
    shutil.rmtree(os.path.join(cluster_dir, JOBS, name), ignore_errors=True)


def write_file(directory: str, name: str, data: bytes, mode: int, replace: bool = False) -> None:
    """Writes a depends file; `name` must be a plain base name (it comes from a client).

    Raises:
        ValueError: a name with a path in it; OSError: the file exists (unless
            `replace`) or cannot be written.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"bad dependency file name {name!r}: a plain base name is required")
    path = os.path.join(directory, name)
    if replace and os.path.isfile(path) and not os.path.islink(path):
        os.unlink(path)  # jobs running with the old one keep it open; new ones get the new one
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), (mode & 0o777) or 0o600)


def remove_job_dir(cluster_dir: str, job_id: int) -> None:
    path = job_dir(cluster_dir, job_id)
    try:
        os.rmdir(path)  # empty (no depends files, nothing written): one call instead of rmtree's dozen
    except OSError:
        shutil.rmtree(path, ignore_errors=True)  # which follows no symlink a job may have put in its place


def seal(path: Path) -> None:
    """Makes a kept cluster directory the node's alone (0700): a later holder of its uid reaches nothing in it.

    Only the directory itself: what is inside keeps its owner, and no path in it is followed (the
    directory sits in the node's work dir, where jobs can replace nothing).
    """
    if os.path.isdir(path) and not os.path.islink(path):
        os.chown(path, os.getuid(), os.getgid(), follow_symlinks=False)
        os.chmod(path, 0o700)
