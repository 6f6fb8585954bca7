"""A standalone program as the computation: each job runs it with its arguments.

    python examples/program.py

Jobs run `count_primes.py LO HI` on the nodes; `job.stdout` holds what it
printed and `job.result` its exit status, as in dispy.
"""

import os
import sys

import dispy_client as dispy

PROGRAM = """\
import sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
primes = [n for n in range(max(lo, 2), hi) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
print(len(primes))
sys.exit(0 if primes else 1)
"""

if __name__ == "__main__":
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "count_primes.py")
    with open(path, "w") as f:
        f.write(PROGRAM)
    cluster = dispy.JobCluster(path)
    ranges = [(lo, lo + 10_000) for lo in range(0, 100_000, 10_000)]
    jobs = [cluster.submit(lo, hi) for lo, hi in ranges]
    cluster.wait()
    total = 0
    for job, (lo, hi) in zip(jobs, ranges):
        if job.status != dispy.DispyJob.Finished or job.result != 0:
            print(f"job {lo}-{hi} failed: status {job.status}, exit {job.result}: {job.exception or job.stderr}")
            sys.exit(1)
        total += int(job.stdout)
    print(f"{total} primes below 100000")
    cluster.close()
