"""`SharedJobCluster`: dispy's client API over the shared scheduler.

Three threads take part: the user's (submit, wait, close), the loop thread
(`ClusterSession`: network only, never user code) and the dispatcher thread,
which unpickles results, fills in `DispyJob`s and runs `job_status` callbacks
in order, so a slow callback never stalls the network.
"""

from __future__ import annotations

import getpass
import itertools
import logging
import os
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from dispy_wire import messages as M
from dispy_wire.payload import dumps, loads
from dispy_wire.status import JobStatus

from .connection import LoopThread
from .errors import DispyError
from .job import DispyJob
from .packaging import build_computation
from .session import ClusterSession

log = logging.getLogger("dispy_client")

DEFAULT_SCHEDULER = "127.0.0.1:9702"

# dispy parameters that have no effect on a shared cluster (yet); accepted so
# that dispy programs run unchanged, with a one-line warning.
_IGNORED = ("nodes", "ip_addr", "port", "ext_ip_addr", "dest_path", "poll_interval", "exclusive", "keyfile", "certfile", "recover_file")


def parse_scheduler(host: str | None, port: int | None) -> tuple[str, int]:
    """Resolves 'H', 'H:P' or '[v6]:P', `$DISPY_SCHEDULER` and the default port."""
    spec = host or os.environ.get("DISPY_SCHEDULER") or DEFAULT_SCHEDULER
    h, p = spec, None
    if spec.startswith("["):
        h, _, rest = spec[1:].partition("]")
        p = rest[1:] if rest.startswith(":") else None
    elif spec.count(":") == 1:
        h, p = spec.split(":")
    if port is not None:
        return h, int(port)
    try:
        return h, int(p) if p else 9702
    except ValueError:
        raise ValueError(f"bad scheduler address {spec!r}: port must be a number") from None


class SharedJobCluster:
    """A cluster of jobs run on the shared scheduler's nodes.

    Args:
        computation: the function each job calls.
        scheduler_host: 'H' or 'H:P' (default `$DISPY_SCHEDULER`, then
            127.0.0.1:9702); `scheduler_node` is dispy's name for it.
        scheduler_port: overrides the port in `scheduler_host`.
        user: name to authenticate as (default `$DISPY_USER`, then the login name).
        secret: that user's secret.
        depends: files, modules, functions and classes jobs need.
        job_status: called as `job_status(job)` when a job starts or ends, on
            a thread of its own.
        cluster_status: accepted for dispy compatibility.
        setup: run once per node before its jobs; globals it declares are
            visible to jobs.
        cleanup: True, False, or a function run when the cluster closes on a node.
        reentrant: rerun a job elsewhere if its node is lost (else it is Abandoned).
        timeout: seconds to reach and open the scheduler before giving up.

    Raises:
        SchedulerUnreachable: the scheduler cannot be reached in `timeout`.
        AuthenticationError: the scheduler refused the user or secret.
        ClusterError: the scheduler refused to open the cluster.
    """

    def __init__(
        self,
        computation: Callable[..., Any],
        scheduler_host: str | None = None,
        scheduler_port: int | None = None,
        user: str | None = None,
        secret: str = "",
        depends: Sequence[Any] = (),
        job_status: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[..., Any] | None = None,
        setup: Callable[..., Any] | None = None,
        cleanup: Callable[..., Any] | bool = True,
        reentrant: bool = False,
        loglevel: int | None = None,
        timeout: float = 10.0,
        scheduler_node: str | None = None,
        callback: Callable[[DispyJob], Any] | None = None,
        **ignored: Any,
    ) -> None:
        for name in ignored:
            if name not in _IGNORED:
                raise TypeError(f"SharedJobCluster() got an unexpected keyword argument {name!r}")
            warnings.warn(f"SharedJobCluster: parameter {name!r} has no effect yet and is ignored", stacklevel=2)
        if loglevel is not None:
            log.setLevel(loglevel)
        self.name = getattr(computation, "__name__", "computation")
        self.host, self.port = parse_scheduler(scheduler_host or scheduler_node, scheduler_port)
        self.user = user or os.environ.get("DISPY_USER") or getpass.getuser()
        self.job_status = job_status or callback
        self.cluster_status = cluster_status
        blob = build_computation(computation, depends, setup, cleanup)
        self._uids = itertools.count(1)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._jobs: dict[int, DispyJob] = {}
        self._pending = 0
        self._node_stats: dict[str, list[float]] = {}
        self._start_time = time.time()
        self._closed = False
        self._dispatch_q: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name=f"dispy-{self.name}-callbacks", daemon=True)
        self._lt = LoopThread(f"dispy-{self.name}-io")
        open_msg = M.OpenCluster(uuid.uuid4().hex, self.name, blob, bool(reentrant), {})
        self._session = ClusterSession(
            self._lt, self.host, self.port, self.user, secret, timeout, open_msg, self._deliver
        )
        try:
            self._lt.run(self._session.open(), timeout=timeout + 5)
        except BaseException:
            self._lt.stop()
            raise
        self._dispatcher.start()

    # ------------------------------------------------------------------ API

    def submit(self, *args: Any, **kwargs: Any) -> DispyJob:
        """Submits a job running `computation(*args, **kwargs)`.

        `dispy_job_priority=N` (keyword, default 0) runs it before the
        cluster's lower-priority jobs.
        """
        if self._closed:
            raise DispyError("cluster is closed")
        priority = int(kwargs.pop("dispy_job_priority", 0))
        uid = next(self._uids)
        job = DispyJob(args, kwargs, uid, time.time())
        payload = dumps((args, kwargs))
        self._session.check_size(len(payload), "job arguments")
        with self._lock:
            self._jobs[uid] = job
            self._pending += 1
        self._session.enqueue(M.JobSpec(uid, priority, payload, {}))
        return job

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob:
        job = self.submit(*args, **kwargs)
        job.id = job_id
        return job

    def cancel(self, job: DispyJob) -> int:
        """Cancels a queued or running job; returns 0, or -1 if it already ended."""
        with self._lock:
            if job._uid not in self._jobs:
                return -1
        self._lt.call(self._session.cancel, [job._uid])
        return 0

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until every submitted job has ended; False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def scheduler_status(self) -> dict[str, Any]:
        """The scheduler's view: users (share, busy, queued, usage), nodes, totals."""
        return self._lt.run(self._session.status(), timeout=self._session.timeout + 5)

    def print_status(self, wall_time: float | None = None) -> None:
        """Prints, per node, the jobs this cluster ran there and their time."""
        if wall_time is None:
            wall_time = time.time() - self._start_time
        print(f"\n{'Node':>30} | {'Jobs':>7} | {'Sec/Job':>9} | {'Node Time Sec':>13}")
        print("-" * 70)
        total_jobs, total_time = 0, 0.0
        with self._lock:
            stats = sorted(self._node_stats.items())
        for node, (jobs, secs) in stats:
            print(f"{node:>30} | {int(jobs):>7} | {secs / jobs:>9.3f} | {secs:>13.3f}")
            total_jobs += int(jobs)
            total_time += secs
        print(f"\nTotal job time: {total_time:.3f} sec, wall time: {wall_time:.3f} sec, jobs: {total_jobs}\n")

    def close(self, timeout: float | None = None, terminate: bool = False) -> None:
        """Waits for jobs (up to `timeout`), then closes the cluster.

        With `terminate=True`, or if jobs are still running after `timeout`,
        they are cancelled.
        """
        if self._closed:
            return
        finished = terminate or self.wait(timeout)
        self._closed = True
        try:
            self._lt.run(self._session.close(terminate or not finished, timeout=10.0), timeout=15.0)
        except (TimeoutError, DispyError) as exc:
            log.warning("closing cluster %s: %s", self.name, exc)
        finally:
            self._lt.stop()
            self._dispatch_q.put(None)
            if threading.current_thread() is not self._dispatcher:
                self._dispatcher.join(timeout=10)

    def __enter__(self) -> SharedJobCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------- dispatcher

    def _deliver(self, kind: str, item: Any) -> None:
        """Loop thread → dispatcher thread."""
        self._dispatch_q.put((kind, item))

    def _dispatch_loop(self) -> None:
        while True:
            entry = self._dispatch_q.get()
            if entry is None:
                return
            kind, item = entry
            try:
                if kind == "result":
                    self._on_result(item)
                else:
                    self._on_started(item)
            except Exception:
                log.exception("error while handling a job update")

    def _on_started(self, start: M.JobStart) -> None:
        with self._lock:
            job = self._jobs.get(start.job_id)
        if job is None or job.finish.is_set():
            return
        job.status = DispyJob.Running
        job.ip_addr = start.ip_addr
        job.node = start.node
        job.start_time = start.time
        self._callback(job)

    def _on_result(self, r: M.JobResult) -> None:
        with self._lock:
            job = self._jobs.pop(r.job_id, None)
        if job is None:
            return
        job.status = r.status
        job.stdout = r.stdout.decode(errors="replace")
        job.stderr = r.stderr.decode(errors="replace")
        if r.start_time:
            job.start_time = r.start_time
        job.end_time = r.end_time
        job.exception = r.exception or None
        job.exception_type = r.exception_type or None
        if r.status == JobStatus.FINISHED and r.result is not None:
            try:
                job.result = loads(r.result)
            except Exception as exc:  # unpickling runs the result's own code
                job.status = DispyJob.Terminated
                job.exception = f"cannot unpickle the job's result here: {type(exc).__name__}: {exc}"
                job.exception_type = type(exc).__name__
        if job.node and r.start_time:
            with self._lock:
                stats = self._node_stats.setdefault(f"{job.ip_addr} ({job.node})", [0, 0.0])
                stats[0] += 1
                stats[1] += max(0.0, r.end_time - r.start_time)
        job.finish.set()
        self._callback(job)
        with self._done:
            self._pending -= 1
            if self._pending == 0:
                self._done.notify_all()

    def _callback(self, job: DispyJob) -> None:
        if self.job_status is None:
            return
        try:
            self.job_status(job)
        except Exception:
            log.exception("job_status callback raised for %r", job)
