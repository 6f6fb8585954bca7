"""A job's stdout or stderr: a pipe the zygote drains, keeping at most `limit` bytes.

A pipe rather than a file, so that a job flooding its output with gigabytes
fills no disk: beyond the limit the zygote reads and discards, counting, and
the kept text ends with a note saying where it was cut. The zygote reads only
when the pipe is readable, and never waits for end-of-file: a process that
escaped the job may hold the pipe open, and the job is over when its process
tree is gone, not when its pipes close.
"""

from __future__ import annotations

import os

_CHUNK = 1 << 20
#: chunks read per call: a flooding job must not keep the zygote from its other work
_BURST = 16


class PipeReader:
    """The zygote's non-blocking read end of one of a job's pipes, for its selector loop.

    `read` takes what is there (a burst at most: a flooding job must not keep
    the zygote from its other work) and hands each chunk to `_take`; `close`
    takes what is left, without waiting, and closes the pipe.
    """

    __slots__ = ("fd", "closed")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False

    def read(self) -> bool:
        """False at end of file (or when `_take` wants no more)."""
        for _ in range(_BURST):
            try:
                data = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                return True
            if not data or not self._take(data):
                return False
        return True

    def close(self) -> None:
        if not self.closed:
            self.read()
            os.close(self.fd)
            self.closed = True

    def _take(self, data: bytes) -> bool:
        raise NotImplementedError


class Capture(PipeReader):
    """A job's stdout or stderr and what of it is kept."""

    __slots__ = ("limit", "_parts", "_kept", "total")

    def __init__(self, fd: int, limit: int) -> None:
        super().__init__(fd)
        self.limit = limit
        self._parts: list[bytes] = []
        self._kept = 0
        self.total = 0

    def _take(self, data: bytes) -> bool:
        self.total += len(data)
        room = self.limit - self._kept
        if room > 0:
            kept = data[:room]
            self._parts.append(kept)
            self._kept += len(kept)
        return True

    def text(self) -> bytes:
        """What was kept, with a note where it was cut."""
        text = b"".join(self._parts)
        if self.total > self._kept:
            text += b"\n[dispynode: output cut at %d of %d bytes (--max-output)]\n" % (self._kept, self.total)
        return text
