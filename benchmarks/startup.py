"""Start-up: what a short script pays before and around its first job.

Each round runs, as fresh processes of this Python:
- a JobCluster program that times `import dispy_client`, opening the cluster
  (its scheduler, and this machine's node joined), the first job's round trip
  (the node starts the cluster's zygote) and the close;
- the same with `concurrent.futures.ProcessPoolExecutor(2)`, for reference;
- `import` of each process's entry module (scheduler, node, zygote, client):
  the CPU a start costs every process before it does anything, beyond the
  interpreter's own start (measured alone, and subtracted).
Rounds alternate the programs (the machine is shared and noisy); each figure
is the median over the rounds, with the smallest and largest.

    .venv/bin/python benchmarks/startup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

JOBCLUSTER = r"""
import json, time
t0 = time.perf_counter()
from dispy_client import JobCluster
t1 = time.perf_counter()

def f(x):
    return 2 * x

with JobCluster(f) as cluster:
    t2 = time.perf_counter()
    assert cluster.submit(1)() == 2
    t3 = time.perf_counter()
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "first job": t3 - t2, "close": t4 - t3, "all": t4 - t0}))
"""

EXECUTOR = r"""
import json, multiprocessing, time
t0 = time.perf_counter()
from concurrent.futures import ProcessPoolExecutor
t1 = time.perf_counter()

def f(x):
    return 2 * x

if __name__ == "__main__":
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:  # (f is in no file)
        t2 = time.perf_counter()
        assert pool.submit(f, 1).result() == 2
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "open": t2 - t1, "first job": t3 - t2, "close": t4 - t3, "all": t4 - t0}))
"""

#: the module each of our processes starts from
ENTRIES = {"scheduler": "dispy_sched.main", "node": "dispy_node.main", "zygote": "dispy_node.zygote",
           "client": "dispy_client"}  # fmt: skip


def run_program(code: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"a start-up program failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def process_cpu(code: str) -> float:
    """CPU seconds (user + system) of a fresh interpreter that runs `code` and exits."""
    before = os.times()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms  ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    programs = {"JobCluster": JOBCLUSTER, "ProcessPoolExecutor(2)": EXECUTOR}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in programs}
    imports: dict[str, list[float]] = {name: [] for name in ENTRIES}
    bare: list[float] = []
    for _ in range(args.rounds):
        for name, code in programs.items():
            for phase, seconds in run_program(code).items():
                times[name].setdefault(phase, []).append(seconds)
        bare.append(process_cpu("pass"))
        for name, module in ENTRIES.items():
            imports[name].append(process_cpu(f"import {module}") - bare[-1])
    print(f"start-up, median of {args.rounds} rounds (smallest-largest)")
    for name, phases in times.items():
        print(f"  {name}")
        for phase, values in phases.items():
            print(f"    {phase:10} {spread(values)}")
    print(f"  CPU to start a process: the interpreter {spread(bare)}, then its imports")
    for name, values in imports.items():
        print(f"    {name:10} {spread(values)}  import {ENTRIES[name]}")


if __name__ == "__main__":
    main()
