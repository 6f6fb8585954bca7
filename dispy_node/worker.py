"""Reused job processes ("worker" isolation): each runs many jobs of one cluster in turn.

Theory of operation. With `isolation="worker"` (`dispy_wire.isolation`) the
zygote does not fork a process per job: it forks a *worker* (its own session
and process group, the job mark, the cluster's memory and open-files limits)
with three channels that last its whole life: a Unix socket and its stdout
and stderr pipes. Nothing is made per job, and a job costs the zygote one
send and one wakeup: the zygote sends the job's start record
(`job_process.pack_start`) on the socket; the worker runs the job as a forked
one would (`job_process.run_job` and `seal`), in the job's directory, its
provisional results and files (`channel`) going out on the same socket,
then writes the job's end there: `{"kind": "end", "job", "recycle",
"record"}`, its record being what a forked job writes to its result file.
Everything is one stream of length-prefixed msgpack frames, so what a job
sent reaches the zygote before its end. The job's output is in its pipes
before its end is written (`seal` flushes): the zygote, told the end, reads
the pipes dry into that job's capture (`capture.Relay`), then finishes the
job (`Zygote._worker_done`). What the pipes carry between jobs (the
worker's own messages) goes to the node's log.

What ends a job is the worker's end, not its exit. A job the zygote kills
(cancel, wall clock, unload) takes its worker with it: SIGTERM, the grace,
SIGKILL to the worker's group, and the slot's next job gets a fresh fork. A
worker that dies during a job (os._exit, a segfault, the CPU limit) ends that
job as a forked job's death would, with what it had sent and written until
then. A worker is retired (SIGKILL to its group, which also ends whatever
its jobs left running) after `max_jobs` jobs, when its peak RSS grew by more
than `max_growth` bytes since it was forked, when a job left a child process
behind, when it sends what is not this protocol, and when its limits differ
from those the next job needs. Workers belong to one zygote, hence to one
cluster: they are never shared between clusters.

The CPU-time limit is per job: before each job the worker sets RLIMIT_CPU's
soft limit to the CPU time it has used plus the job's limit (the hard limit
cannot be raised again, so it is left as it was). Control groups are per
cluster, not per job, in this mode (the runner makes no group per job).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgpack

from dispy_wire.errors import RemoteWireError
from dispy_wire.framing import FrameDecoder, encode_frame
from dispy_wire.isolation import FORK

from . import channel, job_process, killtree, workdir
from . import zygote_protocol as zp
from .capture import Kept, Relay
from .limits import Limits, apply

logger = logging.getLogger(__name__)

#: seconds an idle worker has to take a job's start record when it does not fit the socket's buffer
_HAND_TIMEOUT = 10.0
#: reads of a worker's socket per wakeup: a job flooding provisional results must not keep the zygote
_BURST = 16
#: bytes per read of a worker's socket: below malloc's mmap threshold, so a read maps and unmaps no memory
_READ = 64 * 1024
_UNTIL_EOF = 1 << 30
_ALL_FDS = 1 << 20


@dataclass(frozen=True, slots=True)
class WorkerPolicy:
    """The node's settings for worker isolation (`dispynode --isolation/--worker-jobs/--worker-memory-growth`)."""

    isolation: str = FORK  # the default of clusters that do not choose
    max_jobs: int = 1000  # a worker is retired after this many jobs
    max_growth: int = 256 << 20  # ... or once its peak RSS grew by this many bytes


# -- in the zygote ------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Worker:
    """The zygote's end of one worker; the selector loop calls `read` (a PipeReader's interface)."""

    pool: WorkerPool
    pid: int
    sock: socket.socket
    out: Relay
    err: Relay
    key: tuple[int | None, int | None]  # the (memory, open_files) limits it was forked with
    mark: str
    jobs: int = 0
    job_id: int | None = None
    closed: bool = False
    _decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(max_size=zp.MAX_REPLY, expect_preamble=False))

    def read(self, until_eof: bool = False) -> bool:
        """Takes what the worker sent (a burst of reads at most, or all of it to its end of file); False at end
        of file (it exited)."""
        for _ in range(_UNTIL_EOF if until_eof else _BURST):
            try:
                data = self.sock.recv(_READ)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                return False
            self._decoder.feed(data)
            try:
                for frame in self._decoder.frames():
                    self.pool.heard(self, msgpack.unpackb(frame, raw=False))
                    if self.closed:  # retired by what it said
                        return True
            except (RemoteWireError, ValueError, msgpack.UnpackException) as exc:
                self.pool.garbage(self, str(exc))
                return True
            if len(data) < _READ and not until_eof:  # all there was (the loop wakes us again for more)
                return True
        return True

    def drain(self) -> None:
        """What its job wrote before it told its end, into that job's capture."""
        for pipe in (self.out, self.err):
            if not pipe.closed:
                pipe.read()


class WorkerPool:
    """One cluster's workers, in its zygote.

    Args:
        code: the loaded computation (workers are forked with it).
        policy: when workers are retired.
        sel: the zygote's selector, which watches the workers' sockets and pipes.
        on_done: called with a job id and the record its worker sent when its
            worker told its end; True if the job ended normally there (the
            worker may take another), False if the zygote was killing it (the worker goes).
        on_record: called with a job id and a record its job sent on its channel (`channel`).
        keep_files: the cluster keeps each job's directory: workers make one per job, not one each.
    """

    def __init__(
        self, code: job_process.Code, policy: zp.Workers, sel: selectors.BaseSelector,
        on_done: Callable[[int, dict[str, Any]], bool], on_record: Callable[[int, dict[str, Any]], None],
        keep_files: bool = False,
    ) -> None:  # fmt: skip
        self._code = code
        self._keep_files = keep_files
        self._policy = policy
        self._sel = sel
        self._on_done = on_done
        self._on_record = on_record
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}  # by pid
        self._seq = itertools.count(1)

    def run(self, start: job_process.Start, out: Kept, err: Kept) -> int:
        """Hands the job to an idle worker with its limits, or to a new one; returns the worker's pid.

        What the job writes to its stdout and stderr goes to `out` and `err`.

        Raises:
            OSError: no worker could be forked or reached.
        """
        key = (start.limits.memory, start.limits.open_files)
        frame = encode_frame(job_process.pack_start(start))
        worker = next((w for w in self._idle if w.key == key), None)
        if worker is not None:
            self._idle.remove(worker)
            if not self._hand(worker, frame):  # it died idle (OOM killer?), not yet reaped: a fresh one
                worker = None
        if worker is None:
            for other in [w for w in self._idle if w.key != key]:  # a slot needs limits of its own now
                self._idle.remove(other)
                self._retire(other)
            worker = self._fork(key)
            if not self._hand(worker, frame):
                raise OSError(f"worker {worker.pid} did not take the job")
        worker.job_id = start.job_id
        worker.out.target, worker.err.target = out, err
        self._busy[worker.pid] = worker
        return worker.pid

    def _hand(self, worker: _Worker, frame: bytes) -> bool:
        """Sends the job to an idle worker; False (and the worker retired) if it cannot take it."""
        try:
            try:
                sent = worker.sock.send(frame)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):  # larger than the socket's buffer: an idle worker reads it at once
                worker.sock.settimeout(_HAND_TIMEOUT)  # ... and a stopped one is given up
                worker.sock.sendall(memoryview(frame)[sent:])
                worker.sock.setblocking(False)
        except OSError as exc:
            logger.warning("worker %d cannot take a job (%s); retired", worker.pid, exc)
            self._retire(worker)
            return False
        return True

    def mark_of(self, pid: int) -> str:
        return self._busy[pid].mark

    def heard(self, worker: _Worker, msg: Any) -> None:
        """One frame from a worker: its job's end, or a record its job sent."""
        if not isinstance(msg, dict):
            self.garbage(worker, f"a {type(msg).__name__}")
        elif msg.get("kind") == "end":
            job_id, recycle = msg.get("job"), msg.get("recycle")
            if not isinstance(job_id, int) or not isinstance(recycle, bool):
                self.garbage(worker, "an end without its job")
            else:
                self._answered(worker, job_id, recycle, job_process.valid_record(msg.get("record")))
        elif worker.job_id is not None:
            self._on_record(worker.job_id, msg)
        else:
            logger.warning("worker %d sent a record with no job running; ignored", worker.pid)

    def garbage(self, worker: _Worker, what: str) -> None:
        """The worker (a job in it) broke the protocol: it goes, and its job ends as if it died."""
        logger.warning("worker %d sent what is not its protocol (%s); retired", worker.pid, what)
        self._busy.pop(worker.pid, None)
        if worker in self._idle:
            self._idle.remove(worker)
        self._retire(worker)

    def _answered(self, worker: _Worker, job_id: int, recycle: bool, record: dict[str, Any]) -> None:
        if worker.job_id != job_id or self._busy.get(worker.pid) is not worker:
            self.garbage(worker, f"an end of job {job_id}, which it does not run")
            return
        worker.drain()
        del self._busy[worker.pid]
        worker.job_id = None
        worker.out.target = worker.err.target = None
        worker.jobs += 1
        clean = self._on_done(job_id, record)
        if clean and not recycle and worker.jobs < self._policy.max_jobs:
            self._idle.append(worker)
        else:
            self._retire(worker)

    def lost(self, pid: int) -> None:
        """A child was reaped: if it was a worker, it is gone, after what it sent and wrote is taken."""
        worker = self._busy.get(pid) or next((w for w in self._idle if w.pid == pid), None)
        if worker is None:
            return
        if not worker.closed:
            worker.read(until_eof=True)  # it is dead: what its socket holds is all there is
            worker.drain()
        self._busy.pop(pid, None)
        if worker in self._idle:
            self._idle.remove(worker)
        self._close(worker)

    def _fork(self, key: tuple[int | None, int | None]) -> _Worker:
        fds: list[int] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mark = killtree.mark(os.getpid(), -next(self._seq))  # no job's: a worker outlives its jobs
        try:
            fds = [*os.pipe(), *os.pipe()]
            pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            limits = Limits(memory=key[0], open_files=key[1])
            _serve(self._code, theirs.fileno(), (fds[1], fds[3]), limits, mark, self._policy.max_growth,
                   self._keep_files)  # fmt: skip
        theirs.close()
        os.close(fds[1])
        os.close(fds[3])
        ours.setblocking(False)
        worker = _Worker(self, pid, ours, Relay(fds[0]), Relay(fds[2]), key, mark)
        self._sel.register(ours.fileno(), selectors.EVENT_READ, worker)
        self._sel.register(fds[0], selectors.EVENT_READ, worker.out)
        self._sel.register(fds[2], selectors.EVENT_READ, worker.err)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """SIGKILL to the worker's group (what its jobs left goes with it); the zygote reaps it."""
        killtree.killpg(worker.pid, signal.SIGKILL)
        self._close(worker)

    def _close(self, worker: _Worker) -> None:
        if not worker.closed:
            fd_map = self._sel.get_map()
            for fd in (worker.sock.fileno(), worker.out.fd, worker.err.fd):
                if fd in fd_map:
                    self._sel.unregister(fd)
            worker.sock.close()
            worker.out.close()
            worker.err.close()
            worker.closed = True
            if not self._keep_files:
                workdir.remove_worker_dir(self._code.cluster_dir, _dir_name(worker.pid))


# -- in the worker ------------------------------------------------------------


def _serve(
    code: job_process.Code, sock: int, output: tuple[int, int], limits: Limits, mark: str, max_growth: int,
    keep_files: bool,
) -> NoReturn:  # fmt: skip
    """The worker's whole life: jobs until the zygote closes the socket or kills it.

    `output`: the write ends of the stdout and stderr pipes the zygote reads, for all its jobs.
    """
    status = 0
    try:
        os.dup2(output[0], 1)
        os.dup2(output[1], 2)
        os.setsid()  # its own group: a cancel's killpg reaches it and what its job started
        os.umask(0o077)
        job_process.reset_signals()
        killtree.write_mark(mark)
        os.closerange(3, sock)  # the zygote's pipes and other jobs' and workers' are none of its business
        os.closerange(sock + 1, _ALL_FDS)
        apply(limits)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        name = _dir_name(os.getpid())
        conn = socket.socket(fileno=sock)
        decoder = FrameDecoder(max_size=zp.MAX_FRAME, expect_preamble=False)
        while True:
            start = _receive(conn, decoder)
            if start is None:
                break
            record, entered = _run_one(code, start, sock, name, keep_files)
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 > max_growth
            recycle = grown or not entered or _has_children()
            end = {"kind": "end", "job": start.job_id, "recycle": recycle, "record": record}
            channel.write_frame(sock, msgpack.packb(end, use_bin_type=True))
    except BaseException:  # noqa: BLE001  (a worker must reach os._exit below)
        status = job_process.CHILD_INTERNAL_ERROR
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except (OSError, ValueError, MemoryError):
            pass
    finally:
        os._exit(status)


def _receive(conn: socket.socket, decoder: FrameDecoder) -> job_process.Start | None:
    """The next job, or None when the zygote closed the socket."""
    while True:
        frame = decoder.next_frame()
        if isinstance(frame, bytes):
            return job_process.unpack_start(frame)
        data = conn.recv(_READ)
        if not data:
            return None
        decoder.feed(data)


def _run_one(code: job_process.Code, start: job_process.Start, sock: int, name: str, keep_files: bool
             ) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """One job, as a forked job process would run it; returns its sealed record and whether it was entered.

    Not entered: its directory, files or limits failed, and the worker goes.
    """
    entered = False

    def enter(code: job_process.Code, start: job_process.Start) -> None:
        nonlocal entered
        if keep_files:  # each job's directory stays behind: one per job
            workdir.enter_job_dir(code.cluster_dir, start.job_id)
        else:
            workdir.enter_worker_dir(code.cluster_dir, name)
        _enter(code, start)
        entered = True

    started = time.time()
    channel.attach(sock, code.cluster_id, start.job_id, start.result_key)
    try:
        record = job_process.seal(code, start, job_process.run_job(code, start, started, enter))
    finally:
        channel.attach(-1, "", 0, b"")
    return record, entered


def _dir_name(pid: int) -> str:
    return f"worker-{pid}"


def _enter(code: job_process.Code, start: job_process.Start) -> None:
    """The job's files and CPU time; memory and open files are the worker's own limits."""
    for name, data, mode in start.files:
        workdir.write_file(".", name, data, mode)
    if start.limits.cpu_time is not None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + start.limits.cpu_time
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _has_children() -> bool:
    """Whether the job left a child process (reaping those that ended): then the worker goes, and they with it."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        return False
