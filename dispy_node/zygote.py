"""The zygote: loads one cluster's computation once, then forks a process per job.

Theory of operation. The daemon runs `python -m dispy_node.zygote` with pipes
on stdin/stdout (`zygote_protocol`), already as the account jobs run as
(`account`). The first message is `Load`: the zygote lays out the cluster
directory the daemon made (`workdir`), writes the computation's files and
modules, makes `files/` the working directory and the head of `sys.path`,
unpickles the code, runs `setup()` and answers `Ready` or `SetupFailed`. Every
`Run` then forks a job process (`job_process`); globals set by `setup` are
inherited by every job and nothing a job does reaches the next one. Once a
cluster has run a job, the next job's process is forked ahead, between loop
turns, and waits for its job (`spare`): the fork and the making of a job
process are off the job's path.

A job ends in two steps. Its leader is reaped (`waitpid`), which fixes the
outcome; then its whole tree must go (`killtree`): the process group and any
marked process that escaped it get SIGKILL, and `Done` is sent only once none
is left, so the daemon frees the CPU only when the CPU is really free, and
always then. A job killed by us (cancel, wall clock, unload, stop) gets
SIGTERM first and SIGKILL `kill_grace` seconds later. A job its client
cancels gets SIGINT before that, as dispy's do: it sees KeyboardInterrupt and
has `INTERRUPT_GRACE` seconds to return what it has (which then is its result,
Finished, as in dispy) before the SIGTERM.

In worker isolation (`worker`), jobs run in reused processes instead: the
RunNext jobs the daemon sends while its CPUs are busy are handed ahead to
busy workers (`_hand_ahead`), each to start there the moment the job before
it ends, and counted started when that end is read (`_ahead_began`); one
that will not start there comes back (`_ahead_back`).

The loop is a plain `selectors` loop (no asyncio: a forked child must not
inherit a running event loop). It watches the command pipe, the SIGCHLD
wakeup pipe and the jobs' output pipes; its timers are wall-clock limits,
SIGKILLs due after the grace, and re-checks of trees still dying. Messages
produced during one turn go out in one write; a job's `Started` waits (5
ms at most) to go with the next other message, usually a `Done`: the
daemon needs its pid only should the zygote die.

The protocol pipe is moved off fds 0 and 1 at start: anything user code
prints in `setup` or `cleanup` goes to stderr instead of corrupting it.
"""

from __future__ import annotations

import errno
import gc
import heapq
import itertools
import logging
import math
import os
import selectors
import signal
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn

import psutil

from dispy_wire import result_mac
from dispy_wire.framing import FrameDecoder
from dispy_wire.payload import without_result_key
from dispy_wire.status import JobStatus

from . import cgroups, fdio, job_process, killtree, loading, spare, worker, workdir
from . import zygote_protocol as zp
from .capture import Capture, Kept, PipeReader
from .channel import Channel
from .limits import Limits

logger = logging.getLogger(__name__)

#: first and last delay between checks of a tree that is still dying
_RECHECK_FIRST, _RECHECK_MAX = 0.002, 0.2
#: a leader killed by a signal with this share of its memory limit in use died of the limit
_AT_LIMIT = 0.9
#: seconds (at most kill_grace) a cancelled job has between its SIGINT and the SIGTERM (dispy gives about 6)
INTERRUPT_GRACE = 3.0
#: seconds a job's Started may wait to go out with other messages (a Done, usually)
_STARTED_DELAY = 0.005
#: seconds a job handed ahead to a busy worker waits for it when the daemon has a CPU free for it: then it is
#: taken back (which costs that worker) and started in a worker of its own (a trivial job ends well before)
_TAKE_BACK_AFTER = 0.05


class _Timer(Enum):
    WALL = "wall"  # the wall-clock limit is up: kill
    SIGTERM = "sigterm"  # a cancelled job's time to answer its SIGINT is up
    SIGKILL = "sigkill"  # the grace after SIGTERM is up
    RECHECK = "recheck"  # is the dying tree gone yet?
    ENDING = "ending"  # a worker's job asked to be killed as it ended: has the end come (`WorkerPool.hold`)?


@dataclass(slots=True)
class _Job:
    job_id: int
    pid: int  # the leader's pid = the group's id
    mark: str
    out: Kept
    err: Kept
    res: int  # fd of the anonymous file holding the result record (-1 in a worker: it sends its record)
    readers: tuple[PipeReader, ...]  # its channel, stdout and stderr pipes (none in a worker: its worker's)
    forked: float
    limits: Limits
    group: str  # its control group ("" for none)
    verdict: tuple[JobStatus, str, str] | None = None  # (status, text, type) when we killed it
    wait_status: int | None = None  # once the leader is reaped
    maxrss: int = 0  # KiB, from the leader's rusage
    cpu_time: float = 0.0  # user + system seconds, from the leader's rusage (its waited-for children included)
    strays: list[psutil.Process] = field(default_factory=list)  # outside the group, seen while alive
    hard: bool = False  # SIGKILL time: whatever of the tree still shows up gets SIGKILL
    interrupted: bool = False  # cancelled, SIGINT sent, no SIGTERM yet
    recheck: float = _RECHECK_FIRST
    record: dict[str, Any] | None = None  # what its worker sent as its record (a forked job's is in `res`)
    #: a kill (status, text, type, interrupt) asked as it ended in its worker: asked again if the end does not come
    asked: tuple[JobStatus, str, str, bool] | None = None


class Zygote:
    """One cluster's zygote; `serve()` runs until Unload or the pipe closes.

    Args:
        rfd: the command pipe (from the daemon).
        wfd: the reply pipe (to the daemon), blocking.
    """

    def __init__(self, rfd: int, wfd: int) -> None:
        self._rfd = rfd
        self._wfd = wfd
        self._decoder = FrameDecoder(max_size=zp.MAX_FRAME, expect_preamble=False)
        self._out: list[bytes] = []
        #: Started of jobs: they go with the next other message, or `_STARTED_DELAY` seconds later
        self._started: list[bytes] = []
        self._started_since = 0.0
        self._jobs: dict[int, _Job] = {}  # by job_id, until the tree is gone
        self._spent: list[int] = []  # jobs whose Done goes out this turn: their directories go after it
        self._leaders: dict[int, _Job] = {}  # by pid, until reaped
        self._timers: list[tuple[float, int, _Timer, _Job]] = []
        self._seq = itertools.count()
        self._sel = selectors.DefaultSelector()
        self._grace = 5.0
        self._max_output = 4 << 20
        self._keep_files = False
        self._code: job_process.Code | None = None
        self._cleanup: Any = None
        self._spawn = False  # start each job as a new process (no fork): see loading.py
        self._load_file = ""
        self._unloading = False
        self._stopping = False
        self._workers: worker.WorkerPool | None = None  # isolation "worker": reused job processes
        self._spare: spare.Spare | None = None  # isolation "fork": the next job's process, forked ahead
        self._forked = False  # a job was forked: from now on one is forked ahead (none for an idle cluster)
        #: RunNext jobs, oldest first: each starts in the place of a job that ends after it came
        self._next: dict[int, zp.RunNext] = {}
        #: RunNext jobs handed to a busy worker to run after its current job (worker.py `hand_ahead`), not started
        self._ahead: dict[int, zp.RunNext] = {}
        self._ahead_verdicts: dict[int, tuple[JobStatus, str, str]] = {}  # of those, killed before they started
        self._deferred_kills: list[_Job] = []  # jobs that started with a verdict waiting: killed after this event
        #: of the jobs handed ahead, those the daemon has a CPU free for (StartNext): taken back at these times
        #: (monotonic) unless they started by then
        self._owed: dict[int, float] = {}
        self._ended = 0  # jobs ended this turn of the loop: the places RunNext jobs may take
        self._pid = os.getpid()

    # -- life cycle ----------------------------------------------------------

    def serve(self) -> int:
        """Loads the computation, then runs jobs; returns the exit status."""
        load = self._read_load()
        if load is None:
            return 0
        logging.getLogger().setLevel(load.log_level)
        error = self._load(load)
        if error is not None:
            self._send(zp.SetupFailed(job_process.cut_text(error)))
            self._flush()
            return 1
        killtree.become_subreaper()
        killtree.mark_slot()  # looked up once here: every job writes its mark there
        if self._code is not None:
            result_mac.prepare(self._code.result_key)  # and every job signs its result with what this makes
        gc.freeze()  # what setup built stays shared with every fork, untouched by the collector
        self._send(zp.Ready())
        self._flush()
        return self._loop()

    def _read_load(self) -> zp.Load | None:
        while True:
            frame = self._decoder.next_frame()
            if isinstance(frame, bytes):
                msg = zp.decode(frame)
                if not isinstance(msg, zp.Load):
                    raise TypeError(f"expected Load, got {type(msg).__name__}")
                return msg
            data = os.read(self._rfd, fdio.READ_SIZE)
            if not data:
                return None
            self._decoder.feed(data)

    def _loop(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        # a Python-level handler is what makes the interpreter write to the wakeup fd
        signal.signal(signal.SIGCHLD, _ignore)
        os.set_blocking(self._rfd, False)
        self._sel.register(self._rfd, selectors.EVENT_READ)
        self._sel.register(wake_r, selectors.EVENT_READ)
        for frame in self._decoder.frames():  # frames that arrived together with Load
            self._handle(zp.decode(frame))
        while True:
            due = min(self._timers[0][0] if self._timers else math.inf,
                      self._started_since + _STARTED_DELAY if self._started else math.inf,
                      min(self._owed.values(), default=math.inf))  # fmt: skip
            timeout = None if due == math.inf else max(0.0, due - time.monotonic())
            events = self._sel.select(timeout)
            if len(events) > 1:  # the jobs' and workers' pipes first: a worker writes its job's output and marker
                events.sort(key=_pipes_first)  # there before it tells the end, whose handling then has the
            for key, _ in events:  # marker already (`capture.Relay.end_job`): no read of an emptied pipe
                if key.fd == wake_r:
                    _drain(wake_r)
                    self._reap()
                elif key.fd == self._rfd:
                    if not self._receive():
                        self._stop()
                elif not key.data.closed and not key.data.read():  # closed: its job ended this turn
                    self._sel.unregister(key.fd)
                self._kill_deferred()
            self._fire_timers(time.monotonic())
            self._take_back_owed(time.monotonic())
            self._start_next()
            if not self._jobs and not self._ahead and (self._stopping or self._unloading):
                return self._exit()
            self._flush()
            self._remove_spent()  # before any command of the next turn: a job run here again finds no leftover
            self._fork_ahead()

    def _exit(self) -> int:
        """No job is left: kill what escaped unmarked, then unload or just go."""
        leftovers = []
        for pid in killtree.own_children():
            try:
                leftovers.append(psutil.Process(pid))
            except psutil.Error:
                pass
        killtree.signal_procs(leftovers, signal.SIGKILL)
        psutil.wait_procs(leftovers, timeout=self._grace)
        self._remove_spent()
        if self._unloading and not self._stopping:
            self._run_cleanup()
            self._send(zp.Unloaded())
            self._flush()
        return 0

    def _receive(self) -> bool:
        """Reads commands; False when the daemon closed the pipe."""
        try:
            data = os.read(self._rfd, fdio.READ_SIZE)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._decoder.feed(data)
        for frame in self._decoder.frames():
            self._handle(zp.decode(frame))
        return True

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, zp.Run):
            self._start(msg.job_id, msg.payload, Limits(*msg.limits), msg.files, msg.group)
        elif isinstance(msg, zp.RunNext):
            if msg.job_id in self._jobs or msg.job_id in self._next or msg.job_id in self._ahead:
                logger.warning("job %d is already here; repeated RunNext ignored", msg.job_id)
            elif not (self._stopping or self._unloading):
                self._next[msg.job_id] = msg
        elif isinstance(msg, zp.StartNext):
            for job_id in msg.job_ids:  # those not started in a place that freed meanwhile
                if job_id in self._ahead:  # handed to a busy worker: the place goes to one not handed yet,
                    if self._next:  # (the daemon counts both started until this one starts: never fewer)
                        other = self._next.pop(next(iter(self._next)))
                        self._start(other.job_id, other.payload, Limits(*other.limits), other.files, other.group)
                    else:  # or to this one, if its worker does not start it soon
                        self._owed[job_id] = time.monotonic() + _TAKE_BACK_AFTER
                    continue
                waiting = self._next.pop(job_id, None)
                if waiting is not None:
                    self._start(job_id, waiting.payload, Limits(*waiting.limits), waiting.files, waiting.group)
        elif isinstance(msg, zp.Withdraw):
            for job_id in msg.job_ids:  # those handed ahead to workers come back first, unless they started
                if job_id in self._ahead and self._workers is not None:
                    self._workers.take_back(job_id)
            self._send(zp.Withdrawn([job_id for job_id in msg.job_ids if self._next.pop(job_id, None) is not None]))
        elif isinstance(msg, zp.Kill):
            job = self._jobs.get(msg.job_id)
            waiting = self._next.pop(msg.job_id, None)
            if waiting is not None:  # never started: it ends at once, as the daemon's queued jobs do
                now = time.time()
                status, text, kind = _verdict_for(JobStatus(msg.status), msg.reason)
                self._send(zp.Done(msg.job_id, status, None, b"", b"", text, kind, now, now))
            elif job is not None:
                status = JobStatus(msg.status)
                self._kill(job, *_verdict_for(status, msg.reason), interrupt=status is JobStatus.CANCELLED)
            elif msg.job_id in self._ahead and self._workers is not None:  # handed to a worker, not started:
                self._ahead_verdicts[msg.job_id] = _verdict_for(JobStatus(msg.status), msg.reason)
                self._workers.take_back(msg.job_id)  # it ends as it comes back, or is killed as it starts
        elif isinstance(msg, zp.Workers):
            self._use_workers(msg)
        elif isinstance(msg, zp.AddFile):
            self._send(self._add_file(msg))
        elif isinstance(msg, zp.Unload):
            self._unloading = True
            self._let_spare_go()
            now = time.time()
            for job_id in self._next:  # none of them started
                self._send(zp.Done(job_id, JobStatus.CANCELLED, None, b"", b"", "cancelled", "", now, now))
            self._next.clear()
            self._kill_all(JobStatus.CANCELLED, "cancelled")
        else:
            logger.error("zygote: unexpected %s from the daemon", type(msg).__name__)

    def _stop(self) -> None:
        """The daemon is gone or gave up on us: no job outlives the zygote, none is reported."""
        self._stopping = True
        self._sel.unregister(self._rfd)
        self._let_spare_go()
        self._next.clear()
        self._kill_all(JobStatus.CANCELLED, "node stopping")

    def _kill_all(self, status: JobStatus, text: str) -> None:
        """Every job: those handed ahead to workers end as they start or come back (`_ahead_began`,
        `_ahead_back`); a kill may end a job and start the one handed ahead after it: that is killed too."""
        for job_id in self._ahead:
            self._ahead_verdicts.setdefault(job_id, (status, text, ""))
        # (not those run to their end in their workers, whose ends come: `Hold.ENDING`)
        while alive := [j for j in self._jobs.values() if j.verdict is None and j.wait_status is None and j.asked is None]:
            for job in alive:
                self._kill(job, status, text, "")
            self._kill_deferred()

    # -- loading -------------------------------------------------------------

    def _load(self, load: zp.Load) -> str | None:
        """Prepares the cluster; returns why it failed, or None."""
        self._grace = load.kill_grace
        self._max_output = load.max_output
        self._keep_files = load.keep_files
        self._spawn = load.spawn
        loaded = loading.load_code(load, first=True)
        if isinstance(loaded, str):
            return loaded
        self._code, self._cleanup = loaded
        if self._spawn:  # each job process loads the cluster again from this
            self._load_file = os.path.join(load.cluster_dir, loading.LOAD_FILE)
            keyless = load._replace(computation=without_result_key(load.computation))  # the key goes with each Start
            workdir.write_file(load.cluster_dir, loading.LOAD_FILE, zp.encode(keyless), 0o600, replace=True)
        return None

    def _run_cleanup(self) -> None:
        if callable(self._cleanup):
            try:
                self._cleanup()
            except (Exception, SystemExit):  # noqa: BLE001  (user code: log it and unload anyway)
                logger.warning("cluster cleanup raised:\n%s", traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()

    # -- jobs ----------------------------------------------------------------

    def _start(self, job_id: int, payload: bytes, limits: Limits, files: list[Any], group: str) -> None:
        if job_id in self._jobs:
            logger.warning("job %d is already running; repeated Run ignored", job_id)
            return
        assert self._code is not None
        now = time.time()
        mark = killtree.mark(self._pid, job_id)
        out, err = Kept(self._max_output), Kept(self._max_output)
        try:
            if self._workers is not None:  # its worker's socket and pipes carry all it sends
                start = job_process.Start(job_id, payload, limits, files, mark, -1, -1, -1, -1, group,
                                          self._code.result_key)  # fmt: skip
                pid = self._workers.run(start, out, err)
                job = _Job(job_id, pid, self._workers.mark_of(pid), out, err, -1, (), now, limits, group)
            else:
                job = self._fork_job(job_id, payload, limits, files, mark, group, out, err, now)
        except OSError as exc:
            why = f"cannot start the job's process: {exc}"
            self._send(zp.Done(job_id, JobStatus.TERMINATED, None, b"", b"", why, "OSError", now, now))
            return
        self._began(job)

    def _began(self, job: _Job) -> None:
        """The job runs from now on: watched, timed, and told to the daemon."""
        for reader in job.readers:
            self._sel.register(reader.fd, selectors.EVENT_READ, reader)
        self._jobs[job.job_id] = job
        self._leaders[job.pid] = job
        if job.limits.wall is not None:
            self._at(time.monotonic() + job.limits.wall, _Timer.WALL, job)
        # the daemon needs the pid only should we die (and finds the job by its mark then too): it waits to go
        # with the next other message, usually the Done of this job or of another: one write, and one wake-up
        # of the daemon, less per job
        if not self._started:
            self._started_since = time.monotonic()
        self._started.append(zp.encode(zp.Started(job.job_id, job.pid)))

    def _fork_job(
        self, job_id: int, payload: bytes, limits: Limits, files: list[Any], mark: str, group: str, out: Kept,
        err: Kept, now: float,
    ) -> _Job:  # fmt: skip
        """A process of its own for the job (the spare, forked, or spawned), with its own pipes and result file."""
        assert self._code is not None
        ahead, self._spare = self._spare, None
        if ahead is not None:
            start = job_process.Start(job_id, payload, limits, files, mark, *ahead.child_fds, group, self._code.result_key)
            if ahead.hand(start):
                readers = (Channel(ahead.channel, lambda record: self._from_job(job_id, record)),
                           Capture(ahead.out, out), Capture(ahead.err, err))  # fmt: skip
                return _Job(job_id, ahead.pid, mark, out, err, ahead.res, readers, now, limits, group)
            ahead.discard()
        fds: list[int] = []
        try:
            fds = [*os.pipe(), *os.pipe(), _anon_file(), *os.pipe()]
            start = job_process.Start(
                job_id, payload, limits, files, mark, fds[1], fds[3], fds[4], fds[6], group, self._code.result_key
            )
            pid = self._spawn_job(start) if self._spawn else os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        if pid == 0:
            job_process.run(self._code, start)
        self._forked = not self._spawn
        for fd in (fds[1], fds[3], fds[6]):
            os.close(fd)
        readers = (Channel(fds[5], lambda record: self._from_job(job_id, record)), Capture(fds[0], out),
                   Capture(fds[2], err))  # fmt: skip
        return _Job(job_id, pid, mark, out, err, fds[4], readers, now, limits, group)

    def _fork_ahead(self) -> None:
        """Forks the next job's process now, between turns, if this cluster forks its jobs and has run one."""
        if self._spare is not None or not self._forked or self._code is None:
            return
        if self._spawn or self._workers is not None or self._unloading or self._stopping:
            return
        try:
            self._spare = spare.fork(self._code, _anon_file())
        except OSError as exc:  # the next job is forked as it comes, and says so if it cannot be
            logger.debug("zygote: cannot fork ahead: %s", exc)

    def _is_spare(self, pid: int) -> bool:
        return self._spare is not None and pid == self._spare.pid

    def _let_spare_go(self) -> None:
        if self._spare is not None:
            self._spare.discard()
            self._spare = None

    # -- reused workers (worker.py) ------------------------------------------

    def _use_workers(self, msg: zp.Workers) -> None:
        if self._spawn:  # no fork here: each job stays a new interpreter
            logger.warning("zygote: worker isolation needs fork; jobs are spawned one by one")
        elif self._workers is None and self._code is not None:
            self._workers = worker.WorkerPool(
                self._code, msg, self._sel, self._worker_done, self._from_job, self._ahead_began, self._ahead_back,
                self._keep_files,
            )  # fmt: skip

    def _worker_done(self, job_id: int, record: dict[str, Any]) -> bool:
        """A worker told its job's end, with its record: the job ends now, unless we were killing it (then its
        worker goes, and the job ends once the worker is reaped). True if the worker may run another."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.record = record
        if job.wait_status is not None or job.verdict is not None:
            return False
        del self._leaders[job.pid]
        job.wait_status = 0
        self._finish(job)
        return True

    def _ahead_began(self, pid: int, job_id: int) -> tuple[Kept, Kept]:
        """A job handed ahead to worker `pid` starts there, in the place of the job that just ended in it
        (whose Done goes out after this one's Started). Killed already (or we are stopping): killed now."""
        assert self._code is not None and self._workers is not None
        msg = self._ahead.pop(job_id)
        self._owed.pop(job_id, None)
        self._ended -= 1  # the place of the job that ended: taken
        out, err = Kept(self._max_output), Kept(self._max_output)
        limits = Limits(*msg.limits)
        job = _Job(job_id, pid, self._workers.mark_of(pid), out, err, -1, (), time.time(), limits, msg.group)
        self._began(job)
        verdict = self._ahead_verdicts.pop(job_id, None)
        if verdict is None and (self._unloading or self._stopping):
            verdict = (JobStatus.CANCELLED, "cancelled" if not self._stopping else "node stopping", "")
        if verdict is not None:
            job.verdict = verdict  # killed as soon as this event is handled (`_kill_deferred`)
            self._deferred_kills.append(job)
        return out, err

    def _ahead_back(self, job_ids: list[int]) -> None:
        """Jobs handed ahead will not start in their worker: they wait for a place again, first in line, or
        end now if they were killed meanwhile."""
        back = {}
        for job_id in job_ids:
            msg = self._ahead.pop(job_id)
            verdict = self._ahead_verdicts.pop(job_id, None)
            owed = self._owed.pop(job_id, None) is not None
            if self._stopping:
                continue
            if verdict is None and self._unloading:
                verdict = (JobStatus.CANCELLED, "cancelled", "")
            if verdict is not None:
                now = time.time()
                self._send(zp.Done(job_id, verdict[0], None, b"", b"", verdict[1], verdict[2], now, now))
            else:
                back[job_id] = msg
                self._ended += owed  # a CPU the daemon has free for it: it starts this turn (`_start_next`)
        self._next = {**back, **self._next}

    def _take_back_owed(self, now: float) -> None:
        """Jobs handed ahead that a free CPU waits for longer than `_TAKE_BACK_AFTER`: taken back to start now."""
        for job_id in [job_id for job_id, due in self._owed.items() if due <= now]:
            if self._workers is not None:
                self._workers.take_back(job_id)  # (`_ahead_back` or `_ahead_began` forgets it)
            self._owed.pop(job_id, None)

    def _kill_deferred(self) -> None:
        while self._deferred_kills:
            job = self._deferred_kills.pop()
            verdict, job.verdict = job.verdict, None
            if verdict is not None and self._jobs.get(job.job_id) is job:
                self._kill(job, *verdict, interrupt=verdict[0] is JobStatus.CANCELLED)

    def _may_follow(self, job_id: int) -> bool:
        """Whether a job handed ahead may follow this running job in its worker: not if it is being killed."""
        job = self._jobs.get(job_id)
        return job is not None and job.verdict is None

    def _add_file(self, msg: zp.AddFile) -> zp.FileAdded:
        """Puts a file sent by the client beside the depends files; jobs started from now on see it."""
        assert self._code is not None
        files = os.path.join(self._code.cluster_dir, workdir.FILES)
        try:
            workdir.write_file(files, msg.name, msg.data, msg.mode, replace=True)
        except (ValueError, OSError) as exc:
            return zp.FileAdded(msg.ref, False, str(exc))
        return zp.FileAdded(msg.ref, True, "")

    def _spawn_job(self, start: job_process.Start) -> int:
        """A new interpreter for the job (no fork): it loads the cluster again, then runs the job."""
        start_fd = _anon_file()
        try:
            fdio.write_all(start_fd, job_process.pack_start(start))
            os.lseek(start_fd, 0, os.SEEK_SET)
            inherited = (start.out, start.err, start.res, start.channel, start_fd)
            for fd in inherited:
                os.set_inheritable(fd, True)
            argv = [sys.executable, "-m", "dispy_node.job_spawn", self._load_file, str(start_fd)]
            env = {**os.environ, killtree.MARK_VAR: start.mark}  # in its environment from the first instruction
            return os.posix_spawn(sys.executable, argv, env, setsid=True)  # its own group before setup runs
        finally:
            os.close(start_fd)
            for fd in (start.out, start.err, start.res, start.channel):
                os.set_inheritable(fd, False)

    def _from_job(self, job_id: int, record: dict[str, Any]) -> None:
        """A record from a running job's channel, passed on to the daemon at once."""
        kind, mac = record.get("kind"), _mac_in(record)
        if kind == "provisional" and isinstance(record.get("result"), bytes):
            self._send(zp.Provisional(job_id, record["result"], mac))
        elif kind == "file" and isinstance(record.get("name"), str) and isinstance(record.get("data"), bytes):
            mode = record.get("mode")
            name, data = os.path.basename(record["name"]), record["data"]
            self._send(zp.File(job_id, name, data, mode if isinstance(mode, int) else 0o600, mac))
        else:
            logger.warning("job %d sent an unknown record on its channel", job_id)

    def _kill(self, job: _Job, status: JobStatus, text: str, kind: str, interrupt: bool = False) -> None:
        """SIGTERM to the tree now, SIGKILL after the grace; the job will end with this verdict.

        With `interrupt` (a cancel), SIGINT to its process group comes first and SIGTERM
        `INTERRUPT_GRACE` seconds later: its KeyboardInterrupt handler may still return a result.
        """
        if job.verdict is not None or job.wait_status is not None:
            return  # killed already, or it ended by itself: its outcome stands, what it left is being SIGKILLed
        held = worker.Hold.NONE
        if job.res < 0 and self._workers is not None:
            held = self._workers.hold(job.pid)  # (see WorkerPool.hold)
        if self._jobs.get(job.job_id) is not job or job.wait_status is not None or job.verdict is not None:
            if held is worker.Hold.HELD:
                worker.WorkerPool.resume(job.pid)
            return  # in a worker, it ended meanwhile: its end was read just now
        if held is worker.Hold.ENDING:  # it ran to its end, which is on its way: not killed, unless it does not come
            if job.asked is None:  # (the first kill asked stands, as a verdict does)
                logger.info("job %d ran to its end as it was killed (%s): its end is awaited", job.job_id, text)
                job.asked = (status, text, kind, interrupt)
                self._at(time.monotonic() + worker.END_TIMEOUT, _Timer.ENDING, job)
            return
        try:
            job.verdict = (status, text, kind)
            if interrupt:
                job.interrupted = True
                killtree.killpg(job.pid, signal.SIGINT)
                self._at(time.monotonic() + min(INTERRUPT_GRACE, self._grace), _Timer.SIGTERM, job)
                return
            self._terminate(job)
        finally:
            if held is worker.Hold.HELD:
                worker.WorkerPool.resume(job.pid)

    def _terminate(self, job: _Job) -> None:
        job.interrupted = False
        self._signal_tree(job, signal.SIGTERM)
        self._at(time.monotonic() + self._grace, _Timer.SIGKILL, job)

    def _signal_tree(self, job: _Job, sig: int) -> None:
        if job.wait_status is None:  # leader alive: note who left the group, while we can see them
            pgid = job.pid
            for proc in killtree.descendants(job.pid):
                if proc not in job.strays and _pgid_of(proc.pid) != pgid:
                    job.strays.append(proc)
        # a dying process loses its memory (and the mark with it) before it is a zombie: keep watching it
        job.strays += [p for p in self._escaped(job) if p not in job.strays]
        killtree.killpg(job.pid, sig)
        killtree.signal_procs(job.strays, sig)

    def _escaped(self, job: _Job) -> list[psutil.Process]:
        """Processes of the job outside its process group: orphans re-parented to us that carry its mark,
        with their descendants, and whatever is in its control group (no process can leave it, marked or not)."""
        found: list[psutil.Process] = []
        for pid in killtree.own_children():
            if pid in self._leaders or self._is_spare(pid) or _pgid_of(pid) in (job.pid, None):
                continue  # a leader, the spare, a member of the group (killpg reaches it), or gone
            mark = killtree.mark_of(pid)
            # one in its exit has lost its mark with its memory but may not have handed us its children yet:
            # it counts until it is a zombie, so a job's double-forked grandchild is never missed
            if mark == job.mark or (not mark and killtree.exiting(pid)):
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:
                    continue
                found += [proc, *killtree.descendants(pid)]
        if job.group and self._code is not None and self._code.groups is not None:
            for pid in cgroups.members(self._code.groups, job.group):
                if pid != job.pid and _pgid_of(pid) not in (job.pid, None):
                    try:
                        found.append(psutil.Process(pid))
                    except psutil.Error:
                        continue
        return found

    def _at(self, deadline: float, what: _Timer, job: _Job) -> None:
        heapq.heappush(self._timers, (deadline, next(self._seq), what, job))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, what, job = heapq.heappop(self._timers)
            if self._jobs.get(job.job_id) is not job:
                continue  # that job is over
            if what is _Timer.WALL:
                self._kill(job, JobStatus.TERMINATED, job.limits.wall_text(), "LimitExceeded")
            elif what is _Timer.SIGTERM:
                if job.wait_status is None:  # still running after its SIGINT
                    self._terminate(job)
            elif what is _Timer.SIGKILL:
                job.hard = True
                self._signal_tree(job, signal.SIGKILL)
            elif what is _Timer.ENDING:
                if job.asked is not None and job.verdict is None and job.wait_status is None:
                    status, text, kind, interrupt = job.asked
                    self._kill(job, status, text, kind, interrupt)
            else:
                self._reap()
                self._try_finish(job)

    def _reap(self) -> None:
        """Collects every ended child: job leaders and orphans re-parented to us."""
        ended = []
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self._workers is not None:
                self._workers.lost(pid)
            if self._is_spare(pid):  # died waiting for its job
                self._let_spare_go()
            job = self._leaders.pop(pid, None)
            if job is not None:
                job.wait_status, job.maxrss = status, usage.ru_maxrss
                job.cpu_time = usage.ru_utime + usage.ru_stime
                ended.append(job)
        for job in ended:  # trees still dying are looked at again by their RECHECK timers
            if job.verdict is None or job.interrupted:  # what the job left running ends with it, now
                job.hard = True  # (_try_finish sends the SIGKILL, once, if anything of it is left)
            if job.verdict is None and job.asked is not None:  # its worker died before it told the end of the
                job.verdict = job.asked[:3]  # job it ran (`Hold.ENDING`): the job ends as the kill said
            self._try_finish(job)

    def _try_finish(self, job: _Job) -> None:
        """Sends Done if the job's tree is gone; else makes sure it goes (SIGKILL, once its time came) and
        looks again soon."""
        escaped = self._escaped(job)  # one search of its tree: what it finds is killed and waited for
        job.strays += [p for p in escaped if p not in job.strays]
        if killtree.group_alive(job.pid) or escaped or any(killtree.alive(p) for p in job.strays):
            if job.hard:  # what is left, late joiners too: orphans re-parented since, forks racing a SIGKILL
                killtree.killpg(job.pid, signal.SIGKILL)
                killtree.signal_procs(job.strays, signal.SIGKILL)
            self._at(time.monotonic() + job.recheck, _Timer.RECHECK, job)
            job.recheck = min(job.recheck * 2, _RECHECK_MAX)
            return
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        """The job's tree is gone (or, in a worker, the job is over): Done, and its directory goes."""
        del self._jobs[job.job_id]
        for reader in job.readers:
            if self._sel.get_map().get(reader.fd) is not None:
                self._sel.unregister(reader.fd)
        done = self._done(job)
        if not self._keep_files and self._code is not None and self._workers is None:  # workers reuse theirs
            self._spent.append(job.job_id)  # removed once Done is out: a metadata write the job need not wait for
        if not self._stopping:
            self._send(done)
        self._ended += 1

    def _start_next(self) -> None:
        """Starts a RunNext job in the place of each job that ended this turn, before their Done go out.

        A place no RunNext job waits for goes back to the daemon (with the Done). The daemon sends
        RunNext for worker isolation only, whose Started go out before the Done of the same turn
        (`_flush`): it reads each one's Started before the Done whose place it took, so it never
        counts fewer jobs running than there are."""
        while self._ended > 0 and self._next:
            job_id = next(iter(self._next))
            msg = self._next.pop(job_id)
            self._ended -= 1
            self._start(msg.job_id, msg.payload, Limits(*msg.limits), msg.files, msg.group)
        self._ended = 0
        self._hand_ahead()

    def _hand_ahead(self) -> None:
        """Hands waiting RunNext jobs to busy workers, each to start there the moment the job before it ends,
        without a turn of this loop in between (`worker.WorkerPool.hand_ahead`)."""
        if self._workers is None or self._unloading or self._stopping or self._code is None:
            return
        while self._next:
            job_id = next(iter(self._next))
            msg = self._next[job_id]
            start = job_process.Start(job_id, msg.payload, Limits(*msg.limits), msg.files, "", -1, -1, -1, -1,
                                      msg.group, self._code.result_key)  # fmt: skip
            if not self._workers.hand_ahead(start, self._may_follow):
                break
            self._ahead[job_id] = self._next.pop(job_id)
        self._workers.send_ahead()  # (one that cannot take them is retired: they come back, `_ahead_back`)

    def _remove_spent(self) -> None:
        """Removes the directories of the jobs whose Done went out this turn."""
        if self._spent and self._code is not None:
            for job_id in self._spent:
                workdir.remove_job_dir(self._code.cluster_dir, job_id)
        self._spent.clear()

    def _done(self, job: _Job) -> zp.Done:
        assert job.wait_status is not None
        ended = time.time()
        for reader in job.readers:  # its channel first: what the job sent goes before its end
            reader.close()
        stdout, stderr = job.out.text(), job.err.text()
        if job.res < 0:
            rec = job.record or {}
        else:
            rec = job_process.parse_record(_read_all(job.res))
            os.close(job.res)
        start, end = rec.get("start_time", job.forked), rec.get("end_time", ended)
        usage = (job.cpu_time, job.maxrss * 1024)  # for the scheduler's accounting
        returned = rec.get("status") == JobStatus.FINISHED  # a cancelled job that returned on its SIGINT: dispy's Finished
        if job.verdict is not None and ((job.verdict[0] is JobStatus.CANCELLED and not returned) or not rec):
            status, text, kind = job.verdict
            return zp.Done(job.job_id, status, None, stdout, stderr, text, kind, start, end, b"", *usage)
        memory_hit, processes_hit = self._group_breach(job)
        if rec:
            text, kind = rec.get("exception", ""), rec.get("exception_type", "")
            if kind == "MemoryError" and job.limits.memory is not None:
                text = f"{job.limits.memory_text()}\n{text}"
            elif memory_hit and rec["status"] != JobStatus.FINISHED:  # one of its processes was killed for it
                text = f"{job.limits.memory_text()}\n{text}"
            elif processes_hit and rec["status"] != JobStatus.FINISHED:
                text = f"{job.limits.processes_text()}\n{text}"
            elif job.limits.open_files is not None and _too_many_files(kind, text):
                text = f"{job.limits.open_files_text()}\n{text}"
            result = rec.get("result")
            return zp.Done(job.job_id, rec["status"], result, stdout, stderr, text, kind, start, end, _mac_in(rec), *usage)
        text, kind = _death_text(job, memory_hit)
        return zp.Done(job.job_id, JobStatus.TERMINATED, None, stdout, stderr, text, kind, start, end, b"", *usage)

    def _group_breach(self, job: _Job) -> tuple[bool, bool]:
        """Which of its own limits the job hit in its control group (the daemon removes the group).

        Every job has a group where the node has cgroups; one without a limit
        hit none of its own, whatever an outer limit (the unit's) did to it.
        """
        groups = self._code.groups if self._code is not None else None
        if groups is None or not job.group or (job.limits.memory is None and job.limits.processes is None):
            return False, False  # no limit of its own to have hit: no counters to read
        memory, processes = cgroups.breach(groups, job.group)
        return memory and job.limits.memory is not None, processes and job.limits.processes is not None

    # -- output --------------------------------------------------------------

    def _send(self, msg: Any) -> None:
        self._out.append(zp.encode(msg))

    def _flush(self) -> None:
        if self._started and (self._out or time.monotonic() >= self._started_since + _STARTED_DELAY):
            self._out[:0] = self._started  # before the Done of the same job
            self._started.clear()
        if self._out:
            try:
                fdio.write_all(self._wfd, b"".join(self._out))
            except BrokenPipeError:
                pass  # the daemon is gone: we are stopping
            self._out.clear()


def _verdict_for(status: JobStatus, reason: str) -> tuple[JobStatus, str, str]:
    """(status, text, exception type) of a job the daemon had killed."""
    if status is JobStatus.CANCELLED:
        return status, reason or "cancelled", ""
    return status, reason, "NodeGaveUp" if status is JobStatus.ABANDONED else "Killed"


def _mac_in(record: dict[str, Any]) -> bytes:
    """The job's MAC in one of its records (`dispy_wire.result_mac`): the client checks it, we only pass it on."""
    mac = record.get("mac")
    return mac if isinstance(mac, bytes) else b""


def _too_many_files(kind: str, text: str) -> bool:
    """The job failed for want of a file descriptor (EMFILE), by its traceback's last line."""
    return kind == "OSError" and f"[Errno {errno.EMFILE}]" in text.strip().rpartition("\n")[2]


def _death_text(job: _Job, memory_hit: bool = False) -> tuple[str, str]:
    """Why a leader that wrote no record ended, named after the limit it hit if it did."""
    status = job.wait_status
    assert status is not None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU and job.limits.cpu_time is not None:
            return job.limits.cpu_text(), "LimitExceeded"
        memory = job.limits.memory
        if memory is not None and (memory_hit or job.maxrss * 1024 >= _AT_LIMIT * memory):
            return f"{job.limits.memory_text()} (killed by signal {_signame(sig)})", "MemoryError"
        return f"job process killed by signal {_signame(sig)} ({sig})", "ProcessKilled"
    return f"job process exited with code {os.waitstatus_to_exitcode(status)}", "ProcessExit"


def _anon_file() -> int:
    """An fd to a nameless temporary file (no directory entry to clean up): in memory where Linux has
    memfd_create, since a file made and dropped per job costs a millisecond on some disk filesystems."""
    try:
        return os.memfd_create("dispy-job", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        pass
    tmp = tempfile.gettempdir()
    try:
        return os.open(tmp, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(dir=tmp)
        os.unlink(name)
        return fd


def _read_all(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _pipes_first(event: tuple[selectors.SelectorKey, int]) -> bool:
    """Sort key: an output or channel pipe of a job or worker (False) before the rest (True)."""
    return not isinstance(event[0].data, PipeReader)


def _ignore(signum: int, frame: types.FrameType | None) -> None:
    """SIGCHLD handler: the wakeup fd does the work."""


def main() -> NoReturn:
    """Entry point: no new privileges from here on, the protocol off fds 0/1, then serves."""
    killtree.no_new_privileges()  # before any user code: no setuid program lends it another uid
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    logging.basicConfig(format=f"dispynode zygote {os.getpid()}: %(levelname)s %(message)s", stream=sys.stderr)
    sys.exit(Zygote(rfd, wfd).serve())


if __name__ == "__main__":
    # Run the imported module, not this `__main__` copy: user globals are
    # injected into `__main__`, and must not shadow the zygote's own names.
    from dispy_node.zygote import main as _main

    sys.modules["__main__"] = types.ModuleType("__main__")
    _main()
