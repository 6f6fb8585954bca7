"""What the scheduler's journal costs, in one run.

- throughput of trivial jobs (throughput.py's batches) with the journal
  (`--journal-sync full`, the default, and `normal`) and without it;
- restart: a client queues N jobs (no node, so they stay queued) and is
  killed, the scheduler is killed (-9), and a new one reads the journal:
  seconds from its start until it listens, and the journal's bytes per queued
  job (the arguments of these jobs are a few bytes: the rest is bookkeeping).

Run with the venv's python: `python benchmarks/journal.py [--queued N]`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import measure, start

QUEUE = r"""
import sys, time
from dispy_client import SharedJobCluster

def f(x):
    return x

n = int(sys.argv[1])
cluster = SharedJobCluster(f, user="bench")
t0 = time.perf_counter()
for i in range(n):
    cluster.submit(i)
while cluster.scheduler_status()["queued"] < n:
    time.sleep(0.2)
print(f"queued {n} in {time.perf_counter() - t0:.1f} s", flush=True)
time.sleep(3600)
"""


def restart_figures(queued: int) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-journal-"))
    state = tmp / "state"
    script = tmp / "queue.py"
    script.write_text(QUEUE)
    bindir = Path(sys.executable).parent
    argv = [str(bindir / "dispyscheduler"), "--port", "0", "--state-dir", str(state), "--loglevel", "INFO"]
    sched, m = start(argv, r"listening on (\S+):(\d+)", tmp / "scheduler.log")
    client = None
    try:
        env = {"DISPY_SCHEDULER": f"{m.group(1)}:{m.group(2)}", "PATH": str(bindir)}
        client = subprocess.Popen([sys.executable, str(script), str(queued)], env=env, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        submitted = client.stdout.readline().strip()
        client.kill()
        client.wait()
        sched.kill()
        sched.wait()
        journal = sum(p.stat().st_size for p in state.glob("journal.sqlite3*"))
        t0 = time.perf_counter()
        sched, _ = start([*argv[:2], m.group(2), *argv[3:]], r"listening on", tmp / "scheduler2.log")
        elapsed = time.perf_counter() - t0
        restored = re.search(r"journal: restored .*", (tmp / "scheduler2.log").read_text())
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        sched.kill()
        sched.wait()
    return [
        f"client: {submitted}",
        f"restart with {queued} queued jobs: listening after {elapsed:.2f} s ({restored.group(0) if restored else '?'})",
        f"journal: {journal / queued:.0f} bytes per queued job ({journal / 2**20:.1f} MiB, database and WAL)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--queued", type=int, default=100_000)
    args = ap.parse_args()
    for label, extra in (("no journal", ["--no-journal"]), ("journal, sync full", []),
                         ("journal, sync normal", ["--journal-sync", "normal"])):  # fmt: skip
        for line in measure(args.cpus, extra, rtt=False):
            print(f"{label:>21}: {line}", flush=True)
    for line in restart_figures(args.queued):
        print(line, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
