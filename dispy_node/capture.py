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


class Kept:
    """What is kept of one job's stdout or stderr: `limit` bytes at most, and how much there was."""

    __slots__ = ("limit", "_parts", "_kept", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._kept = 0
        self.total = 0

    def take(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - self._kept
        if room > 0:
            kept = data[:room]
            self._parts.append(kept)
            self._kept += len(kept)

    def text(self) -> bytes:
        """What was kept, with a note where it was cut."""
        text = b"".join(self._parts)
        if self.total > self._kept:
            text += b"\n[dispynode: output cut at %d of %d bytes (--max-output)]\n" % (self._kept, self.total)
        return text


class Capture(PipeReader):
    """A forked job's own stdout or stderr pipe, read into `kept`."""

    __slots__ = ("kept",)

    def __init__(self, fd: int, kept: Kept) -> None:
        super().__init__(fd)
        self.kept = kept

    def _take(self, data: bytes) -> bool:
        self.kept.take(data)
        return True


class Relay(PipeReader):
    """A reused worker's stdout or stderr pipe (kept open across its jobs): what comes goes to the job it
    runs (`target`), and between jobs (the worker's own messages) to the zygote's stderr, the node's log."""

    __slots__ = ("target",)

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.target: Kept | None = None

    def _take(self, data: bytes) -> bool:
        if self.target is not None:
            self.target.take(data)
        else:
            try:
                os.write(2, data)
            except OSError:
                pass  # the node's log is gone: we are stopping
        return True
