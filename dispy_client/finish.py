"""`Finish`: a job's `finish` event (dispy's `job.finish`), at a few dozen bytes instead of ~1.2 KiB.

A `threading.Event` holds a Condition, a lock, a deque and five bound
methods: with 100,000 queued jobs that alone is over 100 MB in the client,
most of it for events nobody ever waits on (a program usually waits on a
few jobs, or on the cluster). So `Finish` is a flag, and a real Event is
made only for a job someone actually waits on. One lock shared by all jobs
guards the hand-over between `set` and a first `wait`; it is held for a
few instructions, never while waiting.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


class Finish:
    """The subset of `threading.Event` that `DispyJob.finish` offers: set, clear, is_set, wait."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None  # made by the first wait that has to block

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set  # threading.Event's old name, which dispy programs may still use

    def set(self) -> None:
        with _lock:
            self._flag = True
            event = self._event
        if event is not None:
            event.set()

    def clear(self) -> None:
        with _lock:
            self._flag = False
            if self._event is not None:
                self._event.clear()

    def waited(self) -> bool:
        """Whether a thread has blocked in `wait` (a setter may then want to let it run)."""
        return self._event is not None

    def wait(self, timeout: float | None = None) -> bool:
        """As `threading.Event.wait`: True once set, False if `timeout` seconds passed first."""
        if self._flag:
            return True
        with _lock:
            if self._flag:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)
