"""Jobs with large results, end to end: what each MiB of result costs on its way to the client.

Starts `dispyscheduler` and one `dispynode` (2 CPUs) on 127.0.0.1, as
benchmarks/throughput.py does; then, for each isolation (`worker`, `fork`),
one client runs `--jobs` jobs that each return `--mib` MiB of bytes
(SharedJobCluster, the results collected as they come). Printed, one line
each: MiB of results a second from the first submit to the last result, and
the CPU per MiB of the client, the scheduler, the node daemon and the zygote
with its job processes. A result is signed in its job process and checked by
the client (dispy_wire/result_mac.py), pickled and unpickled, and journaled
by the scheduler: these figures show what that path costs a MiB.

Run: `.venv/bin/python benchmarks/large_results.py [--jobs 40] [--mib 4]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import client_env, cpu_seconds, scheduler_and_node  # noqa: E402  (run as a script)

CLIENT = r"""
import sys, time
from dispy_client import SharedJobCluster

def f(size):
    return bytes(size)

n, size, isolation = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with SharedJobCluster(f, isolation=isolation) as cluster:
    cluster.submit(1)()  # warm: the node has loaded the computation
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.perf_counter(), time.process_time()
    jobs = [cluster.submit(size) for _ in range(n)]
    assert all(len(job()) == size for job in jobs)
    t1, c1 = time.perf_counter(), time.process_time()
    print(f"{t1 - t0:.6f} {c1 - c0:.6f}", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--mib", type=int, default=4, help="MiB of each job's result")
    ap.add_argument("--only", choices=("fork", "worker"), help="measure one isolation")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dispy-bench-large-") as name:  # the journals hold every result
        tmp = Path(name)
        script = tmp / "client.py"
        script.write_text(CLIENT)
        for isolation in [args.only] if args.only else ["worker", "fork"]:
            (tmp / isolation).mkdir()
            print(measure(script, tmp / isolation, isolation, args.jobs, args.mib), flush=True)


def measure(script: Path, tmp: Path, isolation: str, jobs: int, mib: int) -> str:
    """The summary line of `jobs` jobs of `mib` MiB each, through a scheduler and node of their own."""
    with scheduler_and_node(tmp, 2, []) as (address, sched, node):
        proc = subprocess.Popen([sys.executable, str(script), str(jobs), str(mib << 20), isolation],
                                env=client_env(address), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            before = {"scheduler": cpu_seconds(sched.pid), "node": cpu_seconds(node.pid),
                      "daemon": cpu_seconds(node.pid, descendants=False)}  # fmt: skip
            out, _ = proc.communicate("go\n", timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, out
        wall, client = map(float, out.split())
        cpu = {
            "client": client,
            "scheduler": cpu_seconds(sched.pid) - before["scheduler"],
            "node daemon": cpu_seconds(node.pid, descendants=False) - before["daemon"],
        }
        cpu["zygote and jobs"] = cpu_seconds(node.pid) - before["node"] - cpu["node daemon"]
    total = jobs * mib
    per_mib = ", ".join(f"{who} {used / total * 1000:.1f}" for who, used in cpu.items())
    return f"{isolation}: {jobs} jobs x {mib} MiB: {total / wall:6.0f} MiB/s; CPU per MiB (ms): {per_mib}"

if __name__ == "__main__":
    main()
