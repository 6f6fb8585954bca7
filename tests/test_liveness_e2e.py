"""Liveness with real processes: a scheduler, a node or a client that stops answering (SIGSTOP: the
silence of a partition, without leaving loopback) is noticed by the others within a few heartbeats,
and once it runs again (SIGCONT) or is restarted on its journal, every job gets exactly one result.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

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
        # the interval the scheduler announced at login is the one each side holds it to
        gave_up = r"scheduler \S+ silent for [\d.]+ s \(it promised a sign of life every 0.5 s\): closing the connection"
        client.wait_for_line(gave_up, timeout=60, stream="stderr")
        client_noticed = time.monotonic() - since
        node.wait_for_line(gave_up, timeout=60, stream="stderr")
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


# -- a real partition: the link between two network namespaces made here goes down ---------------

#: addresses inside the namespaces the test creates (nowhere else)
SCHED_ADDR, PEERS_ADDR = "10.211.0.1", "10.211.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def partition(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: (scheduler's, peers'); removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = f"lv{os.getpid()}"
    sched_ns, peers_ns = f"{tag}s", f"{tag}p"
    try:
        _ip("netns", "add", sched_ns)
        _ip("netns", "add", peers_ns)
        _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        _ip("link", "set", f"{tag}a", "netns", sched_ns)
        _ip("link", "set", f"{tag}b", "netns", peers_ns)
        for ns, dev, addr in ((sched_ns, f"{tag}a", SCHED_ADDR), (peers_ns, f"{tag}b", PEERS_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in (sched_ns, peers_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode(errors='replace').strip()}")
    try:
        yield sched_ns, peers_ns
    finally:
        cluster.stop_all()  # before the namespaces go
        for ns in (sched_ns, peers_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_a_cut_link_is_noticed_on_every_side_and_everything_recovers_when_it_is_back(
    cluster: Cluster, partition: tuple[str, str]
) -> None:
    sched_ns, peers_ns = partition
    link = f"{peers_ns[:-1]}b"
    scheduler = cluster.start(
        ["ip", "netns", "exec", sched_ns, sys.executable, "-m", "dispy_sched.main", "--host", SCHED_ADDR, "--port", "0",
         "--discovery-port", "0", "--state-dir", str(cluster.workdir / "scheduler-state"), "--heartbeat", "0.5",
         "--secret", "user-secret", "--node-secret", "node-secret", "--insecure-plaintext"],
        "scheduler",
    )  # fmt: skip
    port = scheduler.wait_for_line(r"listening on \S+:(\d+)").group(1)
    cluster.address = f"{SCHED_ADDR}:{port}"
    node = cluster.start(
        ["ip", "netns", "exec", peers_ns, sys.executable, "-m", "dispy_node.main", "--scheduler", cluster.address,
         "--cpus", "4", "--name", "node", "--work-dir", str(cluster.workdir / "node-work"), "--heartbeat", "0.5",
         "--jobs-as-self", "--node-secret", "node-secret", "--insecure-plaintext"],
        "node",
    )  # fmt: skip
    node.wait_for_line("connected to ")
    script = cluster.workdir / "client.py"
    script.write_text(CLIENT.replace("SharedJobCluster(compute)", 'SharedJobCluster(compute, secret="user-secret", insecure_plaintext=True)'))
    client = cluster.start(
        ["ip", "netns", "exec", peers_ns, sys.executable, str(script), str(cluster.workdir / "runs.txt"), "4"],
        "client", {"DISPY_SCHEDULER": cluster.address},
    )  # fmt: skip
    client.wait_for_line("submitted", timeout=60)
    wait_until(lambda: len(runs(cluster)) == 4, what="four jobs running")
    _ip("-n", peers_ns, "link", "set", link, "down")
    cut = time.monotonic()
    try:
        signs = {
            "client": (client, r"scheduler \S+ silent for [\d.]+ s"),
            "node": (node, r"scheduler \S+ silent for [\d.]+ s"),
            "scheduler (client)": (scheduler, r"client \S+ \(\S+\) silent for [\d.]+ s: writing it off"),
            "scheduler (node)": (scheduler, r"dropping node node \(\S+\): no report"),
        }
        noticed: dict[str, float] = {}

        def all_noticed() -> bool:
            for who, (proc, pattern) in signs.items():
                if who not in noticed and re.search(pattern, proc.stderr):
                    noticed[who] = time.monotonic() - cut
            return len(noticed) == len(signs)

        wait_until(all_noticed, timeout=90, what="every side noticing the cut link")
    finally:
        _ip("-n", peers_ns, "link", "set", link, "up")
    print("noticed a cut link (heartbeats 0.5 s; the client's 2 s) after:", ", ".join(f"{k} {v:.1f} s" for k, v in noticed.items()))
    assert noticed["client"] < 30 and noticed["node"] < 30 and noticed["scheduler (client)"] < 40
    finish(cluster, client, may_be_abandoned=frozenset(runs(cluster)))
