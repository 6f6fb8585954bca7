"""Throughput and latency of trivial jobs through scheduler and node, in fork and worker isolation.

Starts `dispyscheduler` and one `dispynode` (2 CPUs) on 127.0.0.1, then, for
each isolation (`fork`: a process per job; `worker`: reused processes,
docs/isolation.md):
- 1 client submitting 2,000 trivial jobs: jobs/s from first submit to last result;
- 4 client processes at once, 500 jobs each: aggregate jobs/s, and the scheduler's and node's CPU per job;
- 50 sequential single jobs: p50 / p95 round trip (submit to result).
In fork isolation, just before the 1-client batch, the ceiling of fork
isolation: bare fork+wait of a zygote-sized process, as many forks as jobs, as
many at a time as CPUs (`bare_fork_rate`), and the ratio of the two rates.
Then, on the same machine in the same run: a JobCluster (worker isolation,
its default) against `concurrent.futures.ProcessPoolExecutor(2)` on the
same function and 1,000 jobs (and the JobCluster's p50 round trip). Each
figure is one summary line.
Run: `make bench`, or with the venv's python. `--no-journal` runs the
scheduler without its journal (benchmarks/journal.py compares the two in one
run), `--journal-sync normal` with one that does not fsync each commit (a
round trip waits for two commits: the submit's and the result's); `--only fork|worker` measures one isolation; `--prefetch 0 1 2` measures
each of the scheduler's prefetch windows (jobs per CPU sent ahead) in turn, in
one run, to compare them on the same (noisy) machine; `--prefetch-max 1 32`
the same for the adaptive window's most per CPU where jobs are short (at most
`--prefetch`: off).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import psutil

CLIENT = r"""
import sys, time
from dispy_client import SharedJobCluster

def f(x):
    return 2 * x

mode, n = sys.argv[1], int(sys.argv[2])
with SharedJobCluster(f, user=sys.argv[3], isolation=sys.argv[4]) as cluster:
    cluster.submit(0)()  # warm: the node has loaded the computation
    if mode == "batch":
        print("ready", flush=True)
        sys.stdin.readline()  # all clients start together
        t0, c0 = time.perf_counter(), time.process_time()
        jobs = [cluster.submit(i) for i in range(n)]
        cluster.wait()
        t1, c1 = time.perf_counter(), time.process_time()
        assert all(j.result == 2 * i for i, j in enumerate(jobs))
        print(f"batch {t0:.6f} {t1:.6f} {c1 - c0:.6f}", flush=True)
    else:
        rtts = []
        for i in range(n):
            t = time.perf_counter()
            assert cluster.submit(i)() == 2 * i
            rtts.append(time.perf_counter() - t)
        print("rtt " + " ".join(f"{r:.6f}" for r in rtts), flush=True)
"""


def start(argv: list[str], ready: str, log: Path) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    assert proc.stdout is not None
    match = re.search(ready, proc.stdout.readline())
    if not match:
        proc.kill()
        sys.exit(f"{argv} did not start; see {log}")
    return proc, match


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU time of a process and (unless not `descendants`) all its descendants, those that ended and were reaped
    included."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)] if descendants else [root]:
            times = proc.cpu_times()
            total += times.user + times.system
            if descendants:
                total += times.children_user + times.children_system
    except psutil.Error:
        pass
    return total


def run_batch(
    script: Path, env: dict[str, str], clients: int, jobs: int, isolation: str = "fork", cpu: dict[str, float] | None = None
) -> float:
    """Jobs/s of `clients` clients running `jobs` each at once; `cpu` gets the clients' CPU seconds ("client")."""
    procs = [
        subprocess.Popen([sys.executable, str(script), "batch", str(jobs), f"user{i}", isolation], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(clients)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
        _, t0, t1, used = out.split()
        spans.append((float(t0), float(t1)))
        if cpu is not None:
            cpu["client"] = cpu.get("client", 0.0) + float(used)
    return clients * jobs / (max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--no-journal", action="store_true", help="run the scheduler without its journal")
    ap.add_argument("--journal-sync", choices=("full", "normal"),
                    help="the scheduler's --journal-sync (full: its default; normal: no fsync per commit)")
    ap.add_argument("--only", choices=("fork", "worker"), help="measure one isolation through the scheduler")
    ap.add_argument("--jobs", type=int, default=2000, help="jobs of the one client (the four clients run a quarter each)")
    ap.add_argument("--prefetch", type=int, nargs="+", metavar="N",
                    help="the scheduler's --prefetch: each value measured in turn (default: its own default)")
    ap.add_argument("--prefetch-max", type=int, nargs="+", metavar="N",
                    help="the scheduler's --prefetch-max: each value measured in turn, with each --prefetch")
    args = ap.parse_args()
    for isolation in [args.only] if args.only else ["fork", "worker"]:
        for prefetch in args.prefetch or [None]:
            for most in args.prefetch_max or [None]:
                extra = [] if prefetch is None else ["--prefetch", str(prefetch)]
                extra += [] if most is None else ["--prefetch-max", str(most)]
                window = "" if prefetch is None else f", prefetch {prefetch}"
                window += "" if most is None else f", prefetch-max {most}"
                print(f"-- isolation {isolation}: scheduler + 1 node ({args.cpus} CPUs{window})", flush=True)
                sched_args = [*(["--no-journal"] if args.no_journal else []), *extra]
                if args.journal_sync:
                    sched_args += ["--journal-sync", args.journal_sync]
                for line in measure(args.cpus, sched_args, isolation=isolation, jobs=args.jobs):
                    print(line, flush=True)
    if not args.only:
        print("-- one machine, 1000 jobs of the same function", flush=True)
        for line in local_comparison(args.cpus, 1000):
            print(line, flush=True)


def local_comparison(cpus: int, jobs: int) -> list[str]:
    """JobCluster (its default, worker isolation) against ProcessPoolExecutor."""
    out = subprocess.run([sys.executable, "-c", LOCAL, str(cpus), str(jobs)], capture_output=True, text=True,
                         timeout=600, check=True).stdout  # fmt: skip
    figures = dict(line.split() for line in out.splitlines() if line.count(" ") == 1)
    jc, ppe, ppe_map = float(figures["jobcluster"]), float(figures["ppe_submit"]), float(figures["ppe_map"])
    return [
        f"JobCluster (worker):         {jc:7.0f} jobs/s; round trip (50 sequential) p50 "
        f"{float(figures['jobcluster_p50']) * 1000:.1f} ms",
        f"ProcessPoolExecutor({cpus}):     {ppe:7.0f} jobs/s (submit), {ppe_map:.0f} (map); JobCluster is {ppe / jc:.1f}x slower",
    ]


def bare_fork_rate(forks: int, slots: int = 2) -> tuple[float, float, float]:
    """(forks/s, CPU seconds per fork, page faults per fork) of fork isolation's ceiling: a process the size of a zygote (the zygote's
    modules imported, its heap frozen as `serve` does) forks `forks` children that `os._exit` at once and reaps
    each, `slots` alive at a time as a zygote keeps a node's CPUs busy. CPU and faults: the forker's and its children's."""
    out = subprocess.run([sys.executable, "-c", FORK, str(forks), str(slots)], capture_output=True, text=True,
                         timeout=600, check=True).stdout  # fmt: skip
    rate, cpu, faults = out.split()
    return float(rate), float(cpu), float(faults)


FORK = r"""
import gc, os, resource, sys, time
import dispy_node.zygote  # what a zygote has imported (a trivial cluster adds next to nothing)

def cpu():
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

def faults():
    return sum(resource.getrusage(who).ru_minflt for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

forks, slots = int(sys.argv[1]), int(sys.argv[2])
gc.freeze()
alive = started = 0
t0, c0, f0 = time.perf_counter(), cpu(), faults()
while started < forks or alive:
    if started < forks and alive < slots:
        if os.fork() == 0:
            os._exit(0)
        started += 1
        alive += 1
    else:
        os.wait()
        alive -= 1
print(forks / (time.perf_counter() - t0), (cpu() - c0) / forks, (faults() - f0) / forks)
"""


LOCAL = r"""
import concurrent.futures, sys, time
import dispy_client as dispy

def f(x):
    return 2 * x

if __name__ == "__main__":
    cpus, n = int(sys.argv[1]), int(sys.argv[2])
    with dispy.JobCluster(f, nodes=[("127.0.0.1", None, cpus)]) as cluster:
        cluster.submit(0)()
        t = time.perf_counter()
        jobs = [cluster.submit(i) for i in range(n)]
        cluster.wait()
        elapsed = time.perf_counter() - t
        assert all(j.result == 2 * i for i, j in enumerate(jobs))
        rtts = []
        for i in range(50):
            t = time.perf_counter()
            assert cluster.submit(i)() == 2 * i
            rtts.append(time.perf_counter() - t)
    print("jobcluster", n / elapsed)
    print("jobcluster_p50", sorted(rtts)[len(rtts) // 2])
    with concurrent.futures.ProcessPoolExecutor(cpus) as pool:
        pool.submit(f, 0).result()
        t = time.perf_counter()
        futures = [pool.submit(f, i) for i in range(n)]
        assert [x.result() for x in futures] == [2 * i for i in range(n)]
        print("ppe_submit", n / (time.perf_counter() - t))
        t = time.perf_counter()
        assert list(pool.map(f, range(n))) == [2 * i for i in range(n)]
        print("ppe_map", n / (time.perf_counter() - t))
"""


def measure(
    cpus: int, scheduler_args: list[str], rtt: bool = True, isolation: str = "fork", jobs: int = 2000
) -> list[str]:
    """Starts a scheduler (with `scheduler_args`) and a node, returns the figures as lines."""
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-"))
    script = tmp / "client.py"
    script.write_text(CLIENT)
    lines = []
    with scheduler_and_node(tmp, cpus, scheduler_args) as (address, sched, node):
        env = client_env(address)
        before = {"scheduler": cpu_seconds(sched.pid), "node": cpu_seconds(node.pid),
                  "daemon": cpu_seconds(node.pid, descendants=False)}  # fmt: skip
        cpu: dict[str, float] = {}
        bare = bare_fork_rate(jobs, cpus) if isolation == "fork" else None  # fork isolation's ceiling, now
        rate = run_batch(script, env, 1, jobs, isolation, cpu)
        cpu["scheduler"] = cpu_seconds(sched.pid) - before["scheduler"]
        cpu["node daemon"] = cpu_seconds(node.pid, descendants=False) - before["daemon"]
        cpu["zygote and jobs"] = cpu_seconds(node.pid) - before["node"] - cpu["node daemon"]
        lines.append(f"1 client x {jobs} jobs:  {rate:7.0f} jobs/s")
        per_job = ", ".join(f"{who} {used / jobs * 1e6:.0f}" for who, used in cpu.items())
        lines.append(f"  CPU per job (us): {per_job}; all {sum(cpu.values()) / jobs * 1e6:.0f}")
        if bare is not None:
            lines.append(f"  bare fork+wait, {jobs} forks {cpus} at a time, just before: {bare[0]:7.0f} /s, CPU per fork"
                         f" {bare[1] * 1e6:.0f} us, {bare[2]:.0f} page faults; {bare[0] / rate:.2f}x the jobs/s (target <= 1.5x)")  # fmt: skip
        before = {"scheduler": cpu_seconds(sched.pid), "node": cpu_seconds(node.pid),
                  "daemon": cpu_seconds(node.pid, descendants=False)}  # fmt: skip
        rate = run_batch(script, env, 4, jobs // 4, isolation)
        many = {"scheduler": cpu_seconds(sched.pid) - before["scheduler"],
                "node daemon": cpu_seconds(node.pid, descendants=False) - before["daemon"]}  # fmt: skip
        many["zygote and jobs"] = cpu_seconds(node.pid) - before["node"] - many["node daemon"]
        lines.append(f"4 clients x {jobs // 4} jobs:  {rate:7.0f} jobs/s")
        lines.append("  CPU per job (us): " + ", ".join(f"{who} {used / jobs * 1e6:.0f}" for who, used in many.items()))
        if rtt:
            out = subprocess.run([sys.executable, str(script), "rtt", "50", "latency", isolation], env=env,
                                 capture_output=True, text=True, timeout=300, check=True).stdout
            lines.append(rtt_line([float(x) for x in out.split()[1:]]))
    return lines


def rtt_line(rtts: list[float]) -> str:
    """The summary line of sequential round trips (seconds); latency.py prints the same."""
    ordered = sorted(rtts)
    p95 = ordered[int(0.95 * len(ordered)) - 1]
    return (f"round trip ({len(ordered)} sequential): p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms")  # fmt: skip


def client_env(address: str) -> dict[str, str]:
    """The environment of a client process of the scheduler at `address` (with this one's PYTHONPATH, if any: a
    checkout to compare, as the scheduler and node it starts get it)."""
    env = {"DISPY_SCHEDULER": address, "PATH": str(Path(sys.executable).parent)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class Service(NamedTuple):
    """A process this benchmark started: `proc` what it spawned (the program, or a wrapper such as strace), `pid` the
    program's own process."""

    proc: subprocess.Popen[str]
    pid: int


@contextlib.contextmanager
def scheduler_and_node(
    tmp: Path, cpus: int, scheduler_args: list[str], wrap: Callable[[str, list[str]], list[str]] | None = None
) -> Iterator[tuple[str, Service, Service]]:
    """A scheduler (with `scheduler_args`) on 127.0.0.1 port 0 and a node of `cpus` CPUs connected to it, logging in
    `tmp`: yields the scheduler's address and both, and ends both (and what they started) on leaving.
    `wrap(name, argv)`, `name` "scheduler" or "node", gives the command line that runs `argv` (e.g. under strace)."""
    bindir = Path(sys.executable).parent
    services: list[Service] = []

    def launch(name: str, argv: list[str], ready: str) -> re.Match[str]:
        proc, match = start(wrap(name, argv) if wrap else argv, ready, tmp / f"{name}.log")
        services.append(Service(proc, program_pid(proc)))
        return match

    try:
        m = launch("scheduler", [str(bindir / "dispyscheduler"), "--port", "0", "--state-dir", str(tmp / "state"),
                                 "--loglevel", "WARNING", *scheduler_args], r"listening on (\S+):(\d+)")  # fmt: skip
        address = f"{m.group(1)}:{m.group(2)}"
        launch("node", [str(bindir / "dispynode"), "--scheduler", address, "--cpus", str(cpus), "--work-dir",
                        str(tmp / "node"), "--loglevel", "WARNING", *(["--jobs-as-self"] if os.geteuid() == 0 else [])],
               r"connected to")  # fmt: skip
        yield address, services[0], services[1]
    finally:
        for service in reversed(services):
            stop(service)


def program_pid(proc: subprocess.Popen[str]) -> int:
    """The pid of the program `proc` runs: its own, or, under strace (which runs it as its child), the child's."""
    if Path(str(proc.args[0])).name != "strace":  # type: ignore[index]
        return proc.pid
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.Error:  # ended (and reaped) already
        return proc.pid
    return children[0].pid if children else proc.pid


def stop(service: Service, grace: float = 10) -> None:
    """Ends `service`: SIGTERM to its program (strace ends with it), SIGKILL after `grace` seconds; then, by PID,
    whatever it started that outlived it."""
    try:
        tree = psutil.Process(service.proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    try:
        os.kill(service.pid, signal.SIGTERM)
        service.proc.wait(grace)
    except (OSError, subprocess.TimeoutExpired):
        service.proc.kill()
        service.proc.wait(grace)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()


if __name__ == "__main__":
    main()
