"""What the HTTP server and a Prometheus scraper cost the scheduler, in one run.

Starts a scheduler and a node (2 CPUs) twice, as throughput.py does: once
without --http-port, once with it and a scraper that GETs /metrics (and
/api/v1/status, as a dashboard would) every second, and prints the batch
throughputs of both and their ratio, plus the scrape times seen.

Run with the venv's python: `python benchmarks/http_overhead.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from throughput import CLIENT, run_batch, start


class Scraper(threading.Thread):
    """GETs /metrics and /api/v1/status every `interval` seconds; keeps how long each took."""

    def __init__(self, url: str, token: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.interval = url, token, interval
        self.stop = threading.Event()
        self.times: list[float] = []
        self.sizes: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for path in ("/metrics", "/api/v1/status"):
                request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
                t = time.perf_counter()
                with urllib.request.urlopen(request, timeout=30) as response:
                    size = len(response.read())
                self.times.append(time.perf_counter() - t)
                self.sizes.append(size)


def one_run(http: bool, rounds: int) -> tuple[list[float], Scraper | None]:
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-http-"))
    script = tmp / "client.py"
    script.write_text(CLIENT)
    bindir = Path(sys.executable).parent
    procs = []
    scraper = None
    try:
        extra = ["--http-port", "0"] if http else []
        sched, m = start([str(bindir / "dispyscheduler"), "--port", "0", "--state-dir", str(tmp / "state"),
                          "--loglevel", "WARNING", *extra], r"listening on (\S+):(\d+)", tmp / "scheduler.log")
        procs.append(sched)
        address = f"{m.group(1)}:{m.group(2)}"
        if http:
            assert sched.stdout is not None
            found = re.search(r"http on (\S+)", sched.stdout.readline())
            assert found, "no http line"
            scraper = Scraper(found.group(1), (tmp / "state" / "admin-token").read_text().strip())
            scraper.start()
        node, _ = start([str(bindir / "dispynode"), "--scheduler", address, "--cpus", "2",
                         "--work-dir", str(tmp / "node"), "--loglevel", "WARNING",
                         *(["--jobs-as-self"] if os.geteuid() == 0 else [])], r"connected to", tmp / "node.log")
        procs.append(node)
        env = {"DISPY_SCHEDULER": address, "PATH": str(bindir)}
        rates = [run_batch(script, env, 4, 500) for _ in range(rounds)]
    finally:
        if scraper is not None:
            scraper.stop.set()
            scraper.join(30)
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
    return rates, scraper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="batches of 4 clients x 500 jobs per configuration (3)")
    args = ap.parse_args()
    # alternated, so a machine that gets busier during the run burdens both alike
    without, with_http = [], []
    scrapes: list[float] = []
    sizes: list[int] = []
    for _ in range(args.rounds):
        rates, _ = one_run(False, 1)
        without += rates
        rates, scraper = one_run(True, 1)
        with_http += rates
        assert scraper is not None
        scrapes += scraper.times
        sizes += scraper.sizes
    base, http = statistics.median(without), statistics.median(with_http)
    print(f"without HTTP:                     {base:7.0f} jobs/s (median of {len(without)}: {', '.join(f'{r:.0f}' for r in without)})")
    print(f"HTTP + scrape every 1 s:          {http:7.0f} jobs/s (median of {len(with_http)}: {', '.join(f'{r:.0f}' for r in with_http)})")
    print(f"ratio (with / without):           {http / base:7.3f}")
    if scrapes:
        print(f"scrapes: {len(scrapes)}, median {statistics.median(scrapes) * 1000:.1f} ms, max {max(scrapes) * 1000:.1f} ms, "
              f"largest answer {max(sizes)} bytes")


if __name__ == "__main__":
    main()
