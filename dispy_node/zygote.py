"""The zygote: loads one cluster's computation once, then forks a process per job.

Theory of operation. The daemon runs `python -m dispy_node.zygote` with pipes
on stdin/stdout (`zygote_protocol`). The first message is `Load`: the zygote
makes the cluster directory, writes the computation's files and modules there,
makes it the working directory and the head of `sys.path`, unpickles the code,
runs `setup()` and answers `Ready` or `SetupFailed`. Every `Run` then forks:
the child starts its own session (so a kill reaches its whole process group),
sends fds 1 and 2 to anonymous temporary files, runs the function and writes a
msgpack record to a third file before `os._exit`. It never returns into the
loop below. Globals set by `setup` are inherited by every job and nothing a
job does reaches the next one.

The loop is a plain `selectors` loop (no asyncio: a forked child must not
inherit a running event loop). It watches the command pipe and the SIGCHLD
wakeup pipe, reaps children with `waitpid(-1, WNOHANG)`, reads their files and
sends `Done`; the only timers are the SIGKILLs due `kill_grace` seconds after
a SIGTERM. Messages produced during one turn go out in one write.

The protocol pipe is moved off fds 0 and 1 at start: anything user code
prints in `setup` or `cleanup` goes to stderr instead of corrupting it.
"""

from __future__ import annotations

import heapq
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from dispy_wire.framing import FrameDecoder
from dispy_wire.payload import CodeObjects, dumps, loads, unpack_computation
from dispy_wire.status import JobStatus

from . import zygote_protocol as zp

logger = logging.getLogger(__name__)

#: a pickled result above this is refused: the wire's frames stop at 64 MiB
MAX_RESULT = 32 * 1024 * 1024
#: each of stdout and stderr is cut to this many bytes
MAX_OUTPUT = 4 * 1024 * 1024
#: exit code of a job process that failed inside our own code, not the job's
CHILD_INTERNAL_ERROR = 70


@dataclass(slots=True)
class _Job:
    job_id: int
    pid: int
    out: int  # fds of the anonymous files for stdout, stderr and the result record
    err: int
    res: int
    forked: float
    cancelled: bool = False


class _Code:
    """What a job process needs from the loaded computation."""

    def __init__(self, objs: CodeObjects, kind: str) -> None:
        self.kind = kind
        self.func = objs.func
        self.program = objs.program
        self.setup = objs.setup
        self.cleanup = objs.cleanup


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
        self._jobs: dict[int, _Job] = {}  # by pid
        self._pids: dict[int, int] = {}  # job_id -> pid
        self._timers: list[tuple[float, int, int]] = []  # (deadline, pid, job_id): SIGKILL the group
        self._grace = 5.0
        self._code: _Code | None = None
        self._unloading = False
        self._own_fds: list[int] = [rfd, wfd]

    # -- life cycle ----------------------------------------------------------

    def serve(self) -> int:
        """Loads the computation, then runs jobs; returns the exit status."""
        load = self._read_load()
        if load is None:
            return 0
        logging.getLogger().setLevel(load.log_level)
        error = self._load(load)
        if error is not None:
            self._send(zp.SetupFailed(error))
            self._flush()
            return 1
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
            data = os.read(self._rfd, 1 << 20)
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
        sel = selectors.DefaultSelector()
        sel.register(self._rfd, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        self._own_fds += [wake_r, wake_w]
        if hasattr(sel, "fileno"):
            self._own_fds.append(sel.fileno())
        # frames that arrived together with Load
        for frame in self._decoder.frames():
            self._handle(zp.decode(frame))
        while True:
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            for key, _ in sel.select(timeout):
                if key.fd == wake_r:
                    _drain(wake_r)
                    self._reap()
                elif not self._receive():
                    self._stop_now()
                    return 0
            self._fire_timers(time.monotonic())
            if self._unloading and not self._jobs:
                self._fire_timers(float("inf"))
                self._run_cleanup()
                self._send(zp.Unloaded())
                self._flush()
                return 0
            self._flush()

    def _receive(self) -> bool:
        """Reads commands; False when the daemon closed the pipe."""
        try:
            data = os.read(self._rfd, 1 << 20)
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
            self._start(msg.job_id, msg.payload)
        elif isinstance(msg, zp.Kill):
            self._kill(msg.job_id)
        elif isinstance(msg, zp.Unload):
            self._unloading = True
            for job_id in list(self._pids):
                self._kill(job_id)
        else:
            logger.error("zygote: unexpected %s from the daemon", type(msg).__name__)

    def _stop_now(self) -> None:
        """The daemon is gone or gave up on us: no job outlives the zygote."""
        for pid in self._jobs:
            _killpg(pid, signal.SIGKILL)
        for pid in list(self._jobs):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._fire_timers(float("inf"))

    # -- loading -------------------------------------------------------------

    def _load(self, load: zp.Load) -> str | None:
        """Prepares the cluster; returns why it failed, or None."""
        self._grace = load.kill_grace
        try:
            comp = unpack_computation(load.computation)
            _make_cluster_dir(load.cluster_dir)
            for name, data, mode in comp.files:
                _write_file(load.cluster_dir, name, data, (mode & 0o777) or 0o600)
            for name, source in comp.modules:
                _write_file(load.cluster_dir, name, source, 0o600)
            sys.path.insert(0, load.cluster_dir)
            os.chdir(load.cluster_dir)
            import cloudpickle  # noqa: F401  (imported once here, not in every job)

            objs = loads(comp.objects)
            if not isinstance(objs, CodeObjects):
                return f"computation objects are a {type(objs).__name__}, not CodeObjects"
            code = _Code(objs, comp.kind)
            if code.kind == "function" and not callable(code.func):
                return "computation has no callable function"
            if code.kind == "program" and not code.program:
                return "computation has no program to run"
            if code.kind not in ("function", "program"):
                return f"unknown computation kind {code.kind!r}"
            _inject_globals(objs)
        except (ValueError, OSError) as exc:
            return str(exc)
        except Exception:  # noqa: BLE001  (unpickling runs arbitrary user code)
            return "cannot load the computation:\n" + traceback.format_exc()
        if code.setup is not None:
            try:
                value = code.setup()
            except (Exception, SystemExit):  # noqa: BLE001  (user code: any failure is a setup failure)
                return "setup failed:\n" + traceback.format_exc()
            if value not in (0, None):
                return f"setup returned {value!r} (0 or None means success)"
        sys.stdout.flush()
        sys.stderr.flush()
        self._code = code
        return None

    def _run_cleanup(self) -> None:
        assert self._code is not None
        if callable(self._code.cleanup):
            try:
                self._code.cleanup()
            except (Exception, SystemExit):  # noqa: BLE001  (user code: log it and unload anyway)
                logger.warning("cluster cleanup raised:\n%s", traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()

    # -- jobs ----------------------------------------------------------------

    def _start(self, job_id: int, payload: bytes) -> None:
        if job_id in self._pids:
            logger.warning("job %d is already running; repeated Run ignored", job_id)
            return
        now = time.time()
        fds: list[int] = []
        try:
            fds = [_anon_file() for _ in range(3)]
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._send(
                zp.Done(job_id, JobStatus.TERMINATED, None, b"", b"", f"cannot fork: {exc}", "OSError", now, now)
            )
            return
        if pid == 0:
            self._child(payload, *fds)
        self._jobs[pid] = _Job(job_id, pid, fds[0], fds[1], fds[2], now)
        self._pids[job_id] = pid
        self._send(zp.Started(job_id, pid))

    def _child(self, payload: bytes, out: int, err: int, res: int) -> NoReturn:
        """The job process: runs the job, leaves by os._exit whatever happens."""
        code = 0
        try:
            started = time.time()
            os.setsid()
            os.umask(0o077)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.dup2(out, 1)
            os.dup2(err, 2)
            keep = {res}
            for fd in self._own_fds + [out, err] + [fd for j in self._jobs.values() for fd in (j.out, j.err, j.res)]:
                if fd not in keep:
                    _close(fd)
            assert self._code is not None
            record = _execute(self._code, payload, started)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            _write_all(res, msgpack.packb(record, use_bin_type=True))
        except BaseException:  # noqa: BLE001  (the child must reach os._exit below)
            code = CHILD_INTERNAL_ERROR
            try:
                traceback.print_exc()
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        finally:
            os._exit(code)

    def _kill(self, job_id: int) -> None:
        pid = self._pids.get(job_id)
        if pid is None:
            return  # already ended: its Done is sent or on its way
        job = self._jobs[pid]
        if job.cancelled:
            return
        job.cancelled = True
        _killpg(pid, signal.SIGTERM)
        heapq.heappush(self._timers, (time.monotonic() + self._grace, pid, job_id))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, pid, job_id = heapq.heappop(self._timers)
            job = self._jobs.get(pid)
            # the leader's pid is only ours to signal while it is that job's (or nobody's)
            if job is None or job.job_id == job_id:
                _killpg(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self._jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self._jobs.pop(pid, None)
            if job is not None:
                del self._pids[job.job_id]
                self._send(self._finish(job, status))

    def _finish(self, job: _Job, status: int) -> zp.Done:
        ended = time.time()
        if not job.cancelled:
            # what the job left running in its process group ends with it
            _killpg(job.pid, signal.SIGKILL)
        stdout, stderr = _read_output(job.out), _read_output(job.err)
        raw = _read_all(job.res)
        for fd in (job.out, job.err, job.res):
            os.close(fd)
        rec = _parse_record(raw)
        start, end = rec.get("start_time", job.forked), rec.get("end_time", ended)
        if job.cancelled:
            return zp.Done(job.job_id, JobStatus.CANCELLED, None, stdout, stderr, "cancelled", "", start, end)
        if rec:
            return zp.Done(
                job.job_id, rec["status"], rec.get("result"), stdout, stderr,
                rec.get("exception", ""), rec.get("exception_type", ""), start, end,
            )  # fmt: skip
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            why, kind = f"job process killed by signal {_signame(sig)} ({sig})", "ProcessKilled"
        else:
            why, kind = f"job process exited with code {os.waitstatus_to_exitcode(status)}", "ProcessExit"
        return zp.Done(job.job_id, JobStatus.TERMINATED, None, stdout, stderr, why, kind, start, end)

    # -- output --------------------------------------------------------------

    def _send(self, msg: Any) -> None:
        self._out.append(zp.encode(msg))

    def _flush(self) -> None:
        if self._out:
            _write_all(self._wfd, b"".join(self._out))
            self._out.clear()


def _execute(code: _Code, payload: bytes, started: float) -> dict[str, Any]:
    """Runs one job in the job process; returns its result record."""
    try:
        args, kwargs = loads(payload)
        if code.kind == "program":
            assert code.program is not None  # checked at load

            value: Any = subprocess.call([*code.program, *map(str, args)])
        else:
            value = code.func(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001  (a job's SystemExit is its failure, not ours)
        return _failure(traceback.format_exc(), type(exc).__name__, started)
    try:
        result = dumps(value)
    except Exception as exc:  # noqa: BLE001  (user objects' __reduce__ may raise anything)
        return _failure(f"cannot pickle the result ({type(value).__name__}): {exc}", type(exc).__name__, started)
    if len(result) > MAX_RESULT:
        return _failure(
            f"result of {len(result)} bytes exceeds the node's limit of {MAX_RESULT} bytes", "ResultTooLarge", started
        )
    return {"status": int(JobStatus.FINISHED), "result": result, "start_time": started, "end_time": time.time()}


def _parse_record(raw: bytes) -> dict[str, Any]:
    """The job's record, or {} if it wrote none (or died while writing it)."""
    try:
        rec = msgpack.unpackb(raw, raw=False) if raw else {}
    except (ValueError, msgpack.UnpackException):
        return {}
    return rec if isinstance(rec, dict) and "status" in rec else {}


def _failure(text: str, kind: str, started: float) -> dict[str, Any]:
    return {
        "status": int(JobStatus.TERMINATED),
        "exception": text,
        "exception_type": kind,
        "start_time": started,
        "end_time": time.time(),
    }


def _inject_globals(objs: CodeObjects) -> None:
    """Depends functions and classes become globals of the computation (as in dispy)."""
    main = sys.modules["__main__"].__dict__
    targets = [main]
    for fn in (objs.func, objs.setup, objs.cleanup):
        g = getattr(fn, "__globals__", None)
        if isinstance(g, dict) and all(g is not t for t in targets):
            targets.append(g)
    for target in targets:
        target.update(objs.globals)


def _make_cluster_dir(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)  # a previous session's leftovers
    os.makedirs(path, mode=0o700)


def _write_file(directory: str, name: str, data: bytes, mode: int) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"bad dependency file name {name!r}: a plain base name is required")
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _anon_file() -> int:
    """An fd to a nameless temporary file (no directory entry to clean up)."""
    tmp = tempfile.gettempdir()
    try:
        return os.open(tmp, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(dir=tmp)
        os.unlink(name)
        return fd


def _read_all(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _read_output(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size, MAX_OUTPUT), 0)
    if size > MAX_OUTPUT:
        data += b"\n[dispynode: output cut at %d of %d bytes]\n" % (MAX_OUTPUT, size)
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


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


def _ignore(signum: int, frame: types.FrameType | None) -> None:
    """SIGCHLD handler: the wakeup fd does the work."""


def main() -> NoReturn:
    """Entry point: moves the protocol off fds 0/1, then serves."""
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
