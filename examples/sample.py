"""dispy's canonical first program, with only the import line changed.

    python examples/sample.py

JobCluster starts its own scheduler and uses this machine's CPUs.
"""


def compute(n):  # executed on the nodes
    import socket
    import time

    time.sleep(n)
    host = socket.gethostname()
    return (host, n)


if __name__ == "__main__":
    import random

    import dispy_client as dispy

    cluster = dispy.JobCluster(compute)
    jobs = []
    for i in range(10):
        job = cluster.submit(random.randint(1, 10) / 100.0)
        job.id = i  # associate an ID to identify jobs (if needed later)
        jobs.append(job)
    for job in jobs:
        host, n = job()  # waits for job to finish and returns results
        print("%s executed job %s at %s with %s" % (host, job.id, job.start_time, n))
        # other fields of 'job' that may be useful:
        # print(job.stdout, job.stderr, job.exception, job.ip_addr, job.start_time, job.end_time)
    cluster.print_status()
