"""benchmarks/scale.py at a small scale: its simulated nodes and client speak the protocol the real scheduler
accepts, so every job is accepted, dispatched and answered, and each figure is printed."""

from __future__ import annotations

import subprocess
import sys

from procs import ROOT


def test_scale_benchmark_drains_every_job() -> None:
    argv = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--nodes", "5", "--cpus", "2", "--jobs", "3000",
            "--batch", "500", "--journal", "off", "--timeout", "90"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for figure in ("5 nodes logged in", "accept 3,000 jobs", "bytes per queued job", "drain over 5 nodes x 2 CPUs",
                   "us of scheduler CPU per job"):  # fmt: skip
        assert figure in done.stdout, done.stdout
