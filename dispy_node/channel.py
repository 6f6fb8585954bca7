"""A running job's messages to its client: provisional results and files.

Inside the job process, `dispy_provisional_result(result)` and
`dispy_send_file(path)` (globals of the computation, as in dispy) write
length-prefixed msgpack records to a pipe the zygote reads, like the job's
stdout. The zygote passes each record on to the daemon at once, and drains
the pipe before it reports the job's end, so a file or provisional result
always reaches the client before the job's final result. Each record
carries the job process's MAC under the cluster's result key
(`dispy_wire.result_mac`), which the zygote and the daemon pass on: another
process that writes on this pipe cannot make the client act on its bytes.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from dispy_wire import result_mac
from dispy_wire.errors import RemoteWireError
from dispy_wire.framing import FrameDecoder, encode_frame
from dispy_wire.status import JobStatus

from . import fdio
from .capture import PipeReader

logger = logging.getLogger(__name__)

#: largest record a job may send; the wire's frames stop at 64 MiB
MAX_RECORD = 32 * 1024 * 1024

# -- in the job process ----------------------------------------------------------

_fd = -1  # the write end, set by the job process before user code runs
_cluster_id, _job_id, _key = "", 0, b""  # what the records are MAC'd with
#: whole frames only: a job's threads may send at once, and a reused worker writes its jobs' ends on the same socket
_lock = threading.Lock()


def attach(fd: int, cluster_id: str, job_id: int, result_key: bytes) -> None:
    """Records go to `fd` from now on (-1: nowhere; a reused worker detaches between jobs)."""
    global _fd, _cluster_id, _job_id, _key
    with _lock:
        _fd, _cluster_id, _job_id, _key = fd, cluster_id, job_id, result_key


def provisional_result(result: Any, timeout: float | None = None) -> int:
    """`dispy_provisional_result`: sends `result` to the client now; the job goes on.

    Returns 0, or -1 if it cannot be sent (not pickleable, too large, not in a job).
    """
    from .job_process import pickle_result

    try:
        data = pickle_result(result)
    except Exception:  # noqa: BLE001  (user objects' __reduce__ may raise anything)
        return -1
    status = int(JobStatus.PROVISIONAL_RESULT)
    mac = result_mac.sign(_key, result_mac.Kind.PROVISIONAL, _cluster_id, _job_id, status, data)
    return _tell({"kind": "provisional", "result": data, "mac": mac})


def send_file(path: str, timeout: float | None = None) -> int:
    """`dispy_send_file`: sends a file to the client, which saves it under its base name in `dest_path`.

    Returns 0, or -1 if it cannot be read or is too large.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD + 1)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return -1
    name = os.path.basename(path)
    mac = result_mac.sign(_key, result_mac.Kind.FILE, _cluster_id, _job_id, 0, data, name, mode)
    return _tell({"kind": "file", "name": name, "data": data, "mode": mode, "mac": mac})


def _tell(record: dict[str, Any]) -> int:
    body: bytes = msgpack.packb(record, use_bin_type=True)
    if len(body) > MAX_RECORD:
        return -1
    with _lock:
        if _fd < 0:
            return -1
        write_frame(_fd, body)
    return 0


def write_frame(fd: int, body: bytes) -> None:
    """One length-prefixed frame on `fd`.

    Other callers than `_tell` (a worker's end of a job) write once the job is
    detached: `attach` waited for any frame a job's thread was writing, and
    no new one starts.
    """
    fdio.write_all(fd, encode_frame(body))


# -- in the zygote ----------------------------------------------------------------


class Channel(PipeReader):
    """The zygote's read end of one job's channel: whole records go to `emit` as they come."""

    __slots__ = ("_decoder", "_emit")

    def __init__(self, fd: int, emit: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(fd)
        self._decoder = FrameDecoder(max_size=MAX_RECORD, expect_preamble=False)
        self._emit = emit

    def _take(self, data: bytes) -> bool:
        self._decoder.feed(data)
        try:
            for frame in self._decoder.frames():
                record = msgpack.unpackb(frame, raw=False)
                if isinstance(record, dict):
                    self._emit(record)
        except (RemoteWireError, ValueError, msgpack.UnpackException) as exc:
            logger.warning("a job wrote garbage to its channel (%s); ignoring the rest", exc)
            return False
        return True
