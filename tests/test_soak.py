"""Chaos: nodes killed and restarted under load; every job still ends exactly once (`make soak`).

Bounded: a fixed number of kills, a deadline, and every process ended by PID.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from procs import Cluster

pytestmark = pytest.mark.soak

CLIENT = """
    import json, sys
    from dispy_client import SharedJobCluster

    def compute(i):
        import time
        time.sleep(0.02)
        return i * i

    seen = {}

    def status(job):
        if job.finish.is_set():
            seen[job.id] = seen.get(job.id, 0) + 1

    n = int(sys.argv[1])
    with SharedJobCluster(compute, reentrant=True, job_status=status) as cluster:
        jobs = [cluster.submit_job_id(i, i) for i in range(n)]
        print("submitted", flush=True)
        cluster.wait()
        results = [j.result for j in jobs]
        statuses = sorted({j.status for j in jobs})
    print(json.dumps({"ok": results == [i * i for i in range(n)], "statuses": statuses,
                      "callbacks": sorted(set(seen.values())), "count": len(seen)}))
"""


def test_jobs_survive_nodes_killed_and_restarted_under_load(cluster: Cluster) -> None:
    rng = random.Random(7)
    cluster.scheduler()
    nodes = {name: cluster.node(cpus=2, name=name) for name in ("n1", "n2", "n3")}
    clients = [cluster.client(CLIENT, f"client{i}", args=["1500"]) for i in range(2)]
    for client in clients:
        client.wait_for_line("submitted", timeout=60)
    deadline = time.monotonic() + 240
    for _ in range(12):  # bounded chaos: a dozen kills, each node back a moment later
        time.sleep(rng.uniform(0.5, 1.5))
        name = rng.choice(sorted(nodes))
        nodes[name].kill9()
        nodes[name] = cluster.node(cpus=2, name=name)
        assert time.monotonic() < deadline, "chaos loop overran"
    for client in clients:
        assert client.wait(max(1.0, deadline - time.monotonic())) == 0, cluster.describe()
        report = json.loads(client.stdout.splitlines()[-1])
        assert report == {"ok": True, "statuses": [11], "callbacks": [1], "count": 1500}, report
