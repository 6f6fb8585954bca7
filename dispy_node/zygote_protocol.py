"""Messages between the daemon and a zygote, over the zygote's stdin/stdout.

Same framing as the wire (`dispy_wire.framing`, without the preamble); a
message is the msgpack array `[tag, field, ...]` of a NamedTuple below.
Decoding checks every field's type: the zygote runs the user's `setup`, and
its jobs run as the same account and can reach its pipe (/proc/PID/fd), so
what the daemon reads here is untrusted input; the daemon also bounds sizes
(runner.py) and checks a pid before it kills it.

    daemon → zygote: Load (first, once), Workers (then, if at all), Run, Kill,
                     AddFile, Unload; in worker isolation also RunNext (a job
                     to start where one ends), StartNext, Withdraw
    zygote → daemon: Ready | SetupFailed (answer to Load), Started, Done,
                     Provisional, File (from a running job), FileAdded,
                     Withdrawn, Unloaded (then exits)

Closing the zygote's stdin means "stop now": it kills its jobs' trees
(SIGTERM, the grace, SIGKILL) and exits without reporting them or running
`cleanup`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from dispy_wire.framing import encode_frame
from dispy_wire.schema import checker_for

#: daemon → zygote frames carry whole computations (up to the wire's limit, and more with `depends`)
MAX_FRAME = 1 << 30
#: zygote → daemon frames are untrusted and each becomes one wire message (64 MiB at most)
MAX_REPLY = 64 * 1024 * 1024


class Load(NamedTuple):
    cluster_id: str
    cluster_dir: str  # made (empty, 0700, ours) by the daemon; laid out by the zygote (`workdir`)
    computation: bytes  # the packed `dispy_wire.payload.Computation`
    kill_grace: float  # seconds between SIGTERM and SIGKILL of a killed job
    log_level: int
    max_output: int  # bytes kept of each of a job's stdout and stderr
    keep_files: bool  # leave each job's directory behind when it ends
    node_name: str  # given to the computation as the global `dispy_node_name`
    node_ip_addr: str  # ... and `dispy_node_ip_addr`, as in dispy
    cgroups: dict[str, str]  # controller -> where jobs make their groups ({}: no cgroups)
    spawn: bool  # start each job as a new interpreter instead of a fork (see loading.py)


class Run(NamedTuple):
    job_id: int
    payload: bytes  # dumps((args, kwargs))
    limits: list[Any]  # the fields of `limits.Limits`
    files: list[Any]  # [[name, bytes, mode], ...]: the job's own files, written into its directory
    group: str  # its control group, made by the daemon ("" for none)


class RunNext(NamedTuple):
    """A job to start in the place of the next job of this zygote that ends after it arrives, not before:
    the daemon sends it while every CPU it offers is busy, so that a worker finds its next job at hand
    (no round trip through the daemon) and never more jobs run at once than before. The same fields as Run."""

    job_id: int
    payload: bytes
    limits: list[Any]
    files: list[Any]
    group: str


class StartNext(NamedTuple):
    """Start these RunNext jobs now, if they have not started (the daemon has CPUs free for them)."""

    job_ids: list[int]


class Withdraw(NamedTuple):
    """Give back these RunNext jobs if they have not started (the daemon offers fewer CPUs now)."""

    job_ids: list[int]


class Kill(NamedTuple):
    """Kill the job's tree; it ends with `status` (CANCELLED, TERMINATED or ABANDONED) and `reason`."""

    job_id: int
    status: int
    reason: str


class AddFile(NamedTuple):
    """A file for the cluster's directory (`send_file`); jobs started after it see it."""

    ref: int
    name: str
    data: bytes
    mode: int


class Workers(NamedTuple):
    """Run this cluster's jobs in reused workers (`worker.py`); sent right after Load, if at all."""

    max_jobs: int  # a worker is retired after this many jobs
    max_growth: int  # ... or once its peak RSS grew by this many bytes


class Unload(NamedTuple):
    """Cancel every job, run `cleanup`, answer Unloaded and exit."""


class Ready(NamedTuple):
    """Loaded and `setup` succeeded: Run away."""


class SetupFailed(NamedTuple):
    message: str


class Started(NamedTuple):
    """The job's process exists: the daemon keeps its pid (= process group) to
    kill it should the zygote die."""

    job_id: int
    pid: int


class Done(NamedTuple):
    """The job's whole process tree is gone; the fields of `dispy_wire.messages.JobResult`."""

    job_id: int
    status: int
    result: bytes | None
    stdout: bytes
    stderr: bytes
    exception: str
    exception_type: str
    start_time: float
    end_time: float
    mac: bytes = b""  # the job process's MAC of `result` (`dispy_wire.result_mac`); b"" when it made none
    cpu_time: float = 0.0  # user + system CPU seconds of the job process and the children it waited for
    max_rss: int = 0  # bytes: the largest resident set of the job process (or of a child it waited for)


class Provisional(NamedTuple):
    """A result the running job sent ahead (`dispy_provisional_result`)."""

    job_id: int
    result: bytes
    mac: bytes  # the job process's, passed on untouched


class File(NamedTuple):
    """A file the running job sent (`dispy_send_file`)."""

    job_id: int
    name: str
    data: bytes
    mode: int
    mac: bytes  # the job process's, passed on untouched


class FileAdded(NamedTuple):
    ref: int
    ok: bool
    message: str


class Withdrawn(NamedTuple):
    """The RunNext jobs of a Withdraw that had not started: they never will here, and no Done follows."""

    job_ids: list[int]


class Unloaded(NamedTuple):
    """Jobs are reported and `cleanup` ran; the zygote exits next."""


Message = (
    Load | Workers | Run | RunNext | StartNext | Withdraw | Kill | AddFile | Unload
    | Ready | SetupFailed | Started | Provisional | File | FileAdded | Done | Withdrawn | Unloaded
)

_TAGS: dict[type[Any], int] = {
    Load: 1, Run: 2, Kill: 3, Unload: 4, AddFile: 5, Workers: 6, RunNext: 7, Withdraw: 8, StartNext: 9, FileAdded: 17, Withdrawn: 18,
    Ready: 10, SetupFailed: 11, Started: 12, Done: 13, Unloaded: 14, Provisional: 15, File: 16,
}  # fmt: skip
_CHECKERS = {tag: checker_for(cls) for cls, tag in _TAGS.items()}


def encode(msg: Message) -> bytes:
    """Returns the frame (header included) for one message."""
    return encode_frame(msgpack.packb([_TAGS[type(msg)], *msg], use_bin_type=True))


def decode(body: bytes) -> Message:
    """Parses one frame body into its message.

    Raises:
        ValueError: not a message of this protocol.
    """
    obj = msgpack.unpackb(body, raw=False)
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int) or obj[0] not in _CHECKERS:
        raise ValueError(f"not a zygote message: {body[:40]!r}")
    try:
        msg: Message = _CHECKERS[obj[0]](obj[1:])
    except TypeError as exc:
        raise ValueError(f"malformed zygote message: {exc}") from None
    return msg
