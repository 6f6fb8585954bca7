"""What a login costs, and what a flood before login costs the scheduler.

    .venv/bin/python benchmarks/logins.py [--logins N] [--flood N]

1. SCRAM-SHA-256 login, both sides in one process (no sockets), at the
   default iteration count and at SCRAM's floor: the peer pays the PBKDF2,
   the scheduler only HMACs. Each offline guess at a recorded exchange costs
   one such PBKDF2 too.
2. A real `dispyscheduler`: logins per second over TCP from one client
   process; then its RSS before and after a 16 MiB frame and `--flood`
   idle connections from unauthenticated peers.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from dispy_wire import messages as M
from dispy_wire.framing import HEADER, PREAMBLE, FrameDecoder
from dispy_wire.handshake import PeerHandshake, Role, ServerHandshake
from dispy_wire.verifier import DEFAULT_ITERATIONS, MIN_ITERATIONS, Verifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.rawpeer import login  # noqa: E402  (the tests' hand-written peer)

ROOT = Path(__file__).resolve().parent.parent


def pure_login_ms(iterations: int, rounds: int) -> tuple[float, float]:
    """Median milliseconds of a whole login, and of the scheduler's part of it."""
    verifier = Verifier.from_secret("secret", iterations)
    totals, server_side = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        server = ServerHandshake(lambda r, n: verifier, b"k" * 32, "bench", fake_iterations=iterations)
        peer = PeerHandshake(Role.CLIENT, "alice", "secret", {})
        hello = peer.receive(server.challenge())
        t1 = time.perf_counter()
        first = server.receive(hello)
        t2 = time.perf_counter()
        assert isinstance(first, M.ServerFirst)
        proof = peer.receive(first)
        t3 = time.perf_counter()
        server.receive(proof)
        welcome = server.welcome("s", {})
        t4 = time.perf_counter()
        peer.receive(welcome)
        totals.append(time.perf_counter() - t0)
        server_side.append((t2 - t1) + (t4 - t3))
    return 1000 * statistics.median(totals), 1000 * statistics.median(server_side)


def tcp_login(address: tuple[str, int], secret: str) -> None:
    with socket.create_connection(address) as sock:
        assert isinstance(login(sock, FrameDecoder(), "alice", secret), M.Welcome)


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def scheduler_figures(logins: int, flood: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-logins-"))
    users = tmp / "users.toml"
    users.write_text(f'[users.alice]\nverifier = "{Verifier.from_secret("right")}"\n')
    users.chmod(0o600)
    argv = [sys.executable, "-m", "dispy_sched.main", "--port", "0", "--users-file", str(users),
            "--state-dir", str(tmp / "state"), "--loglevel", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        match = re.search(r"listening on (\S+):(\d+)", proc.stdout.readline())
        assert match, "scheduler did not start"
        address = (match.group(1), int(match.group(2)))
        t0 = time.perf_counter()
        for _ in range(logins):
            tcp_login(address, "right")
        elapsed = time.perf_counter() - t0
        print(f"TCP logins to a real scheduler (iterations {DEFAULT_ITERATIONS}): "
              f"{logins / elapsed:.1f}/s, {1000 * elapsed / logins:.1f} ms each")  # fmt: skip
        before = rss_mib(proc.pid)
        body = b"\xdd" + (16 << 20).to_bytes(4, "big") + b"\x80" * (16 << 20)
        with socket.create_connection(address) as sock:
            try:
                sock.sendall(PREAMBLE + HEADER.pack(len(body)) + body)
            except OSError:
                pass  # refused from its header
        after_frame = rss_mib(proc.pid)
        socks = []
        for i in range(flood):
            try:
                socks.append(socket.create_connection(address, source_address=(f"127.0.0.{2 + i % 40}", 0)))
            except OSError:
                break
        t1 = time.perf_counter()
        tcp_login(address, "right")
        during = time.perf_counter() - t1
        after_flood = rss_mib(proc.pid)
        fds = psutil.Process(proc.pid).num_fds()
        for sock in socks:
            sock.close()
        print(f"scheduler RSS: {before:.1f} MiB at rest, {after_frame:.1f} MiB after a 16 MiB pre-login frame, "
              f"{after_flood:.1f} MiB with {len(socks)} idle unauthenticated connections open ({fds} descriptors); "
              f"a login during the flood took {1000 * during:.0f} ms")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--logins", type=int, default=50)
    p.add_argument("--flood", type=int, default=1100)
    args = p.parse_args()
    for iterations in (DEFAULT_ITERATIONS, MIN_ITERATIONS):
        total, server = pure_login_ms(iterations, 20)
        print(f"SCRAM login, iterations {iterations}: {total:.1f} ms in all, {server:.2f} ms of it the scheduler's")
    scheduler_figures(args.logins, args.flood)


if __name__ == "__main__":
    main()
