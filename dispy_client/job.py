"""`DispyJob`: the handle a user holds for one submitted job (dispy 4.x's API)."""

from __future__ import annotations

import threading
from typing import Any

from dispy_wire.status import JobStatus


class DispyJob:
    """One job: its arguments, and once it ends, its outcome.

    Attributes set by the system: `status` (one of the class constants),
    `result`, `stdout`, `stderr` (str), `exception` (remote traceback text, or
    why the job ended), `exception_type` (class name of the exception),
    `ip_addr` (node that ran it), `submit_time`, `start_time`, `end_time`,
    `finish` (a threading.Event set once the job ends). `id` is the user's:
    set it to anything.
    """

    Created = int(JobStatus.CREATED)
    Running = int(JobStatus.RUNNING)
    ProvisionalResult = int(JobStatus.PROVISIONAL_RESULT)
    Cancelled = int(JobStatus.CANCELLED)
    Terminated = int(JobStatus.TERMINATED)
    Abandoned = int(JobStatus.ABANDONED)
    Finished = int(JobStatus.FINISHED)

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], uid: int, submit_time: float) -> None:
        self.id: Any = None
        self.args = args
        self.kwargs = kwargs
        self.status = DispyJob.Created
        self.result: Any = None
        self.stdout = ""
        self.stderr = ""
        self.exception: str | None = None
        self.exception_type: str | None = None
        self.ip_addr: str | None = None
        self.node: str | None = None
        self.submit_time = submit_time
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.finish = threading.Event()
        self._uid = uid

    def __call__(self, clear: bool = False) -> Any:
        """Waits for the job to end and returns its result (None if it failed)."""
        self.finish.wait()
        result = self.result
        if clear:
            self.result = None
        return result

    def __repr__(self) -> str:
        status = JobStatus(self.status).name.lower() if self.status in JobStatus._value2member_map_ else self.status
        return f"<DispyJob id={self.id!r} status={status}>"
