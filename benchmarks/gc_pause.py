"""What Python's garbage collector costs the scheduler's loop while a million jobs are queued, in one process.

    .venv/bin/python benchmarks/gc_pause.py [--jobs 1000000] [--batch 1000]

A scheduling core (journal and accounting records on, no store, no node)
takes `--jobs` jobs in submits of `--batch`, as a client's turns bring
them, first with Python's own collector settings, then in a fresh process
with the scheduler's (`dispy_sched/gcpolicy.py`: full collections only by
the server's tick, once a second, which freezes what survives). Each
collection's pause is timed (`gc.callbacks`). Printed per run: the time to
queue all, the longest core call, the number of full collections and the
longest, all collections' time, and the objects left frozen. Every turn of
the loop that a full collection falls into is that much longer: peers hear
nothing meanwhile.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dispy_sched import gcpolicy  # noqa: E402  (run as a script from a checkout)
from dispy_sched.core import CoreConfig, SchedulerCore  # noqa: E402
from dispy_sched.core import events as E  # noqa: E402
from dispy_sched.policies import load_policy  # noqa: E402
from dispy_wire.messages import JobSpec  # noqa: E402


def run(jobs: int, batch: int, tuned: bool) -> str:
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(timed)
    if tuned:
        gcpolicy.tune(time.monotonic())
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True, accounting=True))
    core.handle(E.ClusterOpened("c", "bench", "K", "bench", b"x" * 2000, False, {}), now=time.time())
    longest = 0.0
    t0 = last_tick = time.perf_counter()
    for first in range(0, jobs, batch):
        specs = [JobSpec(j, 0, b"p" * 8, {}) for j in range(first, min(jobs, first + batch))]
        t = time.perf_counter()
        core.handle(E.JobsSubmitted("c", "K", specs), now=time.time())
        longest = max(longest, time.perf_counter() - t)
        if time.perf_counter() - last_tick >= 1.0:  # the server's tick
            last_tick = time.perf_counter()
            gcpolicy.sweep(time.monotonic())
    elapsed = time.perf_counter() - t0
    full = [p for generation, p in pauses if generation == 2]
    return (
        f"{'scheduler' if tuned else 'Python default'} collector: {jobs:,} jobs queued in {elapsed:.1f} s; longest core "
        f"call {longest:.3f} s; {len(full)} full collections, longest {max(full, default=0.0):.3f} s; all collections "
        f"{sum(p for _, p in pauses):.2f} s; {gc.get_freeze_count():,} objects frozen"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=1, help="runs of each, alternated (the machine's noise)")
    ap.add_argument("--one", choices=["default", "tuned"], help=argparse.SUPPRESS)  # a child run
    args = ap.parse_args()
    if args.one:
        print(run(args.jobs, args.batch, args.one == "tuned"), flush=True)
        return
    for _ in range(args.pairs):
        for which in ("default", "tuned"):  # each in a fresh process: a heap and collector of its own
            subprocess.run([sys.executable, __file__, "--one", which, "--jobs", str(args.jobs), "--batch", str(args.batch)],
                           check=True, timeout=1800)  # fmt: skip


if __name__ == "__main__":
    main()
