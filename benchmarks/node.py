"""Trivial jobs per second through the node's runner (fork per job, no scheduler),
next to the floor set by raw fork-and-wait of this Python process.

    .venv/bin/python benchmarks/node.py [--jobs N] [--slots S]

The runner is kept `--slots` jobs busy, as the scheduler keeps a 2-CPU node busy:
each result releases the next job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle

from dispy_node.runner import Runner
from dispy_wire.messages import JobResult, RunJob
from dispy_wire.payload import CodeObjects, Computation, dumps, pack_computation
from dispy_wire.status import JobStatus

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def trivial(x: int) -> int:
    return x + 1


async def through_runner(jobs: int, slots: int, work_dir: Path) -> float:
    """Returns jobs/s over `jobs` jobs, `slots` at a time (after one warm-up job)."""
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

    runner = Runner(work_dir, 5.0, on_result, on_failed)
    comp = Computation("function", "trivial", [], [], dumps(CodeObjects(func=trivial)))
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
    args = parser.parse_args()
    fork_rate = raw_fork(args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import uvloop
        except ImportError:
            runner_rate = asyncio.run(through_runner(args.jobs, args.slots, Path(tmp)))
        else:
            runner_rate = uvloop.run(through_runner(args.jobs, args.slots, Path(tmp)))
    print(f"raw fork+exit+waitpid of python:      {fork_rate:8.0f} /s  ({1000 / fork_rate:.2f} ms each)")
    print(
        f"runner, {args.slots} slots, trivial jobs:     {runner_rate:8.0f} jobs/s  ({1000 / runner_rate:.2f} ms each)"
    )


if __name__ == "__main__":
    main()
