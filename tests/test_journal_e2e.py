"""Nothing accepted is lost: real scheduler, node and client processes killed and restarted.

Every job appends its id to a file as it starts, so the test counts how
often each one ran: a job that is not reentrant must run at most once,
whatever was killed, and every job must reach the user exactly once (within
one process; across a client killed mid-callback, at least once, with
`recover_jobs` returning each of the rest once).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.journal import FILENAME, SqliteJournal
from dispy_sched.policies import load_policy
from dispy_sched.server import EXIT_JOURNAL_FAILED
from procs import Cluster, Proc
from test_core import opened, submitted
from waiting import wait_until

#: the job and its run log, shared by the client programs below
JOB = """
import sys, time
from dispy_client import DispyJob, SharedJobCluster, recover_jobs

def compute(i, path, seconds):
    import time
    with open(path, "a") as f:
        f.write(f"{i}\\n")
    time.sleep(seconds)
    return i
"""


def runs(cluster: Cluster) -> Counter[int]:
    """How many times each job started."""
    path = cluster.workdir / "runs.txt"
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


def restart(
    cluster: Cluster, old: Proc, how: signal.Signals, *args: str, meanwhile: Callable[[], None] = lambda: None
) -> Proc:
    """Stops the scheduler (`how`), runs `meanwhile`, and starts it again on the same port and state directory."""
    port = cluster.address.rsplit(":", 1)[1]
    if how is signal.SIGKILL:
        old.kill9()
    else:
        old.stop(how)
    meanwhile()
    state = str(cluster.workdir / "scheduler-state")
    return cluster.scheduler("--port", port, "--state-dir", state, *args, name=f"scheduler-{len(cluster.procs)}")


def recover(cluster: Cluster) -> dict[int, list[tuple[int, str]]]:
    """Runs `recover_jobs` in a new process: job id -> [(status, result)] it returned."""
    proc = cluster.run_client(
        JOB + """
jobs = recover_jobs("recover.jsonl", timeout=90)
for job in jobs:
    print("recovered", job.id, job.status, job.result, flush=True)
""",
        name=f"recover-{len(cluster.procs)}",
        timeout=120,
    )
    out: dict[int, list[tuple[int, str]]] = {}
    for m in re.finditer(r"^recovered (\d+) (\d+) (\S+)$", proc.stdout, re.M):
        out.setdefault(int(m.group(1)), []).append((int(m.group(2)), m.group(3)))
    return out


def seen_by(client: Proc) -> Counter[int]:
    return Counter(int(m) for m in re.findall(r"^done (\d+)$", client.stdout, re.M))


def test_recover_jobs_gets_every_result_after_the_client_and_then_the_scheduler_are_killed(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--state-dir", str(cluster.workdir / "scheduler-state"))
    cluster.node(cpus=2)
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
def status(job):
    if job.finish.is_set():
        print("done", job.id, flush=True)

c = SharedJobCluster(compute, recover_file="recover.jsonl", job_status=status)
for i in range(40):
    c.submit_job_id(i, i, {str(runs_file)!r}, 0.2)
time.sleep(600)
"""
    )
    wait_until(lambda: len(seen_by(client)) >= 6, what="six results at the client")
    client.kill9()
    scheduler = restart(cluster, scheduler, signal.SIGKILL)  # running, queued and held jobs: all in the journal
    recovered = recover(cluster)
    seen = seen_by(client)
    assert all(len(v) == 1 for v in recovered.values()), recovered
    assert set(recovered) | set(seen) == set(range(40)), "lost: %s" % (set(range(40)) - set(recovered) - set(seen))
    assert len(set(recovered) & set(seen)) <= 2  # only what a callback was handling as the client died
    assert all(status == 11 for [(status, _)] in recovered.values()), recovered  # Finished: adopted, or run after
    assert max(runs(cluster).values()) == 1, runs(cluster)  # not reentrant: at most once across the kill
    assert re.search(r"restored 1 clusters, \d+ jobs \(.*running", scheduler.stderr), scheduler.stderr


def test_a_client_killed_during_a_slow_callback_loses_no_result(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
def status(job):
    if job.finish.is_set():
        print("done", job.id, flush=True)
        time.sleep(0.05)  # a slow callback: results pile up behind it

c = SharedJobCluster(compute, recover_file="recover.jsonl", job_status=status)
for i in range(200):
    c.submit_job_id(i, i, {str(runs_file)!r}, 0)
time.sleep(600)
"""
    )
    wait_until(lambda: len(seen_by(client)) >= 30, what="thirty results at the client")
    client.kill9()
    recovered = recover(cluster)
    seen = seen_by(client)
    assert all(len(v) == 1 for v in recovered.values()), recovered
    assert set(recovered) | set(seen) == set(range(200)), "lost: %s" % sorted(set(range(200)) - set(recovered) - set(seen))
    assert len(set(recovered) & set(seen)) <= 2


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_running_jobs_outlive_a_scheduler_restart_and_are_adopted_not_rerun(cluster: Cluster, how: signal.Signals) -> None:
    scheduler = cluster.scheduler("--state-dir", str(cluster.workdir / "scheduler-state"))
    node = cluster.node(cpus=2)
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
c = SharedJobCluster(compute)
jobs = [c.submit_job_id(i, i, {str(runs_file)!r}, 4) for i in range(2)]
for job in jobs:
    job()
    print("job", job.id, job.status, job.result, job.exception, flush=True)
c.close()
"""
    )
    wait_until(lambda: len(runs(cluster)) == 2, what="both jobs running")
    scheduler = restart(cluster, scheduler, how)
    assert client.wait(90) == 0, cluster.describe()
    assert re.findall(r"^job (\d) (\d+) (\d)", client.stdout, re.M) == [("0", "11", "0"), ("1", "11", "1")], client.stdout
    assert runs(cluster) == Counter({0: 1, 1: 1})
    assert "keep running" in node.stderr
    assert "still holds 2 jobs" in scheduler.stderr


def test_jobs_no_node_reports_after_a_restart_rerun_if_reentrant_else_end_abandoned(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--state-dir", str(cluster.workdir / "scheduler-state"))
    node = cluster.node(cpus=2, name="first")
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
once = SharedJobCluster(compute, reentrant=False)
again = SharedJobCluster(compute, reentrant=True)
jobs = [once.submit_job_id(0, 0, {str(runs_file)!r}, 600), again.submit_job_id(1, 1, {str(runs_file)!r}, 600)]
for job in jobs:
    job()
    print("job", job.id, job.status, job.exception, flush=True)
"""
    )
    wait_until(lambda: len(runs(cluster)) == 2, what="both jobs running")
    jobs = psutil.Process(node.pid).children(recursive=True)

    def lose_the_node() -> None:  # its machine is gone too, with its jobs, while the scheduler is down
        node.kill9()
        for proc in jobs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:  # a helper process of the job that had ended already
                pass

    scheduler = restart(cluster, scheduler, signal.SIGKILL, "--adopt-within", "1", meanwhile=lose_the_node)
    cluster.node(cpus=2, name="second")
    wait_until(lambda: runs(cluster)[1] == 2, what="the reentrant job to start again")
    assert runs(cluster)[0] == 1, "a job that is not reentrant ran twice"
    wait_until(lambda: "job 0 " in client.stdout, what="the non-reentrant job's result")
    assert re.search(r"^job 0 10 the scheduler restarted while this job ran on node first", client.stdout, re.M)


def test_recover_jobs_ends_jobs_the_scheduler_never_accepted_instead_of_waiting_for_ever(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    runs_file = cluster.workdir / "runs.txt"
    client = cluster.client(
        JOB + f"""
c = SharedJobCluster(compute, recover_file="recover.jsonl")
for i in range(2):
    c.submit_job_id(i, i, {str(runs_file)!r}, 2)
time.sleep(600)
"""
    )
    wait_until(lambda: len(runs(cluster)) == 2, what="both jobs running")
    client.kill9()
    # a program killed between recording a submit and sending it: the scheduler never heard of these
    with open(cluster.workdir / "recover.jsonl", "a") as f:
        f.write('{"uid": 1000, "t": 1.0}\n{"uid": 1001, "t": 1.0}\n')
    proc = cluster.run_client(
        JOB + """
jobs = recover_jobs("recover.jsonl", timeout=None)
for job in jobs:
    print("recovered", job._uid, job.status, repr(job.exception), flush=True)
""",
        name="recover",
        timeout=120,
    )
    found = {int(m[0]): (int(m[1]), m[2]) for m in re.findall(r"^recovered (\d+) (\d+) (.*)$", proc.stdout, re.M)}
    assert sorted(found) == [1, 2, 1000, 1001], proc.stdout
    assert [found[uid][0] for uid in (1, 2)] == [11, 11]  # the accepted ones ran to their end
    for uid in (1000, 1001):
        status, why = found[uid]
        assert status == 8 and "never accepted it" in why and "did not run" in why, proc.stdout


def fill(directory: Path) -> None:
    """Writes a file into `directory` until its file system is full."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


def test_a_result_sent_while_its_commit_failed_reaches_the_user_once_and_its_job_is_not_run_again(
    cluster: Cluster,
) -> None:
    """A result leaves while its turn's commit is made durable (dispy_sched/ahead.py): here the commit fails (the
    journal's file system is full), so the scheduler exits with the client holding a result the journal lost. The
    node still holds it and gives it to the next run, which records it; the job does not run again, the client
    drops the copy and its program ends as it would have."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small file system for the journal")
    state = cluster.workdir / "scheduler-state"
    state.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)]).returncode != 0:
        pytest.skip("cannot mount a file system here")
    try:
        scheduler = cluster.scheduler("--state-dir", str(state))
        node = cluster.node(cpus=1)
        go, closing = cluster.workdir / "go", cluster.workdir / "close"
        client = cluster.client(
            JOB + f"""
import os

def held(i, path, go):
    import os, time
    with open(path, "a") as f:
        f.write(f"{{i}}\\n")
    while not os.path.exists(go):
        time.sleep(0.01)
    return i

c = SharedJobCluster(held)
job = c.submit_job_id(1, 1, {str(cluster.workdir / "runs.txt")!r}, {str(go)!r})
job()
print("job", job.id, job.status, job.result, flush=True)
while not os.path.exists({str(closing)!r}):
    time.sleep(0.01)
c.close()
print("closed", flush=True)
"""
        )
        wait_until(lambda: runs(cluster) == Counter({1: 1}), what="the job running")
        fill(state)  # the next commit, the result's, cannot write the journal's log
        go.touch()
        assert scheduler.wait(60) == EXIT_JOURNAL_FAILED, scheduler.stderr
        assert "cannot write the journal" in scheduler.stderr
        assert client.wait_for_line(r"(?m)^job 1 (\d+) (\S+)$").groups() == ("11", "1")  # Finished, before any restart
        (state / "filler").unlink()
        port = cluster.address.rsplit(":", 1)[1]
        scheduler = cluster.scheduler("--port", port, "--state-dir", str(state), name="scheduler-2")
        scheduler.wait_for_line(r"node \S+ still holds 1 jobs", stream="stderr")  # the job and its result
        closing.touch()
        assert client.wait(90) == 0, cluster.describe()
        assert client.count(r"^job ") == 1 and "closed" in client.stdout
        assert runs(cluster) == Counter({1: 1})  # not run again: its node's result was recorded
        assert "Traceback" not in node.stderr
    finally:
        cluster.stop_all()
        subprocess.run(["umount", str(state)])  # (an error shows, and does not hide the test's own)


def test_a_scheduler_restarted_in_the_middle_of_a_sliced_close_starts_and_finishes_it(cluster: Cluster) -> None:
    """The journal of a scheduler that stopped while a close was ending a cluster's queued jobs a slice at a time:
    the next start goes on with the close as it restores it (its first call ends a slice: a commit of its own)."""
    state = cluster.workdir / "scheduler-state"
    state.mkdir()
    journal = SqliteJournal(str(state))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True, close_slice=2))
    for events in ((opened("c1", "K"),), (submitted("c1", "K", *range(1, 11)),), (E.ClusterClosed("c1", "K", False),)):
        for action in core.handle(*events, now=time.time()):
            if isinstance(action, A.Persist):
                journal.write(action)
    journal.close()
    assert core.clusters["K"].cancelling  # stopped with the close under way
    scheduler = cluster.scheduler("--state-dir", str(state), "--close-slice", "2")
    assert re.search(r"journal: restored 1 clusters, 8 jobs", scheduler.stderr), scheduler.stderr
    with sqlite3.connect(state / FILENAME) as db:
        left = "SELECT count(*) FROM jobs WHERE state != 'done'"
        wait_until(lambda: db.execute(left).fetchone() == (0,), what="the close's queued jobs ended")
