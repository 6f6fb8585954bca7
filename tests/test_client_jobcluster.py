"""JobCluster, the embedded default: its own scheduler and a local dispynode, used as dispy's docs describe."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest

import dispy_client as dispy
from dispy_sched.core.state import NO_LIMITS
from waiting import wait_until
from procs import embedded_nodes, no_node_outlives_its_test  # noqa: F401  (the fixture is autouse: a failed test leaves no node)


def square(n):  # type: ignore[no-untyped-def]
    return n * n


def sleepy(t):  # type: ignore[no-untyped-def]
    import time

    if t < 0:
        raise ValueError("negative")
    time.sleep(t)
    return t



def test_zero_setup_runs_jobs_and_close_leaves_nothing_running() -> None:
    cluster = dispy.JobCluster(square)
    try:
        jobs = [cluster.submit_job_id(i, i) for i in range(8)]
        assert [job() for job in jobs] == [i * i for i in range(8)]
        assert all(job.status == dispy.DispyJob.Finished and job.ip_addr == "127.0.0.1" for job in jobs)
        status = cluster.status()
        assert isinstance(status, dispy.ClusterStatus) and status.jobs_pending == 0
        [node] = status.nodes
        assert isinstance(node, dispy.DispyNode)
        assert node.cpus == (psutil.cpu_count() or 1) and node.jobs_done == 8 and node.ip_addr == "127.0.0.1"
        assert [j.id for j in jobs if j.node == node.name] == list(range(8))
        assert embedded_nodes(), "no local node process"
    finally:
        cluster.close()
    assert not embedded_nodes()
    assert cluster.submit is not None
    with pytest.raises(dispy.DispyError):
        cluster.submit(1)


def test_program_computation_runs_with_args_and_returns_exit_status(tmp_path: Path) -> None:
    program = tmp_path / "greet.py"
    program.write_text("import sys\nprint('hello', *sys.argv[1:])\nprint('oops', file=sys.stderr)\nsys.exit(len(sys.argv) - 1)\n")
    with dispy.JobCluster(str(program)) as cluster:
        job = cluster.submit("a", 2)
        assert job() == 2, (job.status, job.exception, job.stderr)
        assert job.stdout == b"hello a 2\n" and b"oops" in job.stderr  # bytes, as dispy gives a program's output
        assert cluster.name == "greet.py"


def test_setup_loads_data_once_per_node_and_jobs_read_it(tmp_path: Path) -> None:
    data = tmp_path / "table.csv"
    data.write_text("\n".join(f"{i},{i * 10}" for i in range(100)))

    def setup():  # type: ignore[no-untyped-def]
        import os

        global table, loaded_by
        with open("table.csv") as f:
            table = dict(tuple(map(int, line.split(","))) for line in f)
        loaded_by = os.getpid()
        return 0

    def lookup(key):  # type: ignore[no-untyped-def]
        import os

        return table[key], loaded_by, os.getpid()

    with dispy.JobCluster(lookup, depends=[str(data)], setup=setup) as cluster:
        results = cluster.map(range(0, 100, 10))
    assert [value for value, _, _ in results] == list(range(0, 1000, 100))
    assert len({loader for _, loader, _ in results}) == 1, "setup ran more than once on the node"
    assert all(job_pid != loader for _, loader, job_pid in results)


def test_callbacks_job_status_and_cluster_status() -> None:
    seen: list[tuple[int, int]] = []
    node_events: list[tuple[int, str | None]] = []
    with pytest.warns(DeprecationWarning, match="callback"):
        cluster = dispy.JobCluster(
            square,
            cluster_status=lambda status, node, job: node_events.append((status, job and job.id)),
            callback=lambda job: seen.append((job.id, job.status)),
        )
    jobs = [cluster.submit_job_id(f"j{i}", i) for i in range(3)]
    cluster.wait()
    cluster.close()
    assert {(j.id, dispy.DispyJob.Finished) for j in jobs} <= {(i, s) for i, s in seen}
    assert (dispy.DispyNode.Initialized, None) == node_events[0]
    assert ("j1", dispy.DispyJob.Finished) in [(job, status) for status, job in node_events]
    assert node_events[-1] == (dispy.DispyNode.Closed, None)


def test_dispy_parameters_accepted_with_warnings_and_unknown_ones_refused() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cluster = dispy.JobCluster(
            square, ping_interval=5, poll_interval=2, ext_ip_addr="10.0.0.1", loglevel=dispy.logger.WARNING,
            pulse_interval=1, dest_path="/tmp", cleanup=False, reentrant=True,
        )  # fmt: skip
    cluster.close()
    messages = [str(w.message) for w in caught]
    for name in ("ping_interval", "poll_interval", "ext_ip_addr"):
        assert any(f"{name} is ignored" in m for m in messages), messages
    assert not any("pulse_interval" in m or "dest_path" in m for m in messages)
    with pytest.raises(TypeError, match="no_such_option"):
        dispy.JobCluster(square, no_such_option=1)


def test_cancel_timeout_wait_and_close_terminate() -> None:
    cluster = dispy.JobCluster(sleepy, nodes=[("127.0.0.1", None, 1)])
    long = cluster.submit(30)
    queued = cluster.submit(30)
    limited = cluster.submit(30, dispy_job_timeout=0.3)
    wait_until(lambda: long.status == dispy.DispyJob.Running, what="the first job running on the node's one CPU")
    assert not cluster.wait(timeout=0.2)  # 30 s jobs: wait's timeout, not timing luck
    assert cluster.cancel(queued) == 0
    assert queued() is None and queued.status == dispy.DispyJob.Cancelled
    assert cluster.cancel(queued) == -1
    assert cluster.node_jobs("127.0.0.1") == [long]
    cluster.close(terminate=True)
    assert long.status == dispy.DispyJob.Cancelled
    assert limited.status in (dispy.DispyJob.Cancelled, dispy.DispyJob.Terminated)


def _exit_on_unpickling():  # type: ignore[no-untyped-def]
    raise SystemExit("unpickling this result exits")


class ExitsWhenUnpickled:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_exit_on_unpickling, ())


def result_exits_when_unpickled(x):  # type: ignore[no-untyped-def]
    return ExitsWhenUnpickled() if x == 0 else x * x


def test_a_result_whose_unpickling_exits_ends_terminated_and_later_jobs_still_end() -> None:
    # the client's thread that fills in results runs the result's own code: its SystemExit ended that thread, and no
    # later job of the cluster ever ended
    with dispy.JobCluster(result_exits_when_unpickled, nodes=[("127.0.0.1", None, 1)],
                          depends=[ExitsWhenUnpickled, _exit_on_unpickling]) as cluster:  # fmt: skip
        bad = cluster.submit(0)
        assert bad.finish.wait(60)
        assert bad.status == dispy.DispyJob.Terminated and "cannot unpickle" in (bad.exception or "")
        assert cluster.submit(3)() == 9


def test_the_client_reaches_its_own_scheduler_without_a_socket() -> None:
    """docs/client.md: a JobCluster's own messages never touch the network (an in-process pipe): the only
    connection to its scheduler's port is its node's."""
    with dispy.JobCluster(square, nodes=[("127.0.0.1", None, 1)]) as cluster:
        assert cluster.submit(4)() == 16
        port = cluster.scheduler_address[1]
        ours = [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr[1] == port]
        accepted = [c for c in psutil.Process().net_connections("tcp") if c.laddr[1] == port and c.raddr]
        assert ours == [] and len(accepted) == 1  # the node's connection, accepted by our scheduler


def test_cancel_of_a_job_whose_result_is_being_applied_says_ended_only_once_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """cancel() returned -1 ("already ended") while the job, out of the tracker's table, was still being filled in
    (its result unpickled) and not yet marked ended: the caller then saw it Running. The dispatcher is held in
    that instant here, by holding the filling in of the job's result."""
    import threading

    from dispy_client import tracker

    filling, release = threading.Event(), threading.Event()
    fill_job = tracker.fill_job

    def held_fill_job(*args: Any, **kwargs: Any) -> None:
        filling.set()
        release.wait(60)
        fill_job(*args, **kwargs)

    with dispy.JobCluster(square, nodes=[("127.0.0.1", None, 1)]) as cluster:
        monkeypatch.setattr(tracker, "fill_job", held_fill_job)
        job = cluster.submit(3)
        wait_until(filling.is_set, what="the job's result being applied")
        seen: list[Any] = []
        canceller = threading.Thread(target=lambda: seen.extend([cluster.cancel(job), job.status, job.finish.is_set()]))
        canceller.start()
        canceller.join(0.5)  # a cancel that answers at once must answer right: the job is still held here
        release.set()
        canceller.join(60)
        assert seen == [-1, dispy.DispyJob.Finished, True]
        assert job.result == 9


def wait_for_gate(path):  # type: ignore[no-untyped-def]
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return path


def test_the_local_node_is_sent_jobs_ahead_of_its_cpus(tmp_path: Path) -> None:
    # it starts the next job as a CPU frees, not a round trip to the scheduler later (issue 14: short jobs)
    gate = tmp_path / "gate"
    with dispy.JobCluster(wait_for_gate) as cluster:
        cpus = cluster.status().nodes[0].cpus
        jobs = [cluster.submit(str(gate)) for _ in range(2 * cpus + 2)]

        def sent_ahead() -> bool:
            [node] = cluster.scheduler_status()["nodes"].values()
            return node["busy"] + node["waiting"] > cpus  # running, and sent there to start as CPUs free

        wait_until(sent_ahead, what="jobs sent to the local node beyond its CPUs")
        gate.touch()
        assert [job() for job in jobs] == [str(gate)] * len(jobs)


def test_its_own_scheduler_sets_no_per_user_limits() -> None:
    # a JobCluster takes dispyscheduler's scheduling settings, not the limits a shared one puts on each user
    # (512 MiB of queued arguments would cancel jobs a program on its own machine queues)
    with dispy.JobCluster(square, nodes=[("127.0.0.1", None, 1)]) as cluster:
        core = cluster._embedded._server.core
        assert core.default_limits == NO_LIMITS and not core.limits
        assert cluster.submit(3)() == 9


def test_constructor_returns_once_the_local_node_can_take_jobs() -> None:
    for _ in range(2):  # the second cluster's node too, just after the first's closed
        with dispy.JobCluster(square, nodes=[("127.0.0.1", None, 1)]) as cluster:
            [node] = cluster.status().nodes  # no waiting here: the constructor did
            assert node.cpus == 1 and node.ip_addr == "127.0.0.1"
            assert cluster.submit(4)() == 16


def test_a_local_node_that_cannot_start_is_an_error_and_leaves_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(dispy.DispyError, match=r"this machine's node \(dispynode, pid \d+\) exited with status 78"):
        dispy.JobCluster(square, pulse_interval=-1)  # the node refuses a negative heartbeat (a config error)
    assert "heartbeat: expected seconds" in capfd.readouterr().err
    assert not embedded_nodes()


def test_a_port_in_use_is_an_error_and_leaves_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        threads = set(threading.enumerate())
        with pytest.raises(OSError, match="in use"):
            dispy.JobCluster(square, port=taken.getsockname()[1])
    assert set(threading.enumerate()) == threads, "its loop thread outlived it"
    assert not embedded_nodes()


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.filterwarnings("ignore:JobCluster. listening on")  # (the wildcards reach beyond this machine)
@pytest.mark.parametrize("host", [
    "localhost",
    pytest.param("::", marks=pytest.mark.skipif(not socket.has_ipv6 or not ipv6_loopback(), reason="no IPv6 loopback")),
    "0.0.0.0",
])  # fmt: skip
def test_a_name_or_a_wildcard_address_to_listen_on_serves_the_local_node(host: str) -> None:
    with dispy.JobCluster(square, nodes=[("127.0.0.1", None, 1)], host=host) as cluster:
        assert cluster.submit(3)() == 9
        [node] = cluster.status().nodes
        assert node.cpus == 1


def test_a_scheduler_that_cannot_start_leaves_no_node_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from dispy_sched.server import SchedulerServer

    async def refused(self: SchedulerServer, sock: socket.socket | None = None) -> tuple[str, int]:
        raise PermissionError("refused by the test")

    monkeypatch.setattr(SchedulerServer, "start", refused)  # after the local node started, before it joined
    with pytest.raises(PermissionError, match="refused by the test"):
        dispy.JobCluster(square)
    assert not embedded_nodes()


def test_a_local_node_that_does_not_join_in_time_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dispy_client.jobcluster

    monkeypatch.setattr(dispy_client.jobcluster, "LOCAL_NODE_TIMEOUT", 0.001)  # no node starts that fast
    with pytest.raises(dispy.DispyError, match="had not joined the scheduler after 0.001 s"):
        dispy.JobCluster(square)
    assert not embedded_nodes()


def test_job_timeout_ends_the_job() -> None:
    with dispy.JobCluster(sleepy) as cluster:
        job = cluster.submit(30, dispy_job_timeout=0.5)
        assert job() is None
        assert job.status == dispy.DispyJob.Terminated and "0.5 s" in (job.exception or ""), job.exception


def load_table(version: str) -> int:
    global table
    table = version
    return 0


def read_table() -> str:
    return table  # noqa: F821  (a global that setup declares)


class Versions(dispy.NodeAllocate):
    """Each allocation of a node gives `setup` the next version (dispy's replace_inmem example does so)."""

    def allocate(self, cluster: Any, ip_addr: str, name: str, cpus: int, avail_info: Any = None, platform: str = "") -> int:
        self.round = getattr(self, "round", 0) + 1
        self.setup_args = (f"v{self.round}",)
        return min(cpus, 1)


def test_resetup_node_runs_setup_again_with_new_arguments() -> None:
    with dispy.JobCluster(read_table, setup=load_table, nodes=[Versions("*")]) as cluster:
        first = cluster.submit()()
        assert first.startswith("v"), first
        [node] = cluster.status().nodes
        assert cluster.resetup_node(node) == 0  # dispy's: allocate runs again and gives the new setup_args
        job = cluster.submit()
        assert job() == f"v{int(first[1:]) + 1}", (first, job.status, job.exception)


def test_executor_map_over_1000_items_and_failures() -> None:
    with dispy.JobCluster(sleepy) as cluster, cluster.executor() as executor:
        items = [i / 1e6 for i in range(1000)]
        assert list(executor.map(sleepy, items)) == items
        bad = executor.submit(sleepy, -1)
        with pytest.raises(dispy.JobError, match="ValueError: negative") as info:
            bad.result(timeout=30)
        assert info.value.job.exception_type == "ValueError"
        with pytest.raises(ValueError, match="computation"):
            executor.submit(square, 1)


def test_asyncio_await_job_and_asubmit() -> None:
    with dispy.JobCluster(sleepy) as cluster:

        async def main() -> tuple[list[float], float]:
            jobs = [cluster.submit(0.01 * i) for i in range(5)]
            results = await asyncio.gather(*jobs)
            one = await cluster.asubmit(0.2)
            with pytest.raises(dispy.JobError):
                await cluster.asubmit(-1)
            return list(results), one

        results, one = asyncio.run(main())
    assert results == [0.01 * i for i in range(5)] and one == 0.2


def test_map_and_wait_with_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    with dispy.JobCluster(sleepy) as cluster:
        assert cluster.map([0.01, 0.02, (0.03,)], progress=True) == [0.01, 0.02, 0.03]
        with pytest.raises(dispy.JobError, match="negative"):
            cluster.map([0.01, -1])
        for t in (0.05, -1, 0.1):
            cluster.submit(t)
        assert cluster.wait(progress=True)
    err = capfd.readouterr().err
    # map's bar counts its own jobs; wait's, all the cluster's (two failed)
    assert "3/3" in err and "8/8" in err and "failed=2" in err and "running=" in err, err


def test_nodes_select_local_cpus_with_a_node_allocate_subclass() -> None:
    class OneCpu(dispy.NodeAllocate):
        def allocate(self, cluster, ip_addr, name, cpus, avail_info=None, platform=""):  # type: ignore[no-untyped-def]
            return 1 if ip_addr.startswith("127.") else 0

    with dispy.JobCluster(square, nodes=[OneCpu("*")]) as cluster:
        assert cluster.submit(3)() == 9
        assert [n.cpus for n in cluster.status().nodes] == [1]


def test_killed_client_leaves_no_node_behind(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        "import dispy_client as dispy, time\n"
        "c = dispy.JobCluster(lambda x: x)\n"
        "assert c.submit(1)() == 1\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        nodes = psutil.Process(proc.pid).children(recursive=True)
        assert nodes
        proc.kill()
        proc.wait(10)
        _, alive = psutil.wait_procs(nodes, timeout=60)
        assert not alive, f"processes outlived their killed client: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
