"""`DispyJob`: the handle a user holds for one submitted job (dispy 4.x's API)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Generator
from typing import Any

from dispy_wire.status import JobStatus

from .finish import Finish

#: called with the job each time its status changes (on the dispatcher thread)
Watcher = Callable[["DispyJob"], None]
#: guards every job's watcher list: held for a few instructions, and a lock per job would cost 56 bytes each
_WATCH_LOCK = threading.Lock()


class DispyJob:
    """One job: its arguments, and once it ends, its outcome.

    Attributes set by the system: `status` (one of the class constants),
    `result`, `stdout`, `stderr` (str for a function, bytes for a program, as
    in dispy), `exception` (remote traceback text, or why the job ended),
    `exception_type` (class name of the exception), `ip_addr` and `node`
    (where it ran), `submit_time`, `start_time`, `end_time`, `finish` (a
    threading.Event set once the job ends). `id` is the user's: a number
    (`next_job_id`) unless given to `submit_job_id`; set it to anything
    (with a `recover_file`, it is recorded).

    Beyond dispy, `await job` (from any asyncio loop) waits for the end and
    returns what `job()` returns.
    """

    Created = int(JobStatus.CREATED)
    Running = int(JobStatus.RUNNING)
    ProvisionalResult = int(JobStatus.PROVISIONAL_RESULT)
    Cancelled = int(JobStatus.CANCELLED)
    Terminated = int(JobStatus.TERMINATED)
    Abandoned = int(JobStatus.ABANDONED)
    Finished = int(JobStatus.FINISHED)

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], uid: int, submit_time: float) -> None:
        self._id: Any = None
        self._on_id: Callable[[DispyJob], None] | None = None
        self.args = args
        self.kwargs = kwargs
        self.status = DispyJob.Created
        self.result: Any = None
        self.stdout: str | bytes = ""
        self.stderr: str | bytes = ""
        self.exception: str | None = None
        self.exception_type: str | None = None
        self.ip_addr: str | None = None
        self.node: str | None = None
        self.submit_time = submit_time
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.finish = Finish()  # a threading.Event's interface at a fraction of its memory (finish.py)
        self._uid = uid
        self._watch_lock = _WATCH_LOCK
        self._watchers: list[Watcher] = []

    @property
    def id(self) -> Any:
        """The user's identifier for this job (dispy's `job.id`)."""
        return self._id

    @id.setter
    def id(self, value: Any) -> None:
        self._id = value
        if self._on_id is not None:
            self._on_id(self)

    @property
    def done(self) -> bool:
        """True once the job has its terminal status."""
        return self.finish.is_set()

    def __call__(self, clear: bool = False) -> Any:
        """Waits for the job to end and returns its result (None if it failed)."""
        self.finish.wait()
        result = self.result
        if clear:
            self.result = None
        return result

    def __await__(self) -> Generator[Any, None, Any]:
        """`await job`: like `job()`, without blocking the awaiting loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def resolve(job: DispyJob) -> None:
            if job.done:
                loop.call_soon_threadsafe(_set_result, future, job.result)

        self._watch(resolve)
        return future.__await__()

    def _watch(self, watcher: Watcher) -> None:
        """Calls `watcher(job)` on every later status change, and now if the job has ended."""
        with self._watch_lock:
            ended = self.done
            if not ended:
                self._watchers.append(watcher)
        if ended:
            watcher(self)

    def _changed(self) -> None:
        """Runs the watchers; the dispatcher thread calls it after each status change."""
        if not self._watchers and not self.finish.is_set():
            return  # nobody to tell, short of the end: a watcher added meanwhile hears the next change
        with self._watch_lock:  # at the end: a watcher being added now either is in the list or sees `done`
            watchers = list(self._watchers)
            if self.done:
                self._watchers.clear()
        for watcher in watchers:
            watcher(self)

    def __repr__(self) -> str:
        status = JobStatus(self.status).name.lower() if self.status in JobStatus._value2member_map_ else self.status
        return f"<DispyJob id={self.id!r} status={status}>"


#: dispy numbers jobs from 1 across all of a program's clusters: so do we
_job_ids = itertools.count(1)


def next_job_id() -> int:
    """The id of a job submitted without one (thread-safe: `count` is atomic under the GIL)."""
    return next(_job_ids)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
