"""Jobs sent to a node ahead of a free CPU (the scheduler's --prefetch), with real processes.

Each job appends its id to a file as it starts, so the test counts how often
each ran. A job runs long only the first time it starts (its id not yet in
the file): what the test waits for is the first run of each.
"""

from __future__ import annotations

import re
import signal
from collections import Counter

import pytest
from job_programs import COUNTING_JOB
from procs import Cluster

JOB = COUNTING_JOB + """
def wait_running(job, path):
    # until the job is Running for us and its own code has begun (not only its process)
    deadline = time.monotonic() + 60
    while job.status != JobStatus.RUNNING or str(job.id) not in open(path).read().split():
        assert time.monotonic() < deadline, f"job {job.id} is {name(job)}, never running"
        time.sleep(0.05)

def node_queued():
    nodes = cluster.scheduler_status()["nodes"]
    return sum(n.get("waiting", 0) for n in nodes.values())
"""

CANCEL = JOB + """
cluster = SharedJobCluster(compute, reentrant=False, isolation=ISOLATION)
long = cluster.submit_job_id(0, 0, RUNS, 60)
waiting = cluster.submit_job_id(1, 1, RUNS, 0)  # sent to the node ahead, behind the long one
wait_running(long, RUNS)
print("queued on the node", node_queued(), flush=True)
print("waiting is", name(waiting), flush=True)  # not Running while it waits there for the CPU
cluster.cancel(waiting)
waiting()
print("waiting ended", name(waiting), flush=True)
cluster.cancel(long)
long()
after = cluster.submit_job_id(2, 2, RUNS, 0)
print("after", name(after) if after() is None else after.result, flush=True)
cluster.close()
"""

LOSS = JOB + """
cluster = once = SharedJobCluster(compute, reentrant=False)
again = SharedJobCluster(compute, reentrant=True)
running = [once.submit_job_id(0, 0, RUNS, 60), again.submit_job_id(1, 1, RUNS, 60)]
for job in running:
    wait_running(job, RUNS)
ahead = [once.submit_job_id(2, 2, RUNS, 0), again.submit_job_id(3, 3, RUNS, 0)]  # on the node, for a free CPU
deadline = time.monotonic() + 60
while node_queued() < 2:
    assert time.monotonic() < deadline, "the jobs were not sent ahead to the node"
    time.sleep(0.05)
print("sent ahead", flush=True)
for job in running + ahead:
    job()
    print("job", job.id, name(job), flush=True)
"""


def runs(cluster: Cluster) -> Counter[int]:
    path = cluster.workdir / "runs.txt"
    return Counter(int(line) for line in path.read_text().split())


def code(cluster: Cluster, text: str, isolation: str = "fork") -> str:
    (cluster.workdir / "runs.txt").write_text("")
    return text.replace("RUNS", repr(str(cluster.workdir / "runs.txt"))).replace("ISOLATION", repr(isolation))


# in worker isolation the node sends a job waiting for a CPU on to its zygote, to take the running one's place
ISOLATIONS = pytest.mark.parametrize("isolation", ["fork", "worker"])


@ISOLATIONS
def test_a_cancelled_job_waiting_on_its_node_never_runs_and_ends_cancelled_once(cluster: Cluster, isolation: str) -> None:
    cluster.scheduler("--prefetch", "1")
    cluster.node(cpus=1)
    client = cluster.run_client(code(cluster, CANCEL, isolation), timeout=120)
    out = client.stdout
    assert "queued on the node 1" in out, out
    assert "waiting is CREATED" in out, out
    assert out.count("waiting ended") == 1 and "waiting ended CANCELLED" in out, out
    assert "after 2" in out, out  # its place on the node went to the next job
    assert runs(cluster) == Counter({0: 1, 2: 1})  # the cancelled one never started


def test_a_lost_nodes_jobs_sent_ahead_run_again_if_reentrant_and_else_are_never_run_twice(cluster: Cluster) -> None:
    cluster.scheduler("--prefetch", "1")
    first = cluster.node("--scheduler-grace", "0", cpus=2, name="first")
    client = cluster.client(code(cluster, LOSS))
    client.wait_for_line("sent ahead")
    first.kill9()
    cluster.node(cpus=2, name="second")
    assert client.wait(120) == 0, cluster.describe()
    ended = dict(re.findall(r"^job (\d) (\w+)", client.stdout, re.M))
    # 0 ran, 2 may have started an instant before the node died: neither is reentrant, neither runs again
    assert ended == {"0": "ABANDONED", "1": "FINISHED", "2": "ABANDONED", "3": "FINISHED"}, client.stdout
    counted = runs(cluster)
    assert counted[0] == 1 and counted[2] == 0 and counted[1] == 2 and counted[3] == 1, counted


DRAIN = JOB + """
cluster = SharedJobCluster(compute, reentrant=False, isolation=ISOLATION)
running = [cluster.submit_job_id(0, 0, RUNS, 3)]
wait_running(running[0], RUNS)
ahead = cluster.submit_job_id(1, 1, RUNS, 0)  # on the node, for its one CPU
deadline = time.monotonic() + 60
while node_queued() < 1:
    assert time.monotonic() < deadline, "the job was not sent ahead to the node"
    time.sleep(0.05)
print("sent ahead", flush=True)
for job in running + [ahead]:
    job()
    print("job", job.id, name(job), flush=True)
"""


@ISOLATIONS
def test_a_node_drained_by_its_operator_ends_the_jobs_sent_ahead_to_it_once_each(cluster: Cluster, isolation: str) -> None:
    """SIGUSR1 (systemctl kill -s USR1): the node takes no new jobs and exits once its own are done; a job that
    was waiting there for a CPU is not lost and not abandoned, though the job is not reentrant."""
    cluster.scheduler("--prefetch", "1")
    first = cluster.node(cpus=1, name="first")
    client = cluster.client(code(cluster, DRAIN, isolation))
    client.wait_for_line("sent ahead")
    first.popen.send_signal(signal.SIGUSR1)
    assert first.wait(60) == 0, cluster.describe()
    cluster.node(cpus=1, name="second")
    assert client.wait(120) == 0, cluster.describe()
    assert dict(re.findall(r"^job (\d) (\w+)", client.stdout, re.M)) == {"0": "FINISHED", "1": "FINISHED"}, client.stdout
    assert runs(cluster) == Counter({0: 1, 1: 1})
