"""Reused job processes ("worker" isolation): each runs many jobs of one cluster in turn.

Theory of operation. With `isolation="worker"` (`dispy_wire.isolation`) the
zygote does not fork a process per job: it forks a *worker* (its own session
and process group, the job mark, the cluster's memory and open-files limits)
with three channels that last its whole life: a Unix socket and its stdout
and stderr pipes. Nothing is made per job: the zygote sends the job's start
record (`job_process.pack_start`) on the socket; the worker runs the job as a
forked one would (`job_process.run_job` and `seal`), in the job's directory,
its provisional results and files (`channel`) going out on the same socket,
then writes the job's end there: `{"kind": "end", "job", "recycle",
"record", "next"}`, its record being what a forked job writes to its result
file. Everything is one stream of length-prefixed msgpack frames, so what a
job sent reaches the zygote before its end.

Handed ahead. While every CPU is busy, the zygote hands a busy worker the
jobs to run after its current one (`hand_ahead`, `AHEAD` per worker, sent
together once a turn): the worker finds the next in its socket when its job
ends and starts it at once, saying so in the end it writes (`next`), with no
round trip through the zygote; the zygote, reading that end, counts the next
job started (`on_next`) in the place of the one that ended. A worker that
must not go on (recycled, or told to hold) starts nothing and says `next:
null`; jobs handed ahead that will not start in their worker come back to
the zygote (`on_back`).

Output. A worker that starts a job handed ahead the moment the one before
ends writes a marker (random bytes of its own) to its stdout and stderr
pipes before it tells that end: the zygote cuts what it reads from the pipes
at the markers (`capture.Relay`), so each job's output is its own although
the next job starts at once, and neither side waits for the other. A worker
that starts nothing at once (most ends, where jobs are not handed ahead)
writes no marker: the zygote, told the end, takes what the pipes hold (all
the job wrote: it wrote it before the end). The next job the worker gets
then comes after the zygote's `_GO` (it took that output) and starts
without a marker; or it is a job handed ahead that came after the end was
told, and the worker writes the markers it did not write at the end before
it starts it (the zygote, which handed it ahead before it read that end,
expects them). What the pipes carry between jobs (the worker's own messages)
goes to the node's log.

Kills. What ends a job is the worker's end, not its exit. A job the zygote
kills (cancel, wall clock, unload) takes its worker with it: SIGTERM, the
grace, SIGKILL to the worker's group, and the slot's next job gets a fresh
fork. Before the first signal the zygote stops the worker (SIGSTOP) and reads
what it sent (`hold`): if the job ended meanwhile, there is nothing to kill
(and the job handed ahead, which may have started, is not hit); if not, the
worker is told to start nothing after it (a `_HOLD` frame, in its socket
before it can look) and only then signalled and continued. The zygote reads
all the socket holds (not a burst: records may queue ahead of an end told),
and a worker that ran its job to its end but has not told it whole (stopped
as it writes it) may have chosen to start the job handed ahead already: it
wrote the id of the job it ran (`ran`, memory it shares with the zygote, so
no system call per job) before it looked for the next, and the zygote then
lets the end come, which says what it started, instead of telling it to
hold: the job was not killed, it ended. The zygote does not wait for that
end (a worker starved of CPU may take long to write it) but asks again
`END_TIMEOUT` seconds later; a worker that has not told it by then is
retired, and its job ends killed. A job handed
ahead that is cancelled, withdrawn or started elsewhere is taken back the
same way (`take_back`): its worker goes after its current job. A worker that
dies during a job (os._exit, a segfault, the CPU limit) ends that job as a
forked job's death would, with what it had sent and written until then. A
worker is retired (SIGKILL to its group, which also ends whatever its jobs
left running) after `max_jobs` jobs, when its peak RSS grew by more than
`max_growth` bytes since it was forked, when a job left a child process
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
import mmap
import os
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn

import msgpack

from dispy_wire.errors import RemoteWireError
from dispy_wire.framing import FrameDecoder, encode_frame
from dispy_wire.isolation import FORK

from . import channel, fdio, job_process, killtree, workdir
from . import zygote_protocol as zp
from .capture import Kept, Relay
from .limits import Limits, apply

logger = logging.getLogger(__name__)

#: seconds an idle worker has to take a job's start record when it does not fit the socket's buffer
_HAND_TIMEOUT = 10.0
#: seconds a worker caught between its job's run and the end it tells has to tell it (`WorkerPool.hold`): it
#: runs only this module's code meanwhile, microseconds unless starved of CPU or stopped; one retired at this
#: bound loses the result of a job that ran to its end (the zygote goes on meanwhile)
END_TIMEOUT = 60.0
#: reads of a worker's socket per wakeup: a job flooding provisional results must not keep the zygote
_BURST = 16
_READ = fdio.READ_SIZE  # bytes per read of a worker's socket
_UNTIL_EOF = 1 << 30
_ALL_FDS = 1 << 20
#: jobs handed ahead to a worker at most (`hand_ahead`)
AHEAD = 8
#: bytes of jobs handed ahead to a worker at most: with them in its socket, a `_HOLD` still fits there at once
_AHEAD_MAX = 64 * 1024
#: the zygote's frame that tells a worker to run nothing after its current job (the job is being killed)
_HOLD = b"hold"
#: the zygote's frame, before the next job of a worker that ended its last without markers: it took what that
#: job wrote to the pipes, the next starts without markers
_GO = b"go"
_GO_FRAME = encode_frame(_GO)
#: bytes of the random marker a worker writes to its pipes between two jobs (`capture.Relay`)
_MARKER_SIZE = 16
#: the id of the last job a worker ran to its end, in memory it shares with its zygote (`WorkerPool.hold`)
_RAN = struct.Struct("q")


class Hold(Enum):
    """What `WorkerPool.hold` found in a worker about to be signalled for its job."""

    HELD = "held"  # its job runs on: the worker is stopped and told to run nothing after it; signal, then resume
    ENDING = "ending"  # its job ran to its end, which it is telling: no signal; ask again at `END_TIMEOUT`
    NONE = "none"  # nothing to hold: its job's end was read, or the worker is gone (retired: its job ends killed)


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
    ran: mmap.mmap  # shared with it: the id of the last job it ran to its end (`_RAN`), which it writes
    jobs: int = 0
    job_id: int | None = None
    ahead: deque[int] = field(default_factory=deque)  # jobs handed to it to run after its current one, in order
    ahead_sizes: deque[int] = field(default_factory=deque)  # their frames' sizes
    pending: list[bytes] = field(default_factory=list)  # frames of jobs handed ahead this turn (`send_ahead`)
    held: bool = False  # told to run nothing after its current job (`hold`)
    end_due: tuple[int, float] | None = None  # (job, monotonic deadline): the end of a job it ran is awaited
    owes_go: bool = False  # idle after an end without markers: `_GO` goes with the next job given to it
    closed: bool = False
    _decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(max_size=zp.MAX_REPLY, expect_preamble=False))
    _pipes: select.poll = field(default_factory=select.poll)  # its stdout and stderr pipes (`took_output`)

    def __post_init__(self) -> None:
        for pipe in (self.out, self.err):
            self._pipes.register(pipe.fd, select.POLLIN)

    def read(self, all_there_is: bool = False) -> bool:
        """Takes what the worker sent (a burst of reads at most, or all there is, to its end of file if it is
        dead); False at end of file (it exited)."""
        for _ in range(_UNTIL_EOF if all_there_is else _BURST):
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
            if len(data) < _READ and not all_there_is:  # all there was (the loop wakes us again for more)
                return True
        return True

    def took_output(self, marked: bool) -> None:
        """Its job ended: all the job wrote goes to the job's capture, and nothing past it. Up to the markers
        if the worker `marked` the end (its next job writes on at once); else what the pipes hold (up to the
        markers of a job handed ahead that came after the end, if already there), which one poll of both pipes
        finds empty most often (the loop read them this turn)."""
        ready = {fd for fd, _ in self._pipes.poll(0)} if not marked else {self.out.fd, self.err.fd}
        for pipe in (self.out, self.err):
            pipe.end_job(read=pipe.fd in ready)

    def drain(self) -> None:
        """What its job wrote before it died, into that job's capture."""
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
        on_next: called with a worker's pid and a job handed to it ahead (`hand_ahead`) when that job
            starts there (its predecessor ended); returns the captures of its stdout and stderr.
        on_back: called with the ids of jobs handed ahead that will never start in their worker (it goes, or
            was told to hold), in the order they were handed.
        keep_files: the cluster keeps each job's directory: workers make one per job, not one each.
    """

    def __init__(
        self, code: job_process.Code, policy: zp.Workers, sel: selectors.BaseSelector,
        on_done: Callable[[int, dict[str, Any]], bool], on_record: Callable[[int, dict[str, Any]], None],
        on_next: Callable[[int, int], tuple[Kept, Kept]], on_back: Callable[[list[int]], None],
        keep_files: bool = False,
    ) -> None:  # fmt: skip
        self._code = code
        self._keep_files = keep_files
        self._policy = policy
        self._sel = sel
        self._on_done = on_done
        self._on_record = on_record
        self._on_next = on_next
        self._on_back = on_back
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
            go, worker.owes_go = worker.owes_go, False
            if not self._hand(worker, _GO_FRAME + frame if go else frame):  # it died idle (OOM killer?), not
                worker = None  # yet reaped: a fresh one
        if worker is None:
            for other in [w for w in self._idle if w.key != key]:  # a slot needs limits of its own now
                self._idle.remove(other)
                self._retire(other)
            worker = self._fork(key)
            if not self._hand(worker, frame):
                raise OSError(f"worker {worker.pid} did not take the job")
        worker.job_id = start.job_id
        self._next_job(worker, (out, err))
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

    def hand_ahead(self, start: job_process.Start, may_follow: Callable[[int], bool]) -> bool:
        """Hands the job to a busy worker with its limits, to run once the jobs before it there ended
        (`on_next` then tells it started): the least loaded of those that can take it. False if none can (the
        caller keeps the job). `send_ahead` sends what this turn handed.

        Only a worker whose current job `may_follow` (not being killed), with fewer than `AHEAD` jobs ahead
        and enough jobs left to run before it is retired by count.
        """
        key = (start.limits.memory, start.limits.open_files)
        frame = encode_frame(job_process.pack_start(start))
        best = None
        for worker in self._busy.values():
            if (len(worker.ahead) < AHEAD and sum(worker.ahead_sizes) + len(frame) <= _AHEAD_MAX and not worker.held
                    and worker.key == key and worker.job_id is not None and may_follow(worker.job_id)
                    and worker.jobs + len(worker.ahead) + 2 <= self._policy.max_jobs
                    and (best is None or len(worker.ahead) < len(best.ahead))):  # fmt: skip
                best = worker
        if best is None:
            return False
        best.ahead.append(start.job_id)
        best.ahead_sizes.append(len(frame))
        best.pending.append(frame)
        return True

    def send_ahead(self) -> None:
        """Sends each worker the jobs handed to it this turn, in one send."""
        for worker in list(self._busy.values()):
            if worker.pending:
                frames, worker.pending = worker.pending, []
                self._hand(worker, b"".join(frames))  # (if it cannot take them, it is retired: they come back)

    def hold(self, pid: int) -> Hold:
        """Before the zygote signals the job a worker runs: stops the worker (SIGSTOP) and takes all it sent,
        so that a job end it told is known; if its job still runs, tells it to run nothing after it (`_HOLD`,
        read before it could start another) and returns `Hold.HELD`, the worker still stopped: the caller
        signals it, then `resume`s it. Otherwise the worker runs again: `Hold.NONE` if its job ended meanwhile
        or it is gone.

        A job that ran to its end (`ran`) whose end is not all in the socket yet (the worker was stopped before
        or while it wrote it) is not killed: the worker may have chosen to start the job handed ahead, and only
        its end says so; a `_HOLD` now would come too late for it, the job given back would run twice. The
        loop reads that end as any other (`Hold.ENDING`); asked again `END_TIMEOUT` seconds later, with no
        end yet, the worker is retired (`Hold.NONE`).
        """
        worker = self._busy.get(pid)
        if worker is None or worker.closed or not self._stop(pid):
            return Hold.NONE
        job_id = worker.job_id
        # all it wrote (it writes nothing more while stopped), not a burst: an end it told is seen
        worker.read(all_there_is=True)
        if worker.closed or self._busy.get(pid) is not worker or worker.job_id != job_id:
            self.resume(pid)
            return Hold.NONE
        if job_id is not None and _RAN.unpack_from(worker.ran)[0] == job_id:  # (its memory, as it stopped)
            now = time.monotonic()
            if worker.end_due is None or worker.end_due[0] != job_id:
                worker.end_due = (job_id, now + END_TIMEOUT)
            elif now >= worker.end_due[1]:  # stopped, all it sent read: no end
                logger.warning("worker %d did not tell the end of job %d it ran; retired", pid, job_id)
                del self._busy[pid]
                self._retire(worker)  # (its job ends once it is reaped; its job handed ahead did not start)
                return Hold.NONE
            self.resume(pid)
            return Hold.ENDING
        if not worker.held:
            worker.held = True
            if not self._hand(worker, encode_frame(_HOLD)):
                return Hold.HELD  # retired (SIGKILL): its job ends with the caller's verdict once it is reaped
            self._give_back(worker)  # they will not start there: they take other places
        return Hold.HELD

    def take_back(self, job_id: int) -> None:
        """A job handed ahead is wanted back (killed, withdrawn): its worker is told to hold (it goes after its
        current job) and the job comes back through `on_back`, unless it started meanwhile (`on_next`)."""
        worker = next((w for w in self._busy.values() if job_id in w.ahead), None)
        if worker is not None and self.hold(worker.pid) is Hold.HELD:
            self.resume(worker.pid)

    @staticmethod
    def _stop(pid: int) -> bool:
        """SIGSTOPs a worker and waits until it is stopped (or dead, not reaped); False: it is gone."""
        try:
            os.kill(pid, signal.SIGSTOP)
            os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
        except (ChildProcessError, ProcessLookupError):
            return False
        return True

    @staticmethod
    def resume(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def mark_of(self, pid: int) -> str:
        return self._busy[pid].mark

    def heard(self, worker: _Worker, msg: Any) -> None:
        """One frame from a worker: its job's end, or a record its job sent."""
        if not isinstance(msg, dict):
            self.garbage(worker, f"a {type(msg).__name__}")
        elif msg.get("kind") == "end":
            job_id, recycle, after = msg.get("job"), msg.get("recycle"), msg.get("next")
            if not isinstance(job_id, int) or not isinstance(recycle, bool) or not isinstance(after, (int, type(None))):
                self.garbage(worker, "an end without its job")
            else:
                self._answered(worker, job_id, recycle, job_process.valid_record(msg.get("record")), after)
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

    def _answered(self, worker: _Worker, job_id: int, recycle: bool, record: dict[str, Any], after: int | None
                  ) -> None:  # fmt: skip
        """Its job ended; `after`: the job it started next (the one handed ahead), or None."""
        if worker.job_id != job_id or self._busy.get(worker.pid) is not worker:
            self.garbage(worker, f"an end of job {job_id}, which it does not run")
            return
        if after is not None and (not worker.ahead or after != worker.ahead[0] or recycle or worker.held):
            self.garbage(worker, f"a start of job {after}, which it was not to run")
            return
        worker.took_output(marked=after is not None)  # (a worker that starts its next job at once marks the end)
        del self._busy[worker.pid]
        worker.job_id, worker.end_due = None, None
        worker.jobs += 1
        clean = self._on_done(job_id, record)
        if clean and not recycle and not worker.held and worker.jobs < self._policy.max_jobs:
            if not worker.ahead:
                self._next_job(worker, None)
                worker.owes_go = True
                self._idle.append(worker)
            else:  # started now, or (it told its end before the job came) as soon as it reads it, after markers
                worker.ahead_sizes.popleft()
                self._began(worker, worker.ahead.popleft(), late=after is None)
        else:  # (a worker told to recycle, or being killed, starts nothing)
            self._next_job(worker, None)
            self._retire(worker)

    @staticmethod
    def _next_job(worker: _Worker, captures: tuple[Kept, Kept] | None, late: bool = False) -> None:
        worker.out.next_job(captures[0] if captures else None, late)
        worker.err.next_job(captures[1] if captures else None, late)

    def _give_back(self, worker: _Worker) -> None:
        ahead, worker.ahead, worker.ahead_sizes, worker.pending = list(worker.ahead), deque(), deque(), []
        if ahead:
            self._on_back(ahead)

    def _began(self, worker: _Worker, job_id: int, late: bool) -> None:
        """`late`: it came after the worker told the end of the job before without markers (it writes them
        before it starts this one)."""
        worker.job_id = job_id
        self._busy[worker.pid] = worker
        self._next_job(worker, self._on_next(worker.pid, job_id), late)

    def lost(self, pid: int) -> None:
        """A child was reaped: if it was a worker, it is gone, after what it sent and wrote is taken."""
        worker = self._busy.get(pid) or next((w for w in self._idle if w.pid == pid), None)
        if worker is None:
            return
        if not worker.closed:
            worker.read(all_there_is=True)  # it is dead: what its socket holds is all there is
            worker.drain()
        self._busy.pop(pid, None)
        if worker in self._idle:
            self._idle.remove(worker)
        self._close(worker)

    def _fork(self, key: tuple[int | None, int | None]) -> _Worker:
        fds: list[int] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mark = killtree.mark(os.getpid(), -next(self._seq))  # no job's: a worker outlives its jobs
        marker = os.urandom(_MARKER_SIZE)  # where each job's output ends in its pipes (`capture.Relay`)
        ran = mmap.mmap(-1, _RAN.size)  # (shared, anonymous: no descriptor)
        _RAN.pack_into(ran, 0, -1)
        try:
            fds = [*os.pipe(), *os.pipe()]
            pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            ours.close()
            theirs.close()
            ran.close()
            raise
        if pid == 0:
            limits = Limits(memory=key[0], open_files=key[1])
            _serve(self._code, theirs.fileno(), (fds[1], fds[3]), limits, mark, self._policy.max_growth,
                   self._keep_files, marker, ran)  # fmt: skip
        theirs.close()
        os.close(fds[1])
        os.close(fds[3])
        ours.setblocking(False)
        worker = _Worker(self, pid, ours, Relay(fds[0], marker), Relay(fds[2], marker), key, mark, ran)
        self._sel.register(ours.fileno(), selectors.EVENT_READ, worker)
        self._sel.register(fds[0], selectors.EVENT_READ, worker.out)
        self._sel.register(fds[2], selectors.EVENT_READ, worker.err)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """SIGKILL to the worker's group (what its jobs left goes with it); the zygote reaps it."""
        killtree.killpg(worker.pid, signal.SIGKILL)
        self._close(worker)

    def _close(self, worker: _Worker) -> None:
        self._give_back(worker)  # they never started there (a job that started is the worker's current one)
        if not worker.closed:
            fd_map = self._sel.get_map()
            for fd in (worker.sock.fileno(), worker.out.fd, worker.err.fd):
                if fd in fd_map:
                    self._sel.unregister(fd)
            worker.sock.close()
            worker.out.close()
            worker.err.close()
            worker.ran.close()
            worker.closed = True
            if not self._keep_files:
                workdir.remove_worker_dir(self._code.cluster_dir, _dir_name(worker.pid))


# -- in the worker ------------------------------------------------------------


def _serve(
    code: job_process.Code, sock: int, output: tuple[int, int], limits: Limits, mark: str, max_growth: int,
    keep_files: bool, marker: bytes, ran: mmap.mmap,
) -> NoReturn:  # fmt: skip
    """The worker's whole life: jobs until the zygote closes the socket or kills it.

    `output`: the write ends of the stdout and stderr pipes the zygote reads, for all its jobs; `marker`:
    what ends each job's output there (`capture.Relay`); `ran`: where it writes the id of each job it ran to
    its end, before it looks for the next (`WorkerPool.hold`).
    """
    status = 0
    try:
        os.dup2(output[0], 1)
        os.dup2(output[1], 2)
        os.setsid()  # its own group: a cancel's killpg reaches it and what its job started
        os.umask(0o077)
        job_process.reset_signals()
        killtree.write_mark(mark)
        low = 3  # the zygote's pipes and other jobs' and workers' are none of its business: all but its socket
        for fd in sorted((sock, *output)):  # and its own pipes' (for the markers: a job may move fds 1 and 2)
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _ALL_FDS)
        apply(limits)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        name = _dir_name(os.getpid())
        conn = socket.socket(fileno=sock)
        inbox = _Inbox(conn)
        while inbox.wait():
            if inbox.unmarked:  # a job handed ahead that came after the last end was told without the markers:
                _mark(output, marker)  # they go before it
            start = inbox.starts.popleft()
            _RAN.pack_into(ran, 0, -1)  # (were a job's id to come again, its run must not read as its end)
            record, entered = _run_one(code, start, sock, name, keep_files)
            _RAN.pack_into(ran, 0, start.job_id)  # from here a `_HOLD` may come too late: the zygote lets the end come
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 > max_growth
            inbox.take(block=False)  # the next job, if the zygote handed it ahead, or a hold
            recycle = grown or not entered or inbox.held or _has_children()
            after = inbox.starts[0].job_id if inbox.starts and not recycle else None
            if after is not None:  # it writes on before the zygote reads: a marker ends this job's output,
                _mark(output, marker)  # after all the job wrote (`seal` flushed it), before its end is told
            inbox.unmarked = after is None  # (the zygote takes what the pipes hold at this end)
            end = {"kind": "end", "job": start.job_id, "recycle": recycle, "record": record, "next": after}
            channel.write_frame(sock, msgpack.packb(end, use_bin_type=True))
            if recycle:  # the zygote retires it: nothing more runs here
                inbox.starts.clear()
                while inbox.take(block=True):
                    inbox.starts.clear()
                break
    except BaseException:  # noqa: BLE001  (a worker must reach os._exit below)
        status = job_process.CHILD_INTERNAL_ERROR
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except (OSError, ValueError, MemoryError):
            pass
    finally:
        os._exit(status)


def _mark(output: tuple[int, int], marker: bytes) -> None:
    """Writes the marker between two jobs' output to both pipes (less than PIPE_BUF: in one piece whatever else
    writes there)."""
    for fd in output:
        fdio.write_all(fd, marker)


class _Inbox:
    """A worker's end of its socket: the jobs the zygote handed it, in order, and whether it was told to hold."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._decoder = FrameDecoder(max_size=zp.MAX_FRAME, expect_preamble=False)
        self.starts: deque[job_process.Start] = deque()
        self.held = False
        self.unmarked = False  # the last end was told without markers, and no `_GO` came since

    def wait(self) -> bool:
        """Until a job is there; False when the zygote closed the socket."""
        while not self.starts:
            if not self.take(block=True):
                return False
        return True

    def take(self, block: bool) -> bool:
        """Takes what the zygote sent: if `block`, at least something; if not, all there is (a hold behind
        the jobs handed ahead is seen before the next job starts). False at the socket's end."""
        flags = 0 if block else socket.MSG_DONTWAIT
        while True:
            try:
                data = self._conn.recv(_READ, flags)
            except BlockingIOError:
                return True
            if not data:
                return False
            self._decoder.feed(data)
            for frame in self._decoder.frames():
                if frame == _HOLD:
                    self.held = True
                elif frame == _GO:
                    self.unmarked = False
                else:
                    self.starts.append(job_process.unpack_start(frame))
            if block or len(data) < _READ:
                return True


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
