"""dispy 4.15.2's client behaviour that dispy programs rely on (issue 12, the client's half).

Job ids, callback timing, exit and close, the names dispy has, and its
signatures; each with JobCluster in this process, and across real processes
where the behaviour crosses the wire (a shared scheduler, a program's exit).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import dispy_client as dispy
from dispy_client.httpd import DispyHTTPServer
from procs import Cluster
from procs import no_node_outlives_its_test  # noqa: F401  (autouse: a failed test leaves no node)
from waiting import wait_until


def square(n):  # type: ignore[no-untyped-def]
    return n * n


def nap(t):  # type: ignore[no-untyped-def]
    import time

    time.sleep(t)
    return t



def test_jobs_are_numbered_unless_given_an_id() -> None:
    with dispy.JobCluster(square) as cluster:
        numbered = [cluster.submit(i) for i in range(3)]
        named = cluster.submit_job_id("mine", 3)
        zero = cluster.submit_job_id(0, 4)
        cluster.wait()
    ids = [job.id for job in numbered]
    assert all(isinstance(i, int) and i > 0 for i in ids) and ids == sorted(set(ids)), ids
    assert named.id == "mine" and zero.id == 0  # dispy would number a falsy id: see docs/client.md


def test_callbacks_follow_dispys_timing() -> None:
    seen: list[tuple[str, Any]] = []
    ready = threading.Event()
    box: dict[str, Any] = {}

    def job_status(job: dispy.DispyJob) -> None:
        seen.append(("job", job.status))

    def cluster_status(status: int, node: dispy.DispyNode | None, job: dispy.DispyJob | None) -> None:
        if status == dispy.DispyNode.Initialized:
            seen.append(("initialized", "cluster" in box))  # the constructor has returned: the name is bound
            ready.set()
        else:
            seen.append(("cluster", status))

    box["cluster"] = cluster = dispy.JobCluster(square, job_status=job_status, cluster_status=cluster_status)
    try:
        assert ready.wait(30), "no Initialized for this machine's node"
        job = cluster.submit(3)
        assert job() == 9
        cluster.wait()
        wait_until(lambda: ("cluster", dispy.DispyJob.Finished) in seen, 30, "cluster_status for the end")
    finally:
        cluster.close()
    assert seen.count(("initialized", True)) == 1 and ("initialized", False) not in seen, seen
    assert [s for kind, s in seen if kind == "job"] == [dispy.DispyJob.Finished], "job_status: ends only, no Running"
    statuses = [s for kind, s in seen if kind == "cluster" and s != dispy.DispyNode.AvailInfo]
    assert statuses[:3] == [dispy.DispyJob.Created, dispy.DispyJob.Running, dispy.DispyJob.Finished], statuses


def test_initialized_waits_for_the_constructor_and_comes_once_per_node_with_a_shared_scheduler(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2, name="alpha")
    client = cluster.run_client(
        """
        import threading, dispy_client as dispy

        def compute(n):
            return n

        done = threading.Event()
        lines = []

        def cluster_status(status, node, job):
            if status == dispy.DispyNode.Initialized:
                lines.append(f"initialized {node.name} {node.cpus}")
                job = cluster.submit_node(node, 5)      # the variable exists: the constructor returned
                lines.append(f"submitted {job.id is not None}")
            elif status == dispy.DispyJob.Finished:
                lines.append(f"finished {job.result}")
                done.set()

        cluster = dispy.SharedJobCluster(compute, cluster_status=cluster_status)
        assert done.wait(30)
        print(cluster.submit_node("no-such-node", 1))
        cluster.discover_nodes(["*"])                   # alpha is known: nothing new to announce
        cluster.close()
        print("\\n".join(lines))
        """
    )
    assert client.stdout.split("\n")[:4] == ["None", "initialized alpha 2", "submitted True", "finished 5"], client.stdout


@pytest.mark.parametrize("kind", ["JobCluster", "SharedJobCluster"])
def test_a_program_that_exits_without_close_runs_every_job(cluster: Cluster, tmp_path: Path, kind: str) -> None:
    if kind == "SharedJobCluster":
        cluster.scheduler()
        cluster.node(cpus=2)
    out = tmp_path / "done"
    out.mkdir()
    cluster.run_client(
        f"""
        import dispy_client as dispy

        def compute(n):
            import time
            time.sleep(0.05)
            open(f"{out}/{{n}}", "w").close()

        cluster = dispy.{kind}(compute)
        for n in range(50):                 # dispy's documentation program: 50 jobs, then the end
            cluster.submit(n)
        """,
        name=kind,
    )
    assert sorted(int(p.name) for p in out.iterdir()) == list(range(50)), kind


def test_close_with_a_timeout_returns_false_and_leaves_the_jobs_running() -> None:
    cluster = dispy.JobCluster(nap)
    try:
        job = cluster.submit(1.5)
        assert cluster.close(timeout=0.1) is False
        assert job.status in (dispy.DispyJob.Created, dispy.DispyJob.Running)
        assert cluster.close() is True
        assert job.status == dispy.DispyJob.Finished and job.result == 1.5
    finally:
        cluster.close(terminate=True)


def test_with_block_propagates_exceptions() -> None:
    with pytest.raises(KeyError), dispy.JobCluster(square) as cluster:
        cluster.submit(2)
        raise KeyError("the user's")


def test_with_block_that_raises_cancels_its_jobs_instead_of_waiting_for_them() -> None:
    """A failing test (or ^C) inside `with` must not hang in `__exit__` on a job that never ends."""
    started = time.monotonic()
    with pytest.raises(KeyError), dispy.JobCluster(nap) as cluster:
        job = cluster.submit(600)
        wait_until(lambda: job.status == dispy.DispyJob.Running, 30, "the job to start")
        raise KeyError("the user's")
    assert job.status == dispy.DispyJob.Cancelled
    assert time.monotonic() - started < 120


def test_dispys_names_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispy.config.SharedSchedulerPort == 9702 and dispy.config.DispyPort == 9700
    node = dispy.DispyNode("10.0.0.1", "n1", 4)
    assert (node.ip_addr, node.name, node.cpus, node.tx, node.rx) == ("10.0.0.1", "n1", 4, 0, 0)
    with pytest.warns(UserWarning, match="ext_host is ignored"):
        cluster = dispy.JobCluster(square, host="127.0.0.1", dispy_port=0, ext_host="gw.example", loglevel=dispy.logger.INFO)
    try:
        assert cluster.scheduler_address[0] == "127.0.0.1"
        jobs = [cluster.submit(i) for i in range(4)]
        assert cluster() is None and all(job.done for job in jobs)  # calling the cluster waits
        cluster.stats()
        assert "jobs: 4" in capsys.readouterr().out
        assert cluster.discover_nodes(["*"]) == 0
    finally:
        cluster.close()


def test_node_signatures_set_node_cpus_and_submit_node() -> None:
    with dispy.JobCluster(nap) as cluster:
        [node] = cluster.status().nodes
        assert node.cpus >= 1
        assert cluster.set_node_cpus(node, -1) == node.cpus - 1  # all but one
        assert cluster.set_node_cpus(node.name, 0) == 0
        assert cluster.set_node_cpus("no-such-node", 1) == -1
        assert cluster.submit_node("no-such-node", 0) is None
        assert cluster.set_node_cpus(node, node.cpus) == node.cpus
        job = cluster.submit_node(node, 0.01)
        assert job is not None and job() == 0.01 and job.node == node.name


def _stamp() -> int:
    global stamp
    import time

    stamp = time.time_ns()
    return 0


def read_stamp() -> int:
    return stamp  # noqa: F821  (a global that setup declares)


def test_resetup_node_takes_dispys_arguments_and_runs_setup_again() -> None:
    with dispy.JobCluster(read_stamp, setup=_stamp, nodes=[("*", None, 1)]) as cluster:
        first = cluster.submit()()
        [node] = cluster.status().nodes
        assert cluster.resetup_node(node, terminate_pending=False) == 0
        second = cluster.submit()
        assert second() is not None and second.result != first, (second.status, second.exception)


def test_node_allocate_runs_once_per_node_after_the_cluster_exists() -> None:
    calls: list[str] = []

    class Two(dispy.NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):  # type: ignore[no-untyped-def]
            calls.append(cluster.name)
            return min(cpus, 1)

    with dispy.JobCluster(square, nodes=[Two("*")]) as cluster:
        assert cluster.submit(3)() == 9
    assert calls == ["square"], calls


def test_a_failed_jobcluster_leaves_nothing_running(cluster: Cluster) -> None:
    client = cluster.run_client(
        """
        import psutil, dispy_client as dispy

        def compute(n):
            return n

        try:
            dispy.JobCluster(compute, recover_file="/nonexistent/dir/recover")
        except OSError as exc:
            print("failed:", type(exc).__name__)
        print("children:", len(psutil.Process().children(recursive=True)))
        """
    )
    assert client.stdout.split("\n")[:2] == ["failed: FileNotFoundError", "children: 0"], client.stdout
    assert "Exception ignored" not in client.stderr and "Traceback" not in client.stderr, client.stderr


class Scale:
    def __init__(self, k: int) -> None:
        self.k = k


def offset(a: int, b: int) -> int:
    return a + b


def scaled(n):  # type: ignore[no-untyped-def]
    found = globals()  # by name: only `depends` can put them there (pickling this function carries neither)
    return found["Scale"](n).k + found["offset"](n, 1)


def test_depends_takes_an_instance_and_a_partial_as_dispy_does() -> None:
    import functools

    # dispy ships an instance's class and a partial's function
    with dispy.JobCluster(scaled, depends=[Scale(3), functools.partial(offset, 1)]) as cluster:
        job = cluster.submit(2)
        assert job() == 5, (job.status, job.exception)
    with pytest.raises(TypeError, match="depends entries"):
        dispy.JobCluster(scaled, depends=[None])


def test_httpd_serves_the_clusters_status_as_json_also_once_it_is_closed() -> None:
    server = None
    try:
        with dispy.JobCluster(square) as cluster:
            server = DispyHTTPServer(cluster, port=0)
            cluster.submit(2)()
            cluster.wait()
            host, port = server.address
            with urllib.request.urlopen(f"http://{host}:{port}/cluster_status.json", timeout=10) as reply:
                status = json.load(reply)
        closed = server.status()["square"]  # its scheduler is gone: what its jobs told
    finally:
        if server is not None:
            server.shutdown()
    mine = status["square"]
    assert mine["jobs_submitted"] == 1 and mine["jobs_done"] == 1 and mine["jobs_pending"] == 0, status
    assert [n["jobs_done"] for n in mine["nodes"]] == [1], status
    assert [(j["node"], j["state"]) for j in mine["jobs"]] == [(mine["nodes"][0]["name"], "finished")], status
    assert [n["jobs_done"] for n in closed["nodes"]] == [1] and closed["jobs"] == mine["jobs"]
