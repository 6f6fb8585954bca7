"""`concurrent.futures` and asyncio front doors onto a cluster.

A `JobFuture` follows one `DispyJob` through its watchers (run on the
cluster's dispatcher thread): running when the job starts, then its result,
or a `JobError` if it ended without one. asyncio code awaits it through
`asyncio.wrap_future`, which hands the outcome to the awaiting loop with
`call_soon_threadsafe`: the user's loop never runs on the client's threads.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import JobError
from .job import DispyJob

if TYPE_CHECKING:
    from .cluster import BaseCluster


class JobFuture(concurrent.futures.Future[Any]):
    """A Future for one job; cancelling it (while it is pending) cancels the job."""

    def __init__(self, job: DispyJob, cancel_job: Callable[[DispyJob], int]) -> None:
        super().__init__()
        self.job = job
        self._cancel_job = cancel_job

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._cancel_job(self.job)
        return True


def job_future(job: DispyJob, cancel_job: Callable[[DispyJob], int]) -> JobFuture:
    """A future resolved when `job` ends: its result, or `JobError`."""
    future = JobFuture(job, cancel_job)

    def follow(job: DispyJob) -> None:
        try:
            if not job.done:
                if job.status == DispyJob.Running and not future.running() and not future.done():
                    future.set_running_or_notify_cancel()
            elif job.status == DispyJob.Finished:
                future.set_result(job.result)
            else:
                future.set_exception(JobError(job, f"job ended without a result: {job.exception}"))
        except concurrent.futures.InvalidStateError:
            pass  # the user cancelled the future meanwhile

    job._watch(follow)
    return future


class ClusterExecutor(concurrent.futures.Executor):
    """An Executor whose jobs run on a cluster (`cluster.executor()`).

    Args:
        cluster: the cluster; `fn` in `submit`/`map` must be its computation.
    """

    def __init__(self, cluster: BaseCluster) -> None:
        self._cluster = cluster
        self._futures: set[JobFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> JobFuture:
        """Runs `fn(*args, **kwargs)` as a job.

        Raises:
            ValueError: `fn` is not the cluster's computation.
            RuntimeError: the executor was shut down.
        """
        if fn is not self._cluster.computation and fn != self._cluster.computation:
            raise ValueError(f"this executor runs only its cluster's computation {self._cluster.name!r}, not {fn!r}")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            future = job_future(self._cluster.submit(*args, **kwargs), self._cluster.cancel)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting jobs; the cluster itself stays open.

        Args:
            wait: wait for this executor's jobs to end.
            cancel_futures: cancel those not started yet.
        """
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            concurrent.futures.wait(futures)
