"""The PostgreSQL state store against SQLite, and how long a standby takes to take over, in one run.

- the scheduler alone (core and store in this process, no network): jobs/s
  through submit, dispatch, result and acknowledgement with a commit per
  `handle` call, with the SQLite journal (sync full) and with PgStore
  (a local server over its Unix socket, fsync on, synchronous_commit on);
- throughput of trivial jobs through real processes (throughput.py's
  batches) with each store;
- takeover: a leader and a standby on one database, a node and a client
  keeping jobs queued; the leader is killed (-9) and the figure is the time
  from its death to the new leader's first dispatch (its log line), over
  `--takeovers` rounds, with the default lease.

The PostgreSQL server is started here (tests/pg.py: Debian's binaries,
initdb in a temporary directory). Run with the venv's python:
`python benchmarks/pg_store.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from journal import core_rate
from throughput import measure, start

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgServer  # type: ignore[import-not-found]  # noqa: E402

from dispy_sched.leadership import DEFAULT_LEASE  # noqa: E402
from dispy_sched.pg_store import PgStore, create_schema, connect  # noqa: E402

QUEUE = r"""
import sys
from dispy_client import SharedJobCluster

def f(x):
    import time
    time.sleep(0.05)
    return x

from collections import deque
cluster = SharedJobCluster(f, user="bench", reentrant=True)
print("ready", flush=True)
jobs = deque(cluster.submit(1) for _ in range(20))  # always 20 queued or running
while True:
    jobs.popleft()()
    jobs.append(cluster.submit(1))
"""


def pg_rate(dsn: str, jobs: int) -> float:
    create_schema(dsn)
    with connect(dsn, autocommit=True) as db:
        row = db.execute("UPDATE leader SET epoch = epoch + 1 RETURNING epoch").fetchone()
    assert row is not None
    return core_rate(jobs, None, store=PgStore(dsn, int(row[0])))


def log_time(line: str) -> float:
    """The Unix time of a log line ("2026-11-30 17:20:42,479 ...", local time)."""
    stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def takeover(dsn: str, rounds: int) -> list[float]:
    """Seconds from the leader's death to the new leader's first dispatch, one per round."""
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-takeover-"))
    bindir = Path(sys.executable).parent
    script = tmp / "keep_busy.py"
    script.write_text(QUEUE)
    sched = [str(bindir / "dispyscheduler"), "--port", "0", "--state", dsn, "--loglevel", "INFO"]
    procs: list[subprocess.Popen[str]] = []
    figures = []
    try:
        schedulers = []
        for i in range(2):
            proc, m = start([*sched, "--state-dir", str(tmp / f"s{i}")], r"listening on (\S+):(\d+)", tmp / f"s{i}.log")
            procs.append(proc)
            schedulers.append((proc, f"{m.group(1)}:{m.group(2)}", tmp / f"s{i}.log"))
        addresses = ",".join(a for _, a, _ in schedulers)
        node, _ = start([str(bindir / "dispynode"), "--scheduler", addresses, "--cpus", "2", "--work-dir", str(tmp / "node"),
                         "--loglevel", "WARNING", *(["--jobs-as-self"] if os.geteuid() == 0 else [])],
                        r"connected to", tmp / "node.log")  # fmt: skip
        procs.append(node)
        env = {"DISPY_SCHEDULER": addresses, "PATH": str(bindir)}
        client = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True,
                                  stderr=open(tmp / "client.log", "w"))  # fmt: skip
        procs.append(client)
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        for r in range(rounds):
            leader = next(s for s in schedulers if "leading on" in _leading_lines(s[2]))
            standby = next(s for s in schedulers if s is not leader)
            time.sleep(2.0)  # the load settles on the leader
            died = time.time()
            leader[0].kill()
            leader[0].wait()
            deadline = time.monotonic() + 60
            while "first dispatch since start" not in standby[2].read_text():
                if time.monotonic() > deadline:
                    sys.exit(f"no dispatch by the new leader within 60 s; see {standby[2]}")
                time.sleep(0.05)
            line = next(ln for ln in standby[2].read_text().splitlines() if "first dispatch since start" in ln)
            figures.append(log_time(line) - died)
            # the dead one comes back as the standby of the next round
            i = schedulers.index(leader)
            log = tmp / f"s{i}-{r}.log"
            host, port = leader[1].rsplit(":", 1)
            proc, _ = start([*sched, "--port", port, "--state-dir", str(tmp / f"s{i}")], r"listening on", log)
            procs.append(proc)
            schedulers[i] = (proc, leader[1], log)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    return figures


def _leading_lines(log: Path) -> str:
    return "leading on" if "leading now" in log.read_text() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--takeovers", type=int, default=5)
    ap.add_argument("--skip-processes", action="store_true", help="only the in-process and takeover figures")
    args = ap.parse_args()
    server = PgServer(fsync=True)
    try:
        dsn = server.dsn
        sqlite = core_rate(args.jobs, "full")
        pg = pg_rate(dsn, args.jobs)
        print(f"scheduler alone, SQLite journal (sync full): {sqlite:7.0f} jobs/s", flush=True)
        print(f"scheduler alone, PostgreSQL store:           {pg:7.0f} jobs/s ({pg / sqlite:.2f} x SQLite)", flush=True)
        if not args.skip_processes:
            for label, extra in (("SQLite journal", []), ("PostgreSQL store", ["--state", dsn])):
                for line in measure(args.cpus, extra, rtt=False):
                    print(f"{label:>16}: {line}", flush=True)
        figures = takeover(dsn, args.takeovers)
        print(
            f"takeover (lease {DEFAULT_LEASE:g} s), leader kill -9 to the new leader's first dispatch, {len(figures)} rounds: "
            f"median {statistics.median(figures):.2f} s, max {max(figures):.2f} s "
            f"({', '.join(f'{f:.2f}' for f in figures)})",
            flush=True,
        )
    finally:
        server.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
