"""Reused job processes ("worker" isolation): each runs many jobs of one cluster in turn.

Theory of operation. With `isolation="worker"` (`dispy_wire.isolation`) the
zygote does not fork a process per job: it forks a *worker* (its own session
and process group, the job mark, the cluster's memory and open-files limits)
and hands it one job at a time over a Unix socket: the job's start record
(`job_process.pack_start`) with, as SCM_RIGHTS, the job's own stdout and
stderr pipes, result file and channel, the same the zygote gives a forked
job, so output capture, provisional results, files and the result record work
unchanged. The worker runs the job as a forked one would
(`job_process.run_job` and `conclude`), in the job's own directory, then
answers `(job_id, recycle)` and waits for the next.

What ends a job is the worker's answer, not its exit: the zygote then
finishes the job at once (`Zygote._worker_done`). A job the zygote kills
(cancel, wall clock, unload) takes its worker with it: SIGTERM, the grace,
SIGKILL to the worker's group, and the slot's next job gets a fresh fork. A
worker that dies during a job (os._exit, a segfault, the CPU limit) ends that
job as a forked job's death would. A worker is retired (SIGKILL to its group,
which also ends whatever its jobs left running) after `max_jobs` jobs, when
its peak RSS grew by more than `max_growth` bytes since it was forked, when a
job left a child process behind, and when its limits differ from those the
next job needs. Workers belong to one zygote, hence to one cluster: they are
never shared between clusters.

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
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from dispy_wire.isolation import FORK

from . import channel, job_process, killtree, workdir
from . import zygote_protocol as zp
from .limits import Limits, apply

logger = logging.getLogger(__name__)

#: zygote -> worker: the start record's length, then the record; the job's 4 fds ride on the length
_HEADER = struct.Struct("!I")
#: worker -> zygote: (job_id, recycle) when the job's record is written and its output flushed
_DONE = struct.Struct("!qB")
_JOB_FDS = 4
#: seconds an idle worker has to take a job's start record
_HAND_TIMEOUT = 10.0
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
    key: tuple[int | None, int | None]  # the (memory, open_files) limits it was forked with
    mark: str
    jobs: int = 0
    job_id: int | None = None
    closed: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def read(self) -> bool:
        """Takes the worker's answers; False at end of file (it exited)."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        self._buf += data
        while len(self._buf) >= _DONE.size:
            job_id, recycle = _DONE.unpack_from(self._buf)
            del self._buf[: _DONE.size]
            self.pool.answered(self, job_id, bool(recycle))
        return True


class WorkerPool:
    """One cluster's workers, in its zygote.

    Args:
        code: the loaded computation (workers are forked with it).
        policy: when workers are retired.
        sel: the zygote's selector, which watches the workers' sockets.
        on_done: called with a job id when its worker answered; True if the job
            ended normally there (the worker may take another), False if the
            zygote was killing it (the worker goes).
        keep_files: the cluster keeps each job's directory: workers make one per job, not one each.
    """

    def __init__(
        self, code: job_process.Code, policy: zp.Workers, sel: selectors.BaseSelector, on_done: Callable[[int], bool],
        keep_files: bool = False,
    ) -> None:  # fmt: skip
        self._code = code
        self._keep_files = keep_files
        self._policy = policy
        self._sel = sel
        self._on_done = on_done
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}  # by pid
        self._seq = itertools.count(1)

    def run(self, start: job_process.Start) -> int:
        """Hands the job to an idle worker with its limits, or to a new one; returns the worker's pid.

        Raises:
            OSError: no worker could be forked or reached.
        """
        key = (start.limits.memory, start.limits.open_files)
        body = job_process.pack_start(start)
        worker = next((w for w in self._idle if w.key == key), None)
        if worker is not None:
            self._idle.remove(worker)
            if not self._hand(worker, start, body):  # it died idle (OOM killer?), not yet reaped: a fresh one
                worker = None
        if worker is None:
            for other in [w for w in self._idle if w.key != key]:  # a slot needs limits of its own now
                self._idle.remove(other)
                self._retire(other)
            worker = self._fork(key)
            if not self._hand(worker, start, body):
                raise OSError(f"worker {worker.pid} did not take the job")
        worker.job_id = start.job_id
        self._busy[worker.pid] = worker
        return worker.pid

    def _hand(self, worker: _Worker, start: job_process.Start, body: bytes) -> bool:
        """Sends the job to an idle worker; False (and the worker retired) if it cannot take it."""
        try:
            socket.send_fds(worker.sock, [_HEADER.pack(len(body))], [start.out, start.err, start.res, start.channel])
            worker.sock.settimeout(_HAND_TIMEOUT)  # an idle worker reads at once; a stopped one is given up
            worker.sock.sendall(body)
            worker.sock.setblocking(False)
        except OSError as exc:
            logger.warning("worker %d cannot take a job (%s); retired", worker.pid, exc)
            self._retire(worker)
            return False
        return True

    def mark_of(self, pid: int) -> str:
        return self._busy[pid].mark

    def answered(self, worker: _Worker, job_id: int, recycle: bool) -> None:
        if worker.job_id != job_id or self._busy.get(worker.pid) is not worker:
            logger.warning("worker %d answered for job %d it does not run; retired", worker.pid, job_id)
            self._busy.pop(worker.pid, None)
            self._retire(worker)
            return
        del self._busy[worker.pid]
        worker.job_id = None
        worker.jobs += 1
        clean = self._on_done(job_id)
        if clean and not recycle and worker.jobs < self._policy.max_jobs:
            self._idle.append(worker)
        else:
            self._retire(worker)

    def lost(self, pid: int) -> None:
        """A child was reaped: if it was a worker, it is gone."""
        worker = self._busy.pop(pid, None)
        if worker is None:
            worker = next((w for w in self._idle if w.pid == pid), None)
            if worker is None:
                return
            self._idle.remove(worker)
        self._close(worker)

    def _fork(self, key: tuple[int | None, int | None]) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mark = killtree.mark(os.getpid(), -next(self._seq))  # no job's: a worker outlives its jobs
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            limits = Limits(memory=key[0], open_files=key[1])
            _serve(self._code, theirs.fileno(), limits, mark, self._policy.max_growth, self._keep_files)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(self, pid, ours, key, mark)
        self._sel.register(ours.fileno(), selectors.EVENT_READ, worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """SIGKILL to the worker's group (what its jobs left goes with it); the zygote reaps it."""
        killtree.killpg(worker.pid, signal.SIGKILL)
        self._close(worker)

    def _close(self, worker: _Worker) -> None:
        if not worker.closed:
            if self._sel.get_map().get(worker.sock.fileno()) is not None:
                self._sel.unregister(worker.sock.fileno())
            worker.sock.close()
            worker.closed = True
            if not self._keep_files:
                workdir.remove_worker_dir(self._code.cluster_dir, _dir_name(worker.pid))


# -- in the worker ------------------------------------------------------------


def _serve(code: job_process.Code, sock: int, limits: Limits, mark: str, max_growth: int, keep_files: bool) -> NoReturn:
    """The worker's whole life: jobs until the zygote closes the socket or kills it."""
    status = 0
    try:
        os.setsid()  # its own group: a cancel's killpg reaches it and what its job started
        os.umask(0o077)
        job_process.reset_signals()
        killtree.write_mark(mark)
        os.closerange(3, sock)  # the zygote's pipes and other jobs' are none of its business
        os.closerange(sock + 1, _ALL_FDS)
        log = os.dup(2)  # the node's log, where the worker's own output goes between jobs
        apply(limits)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        files = os.path.join(code.cluster_dir, workdir.FILES)
        conn = socket.socket(fileno=sock)
        while True:
            start = _receive(conn)
            if start is None:
                break
            entered = _run_one(code, start, log, files, keep_files)
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 > max_growth
            conn.sendall(_DONE.pack(start.job_id, grown or not entered or _has_children()))
    except BaseException:  # noqa: BLE001  (a worker must reach os._exit below)
        status = job_process.CHILD_INTERNAL_ERROR
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except (OSError, ValueError, MemoryError):
            pass
    finally:
        os._exit(status)


def _receive(conn: socket.socket) -> job_process.Start | None:
    """The next job, or None when the zygote closed the socket."""
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, _JOB_FDS)
    if len(header) < _HEADER.size or len(fds) != _JOB_FDS:
        for fd in fds:
            os.close(fd)
        return None
    (size,) = _HEADER.unpack(header)
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            return None
        body += chunk
    start = job_process.unpack_start(bytes(body))
    start.out, start.err, start.res, start.channel = fds
    return start


def _run_one(code: job_process.Code, start: job_process.Start, log: int, files: str, keep_files: bool) -> bool:
    """One job, as a forked job process would run it, then the worker back to its own state.

    Returns False if the job could not be entered (its directory, files or limits): the worker goes.
    """
    entered = False

    def enter(code: job_process.Code, start: job_process.Start) -> None:
        nonlocal entered
        if keep_files:  # each job's directory stays behind: one per job
            workdir.enter_job_dir(code.cluster_dir, start.job_id)
        else:
            workdir.enter_worker_dir(code.cluster_dir, _dir_name(os.getpid()))
        _enter(code, start)
        entered = True

    started = time.time()
    os.dup2(start.out, 1)
    os.dup2(start.err, 2)
    os.close(start.out)
    os.close(start.err)
    channel.attach(start.channel, code.cluster_id, start.job_id, start.result_key)
    try:
        job_process.conclude(code, start, job_process.run_job(code, start, started, enter))
    finally:
        channel.attach(-1, "", 0, b"")
        os.close(start.channel)
        os.close(start.res)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(files)
    return entered


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
