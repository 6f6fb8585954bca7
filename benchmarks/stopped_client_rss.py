"""The scheduler's resident memory while a stopped client's results pile up (issue 11, item 6).

    .venv/bin/python benchmarks/stopped_client_rss.py [MiB]

Starts a real `dispyscheduler` (with its journal) and a 2-CPU node on
127.0.0.1, and a client that submits MiB jobs (default 200) each returning
1 MiB of random bytes, gated on a file. Once the scheduler has accepted them
all, the client is stopped (SIGSTOP) and the gate opened: every result now
piles up for a client that reads nothing (the scheduler writes it off after
four of its heartbeats). Prints the scheduler's RSS every second until all
results are journaled, then resumes the client and times how long it takes
to get every result.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.procs import Cluster  # noqa: E402  (the tests' process harness: port 0, logs to files, cleanup)

CLIENT = """
import sys
from dispy_client import SharedJobCluster

def compute(i, gate):
    import os, time
    while not os.path.exists(gate):
        time.sleep(0.02)
    return os.urandom(1 << 20)

n, gate = int(sys.argv[1]), sys.argv[2]
c = SharedJobCluster(compute)
jobs = [c.submit_job_id(i, i, gate) for i in range(n)]
print("got", sum(len(job()) == 1 << 20 for job in jobs), flush=True)
c.close()
"""


def jobs_in(journal: Path, where: str = "1") -> int:
    if not journal.exists():
        return 0
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    workdir = Path(tempfile.mkdtemp(prefix="stopped-client-rss-"))
    cluster = Cluster(workdir)
    journal = workdir / "scheduler-state" / "journal.sqlite3"
    try:
        sched = cluster.scheduler("--heartbeat", "0.5")
        cluster.node(cpus=2)
        proc = psutil.Process(sched.pid)
        gate = workdir / "go"
        client = cluster.client(CLIENT, args=[str(n), str(gate)])
        while jobs_in(journal) < n:
            time.sleep(0.1)
        client.popen.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        gate.touch()
        print(f"{n} jobs of 1 MiB results accepted; client stopped; RSS {proc.memory_info().rss / 2**20:.0f} MiB", flush=True)
        peak = 0
        while True:
            done = jobs_in(journal, "state = 'done'")
            rss = proc.memory_info().rss
            peak = max(peak, rss)
            print(f"{time.monotonic() - started:6.1f} s  results held {done:4d}  scheduler RSS {rss / 2**20:7.1f} MiB", flush=True)
            if done >= n:
                break
            time.sleep(1)
        print(f"peak RSS {peak / 2**20:.0f} MiB with {n} MiB of results held for a stopped client", flush=True)
        client.popen.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        client.wait(600)
        print(f"client resumed: {client.stdout.strip()} in {time.monotonic() - resumed:.1f} s; "
              f"scheduler RSS {proc.memory_info().rss / 2**20:.0f} MiB", flush=True)  # fmt: skip
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    main()
