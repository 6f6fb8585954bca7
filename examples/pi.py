"""Estimate pi by Monte Carlo on the shared cluster: a typical dispy program.

    DISPY_SCHEDULER=host:9702 python examples/pi.py [JOBS] [SAMPLES]

The user and secret come from $DISPY_USER and $DISPY_SECRET.
"""

import os
import sys

import dispy_client as dispy


def sample(n):
    import random

    inside = 0
    for _ in range(n):
        x, y = random.random(), random.random()
        inside += x * x + y * y <= 1.0
    return inside


if __name__ == "__main__":
    jobs_count = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    cluster = dispy.SharedJobCluster(sample, secret=os.environ.get("DISPY_SECRET", ""))
    jobs = [cluster.submit(samples) for _ in range(jobs_count)]
    inside = sum(job() for job in jobs)
    failed = [job for job in jobs if job.status != dispy.DispyJob.Finished]
    nodes = sorted({job.node for job in jobs if job.node})
    print(f"{cluster.user}: pi ~ {4 * inside / (jobs_count * samples):.5f} from {jobs_count} jobs on {', '.join(nodes)}"
          + (f" ({len(failed)} failed)" if failed else ""))
    cluster.close()
