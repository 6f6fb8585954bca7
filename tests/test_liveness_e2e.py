"""Liveness with real processes: a scheduler, a node or a client that stops answering (SIGSTOP: the
silence of a partition, without leaving loopback) is noticed by the others within a few heartbeats,
and once it runs again (SIGCONT) or is restarted on its journal, every job gets exactly one result.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from procs import Cluster, Proc
from waiting import wait_until

#: 8 jobs of a few seconds each; the client prints each result as it gets it, then waits for nothing else
CLIENT = """
import logging, sys
from dispy_client import SharedJobCluster

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

def compute(i, path, seconds):
    import time
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(seconds)
    return i * 10

c = SharedJobCluster(compute)
jobs = [c.submit_job_id(i, i, sys.argv[1], float(sys.argv[2])) for i in range(8)]
print("submitted", flush=True)
for job in jobs:
    print("done", job.id, job(), job.status, flush=True)
c.close()
"""


def runs(cluster: Cluster) -> Counter[int]:
    path = cluster.workdir / "runs.txt"
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


FINISHED, ABANDONED = 11, 10


def results(client: Proc) -> dict[int, list[tuple[str, int]]]:
    """Job id -> [(result, status)] as the client got them."""
    out: dict[int, list[tuple[str, int]]] = {}
    for m in re.finditer(r"^done (\d+) (\S+) (\d+)$", client.stdout, re.M):
        out.setdefault(int(m.group(1)), []).append((m.group(2), int(m.group(3))))
    return out


def start_client(cluster: Cluster, seconds: float) -> Proc:
    client = cluster.client(CLIENT, args=[str(cluster.workdir / "runs.txt"), str(seconds)])
    client.wait_for_line("submitted", timeout=60)
    return client


def finish(cluster: Cluster, client: Proc, may_be_abandoned: frozenset[int] = frozenset()) -> dict[int, int]:
    """The client gets one terminal result per job, its own (or Abandoned, for `may_be_abandoned`),
    and no job ran twice; returns each job's status."""
    assert client.wait(120) == 0, cluster.describe()
    got = results(client)
    assert sorted(got) == list(range(8)) and all(len(r) == 1 for r in got.values()), cluster.describe()
    for i, [(value, status)] in got.items():
        ok = (value, status) == (str(i * 10), FINISHED) or (i in may_be_abandoned and status == ABANDONED)
        assert ok, f"job {i}: {value} {status}\n{cluster.describe()}"
    assert max(runs(cluster).values()) == 1, runs(cluster)
    return {i: status for i, [(_, status)] in got.items()}


@contextmanager
def stopped(proc: Proc) -> Iterator[float]:
    """SIGSTOPs `proc` (yields when), and SIGCONTs it on the way out, whatever happens."""
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)


def test_client_and_node_notice_a_stopped_scheduler_and_recover_when_it_resumes(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--heartbeat", "0.5")
    node = cluster.node(cpus=4)
    client = start_client(cluster, 4.0)
    wait_until(lambda: len(runs(cluster)) == 4, what="four jobs running")
    with stopped(scheduler) as since:
        client.wait_for_line(r"scheduler \S+ silent for [\d.]+ s .*closing the connection", timeout=60, stream="stderr")
        client_noticed = time.monotonic() - since
        node.wait_for_line(r"scheduler \S+ silent for [\d.]+ s .*closing the connection", timeout=60, stream="stderr")
        node_noticed = time.monotonic() - since
        # both keep trying: the node redials with backoff, the client reconnects
        node.wait_for_line(r"reconnecting in", timeout=60, stream="stderr")
    print(f"noticed a stopped scheduler (heartbeat 0.5 s) after: client {client_noticed:.1f} s, node {node_noticed:.1f} s")
    assert client_noticed < 30 and node_noticed < 30
    # the node closed its link, so the scheduler wrote off what ran there (not reentrant: Abandoned, never
    # run twice) unless it finished before; the jobs still queued run once the node is back
    running = frozenset(runs(cluster))
    finish(cluster, client, may_be_abandoned=running)
    assert "reconnected to the scheduler; cluster resumed" in client.stderr


def test_a_client_gets_all_results_from_a_scheduler_stopped_then_killed_and_restarted_on_its_journal(
    cluster: Cluster,
) -> None:
    state = str(cluster.workdir / "scheduler-state")
    scheduler = cluster.scheduler("--heartbeat", "0.5", "--state-dir", state)
    port = cluster.address.rsplit(":", 1)[1]
    cluster.node(cpus=4)
    client = start_client(cluster, 3.0)
    wait_until(lambda: len(runs(cluster)) == 4, what="four jobs running")
    with stopped(scheduler):
        client.wait_for_line(r"scheduler \S+ silent for", timeout=60, stream="stderr")
        scheduler.kill9()
    cluster.scheduler("--heartbeat", "0.5", "--port", port, "--state-dir", state, name="scheduler-2")
    finish(cluster, client)


def test_a_stopped_client_is_written_off_and_gets_its_results_when_it_resumes(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--heartbeat", "0.5")
    cluster.node(cpus=4)
    client = start_client(cluster, 1.0)
    with stopped(client) as since:
        scheduler.wait_for_line(
            r"client \S+ \(\S+\) silent for [\d.]+ s: writing it off \(its clusters wait", timeout=60, stream="stderr"
        )
        noticed = time.monotonic() - since
        wait_until(lambda: len(runs(cluster)) == 8, what="every job started while the client is stopped")
    print(f"scheduler wrote off a stopped client (its heartbeat 2 s) after {noticed:.1f} s")
    assert noticed < 40
    finish(cluster, client)
    assert re.search(r"lost the scheduler .*reconnecting", client.stderr), client.stderr
