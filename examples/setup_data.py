"""A setup that loads data once per node; every job then reads it (dispy's 'setup' idiom).

    python examples/setup_data.py [WORDS_FILE]

The data file travels with `depends`; `setup` runs once in the node's
per-cluster process, and the jobs, forked from it, see its globals without
loading anything again. A `job_status` callback counts finished jobs.
"""

import functools
import os
import sys
import tempfile
import threading


def setup(data_file):  # executed once on each node, before any job
    global words
    with open(data_file) as f:
        words = f.read().split()
    return 0


def cleanup():
    global words
    del words


def compute(prefix):  # executed on the nodes: 'words' comes from setup
    return sum(1 for w in words if w.startswith(prefix))


done = threading.Semaphore(0)


def job_status(job):  # executed on the client, on a thread of its own
    if job.status in (dispy.DispyJob.Finished, dispy.DispyJob.Terminated, dispy.DispyJob.Cancelled):
        done.release()


if __name__ == "__main__":
    import dispy_client as dispy

    if len(sys.argv) > 1:
        data_file = sys.argv[1]
    else:
        data_file = os.path.join(tempfile.mkdtemp(), "words.txt")
        with open(data_file, "w") as f:
            f.write(" ".join(f"{a}{b}" for a in "abcdefgh" for b in range(100)))
    cluster = dispy.JobCluster(
        compute,
        depends=[data_file],
        setup=functools.partial(setup, os.path.basename(data_file)),
        cleanup=cleanup,
        job_status=job_status,
    )
    prefixes = list("abcdefgh")
    jobs = [cluster.submit_job_id(p, p) for p in prefixes]
    for _ in jobs:
        done.acquire()
    for job in jobs:
        print(f"{job.id}: {job.result} words")
    cluster.close()
