"""Worker isolation (`isolation="worker"`, dispy_node/worker.py) with real processes: a scheduler, a node, clients.

Each client program asserts what a user relies on and prints "ok"; the pids
jobs return show which process ran them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from procs import Cluster, waits_to_write
from waiting import wait_until


def test_jobs_reuse_one_process_per_slot_with_their_own_output_exceptions_and_provisional_results(
    cluster: Cluster,
) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        import os
        from dispy_client import SharedJobCluster, DispyJob

        count = 0

        def compute(n):
            import os, sys
            global count
            count += 1                       # worker mode: the next job in this process sees it
            print("out", n)
            print("err", n, file=sys.stderr)
            dispy_provisional_result(("half", n))
            if n % 5 == 4:
                raise ValueError("bad %d" % n)
            return os.getpid(), count

        provisional = []

        def status(job):
            if job.status == DispyJob.ProvisionalResult:
                provisional.append(job.result)

        with SharedJobCluster(compute, isolation="worker", job_status=status) as c:
            jobs = [c.submit(i) for i in range(30)]
            for i, job in enumerate(jobs):
                job.id = i
            c.wait()
            pids, counts = set(), []
            for job in jobs:
                assert job.stdout == "out %d\\n" % job.id, (job.id, job.stdout)   # its own output, no other's
                assert job.stderr == "err %d\\n" % job.id, (job.id, job.stderr)
                if job.id % 5 == 4:
                    assert job.status == DispyJob.Terminated, job.status
                    assert "ValueError: bad %d" % job.id in job.exception, job.exception
                    assert job.exception_type == "ValueError"
                else:
                    assert job.status == DispyJob.Finished, (job.status, job.exception)
                    pid, count = job.result
                    pids.add(pid)
                    counts.append(count)
        assert 1 <= len(pids) <= 2, pids              # one process per CPU slot, not one per job
        assert max(counts) > 1, counts
        assert sorted(provisional) == sorted(("half", i) for i in range(30)), provisional
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_cancelled_job_takes_its_worker_and_the_slot_gets_a_fresh_one(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    client = cluster.run_client(
        """
        import os, time
        from dispy_client import SharedJobCluster, DispyJob

        def compute(t):
            import os, time
            dispy_provisional_result("started")
            time.sleep(t)
            return os.getpid()

        started = []

        def status(job):
            if job.status == DispyJob.ProvisionalResult:
                started.append(job)

        with SharedJobCluster(compute, isolation="worker", job_status=status) as c:
            first = c.submit(0)()
            long = c.submit(60)
            while long not in started:
                time.sleep(0.01)
            assert c.cancel(long) == 0
            assert c.wait(60)
            assert long.status == DispyJob.Cancelled, long.status
            after = c.submit(0)()
            assert after != first, "the cancelled job's worker ran the next job"
            assert c.submit(0)() == after      # the fresh worker is reused in turn
            try:
                os.kill(first, 0)
                alive = open("/proc/%d/stat" % first).read().split()[2] != "Z"
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            assert not alive, "the cancelled job's worker outlived the cancel"
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_crashing_job_replaces_its_worker_and_the_other_jobs_go_on(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster, DispyJob

        def compute(how):
            import ctypes, os
            if how == "exit":
                os._exit(3)
            if how == "segfault":
                ctypes.string_at(0)
            return os.getpid()

        with SharedJobCluster(compute, isolation="worker") as c:
            before = {c.submit("ok")() for _ in range(4)}
            exits, segv = c.submit("exit"), c.submit("segfault")
            rest = [c.submit("ok") for _ in range(10)]
            c.wait()
            assert exits.status == DispyJob.Terminated and "exited with code 3" in exits.exception, exits.exception
            assert segv.status == DispyJob.Terminated and "SIGSEGV" in segv.exception, segv.exception
            assert all(j.status == DispyJob.Finished for j in rest), [(j.status, j.exception) for j in rest]
            after = {j.result for j in rest}
            assert len(before) == len(after) == 1, (before, after)
            assert not before & after, "the crashed worker was not replaced"
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_worker_is_replaced_after_worker_jobs_jobs(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node("--worker-jobs", "3", cpus=1)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def compute(n):
            import os
            return os.getpid()

        with SharedJobCluster(compute, isolation="worker") as c:
            pids = [c.submit(i)() for i in range(7)]
        assert pids[0] == pids[1] == pids[2] != pids[3], pids
        assert pids[3] == pids[4] == pids[5] != pids[6], pids
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_job_over_its_memory_limit_fails_alone_in_worker_mode(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster, DispyJob

        def compute(mb):
            block = bytearray(mb << 20)
            return len(block) >> 20

        with SharedJobCluster(compute, isolation="worker", limits={"memory": "400M"}) as c:
            assert c.submit(10)() == 10
            big = c.submit(2000)
            big()
            assert big.status == DispyJob.Terminated, big.status
            assert big.exception_type == "MemoryError", big.exception_type
            assert "memory limit" in big.exception, big.exception
            assert c.submit(20)() == 20
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_two_clusters_never_share_a_worker(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def first(n):
            import os
            return os.getpid()

        def second(n):
            import os
            return os.getpid()

        with SharedJobCluster(first, isolation="worker") as a, SharedJobCluster(second, isolation="worker") as b:
            jobs_a = [a.submit(i) for i in range(20)]
            jobs_b = [b.submit(i) for i in range(20)]
            pids_a = {j() for j in jobs_a}
            pids_b = {j() for j in jobs_b}
        assert pids_a and pids_b and not pids_a & pids_b, (pids_a, pids_b)
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_an_unknown_isolation_is_refused_by_the_client(cluster: Cluster) -> None:
    cluster.scheduler()
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        try:
            SharedJobCluster(abs, isolation="thread")
        except ValueError as exc:
            assert "isolation='thread'" in str(exc), exc
            print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_jobcluster_reuses_workers_by_default_and_forks_per_job_when_asked(cluster: Cluster) -> None:
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def compute(n):
            import os
            return os.getpid()

        with dispy.JobCluster(compute, nodes=[("127.0.0.1", 0, 1)]) as c:
            reused = {c.submit(i)() for i in range(10)}
        with dispy.JobCluster(compute, nodes=[("127.0.0.1", 0, 1)], isolation="fork") as c:
            forked = {c.submit(i)() for i in range(10)}
        assert len(reused) == 1, reused
        assert len(forked) == 10, forked
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_worker_whose_memory_grew_past_the_threshold_is_replaced(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node("--worker-memory-growth", "64M", cpus=1)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        kept = []

        def compute(mb):
            import os
            kept.append(b"x" * (mb << 20))   # a leak: stays in the worker's globals
            return os.getpid()

        with SharedJobCluster(compute, isolation="worker") as c:
            small = [c.submit(1)() for _ in range(3)]
            grown = c.submit(128)()
            after = c.submit(1)()
        assert small[0] == small[1] == small[2] == grown, (small, grown)
        assert after != grown, "the worker that grew by 128 MiB ran the next job"
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_a_node_whose_default_is_worker_reuses_processes_for_clusters_that_do_not_choose(cluster: Cluster) -> None:
    config = cluster.workdir / "node.toml"
    config.write_text('isolation = "worker"\nworker_jobs = 4\n')
    cluster.scheduler()
    cluster.node("--config", str(config), cpus=1)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def compute(n):
            import os
            return os.getpid()

        with SharedJobCluster(compute) as c:
            default = [c.submit(i)() for i in range(5)]
        with SharedJobCluster(compute, isolation="fork") as c:
            forked = {c.submit(i)() for i in range(3)}
        assert default[0] == default[1] == default[2] == default[3] != default[4], default
        assert len(forked) == 3, forked
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_jobs_sent_on_to_the_zygote_never_run_more_at_once_than_the_node_offers(cluster: Cluster) -> None:
    """With every CPU busy the node sends each running job's successor on to its zygote (RunNext), which starts
    it where a job ends: still no more jobs at once than CPUs offered, each job once."""
    cluster.scheduler("--prefetch", "2")
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster, DispyJob

        def compute(n):
            import os, time
            began = time.monotonic()   # CLOCK_MONOTONIC: one clock for every process of the machine
            time.sleep(0.005)
            return n, os.getpid(), began, time.monotonic()

        with SharedJobCluster(compute, isolation="worker") as c:
            jobs = [c.submit(i) for i in range(120)]
            c.wait()
        assert all(job.status == DispyJob.Finished for job in jobs), [job.exception for job in jobs]
        assert [job.result[0] for job in jobs] == list(range(120))
        edges = sorted([(r[2], 1) for r in (j.result for j in jobs)] + [(r[3], -1) for r in (j.result for j in jobs)],
                       key=lambda e: (e[0], e[1]))   # an end before a start at the same instant
        at_once = most = 0
        for _, step in edges:
            at_once += step
            most = max(most, at_once)
        assert most <= 2, most
        assert len({job.result[1] for job in jobs}) <= 2   # one worker per CPU, none more
        print("ok")
        """,
        timeout=120,
    )
    assert client.stdout.strip() == "ok"


def test_a_job_that_ran_to_its_end_as_its_wall_clock_ran_out_keeps_its_result_and_its_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The zygote's wall-clock kill comes while the worker is still telling the end of the job it ran (a large
    result, more than the zygote reads in a turn): the job is not killed, its end is read as it comes, and the
    worker runs the next job (`Hold.ENDING`). The zygote is stopped meanwhile, so that the deadline passes
    with the end half written."""
    cluster.scheduler()
    node = cluster.node(cpus=1)
    began, let_go = tmp_path / "began", tmp_path / "let-go"
    client = cluster.client(
        f"""
        from dispy_client import SharedJobCluster, DispyJob

        def compute(began, let_go):
            import os, time
            with open(began, "w") as f:
                f.write(str(os.getpid()))
            while not os.path.exists(let_go):
                time.sleep(0.001)
            return os.getpid(), b"r" * (8 << 20)

        with SharedJobCluster(compute, isolation="worker") as c:
            job = c.submit({str(began)!r}, {str(let_go)!r}, dispy_job_timeout=5)
            job()
            assert job.status == DispyJob.Finished, (job.status, job.exception)
            pid, result = job.result
            assert len(result) == 8 << 20
            assert c.submit("/dev/null", "/")()[0] == pid   # the worker goes on
        print("ok")
        """
    )
    pid = int(wait_until(lambda: began.exists() and began.read_text(), what="the job's start"))
    seen = time.monotonic()  # its wall clock runs out 5 s after it started, before this
    zygote = psutil.Process(pid).ppid()
    os.kill(zygote, signal.SIGSTOP)
    try:
        let_go.touch()
        wait_until(lambda: waits_to_write(pid), what="the worker blocked writing its job's end")
        wait_until(lambda: time.monotonic() > seen + 5.5, what="the job's wall clock to run out")
    finally:
        os.kill(zygote, signal.SIGCONT)
    assert client.wait(60) == 0, cluster.describe()
    assert client.stdout.strip() == "ok"
    assert "ran to its end as it was killed" in node.stderr, node.stderr
