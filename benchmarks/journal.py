"""What the scheduler's journal costs, in one run.

- the scheduler alone (its core and journal in this process, no network, no
  node): jobs/s through submit, dispatch, result and acknowledgement, with a
  commit per `handle` call as the server makes one per loop turn, with the
  journal (sync full and normal) and without, and the CPU per job the
  journal adds in this process;
- throughput of trivial jobs through real processes (throughput.py's
  batches) with the journal (sync full, the default, and normal) and without;
- large arguments: jobs of 1 MiB of arguments through the core and the
  journal, one CPU, so that each turn ends one job and dispatches the next:
  the journal's write time and bytes written per turn (a dispatch changes
  the job's row, not its arguments, which have a table of their own);
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

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.journal import SqliteJournal, StateStore
from dispy_sched.policies import load_policy
from dispy_wire.messages import JobResult, JobSpec

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


def core_rate(jobs: int, sync: str | None, batch: int = 500, cpus: int = 64, store: StateStore | None = None) -> float:
    """Jobs/s through the core (and the journal unless `sync` is None, or `store`): submits of `batch`, `cpus` slots."""
    return core_figures(jobs, sync, batch, cpus, store)[0]


def core_figures(
    jobs: int, sync: str | None, batch: int = 500, cpus: int = 64, store: StateStore | None = None
) -> tuple[float, float]:
    """As `core_rate`: jobs/s, and this process's CPU µs per job (a commit's fsync waits: it is not CPU)."""
    if store is None and sync is not None:
        store = SqliteJournal(tempfile.mkdtemp(prefix="dispy-bench-core-"), sync)
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=store is not None))
    clock = [0.0]

    def turn(*events: E.Event) -> list[A.Action]:
        clock[0] += 0.001
        actions = core.handle(*events, now=clock[0])
        if actions and isinstance(actions[0], A.Persist) and store is not None:
            store.write(actions[0])
        return actions

    t0, c0 = time.perf_counter(), time.process_time()
    turn(E.ClusterOpened("c", "bench", "K", "bench", b"x" * 2000, False, {}), E.NodeJoined("n", "node", "10.0.0.1", cpus, 5.0))
    events: list[E.Event] = []
    finished = 0
    submitted = 0
    while finished < jobs:
        if submitted < jobs and core.clusters["K"].queued < batch:  # the client keeps the queue fed
            specs = [JobSpec(j, 0, b"p" * 100, {}) for j in range(submitted, min(jobs, submitted + batch))]
            events.append(E.JobsSubmitted("c", "K", specs))
            submitted += len(specs)
        actions = turn(*events)
        # the next turn: the node's results for what was dispatched, the client's acks for what was delivered
        dispatched = [r.job_id for a in actions if isinstance(a, A.Dispatch) for r in a.jobs]
        delivered = [r.job_id for a in actions if isinstance(a, A.DeliverResults) for r in a.results]
        finished += len(delivered)
        events = []
        if dispatched:
            events.append(E.ResultsArrived("n", [JobResult("K", j, 11, b"r" * 50, b"", b"", "", "", 0.0, 0.001) for j in dispatched]))
        if delivered:
            events.append(E.ResultsAcked("c", "K", delivered))
    turn(*events)
    assert not core.clusters["K"].jobs, "jobs left in the core"
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if store is not None:
        store.close()
    return jobs / elapsed, 1e6 * cpu / jobs


def big_arguments_figure(jobs: int = 40, size: int = 1 << 20) -> str:
    """Journal write time and bytes written per turn that ends one job of `size` bytes of arguments and
    dispatches the next (sync full)."""
    store = SqliteJournal(tempfile.mkdtemp(prefix="dispy-bench-args-"))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))

    def turn(*events: E.Event, now: float) -> float:
        actions = core.handle(*events, now=now)
        t0 = time.perf_counter()
        for action in actions:
            if isinstance(action, A.Persist):
                store.write(action)
        return time.perf_counter() - t0

    specs = [JobSpec(j, 0, os.urandom(size), {}) for j in range(jobs)]
    turn(E.ClusterOpened("c", "bench", "K", "bench", b"x", False, {}), E.JobsSubmitted("c", "K", specs), now=0.0)
    turn(E.NodeJoined("n", "node", "10.0.0.1", 1, 5.0), now=1.0)
    written, took = _written(), 0.0
    for j in range(jobs - 1):
        ended = JobResult("K", j, 11, b"r", b"", b"", "", "", 0.0, 0.001)
        took += turn(E.ResultsArrived("n", [ended]), now=2.0 + j)
    store.close()
    return (f"jobs of {size >> 10} KiB of arguments: {1e3 * took / (jobs - 1):.1f} ms of journal write and "
            f"{(_written() - written) / (jobs - 1) / 1024:.0f} KiB written per turn that ends one and dispatches the next")


def _written() -> int:
    """Bytes this process has written (/proc/self/io's wchar)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def restart_figures(queued: int) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-journal-"))
    state = tmp / "state"
    script = tmp / "fill.py"
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
    ap.add_argument("--skip-processes", action="store_true", help="only the in-process and restart figures")
    args = ap.parse_args()
    base, base_cpu = core_figures(20_000, None)
    for sync in ("full", "normal"):
        rate, cpu = core_figures(20_000, sync)
        print(f"scheduler alone, journal sync {sync:>6}: {rate:7.0f} jobs/s ({100 * (1 - rate / base):.0f} % below "
              f"{base:.0f} jobs/s without); CPU per job {cpu:.1f} µs, the journal's {cpu - base_cpu:.1f}", flush=True)
    print(big_arguments_figure(), flush=True)
    for label, extra in (("no journal", ["--no-journal"]), ("journal, sync full", []),
                         ("journal, sync normal", ["--journal-sync", "normal"])):  # fmt: skip
        if args.skip_processes:
            break
        for line in measure(args.cpus, extra, rtt=False):
            print(f"{label:>21}: {line}", flush=True)
    for line in restart_figures(args.queued):
        print(line, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
