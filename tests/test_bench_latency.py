"""benchmarks/latency.py at a small scale: every hop it prints has a figure, and under strace every job is lined up
across the client's, the scheduler's and the node's traces (the frames' tags, the node's pipes), in both isolations."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from procs import ROOT

LATENCY = str(ROOT / "benchmarks" / "latency.py")


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, LATENCY, "--jobs", "5", "--timeout", "90", *args], capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def hop_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("    ")]


def test_untraced_client_hops_all_measured() -> None:
    out = run("--only", "worker", "--", "--no-journal")
    rows = hop_rows(out)
    assert len(rows) == 13, out
    assert all(re.search(r"\d+$", row) for row in rows), out
    assert "round trip (5 sequential): p50" in out, out


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_traced_jobs_lined_up_in_both_isolations() -> None:
    out = run("--trace")
    assert out.count("5 of 5 jobs lined up through every hop") == 2, out  # worker, then fork
    traced = [row for row in hop_rows(out) if "fsync" not in row and "SQLite" not in row and "commit" not in row]
    assert all(re.search(r"\d+$", row) for row in traced), out
    fsync = [row for row in hop_rows(out) if "of which fsync" in row]
    assert len(fsync) == 4 and all(re.search(r"\d+$", row) for row in fsync), out  # the journal syncs each commit
