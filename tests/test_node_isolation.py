"""Isolation, limits and kill-the-tree, through the node's runner and real zygotes.

Every misbehaving job here runs next to a well-behaved cluster whose jobs must
all finish with the right results; every test ends with no process of any job
left (the harness's autouse fixture, and `no_marked_processes`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import cloudpickle
import psutil
import pytest

from dispy_node import cgroups, killtree
from dispy_node import zygote_protocol as zp
from dispy_node.limits import Limits
from dispy_wire.messages import JobRef, JobResult
from dispy_wire.status import JobStatus
from procs import EXPECT_CGROUP, Cluster, in_cgroup_v2
from waiting import wait_until
from test_node_runner import (  # noqa: F401  (the autouse fixture works by being imported)
    DEADLINE, JOB_ACCOUNT, RUN_AS_SKIP, Harness, _gone, double, kill_pids, no_leftover_processes, pid_server, run,
    value, write_to_the_node,
)  # fmt: skip

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- computations -------------------------------------------------------------------------


def where_am_i() -> dict[str, Any]:
    with open("made-by-job", "w") as f:
        f.write("x")
    return {
        "cwd": os.getcwd(),
        "mode": stat.S_IMODE(os.stat(".").st_mode),
        "file_mode": stat.S_IMODE(os.stat("made-by-job").st_mode),
        "depends": open("data.txt").read(),
        "session_leader": os.getsid(0) == os.getpid(),
        "group_leader": os.getpgid(0) == os.getpid(),
        "uid": os.getuid(),
        "dir_uid": os.stat(".").st_uid,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def allocate_until_the_limit() -> int:
    hog = []
    while True:
        hog.append(bytearray(16 << 20))


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def closes_stdout() -> int:
    os.close(1)
    sys.stdout = open(os.devnull, "w")
    print("lost")
    return 1


def floods(megabytes: int) -> int:
    chunk = b"x" * (1 << 20)
    for _ in range(megabytes):
        os.write(1, chunk)
    return megabytes


def forks_children(n: int) -> int:
    for _ in range(n):
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
    return n


def daemonizes(sock_path: str, then_sleep: float) -> None:
    """Leaves a double-forked, setsid'd grandchild behind and tells the test its pid."""
    import socket

    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(120)
            os._exit(0)
        os._exit(0)
    grandchild = int(os.read(r, 32))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(f"{grandchild}\n".encode())
    time.sleep(then_sleep)


def hangs() -> None:
    time.sleep(120)


def setup_hangs() -> None:
    time.sleep(120)


def garbling_setup(frame: bytes) -> Any:
    """A setup (it runs in the zygote) that writes `frame` on the zygote's pipe to the node."""
    return functools.partial(write_to_the_node, frame)


# -- helpers ------------------------------------------------------------------------------


#: inherited by our zygotes and their jobs: other test sessions on this machine have marked jobs too
SESSION = f"{os.getpid()}.{time.time_ns()}"
os.environ["DISPY_TEST_SESSION"] = SESSION


def marked_processes() -> list[int]:
    """Pids of every job process of this test session still on the machine."""
    found = []
    for proc in psutil.process_iter():
        try:
            if killtree.mark_of(proc.pid) and proc.environ().get("DISPY_TEST_SESSION") == SESSION:
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(autouse=True)
def no_marked_processes() -> Any:
    yield
    left = marked_processes()
    described = [_describe(pid) for pid in left]
    kill_pids(left)
    assert not left, f"job processes left behind: {described}"


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} {p.status()} ppid={p.ppid()} {p.cmdline()} mark={killtree.mark_of(pid)}"
    except psutil.Error:
        return f"{pid} gone"


async def beside(h: Harness, n: int = 6) -> list[int]:
    """Starts a well-behaved cluster's jobs; returns their ids (checked by `all_correct`)."""
    if "good" not in h.runner.held()[1]:
        h.load("good", func=double)
    return h.run("good", *[(i,) for i in range(n)])


async def all_correct(h: Harness, ids: list[int]) -> None:
    results = [await h.result(i) for i in ids]
    assert [value(r) for r in results] == [2 * (i - ids[0]) for i in ids]


# -- working directory, session, umask, account -----------------------------------------


def test_job_dir_session_umask_and_depends() -> None:
    async def body(h: Harness) -> None:
        h.load(func=where_am_i, files=[("data.txt", b"payload", 0o644)])
        r1, r2 = await h.call("c1"), await h.call("c1")
        info = value(r1)
        assert Path(info["cwd"]) == h.runner.work_dir / "c1" / "jobs" / str(r1.job_id)
        assert value(r2)["cwd"] != info["cwd"]  # each job its own directory
        assert info["mode"] == 0o700 and info["file_mode"] == 0o600  # umask 077
        assert info["depends"] == "payload"
        assert info["session_leader"] and info["group_leader"]
        assert info["uid"] == info["dir_uid"] == JOB_ACCOUNT.uid
        assert not Path(info["cwd"]).exists()  # removed after the job

    run(body)


def test_a_depends_file_named_like_a_module_of_the_node_does_not_replace_it() -> None:
    # a cluster's files come first on its zygote's sys.path (its jobs import them): the node's own modules are
    # imported before, so that a file of the same name is the job's, not the node's
    async def body(h: Harness) -> None:
        shadow = ("cloudpickle.py", b"raise ImportError('not the node s')", 0o644)
        h.load(func=where_am_i, files=[("data.txt", b"payload", 0o644), shadow])
        assert value(await h.call("c1"))["depends"] == "payload"

    run(body)


def test_keep_files_keeps_job_dirs() -> None:
    async def body(h: Harness) -> None:
        h.load(func=where_am_i, files=[("data.txt", b"payload", 0o644)], options={"keep_files": True})
        info = value(await h.call("c1"))
        assert (Path(info["cwd"]) / "made-by-job").read_text() == "x"

    run(body)


@pytest.mark.skipif(RUN_AS_SKIP is not None, reason=f"cannot run jobs as the default account here: {RUN_AS_SKIP}")
def test_jobs_run_as_the_unprivileged_account() -> None:
    async def body(h: Harness) -> None:
        assert os.getuid() != 0 or JOB_ACCOUNT.uid != 0
        h.load(func=where_am_i, files=[("data.txt", b"payload", 0o644)])
        info = value(await h.call("c1"))
        assert info["uid"] == info["dir_uid"] == JOB_ACCOUNT.uid
        assert info["uid"] != 0

    run(body)


# -- limits -------------------------------------------------------------------------------


def test_memory_limit_names_the_limit() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load(func=allocate_until_the_limit)
        r = await h.call("c1")
        assert r.status == JobStatus.TERMINATED
        assert r.exception.startswith("memory limit 512 MiB exceeded"), r.exception
        assert r.exception_type == "MemoryError"
        await all_correct(h, good)

    run(body, caps=Limits(memory=512 << 20))


def test_wall_clock_limit_from_job_cluster_and_node() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("c1", func=sleep, options={"timeout": 0.4})
        (queued,) = h.run("c1", (30,), options={"timeout": 0.2})  # sent before Ready: options kept
        (default,) = h.run("c1", (30,))
        (capped,) = h.run("c1", (30,), options={"timeout": 100})
        for job_id, text in ((queued, "0.2"), (default, "0.4"), (capped, "1")):
            r = await h.result(job_id)
            assert (r.status, r.exception, r.exception_type) == (
                JobStatus.TERMINATED, f"wall-clock limit {text} s exceeded", "LimitExceeded",
            )  # fmt: skip
        (short,) = h.run("c1", (0.01,), options={"timeout": 5})
        assert value(await h.result(short)) == 0.01
        await all_correct(h, good)

    run(body, kill_grace=1.0, caps=Limits(wall=1.0))


def test_cpu_time_and_open_files_limits() -> None:
    async def body(h: Harness) -> None:
        h.load("spin", func=spin, options={"cpu_time": 1})
        h.load("files", func=where_am_i, files=[("data.txt", b"", 0o644)], options={"open_files": 64})
        r = await h.call("spin", 30)
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "CPU time limit 1 s exceeded")
        assert value(await h.call("files"))["nofile"] == 64
        h.load("hoard", func=opens_files, options={"open_files": 32})
        r = await h.call("hoard", 100)
        assert r.status == JobStatus.TERMINATED and r.exception.startswith("open files limit 32 reached\n"), r.exception

    run(body)


def opens_files(n: int) -> int:
    kept = [open(os.devnull) for _ in range(n)]  # noqa: SIM115  (held open on purpose)
    return len(kept)


def test_bad_options_are_refused_clearly() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", func=double)
        (job_id,) = h.run("c1", (1,), options={"timeout": "soon"})
        r = await h.result(job_id)
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "option timeout='soon' is not a positive number")
        h.load("c2", func=double, options={"memory": -1})
        await h.until(lambda: bool(h.failures))
        assert h.failures == [("c2", "option memory=-1 is not a positive number")]

    run(body)


# -- misbehaving jobs ---------------------------------------------------------------------


def test_crashes_exits_and_closed_stdout() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("segv", func=segfault)
        h.load("exit", func=os._exit)
        h.load("close", func=closes_stdout)
        r = await h.call("segv")
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "job process killed by signal SIGSEGV (11)")
        r = await h.call("exit", 7)
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "job process exited with code 7")
        r = await h.call("close")
        assert (r.status, value(r)) == (JobStatus.FINISHED, 1)
        await all_correct(h, good)

    run(body)


def test_output_flood_is_cut_at_max_output() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("flood", func=floods)
        r = await h.call("flood", 300)
        assert value(r) == 300
        assert r.stdout.startswith(b"x" * (1 << 20))
        assert r.stdout.endswith(b"[dispynode: output cut at 1048576 of 314572800 bytes (--max-output)]\n")
        await all_correct(h, good)

    run(body, max_output=1 << 20)


def test_a_thousand_children_are_gone_before_the_result() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("forks", func=forks_children)
        r = await h.call("forks", 1000)
        assert value(r) == 1000
        assert marked_processes() == []  # the tree was gone before the result came
        await all_correct(h, good)

    run(body)


def test_daemonized_grandchild_is_killed_on_cancel_and_at_the_end() -> None:
    async def body(h: Harness) -> None:
        sock_path, got, server = await pid_server(h)
        pids: list[int] = []
        try:
            h.load(func=daemonizes)
            (job_id,) = h.run("c1", (sock_path, 60))
            pids = await asyncio.wait_for(got, DEADLINE)
            assert os.getsid(pids[0]) != os.getsid(0)
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert r.status == JobStatus.CANCELLED
            assert _gone(pids, 0.0) == []
        finally:
            server.close()
            kill_pids(pids)
        sock_path, got, server = await pid_server(h)
        try:
            (job_id,) = h.run("c1", (sock_path, 0))  # ends by itself, leaving the grandchild
            pids = await asyncio.wait_for(got, DEADLINE)
            r = await h.result(job_id)
            assert r.status == JobStatus.FINISHED
            assert _gone(pids, 0.0) == [], [_describe(p) for p in pids]
        finally:
            server.close()
            kill_pids(pids)

    run(body, kill_grace=1.0)


def test_kill_grace_then_sigkill_for_a_job_ignoring_sigterm() -> None:
    async def body(h: Harness) -> None:
        sock_path, got, server = await pid_server(h)
        try:
            h.load(func=ignores_sigterm)
            (job_id,) = h.run("c1", (sock_path,))
            await asyncio.wait_for(got, DEADLINE)  # its handler is in place
            start = time.monotonic()
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert r.status == JobStatus.CANCELLED
            assert 1.9 <= time.monotonic() - start < 8  # SIGINT, the grace, SIGTERM, the grace, SIGKILL
        finally:
            server.close()

    run(body, kill_grace=1.0)


def ignores_sigterm(sock_path: str) -> None:
    import socket

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a cancel interrupts first: ignored too
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(f"{os.getpid()}\n".encode())
    time.sleep(120)


def test_setup_that_hangs_fails_its_cluster_only() -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("slow", func=double, setup=setup_hangs)
        h.run("slow", (1,))
        await h.until(lambda: bool(h.failures))
        assert h.failures == [("slow", "setup did not finish within 5 s")]
        await all_correct(h, good)

    # the limit applies to the good cluster's start as well: 5 s, not 1, so a busy host does not fail it
    run(body, kill_grace=0.5, setup_timeout=5.0)


def no_new_privs() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("NoNewPrivs:"))


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_NO_NEW_PRIVS is Linux's")
def test_jobs_gain_no_privileges_from_setuid_programs() -> None:
    async def body(h: Harness) -> None:
        h.load(func=no_new_privs)
        assert value(await h.call("c1")) == "1"

    run(body)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00\x00\x05hello",  # no message at all
        zp.encode(zp.Done(0, 11, 123, b"", b"", "", "", 0.0, 0.0)),  # a result that is no pickle: wrong type
        zp.encode(zp.Done(0, 5, None, b"", b"", "", "", 0.0, 0.0)),  # a status no job ends with
        zp.encode(zp.SetupFailed("x" * (3 << 20))),  # more than any honest zygote sends
        zp.encode(zp.FileAdded(1, False, "x" * 5000)),  # ... or a reply the node would pass on at any size
        zp.encode(zp.Started(0, -1)),  # no process (and a crash of the cleanup that would kill it)
    ],
    ids=["garbage", "ill-typed", "bad-status", "oversized", "oversized-reply", "bad-pid"],
)
def test_setup_that_garbles_the_zygote_pipe_fails_its_cluster_only(frame: bytes) -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load("bad", func=double, setup=garbling_setup(frame))
        h.run("bad", (1,))
        await h.until(lambda: bool(h.failures))
        ((cluster_id, message),) = h.failures
        assert cluster_id == "bad" and message.startswith("zygote sent a malformed message"), message
        await all_correct(h, good)
        await h.until(lambda: h.runner.busy == 0)

    run(body, kill_grace=0.5)


# -- CPUs and the node's own kills --------------------------------------------------------


def test_cluster_cpu_cap_runs_its_jobs_one_at_a_time() -> None:
    async def body(h: Harness) -> None:
        h.load(func=sleep, options={"cpus": 1})
        ids = h.run("c1", (0.2,), (0.2,), (0.2,))
        results: list[JobResult] = sorted([await h.result(i) for i in ids], key=lambda r: r.start_time)
        for a, b in zip(results, results[1:]):
            assert a.end_time <= b.start_time

    run(body)


def test_giving_up_all_jobs_abandons_them_with_the_reason() -> None:
    async def body(h: Harness) -> None:
        h.load(func=hangs)
        (job_id,) = h.run("c1", ())
        await h.until(lambda: h.runner.busy == 1)
        h.runner.give_up_all("node's service ended at 18:00 (--service-end)")
        r = await h.result(job_id)
        assert (r.status, r.exception) == (JobStatus.ABANDONED, "node's service ended at 18:00 (--service-end)")
        assert h.runner.busy == 0

    run(body, kill_grace=0.5)


def test_subprocess_program_jobs_are_killed_too() -> None:
    async def body(h: Harness) -> None:
        h.load(kind="program", program=["sleep"])
        (job_id,) = h.run("c1", (60,), options={"timeout": 0.3})
        r = await h.result(job_id)
        assert r.exception == "wall-clock limit 0.3 s exceeded"
        assert not marked_processes()  # the program, not only the job process that ran it

    run(body, kill_grace=0.5)


@pytest.mark.skipif(os.geteuid() != 0, reason="the default job account is only chosen by a node run as root")
def test_root_node_never_silently_runs_jobs_as_root(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", "127.0.0.1:9", "--work-dir", str(tmp_path / "w")]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        done = None  # it started, dialling a scheduler that is not there
    if RUN_AS_SKIP is not None:  # `nobody` cannot run this Python: the node must refuse, clearly
        assert done is not None and done.returncode == 2, done
        assert "cannot run" in done.stderr and "--jobs-as-self" in done.stderr, done.stderr
    else:  # it can: the node runs, with jobs as that account
        assert done is None


# -- control groups: limits on the job's whole tree -------------------------------------

@pytest.fixture(scope="module")
def groups() -> Iterator[cgroups.JobGroups]:
    """The node's cgroup directories, as `dispynode` makes them at start; removed afterwards."""
    made, why = cgroups.prepare()
    expected = os.environ.get(EXPECT_CGROUP)
    if expected:  # the run in a cgroup v2 kernel must not pass by skipping or falling back
        assert made is not None and (cgroups.UNIFIED in made.parents) == (expected == "v2"), why
    if made is None:
        pytest.skip(f"this host gives no per-job cgroups: {why}")
    yield made
    cgroups.release(made)
    assert not any(os.path.exists(p) for p in made.parents.values()), "cgroup directories left behind"


def children_share_memory(n: int, mib: int) -> None:
    """n processes of mib MiB each: every one under RLIMIT_AS, the tree over the group's limit."""
    import time as t

    def hog() -> bytearray:
        data = bytearray(mib << 20)
        data[::4096] = b"x" * len(data[::4096])  # touch every page: resident, charged
        return data

    children = []
    for _ in range(n - 1):
        pid = os.fork()
        if pid == 0:
            kept = hog()
            t.sleep(2)  # long enough for all of them to be resident at once
            os._exit(len(kept) and 0)
        children.append(pid)
    kept = hog()
    for pid in children:  # the kernel kills some process of the tree; whichever it is, the job fails
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            raise RuntimeError(f"child {pid} was killed by signal {os.WTERMSIG(status)}")
    del kept


@pytest.mark.cgroup
def test_process_limit_bounds_the_whole_tree_and_names_itself(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load(func=forks_children)
        (job_id,) = h.run("c1", (50,))
        r = await h.result(job_id)
        assert r.status == JobStatus.TERMINATED, (r.status, r.exception)
        assert r.exception.startswith("process limit 8 reached"), r.exception
        await all_correct(h, good)

    run(body, caps=Limits(processes=8), cgroups=groups, kill_grace=0.5)


@pytest.mark.cgroup
def test_memory_limit_bounds_the_whole_tree_and_names_itself(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        good = await beside(h)
        h.load(func=children_share_memory)
        (job_id,) = h.run("c1", (6, 64))  # 6 × 64 MiB: each under 256 MiB, the tree over it
        r = await h.result(job_id)
        assert r.status == JobStatus.TERMINATED, (r.status, r.exception)
        assert r.exception.startswith("memory limit 256 MiB exceeded"), r.exception
        await all_correct(h, good)

    run(body, caps=Limits(memory=256 << 20), cgroups=groups, kill_grace=0.5)


def sheds_all_but_its_group() -> int:
    """Starts a process the node cannot see as the job's but by its control group: a new session,
    an empty environment (no mark), and a parent that is gone by the time the job ends."""
    import subprocess as sp

    return sp.Popen(["sleep", "60"], env={}, start_new_session=True).pid


@pytest.mark.cgroup
def test_a_process_that_sheds_session_and_environment_is_gone_before_the_result(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        h.load(func=sheds_all_but_its_group)
        r = await h.call("c1")
        assert r.status == JobStatus.FINISHED, r.exception
        assert _gone([value(r)], timeout=0) == []
        assert h.runner.busy == 0

    run(body, cgroups=groups, kill_grace=0.5)


@pytest.mark.cgroup
def test_a_node_gives_its_group_back_as_it_found_it(cluster: Cluster, groups: cgroups.JobGroups) -> None:
    """Two nodes one after the other in one group (a restart in the same scope): the second gets
    per-job groups too; under v2 the group must take a process again once the first has gone."""
    cluster.scheduler()
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
            "--work-dir", str(cluster.workdir / "node"), "--jobs-as-self"]  # fmt: skip
    for turn in ("first", "second"):
        v2 = cgroups.UNIFIED in groups.parents
        node = cluster.start(in_cgroup_v2(argv, "reused.scope") if v2 else argv, turn)
        node.wait_for_line("connected to ")
        assert "per-job cgroups under" in node.stderr, node.stderr
        node.stop()
        assert node.popen.returncode == 0, node.stderr


def setup_leaves_a_daemon(pid_file: str) -> int:
    """Leaves a daemon running that sheds everything but its control group: double fork, new
    session, empty environment (the zygote is no subreaper yet during setup)."""
    import subprocess as sp

    sp.run(["sh", "-c", f"sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}"], env={}, check=True)
    return 0


@pytest.mark.cgroup
def test_what_a_setup_left_running_goes_with_its_cluster(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        pid_file = h.root / "daemon.pid"
        h.root.chmod(0o777)  # setup runs as the jobs' account
        h.load(func=double, setup=functools.partial(setup_leaves_a_daemon, str(pid_file)))
        assert value(await h.call("c1", 2)) == 4
        daemon = int(pid_file.read_text())
        assert _gone([daemon], timeout=0) == [daemon]  # its cluster is still loaded
        await h.runner.unload("c1")
        assert _gone([daemon], timeout=0) == []

    run(body, cgroups=groups, kill_grace=0.5)


@pytest.mark.cgroup
def test_groups_left_by_a_node_that_died_are_swept_at_start_with_what_runs_in_them(groups: cgroups.JobGroups) -> None:
    dead = 4_000_000  # above any pid this machine hands out
    code = f"from dispy_node import cgroups; g, why = cgroups.prepare(pid={dead + 1}); assert g, why; cgroups.release(g)"
    argv = [sys.executable, "-c", code]
    if cgroups.UNIFIED in groups.parents:  # the test's group passes controllers on now: a fresh one, as systemd gives
        bases, argv = ["/sys/fs/cgroup/restarted.service"], in_cgroup_v2(argv, "restarted.service")
    else:
        bases = [os.path.dirname(p) for p in groups.roots]
    stale = [os.path.join(base, f"dispynode-{dead}") for base in bases]
    for path in stale:
        os.makedirs(os.path.join(path, "c1", "job-1"))
    orphan = subprocess.Popen(["sleep", "60"])  # a job still running, its zygote gone with the node
    try:
        for path in stale:
            with open(os.path.join(path, "c1", "job-1", "cgroup.procs"), "w") as f:
                f.write(str(orphan.pid))
        subprocess.run(argv, check=True, timeout=60)
        assert orphan.wait(10) == -signal.SIGKILL
        assert not any(os.path.exists(p) for p in stale)
    finally:
        orphan.kill()
        orphan.wait()


@pytest.mark.cgroup
@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("a shell beside the node", "cgroup v2 group /shared.scope holds other processes"),
        ("controllers not delegated", "cgroup v2 group /plain.slice/node.service was not delegated memory and pids"),
    ],
)
def test_a_v2_group_the_node_cannot_use_is_named_with_the_reason(cluster: Cluster, setup: str, why: str) -> None:
    if os.environ.get(EXPECT_CGROUP) != "v2":
        pytest.skip("needs a v2 hierarchy of its own: test_node_cgroup2.py runs it in a cgroup v2 kernel")
    cluster.scheduler()
    if setup == "a shell beside the node":
        group = "shared.scope"
        cluster.start(in_cgroup_v2(["sleep", "60"], group), "shell")
        members = Path("/sys/fs/cgroup", group, "cgroup.procs")
        wait_until(lambda: members.read_text().strip(), DEADLINE, "the shell to move into its group")
    else:
        group = "plain.slice/node.service"  # plain.slice passes no controllers down
    argv = [sys.executable, "-m", "dispy_node.main", "--scheduler", cluster.address, "--cpus", "1",
            "--work-dir", str(cluster.workdir / "node"), "--jobs-as-self", "--max-memory", "256M"]  # fmt: skip
    node = cluster.start(in_cgroup_v2(argv, group), "node")
    node.wait_for_line("connected to ")
    assert f"per-job cgroups unavailable ({why}" in node.stderr, node.stderr
    assert not list(Path("/sys/fs/cgroup", group).glob("dispynode-*")), "a refused node left groups behind"


def write_then_fail(mib: int) -> None:
    with open("big.bin", "wb") as f:  # page cache churns at the group's limit: nothing is killed
        for _ in range(mib):
            f.write(b"x" * (1 << 20))
    raise ValueError("an ordinary failure")


@pytest.mark.cgroup
def test_groups_go_with_their_jobs_whatever_the_end(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        h.load(func=sleep)
        ids = h.run("c1", (30,), (0,))
        await h.result(ids[1])
        h.runner.kill([JobRef("c1", ids[0])])
        assert (await h.result(ids[0])).status == JobStatus.CANCELLED
        left = [e for p in groups.parents.values() for e in os.listdir(p) if e.startswith("job-")]
        assert left == [], left

    run(body, caps=Limits(memory=256 << 20), cgroups=groups, kill_grace=0.5)


@pytest.mark.cgroup
def test_page_cache_at_the_limit_is_no_memory_breach(groups: cgroups.JobGroups) -> None:
    async def body(h: Harness) -> None:
        h.load(func=write_then_fail)
        r = await h.call("c1", 400)
        assert r.status == JobStatus.TERMINATED and r.exception_type == "ValueError"
        assert not r.exception.startswith("memory limit"), r.exception

    run(body, caps=Limits(memory=256 << 20), cgroups=groups)
