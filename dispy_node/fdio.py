"""Whole reads and writes on raw file descriptors, for the node's processes.

Raw descriptors rather than file objects where a process reads or writes
the same kind of file often (the zygote reads /proc and control-group files
as each job ends) or holds only a descriptor (a pipe handed over, a job's
record file): no buffer object made and dropped per call. One place for the
loops, which a short read or write makes necessary.
"""

from __future__ import annotations

import os

#: bytes per read of a pipe or socket: a read allocates its whole count first, and a count above malloc's mmap
#: threshold (128 KiB) maps and unmaps memory for each read, even one that returns 16 bytes; a pipe holds
#: 64 KiB by default, so a larger count would rarely take more at once anyway
READ_SIZE = 1 << 16


def read_to_end(fd: int) -> bytes:
    """Everything `fd` gives until its end of file (a blocking descriptor; the caller closes it).

    Raises:
        OSError: as `os.read`.
    """
    parts = []
    while chunk := os.read(fd, READ_SIZE):
        parts.append(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """Writes all of `data` to `fd` (a blocking descriptor), however many writes it takes.

    Raises:
        OSError: as `os.write`.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
