"""What docs/operations.md tells an operator to do, done: back the state database up online and restore it."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

from procs import Cluster
from waiting import wait_until

FINISHED = """
from dispy_client import SharedJobCluster

def compute(n):
    return n

with SharedJobCluster(compute, user="alice") as cluster:
    print([job() for job in [cluster.submit(i) for i in range(2)]])
"""

#: submits and waits (the test kills it): its cluster then waits, detached, with its jobs queued
LEFT = """
import time
from dispy_client import SharedJobCluster

def compute(n):
    return n

cluster = SharedJobCluster(compute, user="bob")
for i in range(3):
    cluster.submit(i)
time.sleep(600)
"""


def backup(database: Path, copy: Path) -> None:
    """`sqlite3 DB ".backup COPY"`, as docs/operations.md says; SQLite's own backup API where there is no sqlite3."""
    if shutil.which("sqlite3"):
        subprocess.run(["sqlite3", str(database), f".backup {copy}"], check=True, timeout=60)
        return
    source, target = sqlite3.connect(database), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def test_a_backup_taken_while_the_scheduler_runs_restores_its_work_and_accounting(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node(name="n1")
    state = cluster.workdir / "scheduler-state"
    assert cluster.run_client(FINISHED, "alice").stdout.strip() == "[0, 1]"
    node.stop()
    wait_until(lambda: re.search(r"node n1 \(\S+\) disconnected", scheduler.stderr), what="the node gone")
    left = cluster.client(LEFT, "bob")

    def queued() -> int:
        db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0])
        finally:
            db.close()

    wait_until(lambda: queued() == 3, what="bob's three jobs journaled")
    left.stop(signal.SIGKILL)  # the program is gone; its cluster stays, detached
    copy = cluster.workdir / "backup.sqlite3"
    backup(state / "journal.sqlite3", copy)  # the scheduler runs on meanwhile
    scheduler.stop()

    restored = cluster.workdir / "restored-state"
    restored.mkdir(mode=0o700)
    shutil.copy(copy, restored / "journal.sqlite3")
    again = cluster.scheduler("--state-dir", str(restored), name="restored")
    again.wait_for_line(r"journal: restored 1 clusters, 3 jobs \(3 queued\)", stream="stderr")
    db = sqlite3.connect(f"file:{restored / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        ends = db.execute("SELECT user, status FROM job_ends ORDER BY job_id").fetchall()
    finally:
        db.close()
    assert ends == [("alice", "Finished"), ("alice", "Finished")]
    cluster.node(name="n2")  # and the restored work runs
    wait_until(lambda: again.stderr.count("job_end ") == 3, what="bob's jobs to run on the restored scheduler")
