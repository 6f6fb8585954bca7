"""The node's job runner and its zygotes, driven directly (no scheduler, no sockets to one).

Each test starts a `Runner` in `asyncio.run`, loads a computation packed as a
client would pack it, runs jobs and waits (with a deadline) for the results the
runner hands to its callback. `Runner.close()` runs in a `finally`, and the
autouse fixture kills and reports any process the test left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from dispy_node.runner import Runner
from dispy_wire.messages import JobRef, JobResult, RunJob
from dispy_wire.payload import CodeObjects, Computation, dumps, loads, pack_computation
from dispy_wire.status import JobStatus

# The zygote cannot import this module: ship its functions by value, as a client ships __main__'s.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEADLINE = 20.0


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


# -- harness ---------------------------------------------------------------------------


class Harness:
    """A Runner whose results and failures are collected, with waits on them."""

    def __init__(self, work_dir: Path, kill_grace: float = 5.0) -> None:
        self.results: list[JobResult] = []
        self.failures: list[tuple[str, str]] = []
        self._changed = asyncio.Event()
        self.runner = Runner(work_dir, kill_grace, self._on_result, self._on_failed)
        self._next_id = 0

    def _on_result(self, result: JobResult) -> None:
        self.results.append(result)
        self._changed.set()

    def _on_failed(self, cluster_id: str, message: str) -> None:
        self.failures.append((cluster_id, message))
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def load(self, cluster_id: str = "c1", kind: str = "function", files: list[Any] | None = None, **objs: Any) -> str:
        blob = pack_computation(Computation(kind, "test", files or [], [], dumps(CodeObjects(**objs))))
        self.runner.load(cluster_id, blob)
        return cluster_id

    def run(self, cluster_id: str, *calls: tuple[Any, ...]) -> list[int]:
        ids = list(range(self._next_id, self._next_id + len(calls)))
        self._next_id += len(calls)
        self.runner.run(RunJob(cluster_id, i, dumps((args, {})), {}) for i, args in zip(ids, calls))
        return ids

    async def result(self, job_id: int) -> JobResult:
        await self.until(lambda: any(r.job_id == job_id for r in self.results))
        return next(r for r in self.results if r.job_id == job_id)

    async def call(self, cluster_id: str, *args: Any) -> JobResult:
        return await self.result(self.run(cluster_id, args)[0])


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], kill_grace: float = 5.0) -> None:
    async def main() -> None:
        h = Harness(tmp_path / "work", kill_grace)
        try:
            await body(h)
        finally:
            await h.runner.close()

    asyncio.run(main())


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
    alive = procs
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


def test_result_and_output(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=chatty)
        r = await h.call("c1", 7)
        assert r.status == JobStatus.FINISHED
        assert value(r) == 7
        assert r.stdout == b"to stdout 7\n"
        assert r.stderr == b"to stderr 7\n"
        assert (r.exception, r.exception_type) == ("", "")
        assert r.start_time <= r.end_time <= time.time()

    run(tmp_path, body)


def test_exception_gives_traceback(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=fails)
        r = await h.call("c1", 5)
        assert r.status == JobStatus.TERMINATED
        assert r.result is None
        assert r.exception_type == "ValueError"
        assert "Traceback" in r.exception and "ValueError: bad value 5" in r.exception

    run(tmp_path, body)


def test_exit_code_and_signal_are_named(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load("exits", func=exits)
        h.load("killed", func=kills_itself)
        r = await h.call("exits", 3)
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "job process exited with code 3"
        r = await h.call("killed")
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "job process killed by signal SIGKILL (9)"

    run(tmp_path, body)


def test_setup_failure_reports_cluster_failed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=double, setup=setup_raises)
        h.run("c1", (1,), (2,))  # queued while loading, then dropped: the scheduler requeues them
        await h.until(lambda: bool(h.failures))
        ((cluster_id, message),) = h.failures
        assert cluster_id == "c1"
        assert "setup failed" in message and "RuntimeError: no database here" in message
        h.run("c1", (3,))  # in flight when the scheduler learns of it: dropped too
        assert h.results == [] and h.runner.busy == 0

    run(tmp_path, body)


def test_setup_globals_reach_jobs(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=get_data, setup=setup_sets_global)
        r = await h.call("c1")
        assert (r.status, value(r)) == (JobStatus.FINISHED, 42), r.exception

    run(tmp_path, body)


def test_depends_file_in_cwd_and_cleanup_on_unload(tmp_path: Path) -> None:
    mark = tmp_path / "cleanup-ran"

    async def body(h: Harness) -> None:
        h.load(func=read_depends, cleanup=cleanup_marks, globals={"MARK": str(mark)},
               files=[("data.txt", b"payload", 0o644)])  # fmt: skip
        r = await h.call("c1", "data.txt")
        assert r.status == JobStatus.FINISHED, r.exception
        text, cwd = value(r)
        assert text == "payload"
        assert Path(cwd) == h.runner.work_dir / "c1"
        assert (Path(cwd).stat().st_mode & 0o777) == 0o700
        await h.runner.unload("c1")
        assert mark.read_text() == "cleaned"
        assert not Path(cwd).exists()

    run(tmp_path, body)


def test_bad_file_name_fails_the_cluster(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=double, files=[("../escape", b"x", 0o644)])
        await h.until(lambda: bool(h.failures))
        assert "bad dependency file name" in h.failures[0][1]
        assert not (h.runner.work_dir / "escape").exists()

    run(tmp_path, body)


def test_kill_ends_the_job_and_its_children(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "pids.sock")

    async def body(h: Harness) -> None:
        got: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result([int(p) for p in (await reader.readline()).split()])
            writer.close()

        server = await asyncio.start_unix_server(on_connect, sock_path)
        pids: list[int] = []
        try:
            h.load(func=spawn_and_sleep)
            (job_id,) = h.run("c1", (sock_path,))
            pids = await asyncio.wait_for(got, DEADLINE)
            assert h.runner.busy == 1
            h.runner.kill([JobRef("c1", job_id)])
            r = await h.result(job_id)
            assert (r.status, r.exception) == (JobStatus.CANCELLED, "cancelled")
            assert _gone(pids, 5.0) == []
            assert h.runner.busy == 0
        finally:
            server.close()
            for pid in pids:  # should be gone already; never leave them behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    run(tmp_path, body, kill_grace=2.0)


def test_kill_of_a_queued_job(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=double)
        (job_id,) = h.run("c1", (1,))  # the zygote cannot be ready yet: the job waits in the queue
        h.runner.kill([JobRef("c1", job_id)])
        r = await h.result(job_id)
        assert r.status == JobStatus.CANCELLED
        assert value(await h.call("c1", 4)) == 8

    run(tmp_path, body)


def test_unknown_cluster(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        r = await h.call("nowhere", 1)
        assert (r.status, r.exception) == (JobStatus.TERMINATED, "unknown cluster")

    run(tmp_path, body)


def test_program_computation(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(kind="program", program=["echo", "hello"])
        r = await h.call("c1", "world")
        assert (r.status, value(r), r.stdout) == (JobStatus.FINISHED, 0, b"hello world\n")

    run(tmp_path, body)


def test_zygote_death_terminates_its_jobs(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.load(func=kills_zygote)
        r = await h.call("c1")
        assert r.status == JobStatus.TERMINATED
        assert r.exception == "zygote process died (killed by signal SIGKILL (9))"
        await h.until(lambda: bool(h.failures))
        assert h.failures == [("c1", r.exception)]
        h.run("c1", ())  # later jobs of the failed cluster are dropped, not reported
        assert len(h.results) == 1

    run(tmp_path, body)


def test_many_jobs_each_reported_once(tmp_path: Path) -> None:
    n = 200

    async def body(h: Harness) -> None:
        h.load(func=double)
        ids = h.run("c1", *[(i,) for i in range(n)])
        await h.until(lambda: len(h.results) >= n)
        await h.runner.unload("c1")  # anything repeated would have arrived before Unloaded
        assert Counter(r.job_id for r in h.results) == Counter(ids)
        assert all(r.status == JobStatus.FINISHED for r in h.results)
        assert {r.job_id: value(r) for r in h.results} == {i: 2 * (i - ids[0]) for i in ids}

    run(tmp_path, body)


def test_close_kills_running_jobs(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "pids.sock")

    async def body(h: Harness) -> None:
        got: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result([int(p) for p in (await reader.readline()).split()])
            writer.close()

        server = await asyncio.start_unix_server(on_connect, sock_path)
        pids: list[int] = []
        try:
            h.load(func=spawn_and_sleep)
            h.run("c1", (sock_path,))
            pids = await asyncio.wait_for(got, DEADLINE)
            await h.runner.close()  # as on losing the scheduler
            assert _gone(pids, 5.0) == []
            assert h.results == []
        finally:
            server.close()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    run(tmp_path, body)
