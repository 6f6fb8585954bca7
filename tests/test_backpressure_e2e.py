"""Backpressure and retention with real processes: a client that stops reading costs the scheduler
neither memory nor a lost result, a client that floods it is paused (not dropped), and a program
away longer than the result retention gets its jobs back as Abandoned, with the reason.
"""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from dispy_wire import messages as M
from dispy_wire.framing import FrameDecoder
from procs import Cluster, Proc
from rawpeer import login, read_message
from waiting import wait_until

MiB = 1 << 20

#: n jobs, each returning `size` random bytes after `seconds` once the file `gate` exists (the test
#: creates it); prints one line per job as it gets its result
CLIENT = """
import sys
from dispy_client import SharedJobCluster

def compute(i, size, seconds, gate):
    import os, time
    while not os.path.exists(gate):
        time.sleep(0.02)
    time.sleep(seconds)
    return os.urandom(size)

n, size, seconds, gate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = SharedJobCluster(compute)
jobs = [c.submit_job_id(i, i, size, seconds, gate) for i in range(n)]
print("submitted", flush=True)
for job in jobs:
    value = job()
    why = (job.exception or "").replace("\\n", " ")
    print("done", job.id, job.status, -1 if value is None else len(value), why, flush=True)
c.close()
print("closed", flush=True)
"""

FINISHED, ABANDONED = 11, 10


def results(client: Proc) -> dict[int, list[tuple[int, int, str]]]:
    """Job id -> [(status, result length, exception)] as the client got them."""
    out: dict[int, list[tuple[int, int, str]]] = {}
    for m in re.finditer(r"^done (\d+) (\d+) (-?\d+) ?(.*)$", client.stdout, re.M):
        out.setdefault(int(m.group(1)), []).append((int(m.group(2)), int(m.group(3)), m.group(4)))
    return out


def in_journal(cluster: Cluster, where: str = "1") -> int:
    """Jobs the scheduler's journal holds (read-only, beside the scheduler: WAL allows it)."""
    path = cluster.workdir / "scheduler-state" / "journal.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0])
    except sqlite3.OperationalError:  # created, not yet written
        return 0
    finally:
        db.close()


@contextmanager
def stopped(proc: Proc) -> Iterator[None]:
    """SIGSTOPs `proc`, and SIGCONTs it on the way out, whatever happens."""
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)


@pytest.mark.parametrize(
    ("n", "bound"),
    [
        (48, 30),  # 48 MiB: without backpressure the scheduler grew by about twice the results
        pytest.param(200, 60, marks=pytest.mark.soak),  # the figure: 200 MiB, about a minute
    ],
)
def test_results_of_a_stopped_client_pile_up_on_disk_not_in_memory_and_all_arrive_once_it_resumes(
    cluster: Cluster, n: int, bound: int
) -> None:
    size = MiB  # n MiB of results for a client that reads nothing
    scheduler = cluster.scheduler("--heartbeat", "0.5")
    cluster.node(cpus=2)
    process = psutil.Process(scheduler.pid)
    gate = cluster.workdir / "go"
    client = cluster.client(CLIENT, args=[str(n), str(size), "0", str(gate)])
    wait_until(lambda: in_journal(cluster) == n, timeout=60, what=f"all {n} jobs accepted")
    with stopped(client):
        gate.touch()  # the jobs end only now, while the client reads nothing
        before = process.memory_info().rss
        peak = before

        def all_done() -> bool:
            nonlocal peak
            peak = max(peak, process.memory_info().rss)
            return in_journal(cluster, "state = 'done'") == n

        wait_until(all_done, timeout=240, what=f"all {n} results held in the journal")
        after = process.memory_info().rss
    growth = (peak - before) / MiB
    print(f"scheduler RSS {before / MiB:.0f} MiB before, peak {peak / MiB:.0f} MiB, {after / MiB:.0f} MiB after "
          f"{n * size / MiB:.0f} MiB of results piled up for a stopped client")  # fmt: skip
    assert growth < bound, f"the scheduler grew by {growth:.0f} MiB while {n} MiB of results piled up"
    assert client.wait(180) == 0, cluster.describe()
    got = results(client)
    assert sorted(got) == list(range(n)), cluster.describe()
    assert all(r == [(FINISHED, size, "")] for r in got.values()), "a result missing, altered or twice"
    wait_until(lambda: in_journal(cluster) == 0, timeout=60, what="every result acknowledged and let go")


def test_a_client_flooding_requests_without_reading_is_paused_not_dropped(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    process = psutil.Process(scheduler.pid)
    host, port = cluster.address.rsplit(":", 1)
    # 100,000 requests of 200 bytes: more than the kernel's socket buffers take (so the sender blocks
    # once the scheduler stops reading), and replies (about 2 KB each) far beyond them and the write mark
    n, pad = 100_000, "x" * 190
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        decoder = FrameDecoder()
        assert isinstance(login(sock, decoder, "flood", ""), M.Welcome)
        before = process.memory_info().rss
        requests = b"".join(M.encode(M.GetStatus(f"{i:08d}{pad}")) for i in range(n))
        sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)
        sender.start()  # blocks once the scheduler stops reading us
        scheduler.wait_for_line(r"client flood \(\S+\) does not read as fast as we send", stream="stderr", timeout=60)
        assert sender.is_alive(), "every request was read although no reply was"
        peak = process.memory_info().rss
        replies = 0
        while replies < n:  # now read: everything asked for arrives, in order, on the same connection
            msg = read_message(sock, decoder)
            if isinstance(msg, M.Ping):  # the scheduler's liveness check, sent when the link is slow
                continue
            assert isinstance(msg, M.Status) and msg.ref == f"{replies:08d}{pad}", msg
            replies += 1
            if replies % 10_000 == 0:
                peak = max(peak, process.memory_info().rss)
        sender.join(60)
        assert not sender.is_alive()
    growth = (peak - before) / MiB
    print(f"scheduler RSS grew {growth:.1f} MiB while a client sent {n} requests and read no reply")
    assert growth < 40, f"the scheduler buffered {growth:.0f} MiB of replies for a client that did not read them"
    assert "writing it off" not in scheduler.stderr


def test_a_program_away_longer_than_the_retention_gets_its_jobs_abandoned_with_the_reason(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--heartbeat", "0.5", "--result-retention", "2")
    cluster.node(cpus=2)
    client = cluster.client(CLIENT, args=["4", "10", "120", "/"])  # still running (or queued) when released
    client.wait_for_line("submitted", timeout=60)  # (submitted by the program: its loop thread may still send them)
    wait_until(lambda: in_journal(cluster) == 4, timeout=60, what="all 4 jobs accepted")
    with stopped(client):  # written off after 4 of its 2 s heartbeats, released 2 s later
        line = scheduler.wait_for_line(
            r"released cluster \S+ \((\S+)\) of user (\S+): its program was away for 2 s or more "
            r"\(result retention\); (\d+) results nobody collected dropped, (\d+) queued or running jobs cancelled",
            stream="stderr", timeout=90,
        )  # fmt: skip
    assert int(line.group(3)) + int(line.group(4)) == 4
    assert client.wait(90) == 0, cluster.describe()  # no hang: the jobs end
    got = results(client)
    assert sorted(got) == [0, 1, 2, 3], cluster.describe()
    for [(status, _, why)] in got.values():
        assert status == ABANDONED and "was released: its program was away for 2 s or more" in why, why
    assert "closed" in client.stdout


#: submits 64 jobs of 1 MiB arguments while the scheduler is stopped; prints how much it grew, then the results
SUBMITTER = """
import asyncio, os, sys, time
import psutil
from dispy_client import SharedJobCluster

def compute(x):
    return len(x)

c = SharedJobCluster(compute)
print("opened", flush=True)
while not os.path.exists(sys.argv[1]):  # the test stops the scheduler, then creates it
    time.sleep(0.02)
before = psutil.Process().memory_info().rss
jobs = [c.submit(os.urandom(1 << 20)) for _ in range(64)]
for _ in range(3):  # loop round trips: the loop thread has taken (or held back) every submit
    c._lt.run(asyncio.sleep(0))
print("grew", (psutil.Process().memory_info().rss - before) >> 20, flush=True)
print("results", sum(job() == 1 << 20 for job in jobs), flush=True)
c.close()
"""


def test_a_client_does_not_buffer_its_submits_twice_for_a_scheduler_that_stops_reading(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    cluster.node(cpus=2)
    gate = cluster.workdir / "stopped"
    client = cluster.client(SUBMITTER, args=[str(gate)])
    client.wait_for_line("opened", timeout=60)
    with stopped(scheduler):
        gate.touch()
        grew = int(client.wait_for_line(r"grew (-?\d+)", timeout=60).group(1))
    print(f"a client grew {grew} MiB submitting 64 MiB of arguments to a stopped scheduler")
    # the jobs keep their arguments (DispyJob.args) and the session their pickles: about 128 MiB;
    # without holding back, the encoded submits came on top of that (measured: 64 MiB more)
    assert grew < 165, f"the client grew {grew} MiB"
    client.wait_for_line(r"results 64", timeout=120)
