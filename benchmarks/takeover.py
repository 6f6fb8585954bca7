"""How long a client waits for results when the leading scheduler dies (kill -9) or hangs (SIGSTOP).

Two schedulers on one PostgreSQL (started here: tests/pg.py), default
settings (lease 3 s, heartbeat 2 s); a node and a client given both
addresses; the client keeps 8 short jobs in flight and prints the time each
result arrives. Each round stops the leader one way or the other; the figure
is the time from that moment to the client's first result after it
reconnected (so one the new leader sent). A stopped leader is then killed; the old leader comes
back as the standby of the next round.

`--names` gives the client and the node one DNS name for both schedulers
instead of the list (both listen on one port, on 127.0.0.2 and 127.0.0.3,
and the name is resolved through a hosts file bind-mounted over /etc/hosts
in a mount namespace of their own: `unshare -m`, as root).

Run with the venv's python: `python benchmarks/takeover.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import start

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgServer  # type: ignore[import-not-found]  # noqa: E402

CLIENT = r"""
import logging
import sys
import time
from collections import deque
from dispy_client import SharedJobCluster

def f(x):
    import time
    time.sleep(0.05)
    return x

logging.basicConfig(format="%(created).3f %(message)s", level=logging.WARNING)  # "reconnected" lines, timed


def ended(job):  # called as each result arrives (a job already waited for may be collected later)
    if job.status == 11:  # Finished
        print(f"result {time.time():.3f}", flush=True)

# a name is not loopback to the plaintext check, though it resolves to loopback addresses here
cluster = SharedJobCluster(f, user="bench", reentrant=True, job_status=ended, insecure_plaintext=len(sys.argv) > 1)
print("ready", flush=True)
jobs = deque(cluster.submit(1) for _ in range(8))
while True:
    jobs.popleft()()
    jobs.append(cluster.submit(1))
"""

NAME = "dispy-bench-schedulers.test"
#: seconds of load on a leader before it is hit: a node's session that lasted this long redials without backoff
SETTLE = 12.0


def in_namespace(argv: list[str], hosts: Path) -> list[str]:
    """argv run where `hosts` is /etc/hosts: a mount namespace of its own (the host's file is never touched)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh", *argv]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def reconnected(log: Path, after: float) -> float | None:
    """When the client logged that it reconnected, after `after` (None: not yet)."""
    for line in log.read_text().splitlines():
        stamp, _, message = line.partition(" ")
        if message.startswith("reconnected to the scheduler") and float(stamp) > after:
            return float(stamp)
    return None


def measure(dsn: str, rounds: int, how: signal.Signals, names: bool) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-takeover-"))
    bindir = Path(sys.executable).parent
    (tmp / "client.py").write_text(CLIENT)
    hosts = tmp / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")
    port = free_port("127.0.0.2")
    ips = ["127.0.0.2", "127.0.0.3"] if names else ["127.0.0.1", "127.0.0.1"]
    sched = [str(bindir / "dispyscheduler"), "--state", dsn, "--loglevel", "INFO"]
    procs: list[subprocess.Popen[str]] = []
    figures = []

    def scheduler(i: int, fixed: int) -> tuple[subprocess.Popen[str], str]:
        proc, m = start([*sched, "--host", ips[i], "--port", str(fixed), "--state-dir", str(tmp / f"s{i}")],
                        r"listening on (\S+):(\d+)", tmp / f"s{i}-{len(procs)}.log")  # fmt: skip
        procs.append(proc)
        return proc, f"{m.group(1)}:{m.group(2)}"

    def wrap(argv: list[str]) -> list[str]:
        return in_namespace(argv, hosts) if names else argv

    try:
        first, a = scheduler(0, port if names else 0)
        second, b = scheduler(1, port if names else 0)
        schedulers = [first, second]
        addresses = f"{NAME}:{port}" if names else f"{a},{b}"
        plain = ["--insecure-plaintext"] if names else []  # a name is not loopback to the plaintext check
        node, _ = start(wrap([str(bindir / "dispynode"), "--scheduler", addresses, "--cpus", "2", "--work-dir", str(tmp / "node"),
                              "--loglevel", "INFO", *plain, *(["--jobs-as-self"] if os.geteuid() == 0 else [])]),
                        r"connected to", tmp / "node.log")  # fmt: skip
        procs.append(node)
        env = {"DISPY_SCHEDULER": addresses, "PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"}
        client = subprocess.Popen(wrap([sys.executable, str(tmp / "client.py"), *(["plaintext"] if names else [])]), env=env, stdout=subprocess.PIPE, text=True,
                                  stderr=open(tmp / "client.log", "w"))  # fmt: skip
        procs.append(client)
        assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        leader = 0
        for r in range(rounds):
            time.sleep(SETTLE)  # the load settles on the leader
            hit = time.time()
            schedulers[leader].send_signal(how)
            # results already on their way when the leader was hit do not count: the first one after the
            # client reconnected does
            while True:
                line = client.stdout.readline()
                if not line:
                    sys.exit(f"the client ended; see {tmp / 'client.log'}")
                back = reconnected(tmp / "client.log", hit)
                if back is not None and float(line.split()[1]) > back:
                    break
            figures.append(float(line.split()[1]) - hit)
            print(f"  {how.name} round {r + 1}: {figures[-1]:.2f} s", flush=True)
            old = schedulers[leader]
            old.kill()  # a stopped one too: it would step down (exit 4) when continued
            old.wait()
            host, fixed = (a if leader == 0 else b).rsplit(":", 1)
            schedulers[leader], _ = scheduler(leader, int(fixed))
            leader = 1 - leader
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", action="store_true", help="one DNS name with both addresses instead of the list")
    args = ap.parse_args()
    server = PgServer()
    try:
        for how in (signal.SIGKILL, signal.SIGSTOP):
            figures = measure(server.dsn, args.rounds, how, args.names)
            print(
                f"leader {how.name} to the client's next result ({'one name' if args.names else 'an address list'}), "
                f"{len(figures)} rounds: median {statistics.median(figures):.2f} s, max {max(figures):.2f} s",
                flush=True,
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
