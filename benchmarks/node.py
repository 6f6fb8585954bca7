"""Trivial jobs per second through the node's runner (fork per job, no scheduler),
next to the floor set by raw fork-and-wait of this Python process; and the time
from cancelling a job whose tree has 100 processes to the last of them gone.

    .venv/bin/python benchmarks/node.py [--jobs N] [--slots S] [--tree N]

The runner is kept `--slots` jobs busy, as the scheduler keeps a 2-CPU node busy:
each result releases the next job. Jobs run as the user running the benchmark.
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
from typing import Any

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

cloudpickle.register_pickle_by_value(sys.modules[__name__])


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


async def through_runner(
    jobs: int, slots: int, work_dir: Path, spawn: bool = False, groups: cgroups.JobGroups | None = None
) -> float:
    """Returns jobs/s over `jobs` jobs, `slots` at a time (after one warm-up job); `spawn`: no fork;
    `groups`: a control group per job, as a node with cgroups makes."""
    warm, done = asyncio.Event(), asyncio.Event()
    errors: list[str] = []
    finished = 0
    submitted = 0
    payload = dumps(((1,), {}))

    def submit() -> None:
        nonlocal submitted
        runner.run([RunJob("bench", submitted, payload, {})])
        submitted += 1

    def on_result(result: JobResult) -> None:
        nonlocal finished
        if result.status != JobStatus.FINISHED:
            errors.append(f"job failed: {result.exception}")
            warm.set()
            done.set()
        finished += 1
        if finished == 1:
            warm.set()
        elif submitted < jobs + 1:
            submit()
        elif finished == jobs + 1:
            done.set()

    def on_failed(cluster_id: str, message: str) -> None:
        errors.append(message)
        warm.set()
        done.set()

    runner = Runner(RunnerConfig(work_dir, account=myself(), spawn=spawn, cgroups=groups), on_result, on_failed)
    comp = Computation("function", "trivial", [], [], dumps(CodeObjects(func=trivial)), new_key())
    runner.load("bench", pack_computation(comp))
    try:
        submit()  # warm-up: waits for the zygote to load
        await warm.wait()
        start = time.perf_counter()
        for _ in range(slots):
            submit()
        await done.wait()
        if errors:
            raise RuntimeError(errors[0])
        return jobs / (time.perf_counter() - start)
    finally:
        await runner.close()


async def cancel_tree(n: int, work_dir: Path) -> float:
    """Seconds from `kill` of a job with an n-process tree to the last of them gone (and its result)."""
    done = asyncio.Event()
    results: list[JobResult] = []

    def on_result(result: JobResult) -> None:
        results.append(result)
        done.set()

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


def raw_fork(jobs: int) -> float:
    """fork + os._exit + waitpid, one at a time: what a fork alone costs."""
    start = time.perf_counter()
    for _ in range(jobs):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return jobs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tree", type=int, default=100, help="processes in the cancelled job's tree")
    args = parser.parse_args()
    fork_rate = raw_fork(args.jobs)

    def run(coro: Coroutine[Any, Any, float]) -> float:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # uvloop where installed
            return runner.run(coro)

    groups, why = cgroups.prepare()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("a", "b", "c", "d"):
            (Path(tmp) / sub).mkdir()
        runner_rate = run(through_runner(args.jobs, args.slots, Path(tmp) / "a"))
        grouped_rate = groups and run(through_runner(args.jobs, args.slots, Path(tmp) / "d", groups=groups))
        spawn_rate = run(through_runner(max(20, args.jobs // 20), args.slots, Path(tmp) / "c", spawn=True))
        cancel = run(cancel_tree(args.tree, Path(tmp) / "b"))
    if groups is not None:
        cgroups.release(groups)
    print(f"raw fork+exit+waitpid of python:      {fork_rate:8.0f} /s  ({1000 / fork_rate:.2f} ms each)")
    print(
        f"runner, {args.slots} slots, trivial jobs:     {runner_rate:8.0f} jobs/s  ({1000 / runner_rate:.2f} ms each)"
    )
    if grouped_rate:
        print(f"  the same, a control group per job:   {grouped_rate:8.0f} jobs/s  ({1000 / grouped_rate:.2f} ms each)")
    else:
        print(f"  (no control groups here: {why})")
    print(f"runner, {args.slots} slots, spawn mode (no fork): {spawn_rate:6.0f} jobs/s  ({1000 / spawn_rate:.2f} ms each)")
    print(f"cancel of a {args.tree}-process job to its last process gone: {cancel * 1000:.1f} ms")


if __name__ == "__main__":
    main()
