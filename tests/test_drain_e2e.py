"""SIGTERM drains: a `systemctl restart` of the scheduler loses nothing and kills no job.

Real scheduler, node and client processes. Every job appends its id and its
process id to a file as it starts, so the test sees how often each ran and
that a job running across the restart is the same process before and after.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

from procs import Cluster
from waiting import wait_until

JOB = """
import sys, time
from dispy_client import SharedJobCluster

def compute(i, path, seconds):
    import os, time
    with open(path, "a") as f:
        f.write(f"{i} {os.getpid()}\\n")
    time.sleep(seconds)
    return i
"""


def starts(cluster: Cluster) -> list[tuple[int, int]]:
    """(job id, pid) of every start, in order."""
    path = cluster.workdir / "runs.txt"
    text = path.read_text() if path.exists() else ""
    return [(int(i), int(pid)) for i, pid in (line.split() for line in text.splitlines() if line.strip())]


def test_sigterm_with_running_jobs_tells_peers_it_restarts_and_every_job_ends_once(cluster: Cluster) -> None:
    state = str(cluster.workdir / "scheduler-state")
    scheduler = cluster.scheduler("--state-dir", state)
    node = cluster.node(cpus=4)
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
once = SharedJobCluster(compute, reentrant=False)
again = SharedJobCluster(compute, reentrant=True)
jobs = [c.submit_job_id(i, i, {str(runs_file)!r}, 3) for i in range(12) for c in [once if i % 2 else again]]
for job in jobs:
    job()
    print("job", job.id, job.status, job.result, flush=True)
once.close()
again.close()
"""
    )
    wait_until(lambda: len(starts(cluster)) >= 4, what="four jobs running")
    running = {i: pid for i, pid in starts(cluster)}
    port = cluster.address.rsplit(":", 1)[1]
    stopped = time.monotonic()
    scheduler.stop(signal.SIGTERM)
    took = time.monotonic() - stopped
    assert scheduler.popen.returncode == 0, scheduler.describe()
    assert took < 15, f"the scheduler took {took:.1f} s to stop"  # bounded: STOP_FLUSH_TIMEOUT plus start-up slack
    assert "telling 3 peers it is a restart" in scheduler.stderr  # a node, and a connection per cluster
    node.wait_for_line(r"is restarting: scheduler .* stopping \(SIGTERM\)", stream="stderr")
    scheduler = cluster.scheduler("--port", port, "--state-dir", state, name="scheduler-2")
    assert client.wait(120) == 0, cluster.describe()
    results = re.findall(r"^job (\d+) (\d+) (\d+)$", client.stdout, re.M)
    assert sorted(int(i) for i, _, _ in results) == list(range(12)), client.stdout  # each job one result
    assert all(status == "11" and i == value for i, status, value in results), client.stdout  # all Finished
    ran = Counter(i for i, _ in starts(cluster))
    assert all(n == 1 for n in ran.values()), ran  # nothing ran twice: not even the reentrant ones
    assert all(pid == running[i] for i, pid in starts(cluster) if i in running)  # the same processes ran on
    assert "still holds" in scheduler.stderr  # the node reported its running jobs: adopted, not killed
    # the program heard nothing of it: no warning, no error, no resubmission
    assert not re.search(r"WARNING|ERROR|Traceback", client.stderr), client.stderr
    assert "lost the scheduler" not in node.stderr


def test_sigterm_with_no_peer_exits_at_once(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    stopped = time.monotonic()
    scheduler.stop(signal.SIGTERM)
    assert scheduler.popen.returncode == 0 and time.monotonic() - stopped < 10, scheduler.describe()
