"""Closing a cluster with many queued jobs, or an operator's cancel of it, does not stop the scheduler serving others.

A cluster's jobs queued for a node that never comes (its `nodes` name no
node has) are all cancelled by `close(terminate=True)`, a slice per loop turn:
every one of them ends (accounting, journal, its client told). Meanwhile another user's
program runs jobs on the one real node, in rounds, from before the big cluster
is filled until after it is gone. What that user relies on: every one
of its jobs ends Finished, once, and neither its link nor the node's was
dropped for silence while the big cluster went. The same holds when an
operator cancels the big cluster's jobs (`dispyadmin cancel --cluster`):
they end a slice per turn too (`--close-slice`), each Cancelled, once.
"""

from __future__ import annotations

import re

from procs import Cluster
from test_http_api import Http

#: the big cluster's jobs: enough that its end is a long batch, few enough for a quick test
BIG = 20_000

OTHER = """
import sys
from dispy_client import SharedJobCluster

def compute(i):
    import time
    time.sleep(0.02)
    return i * 2

import os
marker = sys.argv[1]
c = SharedJobCluster(compute, user="bob")
first = c.submit(-1)
print("first", first(), flush=True)
jobs = []
last_round = False
while not last_round:  # rounds of jobs until the test says the big cluster is gone, then one more
    last_round = os.path.exists(marker)
    jobs += [c.submit(len(jobs) + i) for i in range(20)]
    for job in jobs[-20:]:
        job()
ok = sum(1 for i, job in enumerate(jobs) if job.result == 2 * i and job.status == job.Finished)
print("finished", ok, "of", len(jobs), flush=True)
c.close()
"""

BIG_CLIENT = """
import sys
from dispy_client import SharedJobCluster

def compute(i):
    return i

n = int(sys.argv[1])
c = SharedJobCluster(compute, user="alice", nodes=["no-such-node"])
for i in range(n):
    c.submit(i)
while c.scheduler_status()["queued"] < n:
    import time; time.sleep(0.1)
print("queued", n, flush=True)
c.close(terminate=True)
print("closed", flush=True)
"""


def test_terminating_a_cluster_of_many_queued_jobs_keeps_other_users_and_nodes_served(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node(cpus=2)
    marker = cluster.workdir / "big-cluster-closed"
    other = cluster.client(OTHER, name="bob", args=[str(marker)])
    other.wait_for_line(r"^first -2$", timeout=60)
    big = cluster.client(BIG_CLIENT, name="alice", args=[str(BIG)])
    assert big.wait(180) == 0, cluster.describe()
    assert re.search(r"^queued \d+\nclosed$", big.stdout, re.M), cluster.describe()
    marker.touch()
    assert other.wait(120) == 0, cluster.describe()
    done = re.search(r"^finished (\d+) of (\d+)$", other.stdout, re.M)
    assert done and done.group(1) == done.group(2), cluster.describe()
    # neither peer was written off for silence, nor did either give the scheduler up
    assert "writing it off" not in scheduler.stderr, scheduler.stderr[-3000:]
    assert "closing the connection" not in other.stderr, other.stderr[-3000:]
    assert node.count(r"connected to ") == 1, node.describe()


BIG_CANCELLED = """
import sys, time
from dispy_client import SharedJobCluster

def compute(i):
    return i

n = int(sys.argv[1])
c = SharedJobCluster(compute, user="alice", nodes=["no-such-node"])
jobs = [c.submit(i) for i in range(n)]
while c.scheduler_status()["queued"] < n:
    time.sleep(0.1)
print("queued", n, flush=True)
for job in jobs:
    job()
print("ended", sum(1 for job in jobs if job.status == job.Cancelled), "cancelled of", n, flush=True)
c.close()
"""


def test_an_operators_cancel_of_a_cluster_of_many_queued_jobs_keeps_other_users_and_nodes_served(
    cluster: Cluster,
) -> None:
    scheduler = cluster.scheduler("--http-port", "0", "--close-slice", "500")
    http = Http(cluster, scheduler)
    node = cluster.node(cpus=2)
    marker = cluster.workdir / "big-cluster-cancelled"
    other = cluster.client(OTHER, name="bob", args=[str(marker)])
    other.wait_for_line(r"^first -2$", timeout=60)
    big = cluster.client(BIG_CANCELLED, name="alice", args=[str(BIG)])
    big.wait_for_line(r"^queued ", timeout=180)
    (cluster_id,) = [c["id"] for c in http.admin_json("clusters") if c["user"] == "alice"]
    assert f"{BIG} jobs of cluster" in http.admin("cancel", "--cluster", cluster_id).stdout
    assert big.wait(180) == 0, cluster.describe()
    assert f"ended {BIG} cancelled of {BIG}" in big.stdout, cluster.describe()
    marker.touch()
    assert other.wait(120) == 0, cluster.describe()
    done = re.search(r"^finished (\d+) of (\d+)$", other.stdout, re.M)
    assert done and done.group(1) == done.group(2), cluster.describe()
    # a slice of 500 per turn: the accounting log's one line per turn's cancelled jobs says so
    turns = re.findall(r"job_ends user=\"alice\".* count=(\d+) .*reason=\"cancelled by an administrator\"", scheduler.stderr)
    assert sum(map(int, turns)) == BIG and max(map(int, turns)) <= 500, turns
    assert "writing it off" not in scheduler.stderr, scheduler.stderr[-3000:]
    assert "closing the connection" not in other.stderr, other.stderr[-3000:]
    assert node.count(r"connected to ") == 1, node.describe()
