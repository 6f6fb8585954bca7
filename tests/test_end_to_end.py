"""The whole system with real processes: scheduler, nodes and client programs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from dispy_wire.settings import EX_CONFIG
from procs import Cluster, write_users_file
from waiting import wait_until


def test_results_output_and_exceptions_reach_the_client(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        import sys
        from dispy_client import SharedJobCluster, DispyJob

        class Point:                      # a class of __main__ travels by value
            def __init__(self, x): self.x = x

        def compute(n):
            import sys
            print("out", n)
            print("err", n, file=sys.stderr)
            if n == 3:
                raise ValueError("three is bad")
            return Point(n * n)

        with SharedJobCluster(compute) as cluster:
            jobs = []
            for i in range(6):
                job = cluster.submit(i)
                job.id = i
                jobs.append(job)
            cluster.wait()
            for job in jobs:
                if job.id == 3:
                    assert job.status == DispyJob.Terminated, job.status
                    assert job.result is None
                    assert "ValueError: three is bad" in job.exception, job.exception
                    assert job.exception_type == "ValueError"
                else:
                    assert job.status == DispyJob.Finished, (job.status, job.exception)
                    assert job().x == job.id ** 2
                assert job.stdout == f"out {job.id}\\n", job.stdout
                assert job.stderr.startswith(f"err {job.id}\\n"), job.stderr
                assert job.ip_addr == "127.0.0.1"
                assert job.submit_time <= job.start_time <= job.end_time
        print("ok")
        """
    )
    assert client.stdout.strip().endswith("ok")


def test_depends_files_functions_and_setup_globals(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    (cluster.workdir / "data.txt").write_text("forty-two")
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def helper(x):
            return x + 1

        def setup():
            global table
            table = {"a": 1}
            return 0

        def compute(key):
            with open("data.txt") as f:
                text = f.read()
            return text, helper(table[key])

        with SharedJobCluster(compute, depends=["data.txt", helper], setup=setup) as cluster:
            job = cluster.submit("a")
            assert job() == ("forty-two", 2), (job.status, job.exception)
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_user_module_in_depends_is_importable_by_jobs(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    (cluster.workdir / "mylib.py").write_text("class Box:\n    def __init__(self, v):\n        self.v = v\n\ndef double(x):\n    return 2 * x\n")
    client = cluster.run_client(
        """
        import mylib
        from dispy_client import SharedJobCluster

        def compute(box):
            import mylib                  # the shipped module, on the node
            return mylib.Box(mylib.double(box.v))

        with SharedJobCluster(compute, depends=[mylib]) as c:
            job = c.submit(mylib.Box(21))
            assert job().v == 42, (job.status, job.exception)
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_jobs_see_their_node_name_and_address(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1, name="alpha")
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def compute():
            return dispy_node_name, dispy_node_ip_addr   # globals a node gives every job, as in dispy

        with SharedJobCluster(compute) as c:
            job = c.submit()
            assert job() == ("alpha", "127.0.0.1"), (job.status, job.exception)
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_provisional_results_and_files_from_a_running_job_arrive_before_its_end(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    dest = cluster.workdir / "received"
    client = cluster.run_client(
        f"""
        from dispy_client import SharedJobCluster, DispyJob

        def compute(n):
            import time
            for i in range(3):
                dispy_provisional_result(i * n)       # as in dispy: globals of every job
                time.sleep(0.05)
            with open("report.txt", "w") as f:
                f.write("report %d" % n)
            assert dispy_send_file("report.txt") == 0
            assert dispy_send_file("no-such-file") == -1
            return "final"

        seen = []

        def status(job):
            if job.status == DispyJob.ProvisionalResult:
                seen.append(job.result)
            elif job.status == DispyJob.Finished:
                with open({str(dest / "report.txt")!r}) as f:   # saved before the job ended
                    seen.append(f.read())

        with SharedJobCluster(compute, job_status=status, dest_path={str(dest)!r}) as c:
            job = c.submit(7)
            assert job() == "final", (job.status, job.exception)
            c.wait()
        assert seen == [0, 7, 14, "report 7"], seen
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_two_users_share_the_cpus_fairly(cluster: Cluster) -> None:
    users = cluster.workdir / "users.toml"
    write_users_file(users, '[users.alice]\nsecret = "a-secret"\n[users.bob]\nsecret = "b-secret"\n')
    cluster.scheduler("--users-file", str(users), "--policy", "fair")
    cluster.node(cpus=4)
    program = """
        import json, os, sys, time
        from dispy_client import SharedJobCluster

        def compute(t):
            import time
            time.sleep(t)
            return t

        user, secret, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        stop = out + ".stop"
        with SharedJobCluster(compute, user=user, secret=secret) as cluster:
            jobs = [cluster.submit(0.15) for _ in range(count)]
            print("submitted", flush=True)
            deadline = time.monotonic() + 120
            while not cluster.wait(timeout=0.05) and not os.path.exists(stop):
                assert time.monotonic() < deadline, "never told to stop"
            cluster.close(terminate=True)  # the rest of a backlog that only kept the CPUs wanted
            spans = [(j.start_time, j.end_time) for j in jobs if j.status == j.Finished]
        with open(out, "w") as f:
            json.dump(spans, f)
        """
    out = {u: cluster.workdir / f"{u}.json" for u in ("alice", "bob")}
    # alice's backlog (far more than she can run before bob is done) is queued first: bob must still get half
    alice = cluster.client(program, "alice", args=["alice", "a-secret", "400", str(out["alice"])])
    alice.wait_for_line("submitted")
    bob = cluster.client(program, "bob", args=["bob", "b-secret", "48", str(out["bob"])])
    assert bob.wait(90) == 0, cluster.describe()
    (cluster.workdir / "alice.json.stop").touch()
    assert alice.wait(60) == 0, cluster.describe()
    spans = {u: json.loads(path.read_text()) for u, path in out.items()}
    assert len(spans["bob"]) == 48, spans["bob"]
    # the overlap: bob's whole run, from his first start to his last end (alice still had work throughout)
    t0 = min(s for s, _ in spans["bob"])
    t1 = max(e for _, e in spans["bob"])

    def busy(u: str) -> float:
        return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in spans[u])

    share = busy("bob") / (busy("alice") + busy("bob"))
    assert 0.35 <= share <= 0.65, f"bob's share of busy CPU time during the overlap: {share:.2f}"


def test_node_killed_reentrant_jobs_rerun_others_abandoned(cluster: Cluster) -> None:
    cluster.scheduler()
    doomed = cluster.node("--scheduler-grace", "1", cpus=2, name="doomed")  # its jobs are waited for this long
    client = cluster.client(
        """
        import sys
        from dispy_client import SharedJobCluster, DispyJob

        def compute(t):
            import time
            time.sleep(t)
            return "done"

        plain = SharedJobCluster(compute)
        again = SharedJobCluster(compute, reentrant=True)
        a = plain.submit(3)
        b = again.submit(3)
        print("submitted", flush=True)
        assert b() == "done", (b.status, b.exception)
        a()
        assert a.status == DispyJob.Abandoned, a.status
        assert "doomed" in a.exception and "lost" in a.exception, a.exception
        print("ok", b.ip_addr, flush=True)
        plain.close()
        again.close()
        """
    )
    client.wait_for_line("submitted")
    wait_until(lambda: len(psutil.Process(doomed.pid).children(recursive=True)) >= 4, what="2 zygotes and 2 jobs")
    job_procs = psutil.Process(doomed.pid).children(recursive=True)
    doomed.kill9()
    cluster.node(cpus=2, name="rescuer")
    assert client.wait(60) == 0, cluster.describe()
    assert "ok 127.0.0.1" in client.stdout
    _, alive = psutil.wait_procs(job_procs, timeout=60)
    assert not alive, f"job processes of the killed node survived: {alive}"


def test_silent_node_is_dropped_and_comes_back(cluster: Cluster) -> None:
    cluster.scheduler()
    node = cluster.node(cpus=1, name="sleepy")
    node.popen.send_signal(signal.SIGSTOP)
    try:
        scheduler = cluster.procs[0]
        scheduler.wait_for_line(r"dropping node sleepy .*no report", stream="stderr")
    finally:
        node.popen.send_signal(signal.SIGCONT)
    wait_until(lambda: node.count("connected to") >= 2, what=f"the node to reconnect:\n{cluster.describe()}")
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster
        with SharedJobCluster(lambda x: x + 1) as c:
            assert c.submit(1)() == 2
        print("ok")
        """
    )
    assert "ok" in client.stdout


def test_node_joining_later_gets_the_queued_work(cluster: Cluster) -> None:
    cluster.scheduler()
    client = cluster.client(
        """
        from dispy_client import SharedJobCluster
        with SharedJobCluster(lambda x: 2 * x) as c:
            jobs = [c.submit(i) for i in range(20)]
            print("submitted", flush=True)
            assert [j() for j in jobs] == [2 * i for i in range(20)]
        print("ok")
        """
    )
    client.wait_for_line("submitted")
    cluster.node(cpus=2)
    assert client.wait(60) == 0, cluster.describe()
    assert client.stdout.strip().endswith("ok")


def test_jobs_that_kill_their_own_process_are_reported_and_the_node_goes_on(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        import os, signal
        from dispy_client import SharedJobCluster, DispyJob

        def compute(how):
            if how == "exit":
                os._exit(3)
            if how == "signal":
                os.kill(os.getpid(), signal.SIGKILL)
            return how

        with SharedJobCluster(compute, depends=[os, signal]) as c:
            exit_job, sig_job = c.submit("exit"), c.submit("signal")
            c.wait()
            assert exit_job.status == DispyJob.Terminated and "code 3" in exit_job.exception, exit_job.exception
            assert sig_job.status == DispyJob.Terminated and "SIGKILL" in sig_job.exception, sig_job.exception
            assert [c.submit("fine")() for _ in range(4)] == ["fine"] * 4
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_cancel_a_running_job(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=1)
    client = cluster.run_client(
        """
        import time
        from dispy_client import SharedJobCluster, DispyJob

        def compute(t):
            import time
            time.sleep(t)
            return t

        with SharedJobCluster(compute) as c:
            running, queued = c.submit(30), c.submit(30)
            while running.status != DispyJob.Running:
                time.sleep(0.01)
            assert c.cancel(queued) == 0 and c.cancel(running) == 0
            assert c.wait(60)
            assert queued.status == DispyJob.Cancelled, queued.status
            assert running.status == DispyJob.Cancelled, running.status
            assert c.submit(0)() == 0
            assert c.cancel(running) == -1
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_client_that_vanishes_leaves_its_jobs_running(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    cluster.run_client(
        """
        import os
        from dispy_client import SharedJobCluster

        def compute(t):
            import time
            time.sleep(t)
            return t

        c = SharedJobCluster(compute, user="ghost")
        for _ in range(4):
            c.submit(0.5)
        st = c.scheduler_status()
        while st["users"]["ghost"]["queued"] == 4:
            st = c.scheduler_status()
        os._exit(0)  # no close: the scheduler keeps the jobs going
        """,
        name="ghost",
    )
    watcher = cluster.run_client(
        """
        import time
        from dispy_client import SharedJobCluster
        c = SharedJobCluster(lambda: None, user="ghost")  # another program of the same user: its own jobs
        deadline = time.time() + 50
        while c.scheduler_status()["users"]["ghost"]["finished"] < 4:
            assert time.time() < deadline, c.scheduler_status()
            time.sleep(0.1)
        c.close()
        print("ok")
        """,
        name="watcher",
    )
    assert watcher.stdout.strip() == "ok"


def test_node_reconnects_after_the_scheduler_restarts(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node(cpus=1)
    port = cluster.address.rsplit(":", 1)[1]
    scheduler.stop()
    cluster.scheduler("--port", port, name="scheduler2")
    wait_until(lambda: node.count("connected to") >= 2, what="the node to reconnect to the new scheduler")
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster
        with SharedJobCluster(lambda: "again") as c:
            assert c.submit()() == "again"
        print("ok")
        """
    )
    assert "ok" in client.stdout


def test_scheduler_refuses_an_open_address_without_secrets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "dispy_sched.main", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EX_CONFIG
    assert "refusing to listen on non-loopback address 0.0.0.0" in result.stderr
    assert "--node-secret" in result.stderr


@pytest.mark.parametrize("policy", ["nonsense", "no.such.module:Policy"])
def test_scheduler_refuses_an_unknown_policy(tmp_path, policy: str) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "dispy_sched.main", "--port", "0", "--policy", policy, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EX_CONFIG
    assert "policy" in result.stderr and policy in result.stderr


def test_client_survives_a_scheduler_restart_and_gets_every_result_once(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    port = cluster.address.rsplit(":", 1)[1]
    cluster.node(cpus=2)
    client = cluster.client(
        """
        from dispy_client import SharedJobCluster, DispyJob

        def compute(i):
            import time
            time.sleep(0.2)
            return i

        seen = []
        with SharedJobCluster(compute, job_status=lambda j: seen.append(j.id) if j.finish.is_set() else None) as c:
            jobs = [c.submit_job_id(i, i) for i in range(20)]
            print("submitted", flush=True)
            assert [j() for j in jobs] == list(range(20)), [(j.status, j.exception) for j in jobs]
            c.wait()
        assert sorted(seen) == list(range(20)), seen  # one terminal callback per job
        print("ok")
        """
    )
    client.wait_for_line("submitted")
    scheduler.stop()
    cluster.scheduler("--port", port, "--state-dir", str(cluster.workdir / "scheduler-state"), name="scheduler2")
    assert client.wait(60) == 0, cluster.describe()
    assert client.stdout.strip().endswith("ok")
    # a SIGTERM is a restart it was told of: the program reconnected without a word (INFO lines only)
    assert "lost the scheduler" not in client.stderr and "reconnected" not in client.stderr, client.stderr


def test_node_settings_survive_a_scheduler_restart(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    port = cluster.address.rsplit(":", 1)[1]
    cluster.node(cpus=2, name="alpha")
    beta = cluster.node(cpus=2, name="beta")
    client = cluster.client(
        """
        import os, time
        from dispy_client import SharedJobCluster

        def compute(t):
            import time
            time.sleep(t)
            return dispy_node_name

        with SharedJobCluster(compute) as c:
            c.deallocate_node("beta")
            assert {c.submit(0.01)() for _ in range(4)} == {"alpha"}
            print("restart now", flush=True)
            deadline = time.monotonic() + 120
            while not os.path.exists("go"):
                assert time.monotonic() < deadline, "never told to go on"
                time.sleep(0.05)  # the test restarts the scheduler meanwhile
            jobs = [c.submit(0.01) for _ in range(8)]
            assert {j() for j in jobs} == {"alpha"}, [(j.node, j.status, j.exception) for j in jobs]
        print("ok")
        """,
    )
    client.wait_for_line("restart now")
    scheduler.stop()
    cluster.scheduler("--port", port, name="scheduler2")
    wait_until(lambda: beta.count("connected to") >= 2, what="beta to reconnect to the new scheduler")
    (cluster.workdir / "go").touch()
    assert client.wait(60) == 0, cluster.describe()
    assert client.stdout.strip().endswith("ok")
