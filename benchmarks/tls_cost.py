"""What TLS costs: trivial-job throughput, round trip and connection set-up, plaintext against TLS.

Starts a plaintext `dispyscheduler` + `dispynode` pair and a TLS pair (the
certificates `dispyscheduler tls init` makes; the node and client verify the
scheduler against its CA) on 127.0.0.1, one pair at a time, and for each:
- 1 client submitting 2,000 trivial jobs: jobs/s from first submit to last result;
- 100 sequential single jobs: p50 / p95 round trip (submit to result);
- 50 fresh connections to the scheduler: p50 time to a usable connection
  (TCP connect, plus the TLS handshake and certificate check for TLS).
Run: `.venv/bin/python benchmarks/tls_cost.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import CLIENT, run_batch, start

from dispy_sched import tls_init
from dispy_wire.tls import ClientTLS


async def connect_times(host: str, port: int, tls: ClientTLS | None, n: int) -> list[float]:
    """Seconds from dialing to a connection ready for the first frame, `n` times."""
    context = tls.context() if tls else None
    times = []
    for _ in range(n):
        t = time.perf_counter()
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host if context else None)
        if tls is not None:
            tls.check(writer.get_extra_info("ssl_object"))
        times.append(time.perf_counter() - t)
        writer.transport.abort()  # the scheduler's Challenge may be on its way: no orderly TLS close
    return times


def measure(tmp: Path, name: str, sched_flags: list[str], node_flags: list[str], tls: ClientTLS | None, cpus: int) -> dict[str, float]:
    bindir = Path(sys.executable).parent
    script = tmp / "client.py"
    procs = []
    try:
        sched, m = start([str(bindir / "dispyscheduler"), "--port", "0", "--state-dir", str(tmp / f"{name}-state"),
                          "--loglevel", "ERROR", *sched_flags], r"listening on (\S+):(\d+)", tmp / f"{name}-scheduler.log")  # fmt: skip
        procs.append(sched)
        host, port = m.group(1), int(m.group(2))
        node, _ = start([str(bindir / "dispynode"), "--scheduler", f"{host}:{port}", "--cpus", str(cpus),
                         "--work-dir", str(tmp / f"{name}-node"), "--loglevel", "WARNING", *node_flags,
                         *(["--jobs-as-self"] if os.geteuid() == 0 else [])], r"connected to", tmp / f"{name}-node.log")  # fmt: skip
        procs.append(node)
        env = {"DISPY_SCHEDULER": f"{host}:{port}", "PATH": str(bindir)}
        if tls is not None and tls.ca is not None:
            env["DISPY_TLS_CA"] = tls.ca
        jobs_per_s = run_batch(script, env, 1, 2000)
        out = subprocess.run([sys.executable, str(script), "rtt", "100", "latency"], env=env,
                             capture_output=True, text=True, timeout=300, check=True).stdout  # fmt: skip
        rtts = sorted(float(x) for x in out.split()[1:])
        connects = asyncio.run(connect_times(host, port, tls, 50))
        return {
            "jobs/s": jobs_per_s,
            "p50 ms": statistics.median(rtts) * 1000,
            "p95 ms": rtts[int(0.95 * len(rtts)) - 1] * 1000,
            "connect ms": statistics.median(connects) * 1000,
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-tls-"))
    (tmp / "client.py").write_text(CLIENT)
    tls_init.init(tmp / "tls", ["127.0.0.1"], [], [], 30)
    ca = str(tmp / "tls" / "ca.pem")
    cert, key = str(tmp / "tls" / "scheduler.pem"), str(tmp / "tls" / "scheduler.key")
    plain = measure(tmp, "plain", [], [], None, args.cpus)
    tls = measure(tmp, "tls", ["--tls-cert", cert, "--tls-key", key], ["--tls-ca", ca], ClientTLS(ca=ca), args.cpus)
    print(f"{'':28}{'plaintext':>12}{'TLS':>12}")
    print(f"{'1 client x 2000 jobs, jobs/s':28}{plain['jobs/s']:12.0f}{tls['jobs/s']:12.0f}")
    print(f"{'round trip p50, ms':28}{plain['p50 ms']:12.2f}{tls['p50 ms']:12.2f}")
    print(f"{'round trip p95, ms':28}{plain['p95 ms']:12.2f}{tls['p95 ms']:12.2f}")
    print(f"{'connection ready p50, ms':28}{plain['connect ms']:12.2f}{tls['connect ms']:12.2f}")


if __name__ == "__main__":
    main()
