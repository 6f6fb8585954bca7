"""Two schedulers on one PostgreSQL: one leads, one stands by and takes over; nothing is lost or run twice.

Real `dispyscheduler`, `dispynode` and client processes, and a real
PostgreSQL server (tests/pg.py). Nodes and clients are given both
schedulers' addresses and follow the leader. Every job appends its id to a
file as it starts, so the tests count how often each one ran (jobs are not
reentrant: at most once), and each client prints every result it gets, so
they count that every job reached the user exactly once.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from dispy_node.discovery import leader_of
from dispy_wire.dialing import another_leads, who_leads
from pg import PgServer
from procs import Cluster, Proc
from waiting import wait_until

LEASE = "2"

#: a client of `n` jobs of `seconds` each, printing each result as it comes
CLIENT = """
import sys
from dispy_client import SharedJobCluster

def compute(i, path, seconds):
    import time
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(seconds)
    return i

name, n, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
cluster = SharedJobCluster(compute, reentrant=False, user=name)
jobs = [cluster.submit_job_id(i, i, path, seconds) for i in range(n)]
for job in jobs:
    job()
    print("done", job.id, job.status, job.result, flush=True)
cluster.close()
print("all done", flush=True)
"""


def start_scheduler(cluster: Cluster, dsn: str, name: str, *args: str) -> tuple[Proc, str]:
    """A scheduler on the shared database; returns it and the address it listens on (leading or not)."""
    proc = cluster.scheduler("--state", dsn, "--lease", LEASE, *args, name=name)
    return proc, cluster.address


def leads(proc: Proc) -> bool:
    return "leading on" in proc.stdout


def runs(path: Path) -> Counter[int]:
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


def results(client: Proc) -> Counter[int]:
    return Counter(int(m) for m in re.findall(r"^done (\d+) 11 \d+$", client.stdout, re.M))


def epoch(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT epoch FROM leader").fetchone()
        assert row is not None
        return int(row[0])


def test_a_standby_takes_over_a_killed_leader_under_two_clients_and_every_job_ends_once(pg_dsn: str, cluster: Cluster) -> None:
    first, a = start_scheduler(cluster, pg_dsn, "first")
    first.wait_for_line("leading on")
    second, b = start_scheduler(cluster, pg_dsn, "second")
    wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
    assert not leads(second)
    cluster.address = f"{a},{b}"
    cluster.node(cpus=2)
    paths = {user: cluster.workdir / f"runs-{user}.txt" for user in ("alice", "bob")}
    n = 8
    clients = [
        cluster.client(CLIENT, name=user, env={"DISPY_SCHEDULER": f"{b},{a}"}, args=[user, str(n), str(path), "0.3"])
        for user, path in paths.items()
    ]
    wait_until(lambda: sum(sum(runs(p).values()) for p in paths.values()) >= 4, what="jobs running before the leader dies")
    first.kill9()
    second.wait_for_line("leading on", timeout=60)
    for path, client in zip(paths.values(), clients):
        assert client.wait(120) == 0, cluster.describe()
        assert results(client) == Counter(range(n)), client.stdout  # every job, exactly once, at its user, Finished
        # not reentrant: each ran once; one the leader sent in its last instant, journaled as sent but never
        # received, is not reported by the node (the same run of its runner) and runs once after the takeover
        assert runs(path) == Counter({i: 1 for i in range(n)}), "a job that is not reentrant ran twice (or not at all)"
    assert "still holds" in second.stderr  # the running jobs were adopted, not rerun


@pytest.mark.soak  # a lease, a silent link noticed and a stopped scheduler's handshake timeout: 20 s and more when busy
def test_a_leader_paused_past_its_lease_writes_nothing_when_it_resumes_and_steps_down(pg_dsn: str, cluster: Cluster) -> None:
    first, a = start_scheduler(cluster, pg_dsn, "first")
    first.wait_for_line("leading on")
    second, b = start_scheduler(cluster, pg_dsn, "second")
    cluster.address = f"{a},{b}"
    cluster.node(cpus=2)
    path = cluster.workdir / "runs.txt"
    client = cluster.client(CLIENT, env={"DISPY_SCHEDULER": f"{a},{b}"}, args=["alice", "6", str(path), "1"])
    wait_until(lambda: sum(runs(path).values()) >= 2, what="jobs running before the leader is paused")
    first.popen.send_signal(signal.SIGSTOP)
    try:
        second.wait_for_line("leading on", timeout=60)
        assert epoch(pg_dsn) == 2
        wait_until(lambda: "no beat from the leader" in second.stderr, what="the takeover's reason")
    finally:
        first.popen.send_signal(signal.SIGCONT)
    # the old leader learns it was replaced from its next beat or its next write, and leaves
    assert first.wait(60) == 4, first.describe()
    assert "stepping down" in first.stderr
    assert "CRITICAL" in first.stderr
    assert client.wait(120) == 0, cluster.describe()
    assert results(client) == Counter(range(6)), client.stdout
    assert runs(path) == Counter({i: 1 for i in range(6)})
    assert epoch(pg_dsn) == 2  # nobody took over twice


def test_the_leader_pauses_while_the_database_restarts_and_goes_on_leading(pg: PgServer, cluster: Cluster) -> None:
    first, a = start_scheduler(cluster, pg.dsn, "first")
    first.wait_for_line("leading on")
    second, b = start_scheduler(cluster, pg.dsn, "second")
    cluster.address = f"{a},{b}"
    cluster.node(cpus=2)
    path = cluster.workdir / "runs.txt"
    client = cluster.client(CLIENT, env={"DISPY_SCHEDULER": f"{a},{b}"}, args=["alice", "8", str(path), "0.5"])
    wait_until(lambda: sum(runs(path).values()) >= 2, what="jobs running before the database restarts")
    pg.restart()
    assert client.wait(120) == 0, cluster.describe()
    assert results(client) == Counter(range(8)), client.stdout
    assert runs(path) == Counter({i: 1 for i in range(8)})
    assert epoch(pg.dsn) == 1 and not leads(second), "the standby took over a leader that only waited for its database"
    assert "still leading (epoch 1)" in first.stderr  # it took its lock back
    assert first.popen.poll() is None


def test_peers_that_dial_a_standby_first_are_sent_to_the_leader(pg_dsn: str, cluster: Cluster) -> None:
    first, a = start_scheduler(cluster, pg_dsn, "first")
    first.wait_for_line("leading on")
    second, b = start_scheduler(cluster, pg_dsn, "second")
    wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
    cluster.address = f"{b},{a}"  # the standby first: the node follows its answer
    node = cluster.node(cpus=1)
    assert f"connected to {a}" in node.stdout
    path = cluster.workdir / "runs.txt"
    # a client that knows only the standby is sent on too
    program = CLIENT.replace(
        "sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])", f"'alice', 3, {str(path)!r}, 0.1"
    ).replace("cluster.close()", "print('status', cluster.scheduler_status()['leader'])\ncluster.close()")
    client = cluster.run_client(program, env={"DISPY_SCHEDULER": b}, timeout=90)
    assert results(client) == Counter(range(3)), client.stdout
    assert re.search(rf"^status {{'address': '{a}', 'epoch': 1, 'since': [\d.]+, 'http': ''}}$", client.stdout, re.M), client.stdout
    assert not leads(second) and epoch(pg_dsn) == 1
    # the operator's view, from the database
    admin = subprocess.run(
        [sys.executable, "-m", "dispy_sched.admin", "leader", "--state", pg_dsn], capture_output=True, text=True, timeout=60
    )
    assert admin.returncode == 0 and admin.stdout.startswith(f"leader {a}, epoch 1, since "), admin
    assert "holds its lock" in admin.stdout
    # what a peer whose leader falls silent asks the others (without logging in): both name the leader
    (host, a_port), b_port = a.rsplit(":", 1), int(b.rsplit(":", 1)[1])
    assert asyncio.run(who_leads(host, host, b_port, None, 10)) == a
    assert asyncio.run(who_leads(host, host, int(a_port), None, 10)) == a
    assert asyncio.run(another_leads((host, int(a_port)), host, [(host, int(a_port)), (host, b_port)], None, 10)) is None
    assert asyncio.run(another_leads((host, b_port), host, [(host, int(a_port)), (host, b_port)], None, 10)) == a
    # a node that found a scheduler by discovery asks it the same before dialing (`dispynode --discover`)
    assert asyncio.run(leader_of(host, b_port, None, False)) == (host, int(a_port))
    assert asyncio.run(leader_of(host, int(a_port), None, False)) == (host, int(a_port))
