"""SharedJobCluster's dispy surface and recover_jobs, against real scheduler, node and client processes."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

import pytest

import dispy_client as dispy
from procs import Cluster
from waiting import wait_until


def test_shared_cluster_status_nodes_and_dispy_parameters(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    (cluster.workdir / "extra.txt").write_text("x")
    client = cluster.run_client(
        """
        import warnings
        import dispy_client as dispy

        def compute(n):
            import os
            return n + 1 + os.path.exists("extra.txt")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cluster = dispy.SharedJobCluster(
                compute, nodes=["127.0.0.*", ("alpha", 0, 1)], ip_addr="10.1.2.3", port=51348, exclusive=True,
            )
            pinned = cluster.submit_node("alpha", 1)
            with_file = cluster.submit(2, dispy_job_depends=["extra.txt"])
        text = "\\n".join(str(w.message) for w in caught)
        for name in ("ip_addr", "port", "exclusive"):
            assert name in text, (name, text)
        assert [n.host for n in cluster.nodes] == ["127.0.0.*", "alpha"] and cluster.nodes[1].cpus == 1
        assert pinned() == 2 and with_file() == 4, (with_file.status, with_file.exception)  # its file, its own
        assert cluster.submit(5)() == 6  # another job's directory has no such file
        status = cluster.status()
        [node] = status.nodes
        assert (node.name, node.ip_addr, node.cpus, node.jobs_done, status.jobs_pending) == ("alpha", "127.0.0.1", 2, 3, 0)
        assert node.avail_info is not None and node.avail_info.memory > 0 and node.avail_info.disk > 0
        cluster.print_status()
        cluster.close()
        print("ok")
        """
    )
    assert client.stdout.strip().endswith("ok")
    assert "127.0.0.1 (alpha)" in client.stdout


def test_nodes_select_where_a_clusters_jobs_run_and_on_how_many_cpus(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    cluster.node(cpus=2, name="beta")
    client = cluster.run_client(
        """
        import dispy_client as dispy

        def compute(t):
            import time
            time.sleep(t)
            return dispy_node_name

        only_beta = dispy.SharedJobCluster(compute, nodes=["beta"])
        one_of_alpha = dispy.SharedJobCluster(compute, nodes=[dispy.NodeAllocate("alpha", cpus=1)])
        betas = [only_beta.submit(0.05) for _ in range(8)]
        alphas = [one_of_alpha.submit(0.1) for _ in range(4)]
        assert {j() for j in betas} == {"beta"}, [(j.status, j.exception) for j in betas]
        assert {j() for j in alphas} == {"alpha"}
        spans = sorted((j.start_time, j.end_time) for j in alphas)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans  # one at a time
        only_beta.close()
        one_of_alpha.close()
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def test_cluster_status_node_methods_and_a_nodeallocate_subclass(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    cluster.node(cpus=2, name="beta")
    client = cluster.run_client(
        """
        import threading, time
        import dispy_client as dispy

        def compute(t):
            import time
            if t < 0:
                with open("table.txt") as f:
                    return f.read()
            time.sleep(t)
            return dispy_node_name

        class NotAlpha(dispy.NodeAllocate):          # decided in this client: the scheduler asks it
            def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):
                assert avail_info is None or avail_info.memory > 0
                return 0 if name == "alpha" else cpus

        events, seen = [], threading.Event()

        def status(code, node, job):
            if job is None:
                events.append((code, node.name))
                if code == dispy.DispyNode.AvailInfo and node.name == "beta":
                    seen.set()

        c = dispy.SharedJobCluster(compute, nodes=[NotAlpha("*")], cluster_status=status)
        assert {j() for j in [c.submit(0.02) for _ in range(10)]} == {"beta"}
        assert seen.wait(60), events                                  # heartbeats reach cluster_status
        # as in dispy, only the nodes the cluster uses are Initialized and reported
        assert (dispy.DispyNode.Initialized, "beta") in events and (dispy.DispyNode.Initialized, "alpha") not in events
        assert (dispy.DispyNode.AvailInfo, "alpha") not in events
        pinned = [c.submit_node("beta", 0.01) for _ in range(3)]   # runs only there
        assert {j() for j in pinned} == {"beta"}
        with open("table.txt", "w") as f:
            f.write("sent later")
        assert c.send_file("table.txt", "beta") == 0                 # the cluster runs there
        assert c.send_file("table.txt", "alpha") == -1               # not loaded there (excluded)
        reader = c.submit_node("beta", -1)
        assert reader() == "sent later", (reader.status, reader.exception)
        c.deallocate_node("beta")
        c.allocate_node("alpha")
        assert {j() for j in [c.submit(0.02) for _ in range(6)]} == {"alpha"}
        assert c.set_node_cpus("alpha", 1) == 1
        spans = sorted((j.start_time, j.end_time) for j in [c.submit(0.1) for _ in range(3)] if j())
        assert all(a <= b for (_, a), (b, _) in zip(spans, spans[1:])), spans   # one at a time now
        c.close()
        assert (dispy.DispyNode.Closed, "alpha") in events
        print("ok")
        """
    )
    assert client.stdout.strip() == "ok"


def _wait_finished(cluster: Cluster, finished: int, busy: int = 0) -> None:
    """Waits until this user's jobs at the scheduler have `finished` ended and `busy` running.

    Asked by another program of the same user: a user sees only itself by name (others as totals).
    """
    user = os.environ.get("DISPY_USER") or getpass.getuser()
    with dispy.SharedJobCluster(len, scheduler_host=cluster.address, user=user) as watcher:

        def reached() -> bool:
            mine = watcher.scheduler_status()["users"].get(user, {})
            return mine.get("finished", 0) >= finished and mine.get("busy", 0) >= busy

        wait_until(reached, what=f"{finished} jobs of {user} ended and {busy} running")


def test_recover_jobs_after_the_client_was_killed(cluster: Cluster, monkeypatch: object) -> None:
    cluster.scheduler()
    cluster.node(cpus=4)
    recover_file = cluster.workdir / "recover.jsonl"
    client = cluster.client(
        f"""
        import time
        import dispy_client as dispy

        def compute(n, t):
            import time
            time.sleep(t)
            print("job", n)
            if n == 13:
                raise KeyError(n)
            return n * 10

        cluster = dispy.SharedJobCluster(compute, recover_file={str(recover_file)!r})
        early = [cluster.submit(i, 0) for i in range(3)]
        cluster.wait()                          # delivered before the crash: not recovered again
        later = [cluster.submit_job_id(f"id{{i}}", i, 1.5) for i in (11, 12, 13)]
        late = cluster.submit(14, 1.5)
        late.id = ("tuple", 14)                 # an id set after submit is recorded too
        cluster.scheduler_status()              # a round trip behind the submits: the scheduler has them
        print("submitted", flush=True)
        time.sleep(60)
        """
    )
    client.wait_for_line("submitted")
    client.kill9()
    jobs = dispy.recover_jobs(str(recover_file), timeout=30)
    by_id = {job.id: job for job in jobs}
    assert set(by_id) == {"id11", "id12", "id13", ("tuple", 14)}, by_id
    assert by_id["id11"].result == 110 and by_id["id11"].status == dispy.DispyJob.Finished
    assert by_id["id12"].stdout == "job 12\n"
    assert by_id["id13"].status == dispy.DispyJob.Terminated and by_id["id13"].exception_type == "KeyError"
    assert "KeyError: 13" in (by_id["id13"].exception or "")
    assert by_id[("tuple", 14)].result == 140
    assert not recover_file.exists(), "a fully recovered cluster's file is removed"


def test_recovered_results_larger_together_than_a_message_all_arrive(cluster: Cluster) -> None:
    """Three 25 MB results finished while their client was gone reach the one that recovers them
    at once: more than one message may carry, so the scheduler sends them in several."""
    cluster.scheduler()
    cluster.node(cpus=3)
    recover_file = cluster.workdir / "recover.jsonl"
    client = cluster.client(
        f"""
        import time
        import dispy_client as dispy

        def big(i):
            return bytes([i]) * (25 << 20)

        cluster = dispy.SharedJobCluster(big, recover_file={str(recover_file)!r})
        jobs = [cluster.submit_job_id(i, i) for i in range(3)]
        cluster.scheduler_status()  # a round trip behind the submits: the scheduler has them
        print("submitted", flush=True)
        time.sleep(60)
        """
    )
    client.wait_for_line("submitted")
    client.kill9()
    _wait_finished(cluster, 3)  # they end while no client is there, and wait for one together
    jobs = dispy.recover_jobs(str(recover_file), timeout=60)
    assert sorted((j.id, j.status, j.result == bytes([j.id]) * (25 << 20)) for j in jobs) == [
        (i, dispy.DispyJob.Finished, True) for i in range(3)
    ]


def test_recover_jobs_leaves_unfinished_jobs_for_a_later_call(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    recover_file = cluster.workdir / "recover.jsonl"
    release = cluster.workdir / "release"
    client = cluster.client(
        f"""
        import time
        import dispy_client as dispy

        def compute(release):
            import os, time
            deadline = time.monotonic() + 60
            while release and not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.05)
            return bool(release)

        cluster = dispy.SharedJobCluster(compute, recover_file={str(recover_file)!r})
        quick, slow = cluster.submit(""), cluster.submit({str(release)!r})
        cluster.scheduler_status()  # a round trip behind the submits: the scheduler has them
        print("submitted", flush=True)
        time.sleep(60)
        """
    )
    client.wait_for_line("submitted")
    client.kill9()
    _wait_finished(cluster, 1, busy=1)  # the quick job has ended, the slow one runs until released
    first = dispy.recover_jobs(str(recover_file), timeout=0.5, secret=os.environ.get("DISPY_SECRET", ""))
    assert sorted(j.status for j in first) == [dispy.DispyJob.Running, dispy.DispyJob.Finished]
    assert recover_file.exists()
    release.touch()
    [rest] = dispy.recover_jobs(str(recover_file), timeout=60)
    assert rest.result is True and not recover_file.exists()


def test_examples_of_module_level_names() -> None:
    allocation = dispy.NodeAllocate("192.168.1.*", cpus=-1)
    assert allocation.allocate(None, "192.168.1.7", "n7", 4) == 3
    assert allocation.allocate(None, "192.168.2.7", "m7", 4) == -1
    assert dispy.NodeAllocate("10.0.0.1", cpus=2).allocate(None, "10.0.0.1", "a", 8) == 2
    info = dispy.DispyNodeAvailInfo.from_report({"cpu_percent": 12.5, "memory": 10, "disk": 20, "swap": 1.0})
    assert info == dispy.DispyNodeAvailInfo(12.5, 10, 20, 1.0)
    assert dispy.logger.DEBUG == 10 and isinstance(dispy.ClusterStatus([], 0), tuple)
    assert Path(dispy.__file__).parent.name == "dispy_client"


def test_a_clusters_limits_and_kept_files_reach_its_jobs_on_the_nodes(cluster: Cluster) -> None:
    cluster.scheduler()
    node = cluster.node("--max-memory", "1G", "--serve", "1", cpus=3)  # exits once the cluster is gone
    client = cluster.run_client(
        """
        import json
        from dispy_client import SharedJobCluster

        def work(kind):
            import os, time
            if kind == "sleep":
                time.sleep(30)
            if kind == "hog":  # over the cluster's 256M, under the node's 1G
                return len(bytearray(600 << 20))
            return os.getcwd()

        with SharedJobCluster(work, limits={"timeout": 2, "memory": "256M"}, cleanup=False) as c:
            jobs = {kind: c.submit(kind) for kind in ("sleep", "hog", "where")}
            c.wait()
            print(json.dumps({kind: [j.status, j.exception, j.result] for kind, j in jobs.items()}))
        """
    )
    out = json.loads(client.stdout)
    assert out["sleep"][:2] == [dispy.DispyJob.Terminated, "wall-clock limit 2 s exceeded"], out
    assert out["hog"][0] == dispy.DispyJob.Terminated and out["hog"][1].startswith("memory limit 256 MiB exceeded")
    assert node.wait(30) == 0, cluster.describe()
    status, _, job_dir = out["where"]
    assert status == dispy.DispyJob.Finished and os.path.isdir(job_dir), out  # cleanup=False: kept


def test_a_limit_the_nodes_do_not_know_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="limits: unknown 'memroy'; known: timeout, memory"):
        dispy.SharedJobCluster(len, limits={"memroy": "1G"}, scheduler_host="127.0.0.1:9")
    with pytest.raises(ValueError, match="'lots' is not a size such as 512M or 2G"):
        dispy.SharedJobCluster(len, limits={"memory": "lots"}, scheduler_host="127.0.0.1:9")
    with pytest.raises(ValueError, match="limits: timeout=0 is not a positive number"):
        dispy.SharedJobCluster(len, limits={"timeout": 0}, scheduler_host="127.0.0.1:9")
