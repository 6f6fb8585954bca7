"""`make demo`: a scheduler, a node and two users' programs on 127.0.0.1.

Alice has share 2 and Bob share 1 in the users file; both run examples/pi.py
at the same time. While both have work, the scheduler gives Alice about two
thirds of the CPUs and Bob one third; the demo samples the scheduler's status
and prints who got which share, then each program's result.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dispy_client as dispy

HERE = Path(__file__).resolve().parent
#: the demo's users: name -> (secret, share). The scheduler's users file keeps only verifiers of the secrets.
USERS = {"alice": ("alice-secret", 2), "bob": ("bob-secret", 1), "observer": ("observer-secret", 1)}


def users_file(path: Path) -> None:
    """Writes what `dispyadmin user add` would, for secrets the demo chose itself (mode 600)."""
    from dispy_wire.verifier import Verifier

    tables = [f'[users.{name}]\nverifier = "{Verifier.from_secret(secret)}"\nshare = {share}\n'
              for name, (secret, share) in USERS.items()]  # fmt: skip
    path.write_text("\n".join(tables))
    path.chmod(0o600)


def start(argv: list[str], ready: str, log: Path) -> tuple[subprocess.Popen[str], re.Match[str]]:
    """Starts a daemon and waits for its readiness line on stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(ready, line)
    if not match:
        proc.kill()
        sys.exit(f"{argv[0]} did not start:\n{log.read_text()}")
    return proc, match


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-demo-"))
    users_file(tmp / "users.toml")
    procs: list[subprocess.Popen[str]] = []
    bindir = Path(sys.executable).parent
    try:
        sched, m = start(
            [str(bindir / "dispyscheduler"), "--port", "0", "--users-file", str(tmp / "users.toml"),
             "--node-secret", "demo-node", "--state-dir", str(tmp / "state"),
             "--show-others"],  # the observer watches alice and bob by name (by default: totals only)
            r"listening on (\S+):(\d+)", tmp / "scheduler.log",
        )
        procs.append(sched)
        address = f"{m.group(1)}:{m.group(2)}"
        print(f"scheduler listening on {address} (policy fair; alice share 2, bob share 1)")
        node, _ = start(
            [str(bindir / "dispynode"), "--scheduler", address, "--cpus", "6", "--name", "demo-node",
             "--node-secret", "demo-node", "--work-dir", str(tmp / "node"),
             # as root, jobs run as `nobody`, who may not be able to run this Python: the demo's
             # jobs are our own, so let them run as us
             *(["--jobs-as-self"] if os.geteuid() == 0 else [])],
            r"connected to", tmp / "node.log",
        )
        procs.append(node)
        print("node demo-node connected with 6 CPUs\n")

        env = {**os.environ, "DISPY_SCHEDULER": address}
        users = {}
        for user in ("alice", "bob"):
            users[user] = subprocess.Popen(
                [sys.executable, str(HERE / "pi.py"), "80", "300000"],
                env={**env, "DISPY_USER": user, "DISPY_SECRET": f"{user}-secret"},
                stdout=subprocess.PIPE, text=True,
            )
        observer = dispy.SharedJobCluster(len, scheduler_host=address, user="observer", secret="observer-secret")
        samples: list[tuple[int, int]] = []
        print(f"{'time':>6}  {'alice busy':>10}  {'bob busy':>8}  {'queued':>6}")
        started = time.monotonic()
        while any(p.poll() is None for p in users.values()):
            status = observer.scheduler_status()["users"]
            a, b = (status.get(u, {}) for u in ("alice", "bob"))
            if a.get("queued") and b.get("queued"):  # both backlogged: shares apply
                samples.append((a["busy"], b["busy"]))
            print(f"{time.monotonic() - started:>5.1f}s  {a.get('busy', 0):>10}  {b.get('busy', 0):>8}  "
                  f"{a.get('queued', 0) + b.get('queued', 0):>6}")
            time.sleep(0.5)
        observer.close()
        print()
        for user, proc in users.items():
            out, _ = proc.communicate()
            print(out.strip())
        if samples:
            alice = sum(a for a, _ in samples) / sum(a + b for a, b in samples)
            print(f"\nwhile both had work, alice held {alice:.0%} of the busy CPUs and bob {1 - alice:.0%} "
                  f"(targets 67% and 33%)")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
