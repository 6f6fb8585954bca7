"""The job process: what runs between the zygote's `fork()` and `os._exit`.

Theory of operation. The child first makes itself a job: its own session and
process group (one `killpg` reaches everything it starts), `umask 077`, the
job mark in its environment (`killtree`), stdout/stderr on the pipes the
zygote reads, every other inherited descriptor closed, its own working
directory, and its limits. Only then does user code run. The outcome is a
msgpack record written to an anonymous file the zygote reads after the
process ends, its pickled result MAC'd under the cluster's result key
(`dispy_wire.result_mac`: the client unpickles nothing without it); a
process that dies without writing one is described by its wait status
instead. Whatever happens, the child leaves by `os._exit`: it must
never return into the zygote's loop.

Results are pickled with the standard `pickle` first (a C fast path that is
enough for most values) and with cloudpickle only when that fails (functions
and classes defined in `__main__` must travel by value).
"""

from __future__ import annotations

import _signal
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, NoReturn

import msgpack

from dispy_wire import result_mac
from dispy_wire.payload import dumps, loads
from dispy_wire.status import JobStatus

from . import cgroups, channel, fdio, killtree, limits, workdir

#: one job's result message must fit in one of the wire's frames (64 MiB): its
#: pickled result, its stdout and stderr (each up to --max-output) and its exception text
MAX_RESULT = 32 * 1024 * 1024
MAX_OUTPUT = 12 * 1024 * 1024
MAX_EXCEPTION = 1024 * 1024
#: exit code of a job process that failed inside our own code, not the job's
CHILD_INTERNAL_ERROR = 70
_ALL_FDS = 1 << 20


@dataclass(slots=True)
class Code:
    """What a job process needs from the loaded computation."""

    kind: str  # "function" or "program"
    func: Any
    program: list[str] | None
    cluster_dir: str
    cluster_id: str
    result_key: bytes  # the cluster's key for `result_mac` (b"" in a spawned job: it comes in `Start`)
    groups: cgroups.JobGroups | None = None  # where jobs make their control groups, if the node can


@dataclass(slots=True)
class Start:
    """One job, as the zygote hands it to the new process."""

    job_id: int
    payload: bytes
    limits: limits.Limits
    files: list[Any]  # [name, bytes, mode] of this job's own files (`dispy_job_depends`)
    mark: str
    out: int  # write ends of the stdout and stderr pipes
    err: int
    res: int  # the anonymous file for the record
    channel: int  # write end of the pipe for provisional results and files
    group: str  # name of the control group the daemon made for it ("" for none)
    result_key: bytes  # the cluster's key: the job MACs its result, provisional results and files with it


def pack_start(start: Start) -> bytes:
    """A Start for a process that did not fork with it (a spawned job, a spare, a worker): the fds in it
    are numbers in that process."""
    fields = [start.job_id, start.payload, list(start.limits), start.files, start.mark]
    fields += [start.out, start.err, start.res, start.channel, start.group, start.result_key]
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def unpack_start(data: bytes) -> Start:
    job_id, payload, lims, files, mark, out, err, res, chan, group, key = msgpack.unpackb(data, raw=False)
    return Start(job_id, payload, limits.Limits(*lims), files, mark, out, err, res, chan, group, key)


def run(code: Code, start: Start) -> NoReturn:
    """The job process's whole life."""
    status = 0
    try:
        started = time.time()
        if os.getsid(0) != os.getpid():  # a spawned job is a session leader already
            os.setsid()
        _become_job_process(start.out, start.err, (start.res, start.channel))
        _run(code, start, started)
    except BaseException:  # noqa: BLE001  (the child must reach os._exit below)
        status = _internal_error()
    finally:
        os._exit(status)


def run_spare(code: Code, out: int, err: int, res: int, chan: int, go: int) -> NoReturn:
    """A process forked before its job came (`spare`): a job process at once, all but the job's own parts,
    which it then reads from `go` to its end (`pack_start`). Nothing there (let go, or its zygote died): it exits."""
    status = 0
    try:
        os.setsid()
        _become_job_process(out, err, (res, chan, go))
        data = fdio.read_to_end(go)
        if data:
            os.close(go)
            started = time.time()
            _run(code, unpack_start(data), started)
    except BaseException:  # noqa: BLE001  (the child must reach os._exit below)
        status = _internal_error()
    finally:
        os._exit(status)


def _become_job_process(out: int, err: int, keep: tuple[int, ...]) -> None:
    """umask 077, default signals, stdout and stderr on the job's pipes, no other descriptor than `keep`."""
    os.umask(0o077)
    reset_signals()
    os.dup2(out, 1)
    os.dup2(err, 2)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _ALL_FDS)


def _run(code: Code, start: Start, started: float) -> None:
    """The job's own part: its mark, its channel, then the job."""
    killtree.write_mark(start.mark)
    channel.attach(start.channel, code.cluster_id, start.job_id, start.result_key)
    conclude(code, start, run_job(code, start, started, _enter))


def _internal_error() -> int:
    """Our own code failed in the job process: said on its stderr; the exit status that tells so."""
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except (OSError, ValueError, MemoryError):
        pass
    return CHILD_INTERNAL_ERROR


def reset_signals() -> None:
    """The zygote's signal handling undone: a job dies of what kills a plain process.

    Through `_signal`, the C functions under `signal`'s enum wrappers: those make and look up enum
    members, touching (and so copying, in a fresh fork) pages of memory for nothing.
    """
    _signal.set_wakeup_fd(-1)
    for sig in _DEFAULT_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(signal.SIGINT, _signal.default_int_handler)


_DEFAULT_SIGNALS = tuple(int(s) for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE, signal.SIGXCPU, signal.SIGXFSZ))


def run_job(code: Code, start: Start, started: float, enter: Callable[[Code, Start], None]) -> dict[str, Any]:
    """`enter`s the job (its group, directory, files, limits), runs it; returns its record."""
    try:
        enter(code, start)
    except (OSError, ValueError) as exc:  # the job must not run without its group, directory or limits
        return _failure(f"the node could not start the job: {exc}", type(exc).__name__, started)
    return _execute(code, start.payload, started)


def conclude(code: Code, start: Start, record: dict[str, Any]) -> None:
    """Seals the record and writes it for the zygote."""
    fdio.write_all(start.res, msgpack.packb(seal(code, start, record), use_bin_type=True))


def seal(code: Code, start: Start, record: dict[str, Any]) -> dict[str, Any]:
    """MACs the result and flushes the job's output (all of it is in its pipes before its end is told)."""
    if "result" in record:
        kind, status = result_mac.Kind.RESULT, record["status"]
        record["mac"] = result_mac.sign(start.result_key, kind, code.cluster_id, start.job_id, status, record["result"])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return record


def _enter(code: Code, start: Start) -> None:
    """Into the job's control group and directory, with its files and limits, before user code runs."""
    if code.groups is not None and start.group:
        cgroups.join(code.groups, start.group)
    workdir.enter_job_dir(code.cluster_dir, start.job_id)
    for name, data, mode in start.files:
        workdir.write_file(".", name, data, mode)
    limits.apply(start.limits)


def _execute(code: Code, payload: bytes, started: float) -> dict[str, Any]:
    """Runs the job; returns its result record."""
    try:
        args, kwargs, *more = loads(payload)
        if more:  # this job's own `dispy_job_depends` code: globals of the computation, seeing its globals
            from .loading import code_globals  # (loading imports this module)

            targets = code_globals(code.func)
            for obj in more[0].values():  # dispy runs it in the computation's namespace: names resolve alike
                own = getattr(obj, "__globals__", None)
                if isinstance(own, dict) and all(own is not t for t in targets):
                    for name, shared in targets[-1].items():
                        own.setdefault(name, shared)
            for target in targets:
                target.update(more[0])
        if code.kind == "program":
            assert code.program is not None  # checked at load
            value: Any = subprocess.call([*code.program, *map(str, args)])
        else:
            value = code.func(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001  (a job's SystemExit is its failure, not ours)
        try:
            text = traceback.format_exc()
        except MemoryError:  # the frames still hold what filled the address space
            text = f"{type(exc).__name__}: {exc}"
        return _failure(text, type(exc).__name__, started)
    try:
        result = pickle_result(value)
    except Exception as exc:  # noqa: BLE001  (user objects' __reduce__ may raise anything)
        return _failure(f"cannot pickle the result ({type(value).__name__}): {exc}", type(exc).__name__, started)
    if len(result) > MAX_RESULT:
        return _failure(
            f"result of {len(result)} bytes exceeds the node's limit of {MAX_RESULT} bytes", "ResultTooLarge", started
        )
    return {"status": int(JobStatus.FINISHED), "result": result, "start_time": started, "end_time": time.time()}


def pickle_result(value: Any) -> bytes:
    """Plain pickle when it can (much cheaper), cloudpickle for what only it can do."""
    try:
        return pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        return dumps(value)


def cut_text(text: str, limit: int = MAX_EXCEPTION) -> str:
    """`text` within `limit` bytes of UTF-8: its start and, what says most of a traceback, its end."""
    data = text.encode(errors="replace")  # lone surrogates (a file name no UTF-8) become "?": msgpack needs UTF-8
    if len(data) <= limit:
        return data.decode()
    head, tail = data[: limit // 16], data[-(limit - limit // 16 - 100) :]
    cut = len(data) - len(head) - len(tail)
    return f"{head.decode(errors='ignore')}\n[dispynode: {cut} bytes cut]\n{tail.decode(errors='ignore')}"


def _failure(text: str, kind: str, started: float) -> dict[str, Any]:
    return {
        "status": int(JobStatus.TERMINATED),
        "exception": cut_text(text),
        "exception_type": kind,
        "start_time": started,
        "end_time": time.time(),
    }


def parse_record(raw: bytes) -> dict[str, Any]:
    """The job's record, or {} if it wrote none (or died while writing it)."""
    try:
        rec = msgpack.unpackb(raw, raw=False) if raw else {}
    except (ValueError, msgpack.UnpackException):
        return {}
    return valid_record(rec)


def valid_record(rec: Any) -> dict[str, Any]:
    """`rec` if it is a job's record, else {} (it comes from the job's process: untrusted)."""
    return rec if isinstance(rec, dict) and "status" in rec else {}

