"""A job process forked before its job comes (fork isolation): the fork off the job's path.

Theory of operation. When a loop turn is over, the zygote forks one process
ahead (`fork`). It makes itself a job process at once (its own session,
umask, default signals, stdout and stderr on its pipes, no other descriptor:
`job_process.run_spare`) and waits on a pipe of its own. When a Run comes,
the zygote writes the job's `Start` on that pipe and closes it (`hand`); the
process reads it to its end and runs the job as a process forked for it
would. Both are forks of the same zygote, which runs no user code between
`setup` and `cleanup`, so a job gets the same process whenever it was
forked; the job's own parts (its mark, control group, directory, limits)
are all set after it came, and its clocks (wall-clock limit, start time)
start then. A spare the zygote lets go (`discard`: unload, stop), or whose
zygote died, reads an empty pipe and exits. The zygote never waits on a
spare: a Start that does not fit in the pipe at once goes to a process
forked for it instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import job_process


@dataclass(slots=True)
class Spare:
    """A forked process waiting for its job, and the zygote's ends of its pipes and record file."""

    pid: int
    go: int  # write end of the pipe its job comes on (-1 once handed)
    out: int  # read ends of its stdout and stderr pipes
    err: int
    res: int  # the anonymous file for its record
    channel: int  # read end of its channel
    child_fds: tuple[int, int, int, int]  # its stdout, stderr, record and channel fds, as numbered in it

    def hand(self, start: job_process.Start) -> bool:
        """Gives it its job (`start` with its `child_fds`); False if it cannot take it now (the job does
        not fit in the pipe, the process is gone): the caller then discards it."""
        data = job_process.pack_start(start)
        try:
            if os.write(self.go, data) < len(data):
                return False
        except OSError:  # full (BlockingIOError), or no reader (BrokenPipeError)
            return False
        os.close(self.go)  # its end of file: the whole Start is there
        self.go = -1
        return True

    def discard(self) -> None:
        """Lets it go, unhanded: it reads the end of its pipe and exits (reaped as any child)."""
        for fd in (self.go, self.out, self.err, self.res, self.channel):
            if fd >= 0:
                os.close(fd)


def fork(code: job_process.Code, res: int) -> Spare:
    """Forks a spare, its record going to the anonymous file `res` (taken over: closed on failure).

    Raises:
        OSError: no pipe or no process to be had.
    """
    fds = [res]
    try:
        out_r, out_w = os.pipe()
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        chan_r, chan_w = os.pipe()
        fds += (chan_r, chan_w)
        go_r, go_w = os.pipe()
        fds += (go_r, go_w)
        pid = os.fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:
        job_process.run_spare(code, out_w, err_w, res, chan_w, go_r)
    for fd in (out_w, err_w, chan_w, go_r):
        os.close(fd)
    os.set_blocking(go_w, False)
    return Spare(pid, go_w, out_r, err_r, res, chan_r, (out_w, err_w, res, chan_w))
