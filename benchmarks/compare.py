"""The same trivial workload on this project and on the alternatives, in one run, on this machine.

    .venv/bin/python benchmarks/compare.py [--jobs 2000] [--cpus 2] [--timeout 120]

`def f(x): return 2*x`, `--jobs` jobs from one client, `--cpus` worker CPUs:
- this project: `dispyscheduler` + one `dispynode` on 127.0.0.1, one
  SharedJobCluster, in worker isolation and in fork isolation;
- concurrent.futures.ProcessPoolExecutor(cpus), in one process;
- Dask distributed: a LocalCluster of `cpus` single-threaded worker processes;
- dispy 4.15.2: one `dispynode.py` (its fixed ports, on 127.0.0.1) and a JobCluster.
Dask and dispy are the optional `bench` extra (`pip install -e '.[bench]'`);
one not installed is skipped, saying so. Each system runs in a process of its
own bounded by `--timeout`: one that does not finish in time is reported as
stalled. Printed: jobs/s from the first submit to the last result (after one
warm-up job), and each rate as a multiple of this project's worker mode.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CLIENT, run_batch, start  # noqa: E402  (the same client program and process handling)

#: each system's run, as a program printing `rate JOBS_PER_S`; argv: jobs, cpus, work dir
PROGRAMS = {
    "ProcessPoolExecutor": r"""
import concurrent.futures, sys, time

def f(x):
    return 2 * x

if __name__ == "__main__":
    n, cpus = int(sys.argv[1]), int(sys.argv[2])
    with concurrent.futures.ProcessPoolExecutor(cpus) as pool:
        pool.submit(f, 0).result()
        t = time.perf_counter()
        futures = [pool.submit(f, i) for i in range(n)]
        assert [x.result() for x in futures] == [2 * i for i in range(n)]
        print("rate", n / (time.perf_counter() - t))
""",
    "Dask distributed": r"""
import sys, time
from dask.distributed import Client, LocalCluster

def f(x):
    return 2 * x

if __name__ == "__main__":
    n, cpus = int(sys.argv[1]), int(sys.argv[2])
    with LocalCluster(n_workers=cpus, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(f, -1, pure=False).result()
        t = time.perf_counter()
        futures = client.map(f, range(n), pure=False)
        assert client.gather(futures) == [2 * i for i in range(n)]
        print("rate", n / (time.perf_counter() - t))
""",
    "dispy 4.15.2": r"""
import logging, os, subprocess, sys, time
import dispy

def f(x):
    return 2 * x

if __name__ == "__main__":
    n, cpus, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    node = os.path.join(os.path.dirname(sys.executable), "dispynode.py")
    proc = subprocess.Popen([sys.executable, node, "-c", str(cpus), "-i", "127.0.0.1", "--daemon", "--clean",
                             "--dest_path_prefix", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # dispynode.py says nothing when it is ready; its JobCluster waits for nodes anyway
        cluster = dispy.JobCluster(f, nodes=["127.0.0.1"], host="127.0.0.1", loglevel=logging.WARNING,
                                   dest_path=work, recover_file=os.path.join(work, "recover"))
        try:
            assert cluster.submit(-1)() == -2
            t = time.perf_counter()
            jobs = [cluster.submit(i) for i in range(n)]
            assert [j() for j in jobs] == [2 * i for i in range(n)]
            print("rate", n / (time.perf_counter() - t))
        finally:
            cluster.close()
    finally:
        proc.terminate()
        proc.wait(10)
""",
}
#: what each system needs installed (absent: skipped)
NEEDS = {"Dask distributed": "distributed", "dispy 4.15.2": "dispy"}


def this_project(jobs: int, cpus: int) -> dict[str, float]:
    """jobs/s of one SharedJobCluster through a real scheduler and node, in each isolation."""
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-compare-"))
    script = tmp / "client.py"
    script.write_text(CLIENT)
    bindir = Path(sys.executable).parent
    procs: list[subprocess.Popen[str]] = []
    try:
        sched, m = start([str(bindir / "dispyscheduler"), "--port", "0", "--state-dir", str(tmp / "state"),
                          "--loglevel", "WARNING"], r"listening on (\S+):(\d+)", tmp / "scheduler.log")  # fmt: skip
        procs.append(sched)
        address = f"{m.group(1)}:{m.group(2)}"
        node, _ = start([str(bindir / "dispynode"), "--scheduler", address, "--cpus", str(cpus),
                         "--work-dir", str(tmp / "node"), "--loglevel", "WARNING",
                         *(["--jobs-as-self"] if os.geteuid() == 0 else [])], r"connected to", tmp / "node.log")  # fmt: skip
        procs.append(node)
        env = {"DISPY_SCHEDULER": address, "PATH": str(bindir)}
        return {f"this project ({iso})": run_batch(script, env, 1, jobs, iso) for iso in ("worker", "fork")}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def other(name: str, jobs: int, cpus: int, timeout: float) -> float | str:
    """jobs/s of `name`, or why there is no figure."""
    need = NEEDS.get(name)
    if need and importlib.util.find_spec(need) is None:
        return "not installed (pip install -e '.[bench]')"
    with tempfile.TemporaryDirectory(prefix="dispy-bench-compare-") as work:
        script = Path(work) / "run.py"
        script.write_text(PROGRAMS[name])
        proc = subprocess.Popen([sys.executable, str(script), str(jobs), str(cpus), work], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the run and the processes it started, nothing else
            proc.communicate()
            return f"stalled: not done within {timeout:g} s"
    for line in out.splitlines():
        if line.startswith("rate "):
            return float(line.split()[1])
    return f"failed (exit {proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else 'no output'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds each system may take")
    args = ap.parse_args()
    print(f"-- def f(x): return 2*x, {args.jobs:,} jobs from one client, {args.cpus} CPUs", flush=True)
    figures: dict[str, float | str] = dict(this_project(args.jobs, args.cpus))
    for name in PROGRAMS:
        figures[name] = other(name, args.jobs, args.cpus, args.timeout)
    ours = figures["this project (worker)"]
    assert isinstance(ours, float)
    for name, figure in figures.items():
        if isinstance(figure, float):
            print(f"{name:26} {figure:8,.0f} jobs/s  {figure / ours:5.2f}x this project (worker)", flush=True)
        else:
            print(f"{name:26} {figure}", flush=True)


if __name__ == "__main__":
    main()
