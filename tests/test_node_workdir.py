"""A reused worker's directory (`workdir.enter_worker_dir`) looks to each job as a fresh job directory would,
whether or not it was scanned again since the previous job."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispy_node import workdir

from waiting import wait_until


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[str]:
    cwd = os.getcwd()
    path = str(tmp_path / "cluster")
    os.mkdir(path)
    workdir.make_cluster_layout(path)
    (Path(path) / workdir.FILES / "depends.py").write_text("x = 1\n")
    yield path
    os.chdir(cwd)


def entries() -> dict[str, str]:
    """The job directory's entries: link targets, or what else each is."""
    return {e.name: os.readlink(e.path) if e.is_symlink() else "dir" if e.is_dir() else "file" for e in os.scandir(".")}


def test_each_job_finds_the_files_links_and_nothing_its_predecessor_left(cluster_dir: str) -> None:
    files = os.path.join(cluster_dir, workdir.FILES)
    workdir.enter_worker_dir(cluster_dir, "worker-1")
    assert entries() == {"depends.py": os.path.join(files, "depends.py")}
    # a job, right after its directory was made (within the same kernel tick, at this speed): its leftovers go
    Path("out.txt").write_text("left behind")
    os.mkdir("sub")
    os.unlink("depends.py")
    os.symlink("/", "elsewhere")
    workdir.enter_worker_dir(cluster_dir, "worker-1")
    assert entries() == {"depends.py": os.path.join(files, "depends.py")}


def test_an_unchanged_directory_is_not_scanned_and_a_later_change_is_seen(
    cluster_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = os.path.join(cluster_dir, workdir.FILES)
    workdir.enter_worker_dir(cluster_dir, "worker-1")  # made its links just now: too young to be trusted
    racy = int(workdir._Unchanged.RACY * 1e9)
    wait_until(lambda: max(os.stat(".").st_ctime_ns, os.stat(files).st_ctime_ns) < time.time_ns() - racy, 10,
               "the directories' last change to be older than the racy window")  # fmt: skip
    workdir.enter_worker_dir(cluster_dir, "worker-1")  # scans (nothing to do) and trusts what it saw
    scans = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scans.append(path) or real_scandir(path))
    workdir.enter_worker_dir(cluster_dir, "worker-1")
    assert scans == []
    Path("out.txt").write_text("left behind")
    Path(files, "sent.dat").write_bytes(b"a file send_file added")
    workdir.enter_worker_dir(cluster_dir, "worker-1")
    assert scans
    assert entries() == {"depends.py": os.path.join(files, "depends.py"), "sent.dat": os.path.join(files, "sent.dat")}
