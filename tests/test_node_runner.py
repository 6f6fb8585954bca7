"""The node's job runner and its zygotes, driven directly (no scheduler, no sockets to one).

Each test starts a `Runner` in `asyncio.run`, loads a computation packed as a
client would pack it, runs jobs and waits (with a deadline) for the results the
runner hands to its callback. `Runner.close()` runs in a `finally`, and the
autouse fixture kills and reports any process the test left behind.

Jobs run as the runner would run them in production: as `nobody` when the
tests run as root. So each test's files live under a fresh directory in the
system's temporary directory, which that account can pass through (mode
0711), not under pytest's private `tmp_path`. Other `test_node_*` modules
import this harness.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from dispy_node import account
from dispy_node.account import Account
from dispy_node.runner import Runner, RunnerConfig
from dispy_wire import result_mac
from dispy_wire.messages import JobFile, JobRef, JobResult, RunJob
from dispy_wire.payload import CodeObjects, Computation, dumps, loads, pack_computation
from dispy_wire.status import JobStatus
from waiting import async_wait_until

# The zygote cannot import this module: ship its functions by value, as a client ships __main__'s.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEADLINE = 60.0  # bounds a hang only: a loaded machine is slow, never this slow


def _job_account() -> tuple[Account, str | None]:
    """The production account (nobody, under root) if it can run this interpreter; else ours, and why."""
    acct = account.resolve(None)
    why = account.cannot_run_python(acct)
    if why is None:
        return acct, None
    return account.myself(), why


#: who the harness's jobs run as; RUN_AS_SKIP says why it is not the production account, if it is not
JOB_ACCOUNT, RUN_AS_SKIP = _job_account()


# -- computations (run in the zygote and its job processes) ------------------------------


def double(x: int) -> int:
    return 2 * x


def chatty(x: int) -> int:
    print("to stdout", x)
    print("to stderr", x, file=sys.stderr)
    return x


def fails(x: int) -> None:
    raise ValueError(f"bad value {x}")


def exits(code: int) -> None:
    os._exit(code)


def kills_itself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def setup_raises() -> None:
    raise RuntimeError("no database here")


data: int  # declared only: setup_sets_global gives it a value in the zygote


def setup_sets_global() -> int:
    global data
    data = 42
    return 0


def get_data() -> int:
    return data


def read_depends(name: str) -> tuple[str, str]:
    with open(name) as f:
        return f.read(), os.getcwd()


def cleanup_marks() -> None:
    with open(MARK, "w") as f:  # type: ignore[name-defined]  # noqa: F821  (a depends global)
        f.write("cleaned")


def spawn_and_sleep(sock_path: str) -> None:
    child = subprocess.Popen(["sleep", "60"])
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(f"{os.getpid()} {child.pid}\n".encode())
    time.sleep(60)


def kills_zygote() -> None:
    os.kill(os.getppid(), signal.SIGKILL)


def kills_zygote_at_once(sock_path: str) -> None:
    """Forks a child, tells both pids, kills its zygote: all within a few ms of its start, before the zygote's
    Started of it (which waits to go with another message) has gone out, most times."""
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.sendall(f"{os.getpid()} {child}\n".encode())
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)


# -- harness ---------------------------------------------------------------------------


class Harness:
    """A Runner whose results and failures are collected, with waits on them.

    Args:
        root: a directory jobs' account may pass through; the work dir is made in it.
    """

    def __init__(self, root: Path, kill_grace: float = 5.0, **config: Any) -> None:
        self.root = root
        self.results: list[JobResult] = []
        self.files: list[JobFile] = []
        self.failures: list[tuple[str, str]] = []
        self.started: list[tuple[JobRef, int]] = []  # each start, with the jobs running then
        self.returned: list[JobRef] = []  # recalled jobs given back late (sent on to a zygote when recalled)
        self._changed = asyncio.Event()
        config.setdefault("account", JOB_ACCOUNT)
        self.runner = Runner(
            RunnerConfig(root / "work", kill_grace, **config), self._on_result, self._on_failed, self._on_file,
            lambda ref: self.started.append((ref, self.runner.running)), self._on_returned,
        )  # fmt: skip
        work_dir = self.runner.work_dir
        work_dir.mkdir(mode=0o700 if self.runner.account.is_self else 0o711)
        self._next_id = 0
        self.key = result_mac.new_key()  # every cluster this harness loads has it

    def _on_result(self, result: JobResult) -> None:
        self.results.append(result)
        self._changed.set()

    def _on_file(self, file: JobFile) -> None:
        self.files.append(file)
        self._changed.set()

    def _on_returned(self, refs: list[JobRef]) -> None:
        self.returned += refs
        self._changed.set()

    def _on_failed(self, cluster_id: str, message: str) -> None:
        self.failures.append((cluster_id, message))
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def load(
        self, cluster_id: str = "c1", kind: str = "function", files: list[Any] | None = None,
        options: dict[str, Any] | None = None, **objs: Any,
    ) -> str:  # fmt: skip
        blob = pack_computation(Computation(kind, "test", files or [], [], dumps(CodeObjects(**objs)), self.key))
        self.runner.load(cluster_id, blob, options)
        return cluster_id

    def run(self, cluster_id: str, *calls: tuple[Any, ...], options: dict[str, Any] | None = None) -> list[int]:
        ids = list(range(self._next_id, self._next_id + len(calls)))
        self._next_id += len(calls)
        self.runner.run(RunJob(cluster_id, i, dumps((args, {})), options or {}) for i, args in zip(ids, calls))
        return ids

    async def result(self, job_id: int) -> JobResult:
        await self.until(lambda: any(r.job_id == job_id for r in self.results))
        return next(r for r in self.results if r.job_id == job_id)

    async def call(self, cluster_id: str, *args: Any) -> JobResult:
        return await self.result(self.run(cluster_id, args)[0])


def run(
    body: Callable[[Harness], Awaitable[None]], kill_grace: float = 5.0,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None, **config: Any,
) -> None:  # fmt: skip
    """Runs `body` with a fresh Harness (on a loop of `loop_factory`, or asyncio's own); closes its runner
    and removes its files afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dispynode-test-"))
    root.chmod(0o711)

    async def main() -> None:
        h = Harness(root, kill_grace, **config)
        try:
            await body(h)
        finally:
            await h.runner.close()

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def pid_server(h: Harness) -> tuple[str, asyncio.Future[list[int]], asyncio.Server]:
    """A Unix socket jobs can reach (as their account) to tell the test the pids they started."""
    sock_path = str(h.root / "pids.sock")
    got: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not got.done():
            got.set_result([int(p) for p in line.split()])
        writer.close()

    server = await asyncio.start_unix_server(on_connect, sock_path)
    os.chmod(sock_path, 0o777)
    return sock_path, got, server


def kill_pids(pids: list[int]) -> None:
    """Never leave a test's processes behind, should a test fail before they are gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    yield
    left = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
                proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left behind: {left}"


def value(result: JobResult) -> Any:
    """The job's return value; fails the test, with the job's traceback, if there is none."""
    assert result.result is not None, result.exception
    return loads(result.result)


def _gone(pids: list[int], timeout: float) -> list[int]:
    """Waits for the pids to end; returns those still alive (zombies count as ended)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _status(p) not in (None, psutil.STATUS_ZOMBIE)]
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=0.2)
        alive = [p for p in alive if _status(p) not in (None, psutil.STATUS_ZOMBIE)]
    return [p.pid for p in alive]


def _status(proc: psutil.Process) -> str | None:
    try:
        return proc.status()  # type: ignore[no-any-return]
    except psutil.NoSuchProcess:
        return None


# -- tests -----------------------------------------------------------------------------


def test_result_and_output() -> None:
    async def body(h: Harness) -> None:
        h.load(func=chatty)
        r = await h.call("c1", 7)
        assert r.status == JobStatus.FINISHED
        assert value(r) == 7
        assert r.stdout == b"to stdout 7\n"
        assert r.stderr == b"to stderr 7\n"
        assert (r.exception, r.exception_type) == ("", "")
        assert r.start_time <= r.end_time <= time.time()

    run(body)


def test_exception_gives_traceback() -> None:
    async def body(h: Harness) -> None:
        h.load(func=fails)
        r = await h.call("c1", 5)
        assert r.status == JobStatus.TERMINATED
        assert r.result is None
        assert r.exception_type == "ValueError"
        assert "Traceback" in r.exception and "ValueError: bad value 5" in r.exception

    run(body)


def test_exit_code_and_signal_are_named() -> None:
    async def body(h: Harness) -> None:
        h.load("exits", func=exits)
        h.load("killed", func=kills_itself)
        r = await h.call("exits", 3)
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "job process exited with code 3"
        r = await h.call("killed")
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "job process killed by signal SIGKILL (9)"

    run(body)


def test_setup_failure_reports_cluster_failed() -> None:
    async def body(h: Harness) -> None:
        h.load(func=double, setup=setup_raises)
        h.run("c1", (1,), (2,))  # queued while loading, then dropped: the scheduler requeues them
        await h.until(lambda: bool(h.failures))
        ((cluster_id, message),) = h.failures
        assert cluster_id == "c1"
        assert "setup failed" in message and "RuntimeError: no database here" in message
        h.run("c1", (3,))  # in flight when the scheduler learns of it: dropped too
        assert h.results == [] and h.runner.busy == 0

    run(body)


@pytest.mark.skipif(os.getuid() != 0, reason="only root starts zygotes as another account")
def test_a_zygote_that_cannot_start_fails_its_cluster_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    """Not only an OSError: uvloop's subprocess_exec refuses user= with a ValueError (the daemon avoids
    uvloop then). Before, such an error ended the cluster's task silently and its jobs waited for ever."""
    import uvloop  # a test dependency; the node's own optional speed-up

    async def body(h: Harness) -> None:
        assert not h.runner.account.is_self  # its zygote would start as `nobody`: uvloop refuses before exec
        h.load(func=double)
        h.run("c1", (1,))  # queued while loading, then dropped: the scheduler requeues it
        await h.until(lambda: bool(h.failures))
        ((cluster_id, message),) = h.failures
        assert cluster_id == "c1"
        assert message.startswith("cannot start a zygote: ValueError: ") and "user" in message
        assert h.results == [] and h.runner.busy == 0
        h.load(func=double)  # the failed incarnation retired: a new load is tried afresh, and fails the same
        await h.until(lambda: len(h.failures) == 2)

    run(body, loop_factory=uvloop.new_event_loop, account=account.resolve(None))  # whether or not it runs Python
    said = [r.getMessage() for r in caplog.records if r.name == "dispy_node.runner" and "zygote" in r.getMessage()]
    assert len(said) == 2 and all("cannot run here: cannot start a zygote: ValueError" in m for m in said), said


def test_setup_globals_reach_jobs() -> None:
    async def body(h: Harness) -> None:
        h.load(func=get_data, setup=setup_sets_global)
        r = await h.call("c1")
        assert (r.status, value(r)) == (JobStatus.FINISHED, 42), r.exception

    run(body)


def test_depends_file_in_cwd_and_cleanup_on_unload() -> None:
    async def body(h: Harness) -> None:
        marks = h.root / "marks"
        marks.mkdir(mode=0o777)
        marks.chmod(0o777)  # cleanup runs as the jobs' account
        mark = marks / "cleanup-ran"
        h.load(func=read_depends, cleanup=cleanup_marks, globals={"MARK": str(mark)},
               files=[("data.txt", b"payload", 0o644)])  # fmt: skip
        r = await h.call("c1", "data.txt")
        assert r.status == JobStatus.FINISHED, r.exception
        text, cwd = value(r)
        assert text == "payload"
        assert Path(cwd) == h.runner.work_dir / "c1" / "jobs" / str(r.job_id)
        # removed with the job, right after its result went out (the zygote does not make the result wait for it)
        await async_wait_until(lambda: not Path(cwd).exists(), what="the job's directory removed")
        await h.runner.unload("c1")
        assert mark.read_text() == "cleaned"
        assert not (h.runner.work_dir / "c1").exists()

    run(body)


def slow_cleanup() -> None:
    time.sleep(2)


def test_a_cluster_loaded_again_waits_for_every_earlier_incarnation_to_end() -> None:
    """unload, load, unload, load: the last one starts only once the first is gone (its slow cleanup and
    the removal of its directory), never beside it, and its files stay its own."""

    async def body(h: Harness) -> None:
        h.load(func=double, cleanup=slow_cleanup)
        assert value(await h.call("c1", 1)) == 2
        first = h.runner.unload("c1")
        h.load(func=double)
        await asyncio.sleep(0.1)
        h.runner.unload("c1")  # the second goes before it ever started
        h.load(func=read_depends, files=[("data.txt", b"third", 0o644)])
        r = await h.call("c1", "data.txt")
        assert first.done() and r.status == JobStatus.FINISHED, r.exception
        r = await h.call("c1", "data.txt")  # its directory survived the earlier ones' ends
        assert (r.status, value(r)[0]) == (JobStatus.FINISHED, "third"), r.exception

    run(body)


def setup_fails_slowly() -> None:
    """Fails, leaving a thread that keeps the zygote's exit waiting for a second."""
    import threading

    threading.Thread(target=time.sleep, args=(1,)).start()
    raise RuntimeError("no database here")


def test_a_cluster_unloaded_while_its_failure_is_cleaned_up_is_loaded_again_only_after() -> None:
    """The scheduler's Unload may cross the node's report of a failed setup: the unload is that
    end, and a new load waits for it, so the old end never removes the new one's directory."""

    async def body(h: Harness) -> None:
        h.load(func=double, setup=setup_fails_slowly)
        await h.until(lambda: bool(h.failures))
        ending = h.runner.unload("c1")
        assert not ending.done()  # the failed zygote is still being stopped
        h.load(func=read_depends, files=[("data.txt", b"again", 0o644)])
        for _ in range(2):  # the first at once, the second once the old zygote surely exited
            r = await h.call("c1", "data.txt")
            assert (r.status, value(r)[0]) == (JobStatus.FINISHED, "again"), r.exception
            await ending
            await asyncio.sleep(1.5)  # past the setup's thread: an end not waited for would strike now

    run(body, kill_grace=0.5)


def write_to_the_node(frame: bytes) -> None:
    """Run in a zygote (by setup or cleanup code): writes `frame` on its pipe to the node, as user code can."""
    import fcntl
    import stat

    for fd in range(3, 256):
        try:
            mode, flags = os.fstat(fd).st_mode, fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue
        if stat.S_ISFIFO(mode) and flags & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, frame)


def cleanup_claims_setup_failed() -> None:
    """Runs in the old zygote as it unloads: tells the node, falsely, that setup failed; then lingers."""
    from dispy_node import zygote_protocol as zp

    write_to_the_node(zp.encode(zp.SetupFailed("forged by the old incarnation")))
    time.sleep(0.5)


def test_an_ending_incarnation_cannot_fail_the_next_one() -> None:
    async def body(h: Harness) -> None:
        h.load(func=double, cleanup=cleanup_claims_setup_failed)
        assert value(await h.call("c1", 1)) == 2
        ending = h.runner.unload("c1")
        h.load(func=double)  # the next incarnation, waiting for the old one's end
        assert value(await h.call("c1", 2)) == 4
        await ending
        assert h.failures == []

    run(body)


def test_bad_file_name_fails_the_cluster() -> None:
    async def body(h: Harness) -> None:
        h.load(func=double, files=[("../escape", b"x", 0o644)])
        await h.until(lambda: bool(h.failures))
        assert "bad dependency file name" in h.failures[0][1]
        assert not (h.runner.work_dir / "c1" / "escape").exists()

    run(body)


def test_kill_ends_the_job_and_its_children() -> None:
    async def body(h: Harness) -> None:
        sock_path, got, server = await pid_server(h)
        pids: list[int] = []
        try:
            h.load(func=spawn_and_sleep)
            (job_id,) = h.run("c1", (sock_path,))
            pids = await asyncio.wait_for(got, DEADLINE)
            assert h.runner.busy == 1
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert (r.status, r.exception) == (JobStatus.CANCELLED, "cancelled")
            assert _gone(pids, 0.0) == []  # gone before the result was sent
            assert h.runner.busy == 0
        finally:
            server.close()
            kill_pids(pids)

    run(body, kill_grace=2.0)


def test_kill_of_a_queued_job() -> None:
    async def body(h: Harness) -> None:
        h.load(func=double)
        (job_id,) = h.run("c1", (1,))  # the zygote cannot be ready yet: the job waits in the queue
        h.runner.kill([JobRef("c1", job_id)])
        r = await h.result(job_id)
        assert r.status == JobStatus.CANCELLED
        assert value(await h.call("c1", 4)) == 8

    run(body)


def test_beyond_its_slots_the_runner_queues_jobs_and_starts_the_oldest_first_as_one_ends() -> None:
    async def body(h: Harness) -> None:
        h.load("a", func=double)
        h.load("b", func=double)
        await h.call("a", 0)
        await h.call("b", 0)  # both ready: which starts first is the queue's choice alone
        h.started.clear()
        h.runner.set_slots(1)  # the node's one CPU; the scheduler sent more, ahead of it
        ids = h.run("a", (1,)) + h.run("b", (2,)) + h.run("a", (3,)) + h.run("b", (4,))
        h.runner.kill([JobRef("a", ids[2])])  # still queued: dropped, its result at once, never started
        await h.until(lambda: len(h.results) == 2 + 4)
        ended = [(r.job_id, r.status) for r in h.results[2:]]
        assert (ids[2], JobStatus.CANCELLED) in ended
        assert [job_id for job_id, status in ended if status == JobStatus.FINISHED] == [ids[0], ids[1], ids[3]]
        assert h.started == [(JobRef("a", ids[0]), 1), (JobRef("b", ids[1]), 1), (JobRef("b", ids[3]), 1)]
        h.runner.set_slots(None)  # no bound again: all at once
        h.run("a", (5,), (6,), (7,))
        await h.until(lambda: len(h.results) == 2 + 4 + 3)

    run(body)


def test_unknown_cluster() -> None:
    async def body(h: Harness) -> None:
        r = await h.call("nowhere", 1)
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "unknown cluster")

    run(body)


def test_program_computation() -> None:
    async def body(h: Harness) -> None:
        h.load(kind="program", program=["echo", "hello"])
        r = await h.call("c1", "world")
        assert (r.status, value(r), r.stdout) == (JobStatus.FINISHED, 0, b"hello world\n")

    run(body)


def test_zygote_death_terminates_its_jobs() -> None:
    async def body(h: Harness) -> None:
        h.load(func=kills_zygote)
        r = await h.call("c1")
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "zygote process died (killed by signal SIGKILL (9))"
        await h.until(lambda: bool(h.failures))
        assert h.failures == [("c1", r.exception)]
        h.run("c1", ())  # later jobs of the failed cluster are dropped, not reported
        assert len(h.results) == 1

    run(body)


def test_a_job_whose_zygote_dies_as_it_starts_ends_with_its_tree() -> None:
    """The daemon may not have the job's pid (its Started waits in the zygote to go with another message):
    it finds the job's processes by their mark, kills them, and only then reports the job."""

    async def body(h: Harness) -> None:
        sock_path, got, server = await pid_server(h)
        pids: list[int] = []
        try:
            h.load(func=kills_zygote_at_once)
            (job_id,) = h.run("c1", (sock_path,))
            pids = await asyncio.wait_for(got, DEADLINE)
            r = await h.result(job_id)
            assert (r.status, r.exception) == (JobStatus.TERMINATED, "zygote process died (killed by signal SIGKILL (9))")
            assert _gone(pids, 0.0) == []  # gone before the result was sent
        finally:
            server.close()
            kill_pids(pids)

    run(body)


def test_many_jobs_each_reported_once() -> None:
    n = 200

    async def body(h: Harness) -> None:
        h.load(func=double)
        ids = h.run("c1", *[(i,) for i in range(n)])
        await h.until(lambda: len(h.results) >= n)
        await h.runner.unload("c1")  # anything repeated would have arrived before Unloaded
        assert Counter(r.job_id for r in h.results) == Counter(ids)
        assert all(r.status == JobStatus.FINISHED for r in h.results)
        assert {r.job_id: value(r) for r in h.results} == {i: 2 * (i - ids[0]) for i in ids}

    run(body)


def test_a_job_too_large_for_the_process_forked_ahead_runs_in_one_forked_for_it() -> None:
    """After a first job the zygote keeps the next job's process forked ahead; a job whose start does not fit
    in that process's pipe at once (the zygote never waits on it) gets a process forked as it comes, and the
    next job one forked ahead again: every one of them runs once, with its own data."""

    async def body(h: Harness) -> None:
        h.load(func=double)
        assert value(await h.call("c1", 1)) == 2
        big = b"x" * (4 << 20)  # beyond any pipe's buffer
        r = await h.call("c1", big)
        assert (r.status, value(r)) == (JobStatus.FINISHED, big * 2), r.exception
        assert value(await h.call("c1", 3)) == 6
        assert sorted(r.job_id for r in h.results) == [0, 1, 2]

    run(body)


def test_close_kills_running_jobs() -> None:
    async def body(h: Harness) -> None:
        sock_path, got, server = await pid_server(h)
        pids: list[int] = []
        try:
            h.load(func=spawn_and_sleep)
            h.run("c1", (sock_path,))
            pids = await asyncio.wait_for(got, DEADLINE)
            await h.runner.close()  # as on losing the scheduler
            assert _gone(pids, 0.0) == []
            assert h.results == []
        finally:
            server.close()
            kill_pids(pids)

    run(body, kill_grace=2.0)
