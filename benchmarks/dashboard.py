"""The dashboard with many running jobs: time to first paint and update latency, in Debian's chromium.

The scheduler's core is filled through its own events (N jobs of two users
running on simulated nodes: no sockets, no job processes), the real HTTP
server serves it on 127.0.0.1, and a headless chromium (Playwright) opens
the page on the same event loop:

- first paint: from navigation (logged in) until the page shows the N running jobs;
- update latency: from a result arriving at the core until the page shows one job fewer running
  (the feed sends at most every 0.5 s, so this is up to that plus the render);
- the size of one snapshot on the wire.

Run with the venv's python: `python benchmarks/dashboard.py [--jobs 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from playwright.async_api import async_playwright

from dispy_sched.config import SchedConfig
from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import events as E
from dispy_sched.httpd import Identity
from dispy_sched.policies import load_policy
from dispy_sched.server import SchedulerServer
from dispy_wire.messages import JobResult, JobSpec
from dispy_wire.status import JobStatus

CPUS_PER_NODE = 50


def fill(server: SchedulerServer, jobs: int) -> list[tuple[str, str, int]]:
    """N running jobs, half alice's and half bob's, on N / 50 nodes; returns (node, cluster, job) of each."""
    now = time.time()
    nodes = [f"n{i}" for i in range((jobs + CPUS_PER_NODE - 1) // CPUS_PER_NODE)]
    events: list[E.Event] = [E.NodeJoined(n, f"node{i}", "127.0.0.1", CPUS_PER_NODE, 3600.0) for i, n in enumerate(nodes)]
    for user in ("alice", "bob"):
        events.append(E.ClusterOpened(f"c-{user}", user, f"K-{user}", "compute", b"code", True, {}))
        specs = [JobSpec(i, 0, b"args", {}) for i in range(jobs // 2)]
        events.append(E.JobsSubmitted(f"c-{user}", f"K-{user}", specs))
    server.core.handle(*events, now=now)
    return [(job.node or "", c.cluster_id, job.job_id) for c in server.core.clusters.values() for job in c.jobs.values()]


async def running_shown(page: Any) -> int | None:
    """The page's "running" card (its text is "<n>running"); None before the first render."""
    for card in await page.eval_on_selector_all("#summary .card", "cs => cs.map(c => c.textContent)"):
        if card.endswith("running"):
            return int(card[: -len("running")])
    return None


async def wait_for(page: Any, count: int, timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if await running_shown(page) == count:
            return time.perf_counter() - start
        await asyncio.sleep(0.005)
    raise AssertionError(f"the page never showed {count} running jobs")


async def run(jobs: int, updates: int, chromium: str) -> None:
    state = tempfile.mkdtemp(prefix="dispy-bench-dash-")
    config = SchedConfig(state_dir=state, http_port=0)
    server = SchedulerServer(config, SchedulerCore(load_policy("fair"), CoreConfig()))
    placed = fill(server, jobs)
    await server.start_http(0)
    assert server.http is not None
    token = open(os.path.join(state, "admin-token")).read().strip()
    size = len(json.dumps(server.http.dashboard.snapshot(Identity(None)), separators=(",", ":")))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        page = await browser.new_page()
        await page.goto(server.http_url + "/")
        await page.fill("#token", token)
        t0 = time.perf_counter()
        await page.click("#login button[type=submit]")
        await wait_for(page, jobs)
        first = time.perf_counter() - t0
        latencies = []
        for i in range(updates):
            node, cluster, job = placed[i]
            result = JobResult(cluster, job, int(JobStatus.FINISHED), b"r", b"", b"", "", "", time.time() - 1, time.time())
            server.submit(E.ResultsArrived(node, [result]))
            latencies.append(await wait_for(page, jobs - i - 1))
        await browser.close()
    await server.stop()
    shutil.rmtree(state, ignore_errors=True)
    print(f"{jobs} running jobs, {len(placed) // CPUS_PER_NODE or 1} nodes; one snapshot: {size / 1024:.0f} KiB")
    print(f"first paint (log in to {jobs} running shown): {first * 1000:.0f} ms")
    print(f"update latency over {updates} job ends: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms (the feed sends at most every 0.5 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=10)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install chromium")
    asyncio.run(run(args.jobs, args.updates, chromium))


if __name__ == "__main__":
    main()
