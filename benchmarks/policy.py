"""Decisions per second of each policy, and memory per queued job, on the pure core.

    .venv/bin/python benchmarks/policy.py [--jobs 1000000] [--decisions 200000] [--policies fair,fifo]

Drives `SchedulerCore` directly (no sockets): 1,000 nodes x 8 CPUs, 200
users with 10 clusters each (2,000 clusters), 1,000,000 queued jobs. Then a
virtual clock runs: jobs last a random 1-100 s; each completion comes back
as a `ResultsArrived` (plus the client's `ResultsAcked`), in batches per
tick, and the core refills the freed CPUs. A decision is one dispatch; only
time inside `handle` counts, so the figure is the core's cost of finishing a
job and choosing the next one (in O(log n) of users, clusters, jobs and
nodes). Memory per queued job is what the core retains for it (tracemalloc,
payloads excluded: they are the client's bytes, whatever their size), and
the process's RSS growth, measured once (it does not depend on the policy).

One summary line per figure. A few minutes at most; not run by the tests.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispy_sched.core import CoreConfig, SchedulerCore  # noqa: E402
from dispy_sched.core import actions as A  # noqa: E402
from dispy_sched.core import events as E  # noqa: E402
from dispy_sched.policies import BUILTIN, load_policy  # noqa: E402
from dispy_wire.messages import JobResult, JobSpec  # noqa: E402

NODES, CPUS = 1_000, 8
USERS, CLUSTERS_PER_USER = 200, 10
TICK = 0.1  # seconds of virtual time per batch of completions
NO_OPTIONS: dict[str, object] = {}


def build(policy: str, jobs: int, rng: random.Random) -> SchedulerCore:
    """A core with every cluster open and `jobs` queued, before any node joins."""
    shares = {f"u{u:03d}": float(rng.choice((1, 1, 2, 3))) for u in range(USERS)}
    core = SchedulerCore(load_policy(policy), CoreConfig(shares=shares))
    opened = [
        E.ClusterOpened(f"c-u{u:03d}", f"u{u:03d}", f"k{u:03d}-{k}", "bench", b"", True, {})
        for u in range(USERS)
        for k in range(CLUSTERS_PER_USER)
    ]
    core.handle(*opened, now=0.0)
    submit(core, opened, jobs)
    return core


def submit(core: SchedulerCore, opened: list[E.ClusterOpened], jobs: int) -> None:
    per_cluster = jobs // len(opened)
    for i, ev in enumerate(opened):
        count = per_cluster + (1 if i < jobs % len(opened) else 0)
        specs = [JobSpec(j, 0, b"", NO_OPTIONS) for j in range(count)]
        core.handle(E.JobsSubmitted(ev.client, ev.cluster_id, specs), now=0.0)


def retained_bytes_per_job(jobs: int) -> tuple[float, float]:
    """(tracemalloc bytes, RSS bytes) the core keeps per queued job."""
    rng = random.Random(1)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    core = build("fair", jobs, rng)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = psutil.Process().memory_info().rss - rss0
    assert sum(u.queued for u in core.users.values()) == jobs
    del core
    gc.collect()
    return current / jobs, rss / jobs


def decisions_per_second(policy: str, jobs: int, decisions: int) -> tuple[float, float, int]:
    """(decisions/s in steady state, decisions/s of the first fill, decisions made)."""
    rng = random.Random(2)
    core = build(policy, jobs, rng)
    gc.collect()
    gc.freeze()  # a million long-lived records: keep the collector from rescanning them
    ends: list[tuple[float, int, str, str, int]] = []  # (end, seq, node, cluster, job)
    seq = 0
    now = 0.0
    core_time = 0.0
    made = 0

    def play(actions: list[A.Action]) -> int:
        nonlocal seq
        count = 0
        for action in actions:
            if isinstance(action, A.Dispatch):
                for run in action.jobs:
                    seq += 1
                    heapq.heappush(ends, (now + rng.uniform(1.0, 100.0), seq, action.node, run.cluster_id, run.job_id))
                count += len(action.jobs)
        return count

    joined = [E.NodeJoined(f"n{i}", f"host{i}", "10.0.0.1", CPUS, 1e9) for i in range(NODES)]
    t0 = time.perf_counter()
    actions = core.handle(*joined, now=now)
    fill = time.perf_counter() - t0
    filled = play(actions)
    while made < decisions and ends:
        now += TICK
        by_node: dict[str, list[JobResult]] = defaultdict(list)
        acks: dict[str, list[int]] = defaultdict(list)
        while ends and ends[0][0] <= now:
            end, _, node, cluster_id, job_id = heapq.heappop(ends)
            by_node[node].append(JobResult(cluster_id, job_id, 5, None, b"", b"", "", "", end - 1.0, end))
            acks[cluster_id].append(job_id)
        events: list[E.Event] = [E.ResultsArrived(n, rs) for n, rs in by_node.items()]
        events += [E.ResultsAcked(core.clusters[c].client or "", c, ids) for c, ids in acks.items()]
        t0 = time.perf_counter()
        actions = core.handle(*events, now=now)
        core_time += time.perf_counter() - t0
        made += play(actions)
    gc.unfreeze()
    return made / core_time, filled / fill, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs queued at the start (1,000,000)")
    parser.add_argument("--decisions", type=int, default=200_000, help="dispatches timed per policy (200,000)")
    parser.add_argument("--policies", default=",".join(BUILTIN), help="comma-separated policy names")
    args = parser.parse_args()
    print(
        f"{NODES} nodes x {CPUS} CPUs, {USERS} users, {USERS * CLUSTERS_PER_USER} clusters, "
        f"{args.jobs:,} queued jobs, jobs of 1-100 s"
    )
    for policy in args.policies.split(","):
        steady, fill, made = decisions_per_second(policy, args.jobs, args.decisions)
        print(f"policy {policy}: {steady:,.0f} decisions/s steady ({made:,} timed), {fill:,.0f}/s filling {NODES * CPUS} idle CPUs")
    traced, rss = retained_bytes_per_job(args.jobs)
    print(f"memory per queued job: {traced:,.0f} bytes retained (tracemalloc, payload excluded), {rss:,.0f} bytes RSS growth")


if __name__ == "__main__":
    main()
