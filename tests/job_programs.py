"""Client program texts that several real-process test modules share."""

#: a job that appends its id to a file as it starts (so a test counts how often each ran), then sleeps
#: unless it ran before; `name(job)` is a job's status by name
COUNTING_JOB = """
import sys, time
from dispy_client import SharedJobCluster
from dispy_wire.status import JobStatus

def compute(i, path, seconds):
    import time
    with open(path) as f:
        again = str(i) in f.read().split()
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(0 if again else seconds)
    return i

def name(job):
    return JobStatus(job.status).name
"""
