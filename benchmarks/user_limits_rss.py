"""The scheduler's resident memory under the per-user limits, in the attacks of issue 10.

    .venv/bin/python benchmarks/user_limits_rss.py

Starts a real `dispyscheduler` (default limits) and node on 127.0.0.1, then,
one after another, as user alice: opens 12 clusters with 48 MB computations;
submits 100,000 jobs beyond `max_queued_jobs` (refused); leaves 800 results
of 1 MiB uncollected (her program exits without closing). After each step it
prints the scheduler's RSS and what its status says alice holds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.procs import Cluster, write_users_file  # noqa: E402  (the tests' process harness: port 0, logs to files, cleanup)

USERS = '[users.alice]\nsecret = "a"\nmax_queued_jobs = 1000\n[users.bob]\nsecret = "b"\n'

CLUSTERS = """
    import os, sys, time
    from dispy_client import SharedJobCluster, LimitError
    blob = sys.argv[1]
    opened, refused = [], 0
    for i in range(12):
        try:
            opened.append(SharedJobCluster(len, user="alice", secret="a", depends=[blob]))
        except LimitError as exc:
            refused += 1
            why = str(exc)
    print("opened", len(opened), "refused", refused, flush=True)
    print(why if refused else "", flush=True)
    while not os.path.exists(sys.argv[2]):  # held open until told
        time.sleep(0.1)
    for c in opened:
        c.close()
    print("closed", flush=True)
"""

FLOOD = """
    from dispy_client import SharedJobCluster
    with SharedJobCluster(len, user="alice", secret="a") as c:
        jobs = [c.submit(b"") for _ in range(100_000)]
        c.wait(timeout=600)
    print("cancelled", sum(j.status == j.Cancelled for j in jobs), flush=True)
"""

LEAVE = """
    import os, time
    from dispy_client import SharedJobCluster, DispyJob
    def compute(i):
        return os.urandom(1 << 20)
    c = SharedJobCluster(compute, user="alice", secret="a")
    jobs = [c.submit(i) for i in range(800)]
    while jobs[0].status == DispyJob.Created:
        time.sleep(0.01)
    print("leaving", flush=True)
    os._exit(0)
"""

STATUS = """
    import json
    from dispy_client import SharedJobCluster
    with SharedJobCluster(len, user="alice", secret="a") as c:
        print(json.dumps(c.scheduler_status()["users"]["alice"]), flush=True)
"""


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="limits-rss-"))
    cluster = Cluster(workdir)
    try:
        write_users_file(workdir / "users.toml", USERS)
        sched = cluster.scheduler("--users-file", str(workdir / "users.toml"))
        cluster.node(cpus=2)
        proc = psutil.Process(sched.pid)

        def report(what: str) -> None:
            status = cluster.run_client(STATUS, "status", timeout=120).stdout.strip().splitlines()[-1]
            alice = json.loads(status)
            print(
                f"{what:<48} RSS {proc.memory_info().rss / 2**20:7.1f} MiB; alice: {alice['clusters']} clusters, "
                f"{alice['queued_bytes'] / 2**20:.1f} MiB queued, {alice['held_bytes'] / 2**20:.1f} MiB held, "
                f"paused {alice['paused']}",
                flush=True,
            )

        report("started")
        blob = workdir / "blob.bin"
        blob.write_bytes(bytes(48 * 10**6))
        opener = cluster.client(CLUSTERS, "clusters", args=[str(blob), str(workdir / "close")])
        line = opener.wait_for_line(r"opened \d+ refused \d+", timeout=600).group(0)
        report(f"12 x 48 MB clusters: {line}")
        (workdir / "close").touch()
        opener.wait_for_line("closed", timeout=600)
        report("those clusters closed")
        flood = cluster.run_client(FLOOD, "flood", timeout=900)
        report(f"100,000 jobs beyond max_queued_jobs: {flood.stdout.strip()}")
        cluster.run_client(LEAVE, "leave", timeout=300)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = json.loads(cluster.run_client(STATUS, "status", timeout=120).stdout.strip().splitlines()[-1])
            if status["paused"] and status["busy"] == 0:
                break
            time.sleep(1)
        report("800 x 1 MiB results left uncollected")
    finally:
        cluster.stop_all()


if __name__ == "__main__":
    main()
