"""Trivial jobs per second through the node's runner (no scheduler), in fork and worker
isolation, with the CPU each job costs the daemon (this process) and the zygote with its
job processes; next to the ceiling of fork isolation, bare fork+wait of a zygote-sized
process as often as there are jobs, measured in the same run (`throughput.bare_fork_rate`);
and the time from cancelling a job whose tree has 100 processes to the last of them gone.

    .venv/bin/python benchmarks/node.py [--jobs N] [--slots S] [--tree N] [--only fork|worker] [--rounds R]

The runner is kept `--slots` jobs busy, as the scheduler keeps a 2-CPU node busy:
each result releases the next job. Jobs run as the user running the benchmark.
`--rounds` alternates fork isolation and bare fork+wait that many times and
prints each round's ratio (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cloudpickle
import psutil

from dispy_node import cgroups
from dispy_node.account import myself
from dispy_node.runner import Runner, RunnerConfig
from dispy_wire.loop import event_loop_factory
from dispy_wire.messages import JobRef, JobResult, RunJob
from dispy_wire.payload import CodeObjects, Computation, dumps, pack_computation
from dispy_wire.result_mac import new_key
from dispy_wire.status import JobStatus
from throughput import bare_fork_rate  # (this directory is the script's: sys.path[0])

cloudpickle.register_pickle_by_value(sys.modules[__name__])
T = TypeVar("T")


def trivial(x: int) -> int:
    return x + 1


def tree(n: int, ready_path: str) -> None:
    """Forks n-1 sleeping children (n processes with itself), says so, sleeps."""
    import time as t

    for _ in range(n - 1):
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            t.sleep(600)
            os._exit(0)
    with open(ready_path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(ready_path + ".tmp", ready_path)  # whole, or not there: the benchmark polls for it
    t.sleep(600)


class Figures(NamedTuple):
    rate: float  # jobs/s
    daemon: float  # CPU seconds per job: this process (the runner, and the benchmark's own little part)
    zygote: float  # ... the zygote
    jobs: float  # ... its job processes (or workers)
    faults: tuple[float, float]  # page faults per job (minor ones: copies on write, mostly) of the zygote, of its jobs


def _faults(pid: int) -> tuple[int, int]:
    """Page faults of process `pid` and of its reaped children, live children's added (/proc: Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = int(fields[7]), int(fields[8])
    for child in psutil.Process(pid).children():
        try:
            reaped += sum(_faults(child.pid))
        except (OSError, psutil.Error):
            pass
    return own, reaped


def _cpu(proc: psutil.Process, children: bool) -> float:
    """User + system seconds of `proc`, with those of its reaped children if `children`, and of its live ones."""
    times = proc.cpu_times()
    total: float = times.user + times.system
    if children:
        total += times.children_user + times.children_system
        for child in proc.children(recursive=True):
            try:
                total += _cpu(child, False)
            except psutil.Error:
                pass
    return total


async def through_runner(
    jobs: int, slots: int, work_dir: Path, spawn: bool = False, groups: cgroups.JobGroups | None = None,
    isolation: str = "fork", clusters: int = 1, window: int = 0,
) -> Figures:  # fmt: skip
    """Jobs/s over `jobs` jobs, `slots` at a time (after one warm-up job per cluster), and CPU per job; `spawn`:
    no fork; `groups`: a control group per job, as a node with cgroups makes; `isolation`: the clusters';
    `clusters`: that many clusters, their jobs interleaved one by one (as fair share sends several users' jobs);
    `window`: jobs kept at the runner (its prefetch: `slots` if 0)."""
    warm, done = asyncio.Event(), asyncio.Event()
    errors: list[str] = []
    finished = 0
    submitted = 0
    payload = dumps(((1,), {}))

    def submit() -> None:
        nonlocal submitted
        runner.run([RunJob(f"bench{submitted % clusters}", submitted, payload, {})])
        submitted += 1

    def on_result(result: JobResult) -> None:
        nonlocal finished
        if result.status != JobStatus.FINISHED:
            errors.append(f"job failed: {result.exception}")
            warm.set()
            done.set()
        finished += 1
        if finished == clusters:
            warm.set()
        elif finished > clusters and submitted < jobs + clusters:
            submit()
        elif finished == jobs + clusters:
            done.set()

    def on_failed(cluster_id: str, message: str) -> None:
        errors.append(message)
        warm.set()
        done.set()

    work_dir.mkdir()
    runner = Runner(RunnerConfig(work_dir, account=myself(), spawn=spawn, cgroups=groups), on_result, on_failed)
    comp = Computation("function", "trivial", [], [], dumps(CodeObjects(func=trivial)), new_key())
    for n in range(clusters):
        runner.load(f"bench{n}", pack_computation(comp), {"isolation": isolation})
    try:
        for _ in range(clusters):  # warm-up: waits for the zygotes to load
            submit()
        await warm.wait()
        if errors:
            raise RuntimeError(errors[0])
        me = psutil.Process()
        zygotes = me.children()

        def cpu(children: bool) -> float:
            return sum(_cpu(zygote, children) for zygote in zygotes)

        def faulted() -> list[int]:
            return [sum(f) for f in zip(*(_faults(zygote.pid) for zygote in zygotes))]

        start, daemon0, zygote0, all0 = time.perf_counter(), _cpu(me, False), cpu(False), cpu(True)
        faults0 = faulted()
        for _ in range(window or slots):
            submit()
        await done.wait()
        elapsed, daemon = time.perf_counter() - start, _cpu(me, False) - daemon0
        own, used = cpu(False) - zygote0, cpu(True) - all0
        faults = [(after - before) / jobs for before, after in zip(faults0, faulted())]
        if errors:
            raise RuntimeError(errors[0])
        return Figures(jobs / elapsed, daemon / jobs, own / jobs, (used - own) / jobs, (faults[0], faults[1]))
    finally:
        await runner.close()


async def cancel_tree(n: int, work_dir: Path) -> float:
    """Seconds from `kill` of a job with an n-process tree to the last of them gone (and its result)."""
    done = asyncio.Event()
    results: list[JobResult] = []

    def on_result(result: JobResult) -> None:
        results.append(result)
        done.set()

    work_dir.mkdir()
    runner = Runner(RunnerConfig(work_dir, account=myself()), on_result, lambda c, m: done.set())
    runner.load("tree", pack_computation(Computation("function", "tree", [], [], dumps(CodeObjects(func=tree)), new_key())))
    ready = work_dir / "tree-ready"
    runner.run([RunJob("tree", 1, dumps(((n, str(ready)), {})), {})])
    try:
        while not ready.exists():  # the job writes it once all its processes exist
            await asyncio.sleep(0.01)
        leader = psutil.Process(int(ready.read_text()))
        procs = [leader, *leader.children(recursive=True)]
        assert len(procs) == n, len(procs)
        start = time.perf_counter()
        runner.kill([JobRef("tree", 1)])
        await done.wait()
        reported = time.perf_counter() - start
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if alive or results[0].exception != "cancelled":
            raise RuntimeError(f"result {results[0].exception!r} with {len(alive)} processes alive")
        return reported
    finally:
        await runner.close()


def _line(what: str, f: Figures) -> str:
    return (f"{what}: {f.rate:7.0f} jobs/s ({1000 / f.rate:.2f} ms each); CPU per job (us): daemon {f.daemon * 1e6:.0f},"
            f" zygote {f.zygote * 1e6:.0f}, job processes {f.jobs * 1e6:.0f}; all {(f.daemon + f.zygote + f.jobs) * 1e6:.0f};"
            f" page faults per job: zygote {f.faults[0]:.0f}, job processes {f.faults[1]:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tree", type=int, default=100, help="processes in the cancelled job's tree")
    parser.add_argument("--only", choices=("fork", "worker"), help="measure one isolation (and skip the rest)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the isolations measured, alternating")
    parser.add_argument("--clusters", type=int, default=1,
                        help="clusters whose jobs are interleaved one by one (as several users' under fair share)")
    parser.add_argument("--window", type=int, default=0, help="jobs kept at the runner (its prefetch; 0: --slots)")
    args = parser.parse_args()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # uvloop where installed
            return runner.run(coro)

    groups, why = cgroups.prepare()
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            if args.only != "worker":
                rate, cpu, faults = bare_fork_rate(args.jobs, args.slots)
                print(f"bare fork+wait, {args.jobs} forks {args.slots} at a time: {rate:7.0f} /s; CPU per fork {cpu * 1e6:.0f} us;"
                      f" page faults per fork {faults:.0f}", flush=True)  # fmt: skip
                fork = run(through_runner(args.jobs, args.slots, Path(tmp) / f"f{n}", isolation="fork"))
                print(_line(f"runner, {args.slots} slots, fork", fork) + f"; bare fork+wait is {rate / fork.rate:.2f}x as fast",
                      flush=True)  # fmt: skip
            if args.only != "fork":
                print(_line(f"runner, {args.slots} slots, worker, {args.clusters} cluster(s)", run(through_runner(
                    args.jobs, args.slots, Path(tmp) / f"w{n}", isolation="worker", clusters=args.clusters,
                    window=args.window))), flush=True)  # fmt: skip
        if args.only is None:
            if groups is not None:
                grouped = run(through_runner(args.jobs, args.slots, Path(tmp) / "g", groups=groups))
                print(_line("  fork, a control group per job", grouped))
            else:
                print(f"  (no control groups here: {why})")
            spawn = run(through_runner(max(20, args.jobs // 20), args.slots, Path(tmp) / "s", spawn=True))
            print(_line(f"runner, {args.slots} slots, spawn mode (no fork)", spawn))
            cancel = run(cancel_tree(args.tree, Path(tmp) / "c"))
            print(f"cancel of a {args.tree}-process job to its last process gone: {cancel * 1000:.1f} ms")
    if groups is not None:
        cgroups.release(groups)


if __name__ == "__main__":
    main()
