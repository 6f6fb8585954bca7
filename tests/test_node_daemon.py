"""A real `dispynode` under a real `dispyscheduler`: misbehaving jobs beside well-behaved
ones of another user, drain, `--serve`, yielding to outside load, service windows."""

from __future__ import annotations

from dispy_wire.settings import EX_CONFIG

import datetime as dt
import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from procs import Cluster, in_timed_sleep, write_users_file
from waiting import wait_until
from test_node_isolation import marked_processes, no_marked_processes  # noqa: F401  (autouse)

USERS = '[users.alice]\nsecret = "a"\n[users.mallory]\nsecret = "m"\n'

GOOD = """
    import sys
    from dispy_client import SharedJobCluster

    def square(n):
        import time
        time.sleep(0.05)
        return n * n

    with SharedJobCluster(square, user="alice", secret="a") as cluster:
        jobs = [cluster.submit(i) for i in range(40)]
        assert [j() for j in jobs] == [i * i for i in range(40)], [(j.status, j.exception) for j in jobs]
    print("ok")
"""

BAD = """
    from dispy_client import SharedJobCluster, DispyJob

    def misbehave(kind):
        import ctypes, os, sys, time
        if kind == "segv":
            ctypes.string_at(0)
        if kind == "exit":
            os._exit(3)
        if kind == "close":
            os.close(1)
            return "closed"
        if kind == "flood":
            chunk = b"x" * (1 << 20)
            for _ in range(200):
                os.write(1, chunk)
            return "flooded"
        if kind == "fork":
            for _ in range(1000):
                if os.fork() == 0:  # small processes: the tree stays under the node's 512M
                    os.execv("/bin/sleep", ["sleep", "120"])
            return "forked"
        if kind == "alloc":
            hog = []
            while True:
                hog.append(bytearray(16 << 20))
        if kind == "shout":  # an exception text larger than any message may be
            raise ValueError("x" * (70 << 20) + " the end")

    kinds = ["segv", "exit", "close", "flood", "fork", "alloc", "shout"]
    with SharedJobCluster(misbehave, user="mallory", secret="m") as cluster:
        jobs = {k: cluster.submit(k) for k in kinds}
        cluster.wait()
        T, F = DispyJob.Terminated, DispyJob.Finished
        assert jobs["segv"].status == T and "SIGSEGV" in jobs["segv"].exception, jobs["segv"].exception
        assert jobs["exit"].status == T and "code 3" in jobs["exit"].exception
        assert jobs["close"].status == F and jobs["close"].result == "closed"
        assert jobs["flood"].status == F and "output cut at 1048576 of 209715200 bytes" in jobs["flood"].stdout
        assert jobs["fork"].status == F and jobs["fork"].result == "forked"
        assert jobs["alloc"].status == T, jobs["alloc"].status
        assert jobs["alloc"].exception.startswith("memory limit 512 MiB exceeded"), jobs["alloc"].exception
        shout = jobs["shout"]
        assert shout.status == T and len(shout.exception) < (2 << 20) and "bytes cut]" in shout.exception
        assert shout.exception.startswith("Traceback") and shout.exception.endswith("x the end\\n"), shout.exception[-200:]
    print("ok")
"""

STATUS = """
    import json
    from dispy_client import SharedJobCluster

    def nothing():
        return None

    with SharedJobCluster(nothing, user="alice", secret="a") as cluster:
        print(json.dumps(cluster.scheduler_status()))
"""


def test_misbehaving_jobs_beside_well_behaved_ones(cluster: Cluster) -> None:
    users = cluster.workdir / "users.toml"
    write_users_file(users, USERS)
    cluster.scheduler("--users-file", str(users))
    node = cluster.node("--max-memory", "512M", "--max-output", "1M", "--kill-grace", "1", cpus=2)
    good, bad = cluster.client(GOOD, "alice"), cluster.client(BAD, "mallory")
    for proc in (good, bad):
        assert proc.wait(60) == 0, cluster.describe()
        assert proc.stdout.strip() == "ok"
    status = json.loads(cluster.run_client(STATUS, "status").stdout)
    assert status["busy"] == 0, status
    assert node.popen.poll() is None  # the daemon survived it all
    assert marked_processes() == []


def test_drain_finishes_running_jobs_then_exits_0(cluster: Cluster) -> None:
    cluster.scheduler()
    node = cluster.node(cpus=1)
    client = cluster.client(
        """
        from dispy_client import SharedJobCluster

        def slow(x):
            import time
            print("started", flush=True)
            time.sleep(1.5)
            return x + 1

        with SharedJobCluster(slow) as cluster:
            job = cluster.submit(41)
            assert job() == 42, (job.status, job.exception)
            print("ok", flush=True)
        """
    )
    node.wait_for_line(r"offering|loading cluster", stream="stderr")
    _until_busy(node)
    node.popen.send_signal(signal.SIGUSR1)
    assert client.wait(30) == 0, cluster.describe()
    assert node.wait(30) == 0, cluster.describe()
    assert "draining" in node.stderr


def _until_busy(node: object) -> None:
    """Waits for the node's job to run its own code (its `time.sleep`): a job dispatched but not yet started
    is sent back to the scheduler by a drain, not run there."""

    def started() -> bool:
        procs = psutil.Process(node.pid).children(recursive=True)  # type: ignore[attr-defined]
        return any(p.ppid() != node.pid and in_timed_sleep(p.pid) for p in procs)  # type: ignore[attr-defined]

    wait_until(started, what="the node's job to start")


def test_serve_one_cluster_then_exit_0(cluster: Cluster) -> None:
    cluster.scheduler()
    node = cluster.node("--serve", "1", cpus=1)
    cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def inc(x):
            return x + 1

        with SharedJobCluster(inc) as cluster:
            assert cluster.submit(1)() == 2
        """
    )
    assert node.wait(30) == 0, cluster.describe()


def test_yields_cpus_to_outside_load(cluster: Cluster) -> None:
    """Giving the CPUs back once the load is gone is checked with a fake clock
    (test_node_availability): on a shared test machine the outside load never
    reliably drops."""
    cluster.scheduler()
    node = cluster.node("--yield-load", "0.5", "--yield-window", "1.5", cpus=2)
    code = "import time\nend = time.time() + 100\nwhile time.time() < end: pass"  # killed when seen
    burner = subprocess.Popen([sys.executable, "-c", code])
    try:
        node.wait_for_line(r"offering [01] of 2 cpus \(outside load", stream="stderr")
    finally:
        burner.kill()
        burner.wait()


def test_outside_the_service_window_the_node_offers_nothing(cluster: Cluster) -> None:
    cluster.scheduler()
    now = dt.datetime.now()
    start, stop = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    node = cluster.node("--service-start", f"{start:%H:%M}", "--service-stop", f"{stop:%H:%M}", cpus=2)
    node.wait_for_line(r"offering 0 of 2 cpus", stream="stderr")
    status = json.loads(cluster.run_client(STATUS.replace(', user="alice", secret="a"', ""), "status").stdout)
    assert status["cpus"] == 0, status


def test_max_output_beyond_one_message_is_refused_at_start(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", "127.0.0.1:9", "--max-output", "100M",
            "--work-dir", str(tmp_path / "w")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EX_CONFIG and "--max-output is at most 12 MiB" in done.stderr, done.stderr


def test_sigterm_ends_the_node_and_every_job_tree(cluster: Cluster) -> None:
    cluster.scheduler()
    node = cluster.node("--kill-grace", "1", cpus=2)
    client = cluster.client(
        """
        from dispy_client import SharedJobCluster

        def tree(n):
            import subprocess, time
            children = [subprocess.Popen(["sleep", "60"]) for _ in range(n)]
            time.sleep(60)
            return len(children)

        with SharedJobCluster(tree) as cluster:
            jobs = [cluster.submit(3) for _ in range(2)]
            cluster.wait()
            print(sorted(j.status for j in jobs))
        """
    )
    wait_until(lambda: len(marked_processes()) >= 8, what="2 jobs, each with 3 children")
    assert len(marked_processes()) == 8, cluster.describe()
    node.popen.send_signal(signal.SIGTERM)
    assert node.wait(30) == 0, cluster.describe()
    assert marked_processes() == []  # gone with the node, not left to run
    assert client.wait(30) == 0, cluster.describe()
    assert client.stdout.strip() == "[10, 10]"  # Abandoned: the node was lost while running them


def test_negative_cpus_leave_that_many_to_the_machine(cluster: Cluster) -> None:
    cluster.scheduler()
    total = psutil.cpu_count() or 1
    node = cluster.node(cpus=-1)
    offered = int(node.wait_for_line(r"offers (\d+) cpus", stream="stderr").group(1))
    assert offered == max(1, total - 1)  # never less than one


def test_a_yielding_node_keeps_its_running_job_and_queued_work_goes_elsewhere(cluster: Cluster) -> None:
    cluster.scheduler()
    go = cluster.workdir / "go"
    client = cluster.client(
        f"""
        import os, time
        from dispy_client import SharedJobCluster, DispyJob

        def where(seconds):
            import time
            time.sleep(seconds)
            return dispy_node_name

        with SharedJobCluster(where) as c:
            running = c.submit(8)
            print("submitted", flush=True)
            while running.status != DispyJob.Running:
                time.sleep(0.05)
            print("running", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            queued = c.submit(0)
            print(running(), running.status == DispyJob.Finished, queued(), flush=True)
        """
    )
    client.wait_for_line("submitted")
    # the job is there when the owner joins: it starts before a busy machine's load can make the owner yield
    owner = cluster.node("--yield-load", "0.5", "--yield-window", "1.5", cpus=1, name="owner")
    client.wait_for_line("running")
    code = "import time\nend = time.time() + 100\nwhile time.time() < end: pass"  # killed at the end
    burner = subprocess.Popen([sys.executable, "-c", code])  # the machine's owner at work
    try:
        owner.wait_for_line(r"offering 0 of 1 cpus \(outside load", stream="stderr")
        cluster.node(cpus=1, name="spare")
        go.touch()
        assert client.wait(30) == 0, cluster.describe()
    finally:
        burner.kill()
        burner.wait()
    assert client.stdout.split() == ["submitted", "running", "owner", "True", "spare"], client.stdout


def test_a_setup_that_raises_or_hangs_fails_its_cluster_only_and_says_why(cluster: Cluster) -> None:
    users = cluster.workdir / "users.toml"
    write_users_file(users, USERS)
    cluster.scheduler("--users-file", str(users))
    # a setup that raises must fail before the timeout even where a job process takes seconds to start
    cluster.node("--setup-timeout", "5", "--kill-grace", "1", cpus=2)
    good = cluster.client(GOOD, "alice")
    bad = cluster.client(
        f"""
        import os, time
        from dispy_client import SharedJobCluster

        def raises():
            raise RuntimeError("no database here")

        def hangs():
            time.sleep(60)

        def work():
            return 1

        for setup in (raises, hangs):
            c = SharedJobCluster(work, setup=setup, user="mallory", secret="m")
            c.submit()
            while not os.path.exists({str(cluster.workdir)!r} + "/next-" + setup.__name__):
                time.sleep(0.05)  # the test reads what this client logged
            c.close(terminate=True)
        """,
        "mallory",
    )
    for setup, why in (("raises", r"setup failed:.*RuntimeError: no database here"),
                       ("hangs", r"setup did not finish within 5 s")):  # fmt: skip
        bad.wait_for_line(rf"(?s)cluster work cannot run on node node: {why}", stream="stderr", timeout=30)
        (cluster.workdir / f"next-{setup}").touch()
    assert bad.wait(60) == 0, cluster.describe()
    assert good.wait(60) == 0 and good.stdout.strip() == "ok", cluster.describe()
