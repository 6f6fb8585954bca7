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

from .fdio import READ_SIZE as _CHUNK

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
            if len(data) < _CHUNK:  # all the pipe held (a read drains it up to the count): no read that would
                return True  # fail to learn so, the loop wakes us again when more comes (or its end of file)
        return True

    def read_once(self) -> bool | None:
        """One read: True if it took something, None if there was nothing, False at end of file (or when
        `_take` wants no more)."""
        try:
            data = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return None
        return bool(data) and self._take(data)

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
    """A reused worker's stdout or stderr pipe (kept open across its jobs), cut into its jobs' outputs.

    At the end of a job followed at once by the next (handed ahead) the worker
    writes `marker` (random bytes only it and its zygote know) to the pipe,
    before it tells the end on its socket and starts its next job. So the pipe
    reads as: the current job's output, marker, the next job's, marker, ... (A
    worker that starts nothing at once writes no marker: the zygote takes what
    the pipe holds, all of the job's output, `end_job`; should a job handed
    ahead come after that end, the worker writes the marker before it starts
    it, `next_job`'s `late`.) What comes before the first marker not yet passed
    goes to `target` (the current job's capture; None between jobs: the
    worker's own messages, to the zygote's stderr, the node's log); what comes
    after it is held (`_held`, one list per job to come) until the zygote, told
    the job's end, passes the marker (`end_job`) and names the next job's
    capture (`next_job`). The worker need not wait for the zygote between jobs,
    whenever the zygote reads the pipe.
    """

    __slots__ = ("target", "marker", "_held", "_tail", "_due")

    def __init__(self, fd: int, marker: bytes) -> None:
        super().__init__(fd)
        self.target: Kept | None = None
        self.marker = marker
        self._held: list[list[bytes]] = []  # what came after each marker not passed yet, in order
        self._tail = b""  # the end of what came, held back while it may be the start of a marker
        self._due = False  # a marker is to come that ends no job's output (`next_job`'s `late`)

    def _take(self, data: bytes) -> bool:
        data, self._tail = self._tail + data, b""
        parts = data.split(self.marker)
        last = parts[-1]
        for n in range(min(len(last), len(self.marker) - 1), 0, -1):
            if self.marker.startswith(last[-n:]):
                parts[-1], self._tail = last[:-n], last[-n:]
                break
        self._give(parts[0])
        for part in parts[1:]:
            if self._due:  # what comes after it goes where what came before it went
                self._due = False
            else:
                self._held.append([])
            self._give(part)
        return True

    def _give(self, data: bytes) -> None:
        if not data:
            return
        if self._held:
            self._held[-1].append(data)
        else:
            self._to_target(data)

    def _to_target(self, data: bytes) -> None:
        if self.target is not None:
            self.target.take(data)
        else:
            try:
                os.write(2, data)
            except OSError:
                pass  # the node's log is gone: we are stopping

    def end_job(self, read: bool = True) -> None:
        """The current job ended (its worker said so): reads on to its marker, or, if the worker wrote none
        (it went on with no job at once), to the end of what the pipe holds or a marker it wrote since (a job
        handed ahead came after the end), so that `target` has all the job wrote, and goes no further. `read`
        False: the pipe is known to hold nothing."""
        while read and not self._held and not self.closed and self.read_once():
            pass
        if not self._held and self._tail:  # no marker came: what was held back is the job's too
            tail, self._tail = self._tail, b""
            self._give(tail)

    def next_job(self, target: Kept | None, late: bool = False) -> None:
        """Past the current job's marker: what came after it, and what comes, is `target`'s.

        `late`: the job ended without a marker (`end_job` took what the pipe held), and its worker writes one
        before it starts `target`'s job, which came after it told that end: if that marker was not read yet,
        it ends no job's output when it comes."""
        self.target = target
        if self._held:
            for data in self._held.pop(0):
                self._to_target(data)
        elif late:
            self._due = True
