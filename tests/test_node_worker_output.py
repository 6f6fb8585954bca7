"""A reused worker's jobs each keep their own output (dispy_node/worker.py, `WorkerPool` driven as its zygote's
loop drives it, with a real worker process), in particular a job handed ahead that reaches its worker only after
the worker told the end of the job before it without markers: the markers its worker writes before it starts
separate the two jobs' outputs, whether the zygote reads them with that end or after it; and the next job given
to it idle (after the zygote's `_GO`) starts without markers. And a job handed ahead that is taken back
(`WorkerPool.take_back`, as a cancel or a free CPU does) either starts in its worker or comes back, never both,
whether the zygote has not read the end before it (records queued ahead of it) or the worker is still writing
that end (a large record) when the zygote stops it. A kill that finds the worker writing that end does not wait
for it (`Hold.ENDING`: the loop reads it as any other), unless asked again after `END_TIMEOUT`: then the worker
is retired."""

from __future__ import annotations

import fcntl
import os
import select
import selectors
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import waits_to_write
from waiting import wait_until

from dispy_node import channel, job_process, workdir, worker
from dispy_node import zygote_protocol as zp
from dispy_node.capture import Kept, PipeReader
from dispy_node.limits import Limits
from dispy_node.worker import Hold, WorkerPool
from dispy_wire.payload import dumps
from dispy_wire.result_mac import new_key

KEY = new_key()


def write(text: bytes, until: str = "") -> int:
    """Writes `text` to its stdout, then waits for the file `until` (if any) to exist."""
    os.write(1, text)
    while until and not os.path.exists(until):
        time.sleep(0.001)  # (in the job: polled until the test lets it end)
    return 0


def tell(ran: str, until: str, records: int, size: int) -> bytes:
    """Makes the file `ran` (it ran), waits for `until` (if any), sends `records` provisional results of
    64 KiB (its socket's buffer made large enough to hold them all unread), and returns `size` bytes."""
    open(ran, "x").close()
    write(b"", until)
    if records:
        with socket.socket(fileno=os.dup(channel._fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        for _ in range(records):
            channel.provisional_result(b"p" * (64 << 10))
    return b"r" * size


class Zygote:
    """What of a zygote a `WorkerPool` needs: a selector loop, the jobs' captures, their ends."""

    def __init__(self, cluster_dir: Path, function: Callable[..., Any]) -> None:
        for name in (workdir.FILES, workdir.JOBS):
            (cluster_dir / name).mkdir()
        code = job_process.Code("function", function, None, str(cluster_dir), "c1", KEY)
        self.sel = selectors.DefaultSelector()
        self.captures: dict[int, tuple[Kept, Kept]] = {}
        self.ended: dict[int, dict[str, Any]] = {}
        self.back: list[int] = []  # jobs handed ahead that came back
        self.pool = WorkerPool(code, zp.Workers(1000, 1 << 40), self.sel, self._done, lambda job_id, record: None,
                               lambda pid, job_id: self.captures[job_id], self.back.extend)  # fmt: skip

    def start(self, job_id: int, *args: Any) -> job_process.Start:
        self.captures[job_id] = (Kept(1 << 20), Kept(1 << 20))
        return job_process.Start(job_id, dumps((args, {})), Limits(), [], f"test.{job_id}", -1, -1, -1, -1, "", KEY)

    def output(self, job_id: int) -> bytes:
        return self.captures[job_id][0].text()

    def turn(self) -> None:
        """One turn of the zygote's loop: what is ready, pipes first."""
        events = self.sel.select(0.05)
        events.sort(key=lambda event: not isinstance(event[0].data, PipeReader))
        for key, _ in events:
            if not key.data.closed and not key.data.read():
                self.sel.unregister(key.fd)

    def sock(self) -> int:
        """The worker's socket (its descriptor)."""
        return next(key.fd for key in self.sel.get_map().values() if not isinstance(key.data, PipeReader))

    def _done(self, job_id: int, record: dict[str, Any]) -> bool:
        self.ended[job_id] = record
        return True


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    yield from _zygote(tmp_path, write)


@pytest.fixture
def teller(tmp_path: Path) -> Iterator[Zygote]:
    yield from _zygote(tmp_path, tell)


def _zygote(tmp_path: Path, function: Callable[..., Any]) -> Iterator[Zygote]:
    z = Zygote(tmp_path, function)
    yield z
    for key in list(z.sel.get_map().values()):
        if not isinstance(key.data, PipeReader):
            pid = key.data.pid
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    z.sel.close()


def unread(sock: int) -> int:
    """Bytes sent on socket `sock` that its peer has not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def waits_on_its_socket(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read() == "unix_stream_read_generic"


@pytest.mark.parametrize("marker_first", [True, False], ids=["job-ahead-ran-first", "end-read-first"])
def test_a_job_handed_ahead_after_its_worker_told_an_end_keeps_its_output_from_the_job_before(
    zygote: Zygote, tmp_path: Path, marker_first: bool
) -> None:
    let_go = tmp_path / "let-go"
    pid = zygote.pool.run(zygote.start(1, b"first", str(let_go)), *zygote.captures[1])
    let_go.touch()  # the first job ends: nothing handed ahead in the socket, its worker tells the end unmarked
    sock = zygote.sock()
    wait_until(lambda: sock in select.select([sock], [], [], 0)[0], what="the first job's end")
    if not marker_first:
        os.kill(pid, signal.SIGSTOP)  # the second job waits in the socket while the zygote reads the first's end
    assert zygote.pool.hand_ahead(zygote.start(2, b"second"), lambda job_id: True)  # too late to start at once:
    zygote.pool.send_ahead()  # the zygote did not read the end yet
    if marker_first:  # the worker ran it, and waits on its socket for more
        wait_until(lambda: unread(sock) == 0 and waits_on_its_socket(pid), what="the worker waiting on its socket")
    else:
        wait_until(lambda: zygote.turn() or 1 in zygote.ended, what="the first job's end read")
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: zygote.turn() or 2 in zygote.ended, what="the second job's end")
    assert (zygote.output(1), zygote.output(2)) == (b"first", b"second")
    assert zygote.pool.run(zygote.start(3, b"third"), *zygote.captures[3]) == pid  # the same worker, idle, goes on
    wait_until(lambda: zygote.turn() or 3 in zygote.ended, what="the third job's end")
    assert zygote.output(3) == b"third"


def test_a_job_taken_back_after_its_worker_told_an_end_behind_a_burst_of_records_runs_there_or_comes_back(
    teller: Zygote, tmp_path: Path
) -> None:
    ran = tmp_path / "ran-2"
    pid = teller.pool.run(teller.start(1, str(tmp_path / "ran-1"), "", 24, 0), *teller.captures[1])
    sock = teller.sock()  # 1.5 MiB of records, then the end (unmarked: nothing handed ahead), all unread
    wait_until(lambda: unread(sock) == 0 and waits_on_its_socket(pid), what="the first job's end told")
    assert teller.pool.hand_ahead(teller.start(2, str(ran), "", 0, 0), lambda job_id: True)  # too late to
    teller.pool.send_ahead()  # start at once: it starts as it comes, unless it comes after a `_HOLD`
    teller.pool.take_back(2)
    wait_until(lambda: unread(sock) == 0 and waits_on_its_socket(pid), what="the worker done with what it got")
    assert ran.exists() != (2 in teller.back), f"job 2 ran in its worker: {ran.exists()}, came back: {teller.back}"
    if ran.exists():
        wait_until(lambda: teller.turn() or 2 in teller.ended, what="the second job's end")
        assert teller.ended[1]["status"] == teller.ended[2]["status"]


def telling_a_large_end(teller: Zygote, tmp_path: Path) -> tuple[int, Path]:
    """Job 1 ran to its end in a worker, job 2 handed ahead after it: the worker, which chose to start job 2,
    is blocked writing job 1's end (a 4 MiB record does not fit the socket, which this zygote has not read).
    Returns the worker's pid and the file job 2 makes if it runs."""
    let_go, ran = tmp_path / "let-go", tmp_path / "ran-2"
    pid = teller.pool.run(teller.start(1, str(tmp_path / "ran-1"), str(let_go), 0, 4 << 20), *teller.captures[1])
    assert teller.pool.hand_ahead(teller.start(2, str(ran), "", 0, 0), lambda job_id: True)
    teller.pool.send_ahead()
    let_go.touch()
    wait_until(lambda: waits_to_write(pid), what="the worker blocked in writing the first job's end")
    return pid, ran


def test_a_job_taken_back_while_its_worker_writes_the_end_that_starts_it_runs_there_and_does_not_come_back(
    teller: Zygote, tmp_path: Path
) -> None:
    pid, ran = telling_a_large_end(teller, tmp_path)
    teller.pool.take_back(2)  # too late: the worker starts it once its end is written
    assert teller.back == [] and 1 not in teller.ended  # not waited for: the loop reads the end as it comes
    wait_until(lambda: teller.turn() or 2 in teller.ended, what="the second job's end")
    assert ran.exists() and len(teller.ended[1]["result"]) > 4 << 20


def test_a_worker_asked_again_before_its_deadline_still_tells_the_end_of_the_job_it_ran_and_starts_the_next(
    teller: Zygote, tmp_path: Path
) -> None:
    pid, ran = telling_a_large_end(teller, tmp_path)
    assert teller.pool.hold(pid) is Hold.ENDING and teller.pool.hold(pid) is Hold.ENDING  # (a second kill)
    wait_until(lambda: teller.turn() or 2 in teller.ended, what="the second job's end")
    assert ran.exists() and teller.back == [] and len(teller.ended[1]["result"]) > 4 << 20


def test_a_worker_that_does_not_tell_the_end_of_a_job_it_ran_is_retired_when_asked_again_after_its_deadline(
    teller: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "END_TIMEOUT", 0.0)  # (the deadline is up when it is asked again)
    pid, ran = telling_a_large_end(teller, tmp_path)
    assert teller.pool.hold(pid) is Hold.ENDING  # the job ran to its end: it is not killed, its end is awaited
    assert teller.pool.hold(pid) is Hold.NONE  # asked again at the deadline with no end: the worker is retired
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert teller.back == [2] and not ran.exists() and 1 not in teller.ended  # job 2 goes elsewhere
