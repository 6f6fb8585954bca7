"""Silence without a restart: a stopped node, a stopped scheduler. Real processes, SIGSTOP and SIGCONT.

Every job appends its id to a file as it starts, so the test counts how
often each ran.
"""

from __future__ import annotations

import os
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
    import time
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(seconds)
    return i
"""

CLIENT = JOB + """
once = SharedJobCluster(compute, reentrant=False)
again = SharedJobCluster(compute, reentrant=True)
jobs = [once.submit_job_id(0, 0, RUNS, SECONDS), again.submit_job_id(1, 1, RUNS, SECONDS)]
for job in jobs:
    job()
    print("job", job.id, job.status, job.result, flush=True)
"""


def client_code(cluster: Cluster, seconds: float) -> str:
    return CLIENT.replace("RUNS", repr(str(cluster.workdir / "runs.txt"))).replace("SECONDS", str(seconds))


def runs(cluster: Cluster) -> Counter[int]:
    path = cluster.workdir / "runs.txt"
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


def test_a_node_written_off_but_back_within_its_grace_delivers_its_jobs_once(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node("--scheduler-grace", "120", cpus=2, heartbeat=0.5)
    client = cluster.client(client_code(cluster, 8))
    wait_until(lambda: len(runs(cluster)) == 2, what="both jobs running")
    os.kill(node.pid, signal.SIGSTOP)  # as a partition looks from the scheduler: silence
    try:
        scheduler.wait_for_line(r"dropping node node .*no report for", stream="stderr")
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert client.wait(90) == 0, cluster.describe()
    assert re.findall(r"^job (\d) (\d+) (\d)", client.stdout, re.M) == [("0", "11", "0"), ("1", "11", "1")], client.stdout
    assert runs(cluster) == Counter({0: 1, 1: 1})  # neither ran again: the node came back in time
    assert "still holds 2 jobs" in scheduler.stderr


def test_a_stopped_scheduler_does_not_blame_its_nodes_for_its_own_silence(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node(cpus=2, heartbeat=0.5)  # lost after 1.5 s of silence
    client = cluster.client(client_code(cluster, 6))
    wait_until(lambda: len(runs(cluster)) == 2, what="both jobs running")
    os.kill(scheduler.pid, signal.SIGSTOP)
    try:
        # the scenario itself, not a wait for a result: stopped longer than the node's 1.5 s window, shorter
        # than the 8 s after which the node gives up on the scheduler (4 of its 2 s heartbeats)
        time.sleep(4)
    finally:
        os.kill(scheduler.pid, signal.SIGCONT)
    scheduler.wait_for_line(r"the scheduler did not run for", stream="stderr")
    assert client.wait(90) == 0, cluster.describe()
    assert re.findall(r"^job (\d) (\d+) (\d)", client.stdout, re.M) == [("0", "11", "0"), ("1", "11", "1")], client.stdout
    assert runs(cluster) == Counter({0: 1, 1: 1})
    assert "dropping node" not in scheduler.stderr, scheduler.stderr
    assert "lost the scheduler" not in node.stderr, node.stderr  # one connection throughout

