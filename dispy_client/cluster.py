"""dispy's cluster API (`BaseCluster`) and `SharedJobCluster`, its shared-scheduler form.

Three threads take part: the user's (submit, wait, close), the loop thread
(`ClusterSession`: network only, never user code) and the dispatcher thread
(`JobTracker`), which unpickles results, fills in `DispyJob`s and runs
callbacks in order, so a slow callback never stalls the network.

`BaseCluster` is everything a cluster does once it has a scheduler to talk
to; `SharedJobCluster` finds the shared one, `JobCluster` (jobcluster.py)
starts its own.
"""

from __future__ import annotations

import asyncio
import atexit
import getpass
import itertools
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dispy_wire import messages as M
from dispy_wire import result_mac
from dispy_wire.cluster_options import ClusterOptions as WireOptions
from dispy_wire.cluster_options import JobOptions, Runtime
from dispy_wire.payload import dumps
from dispy_wire.schedulers import Schedulers, format_address

from . import progress
from .connection import LoopThread
from .errors import DispyError, JobError
from .executor import ClusterExecutor, job_future
from .job import DispyJob, next_job_id
from .node import ClusterStatus, DispyNode, DispyNodeAvailInfo, NodeAllocate, allocate_cpus, parse_nodes
from .options import ClusterOptions, cluster_options
from .packaging import build_computation, computation_name, job_depends
from .recover import Recorder
from .session import ClusterSession
from .tracker import ACTIVE, JobTracker
from .updates import Nodes

log = logging.getLogger("dispy_client")

#: "every CPU the node has" in a per-node setting (the scheduler caps it at the node's CPUs)
ALL_CPUS = 1 << 30

DEFAULT_SCHEDULER = "127.0.0.1:9702"


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


class BaseCluster:
    """A cluster of jobs on one scheduler: dispy's whole cluster API.

    Args:
        computation: the function each job calls, or the path of a program
            each job runs with its arguments as the command line.
        host, port: the scheduler's address.
        options: the checked constructor parameters.
        loop_thread: the loop thread to talk to the scheduler on (default: a new one).
        schedulers: a leader and its standbys (None: the one scheduler at host:port).
        pipe: joins the link to a scheduler on `loop_thread` instead of dialing (a JobCluster's: pipe.py).

    Raises:
        SchedulerUnreachable: the scheduler cannot be reached in `options.timeout`.
        AuthenticationError: the scheduler refused the user or secret.
        ClusterError: the scheduler refused to open the cluster.
    """

    def __init__(
        self,
        computation: Callable[..., Any] | str,
        host: str,
        port: int,
        options: ClusterOptions,
        loop_thread: LoopThread | None = None,
        schedulers: Schedulers | None = None,
        pipe: Callable[[asyncio.Protocol], None] | None = None,
    ) -> None:
        self.computation = computation
        self.name = computation_name(computation)
        self.host, self.port = host, port
        self._schedulers = schedulers  # a leader and its standbys (None: the one scheduler at host:port)
        self.user = options.user or os.environ.get("DISPY_USER") or getpass.getuser()
        self.nodes = options.nodes
        self.dest_path = options.dest_path or os.getcwd()
        self._options = options
        self._result_key = result_mac.new_key()  # only this cluster's job processes get it, inside the computation
        blob = build_computation(computation, self._result_key, options.depends, options.setup, options.cleanup)
        self._uids = itertools.count(1)
        self._start_time = time.time()
        self._closed = False
        # NodeAllocate subclasses, and entries with a per-node set-up, decide here: the scheduler runs
        # no user code, so it asks (node updates) and gives the cluster no CPU of a node until we answer
        self._allocators = [n for n in self.nodes if n.per_node]
        open_options = WireOptions(
            nodes=tuple(n.to_spec() for n in self.nodes),
            allocate_by_client=bool(self._allocators),
            node_updates=bool(self._allocators) or options.cluster_status is not None,
            keep_files=options.cleanup is False,  # dispy's way to keep the cluster's files on the nodes
            limits=options.limits,  # for the nodes: the scheduler passes them on unread
            runtime=Runtime.here(),  # nodes that cannot load what we pickle are skipped
            isolation=options.isolation,
        )
        open_msg = M.OpenCluster(uuid.uuid4().hex, self.name, blob, options.reentrant, open_options.to_wire())
        self._recorder = self._start_recording(options.recover_file, open_msg)
        self._tracker = JobTracker(
            self.name, open_msg.cluster_id, self._result_key, options.job_status, options.cluster_status, self.dest_path,
            on_node_joined=self._allocate, on_settled=self._acknowledge,
            raw_output=isinstance(computation, str), held=True,
        )  # fmt: skip
        self._lt = loop_thread or LoopThread(f"dispy-{self.name}-io")
        self._session = ClusterSession(
            self._lt, host, port, self.user, options.secret, options.timeout, open_msg, self._tracker.deliver,
            options.tls, options.insecure_plaintext, schedulers, pipe,
        )  # fmt: skip
        try:
            self._lt.run(self._session.open(), timeout=options.timeout + 5)
        except BaseException:
            self._stop_io()
            self._tracker.close()
            if self._recorder is not None:
                self._recorder.close(remove=True)
            raise

    def _ready(self) -> None:
        """The constructor is done: callbacks may run, and a program that ends without `close()` waits for its jobs."""
        atexit.register(self._close_at_exit)
        self._tracker.release()

    def _close_at_exit(self) -> None:
        """dispy's exit: the program's last line does not end its submitted jobs; they run, then the cluster closes."""
        self.close()

    def _acknowledge(self, job_ids: list[int]) -> None:
        """On the dispatcher thread: results handled; once recorded on disk (recover file), the scheduler may drop them."""
        if self._recorder is not None:
            self._recorder.after_sync(lambda: self._lt.call_if_running(self._session.settled, job_ids))
        else:
            self._lt.call_if_running(self._session.settled, job_ids)

    def _start_recording(self, path: str | None, open_msg: M.OpenCluster) -> Recorder | None:
        if path is None:
            return None
        scheduler = str(self._schedulers) if self._schedulers else format_address(self.host, self.port)
        header = {"scheduler": scheduler, "user": self.user, "cluster_id": open_msg.cluster_id, "name": self.name,
                  "created": time.time(), "result_key": self._result_key.hex()}  # fmt: skip
        return Recorder(path, header)

    # ------------------------------------------------------------- submitting

    def submit(self, *args: Any, **kwargs: Any) -> DispyJob:
        """Submits a job running `computation(*args, **kwargs)`.

        Keywords for the system (removed before the call): `dispy_job_priority=N`
        runs it before the cluster's lower-priority jobs; `dispy_job_timeout=S`
        ends it (Terminated) after S seconds; `dispy_job_depends=[paths]`
        ships files with this job only.

        Returns:
            the job's `DispyJob`.

        Raises:
            DispyError: the cluster is closed, or the arguments are over the scheduler's size limit.
        """
        return self._submit(None, None, args, kwargs)

    def submit_job_id(self, job_id: Any, *args: Any, **kwargs: Any) -> DispyJob:
        """As `submit`, with `job.id` set to `job_id`."""
        return self._submit(job_id, None, args, kwargs)

    def submit_node(self, node: str | DispyNode, *args: Any, **kwargs: Any) -> DispyJob | None:
        """As `submit`, for a job that runs only on `node` (a name, IP address or `DispyNode`).

        The job waits in the cluster's queue, in its turn, until that node has a
        CPU for it. Returns None (logged), as dispy does, if the scheduler has
        no such node.
        """
        return self.submit_job_id_node(None, node, *args, **kwargs)

    def submit_job_id_node(self, job_id: Any, node: str | DispyNode, *args: Any, **kwargs: Any) -> DispyJob | None:
        """As `submit_node`, with `job.id` set to `job_id`."""
        if self._find_node(node) is None:
            log.warning("submit_node: the scheduler has no node %s", _node_name(node))
            return None
        return self._submit(job_id, node, args, kwargs)

    def _submit(self, job_id: Any, node: str | DispyNode | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> DispyJob:
        if self._closed:
            raise DispyError("cluster is closed")
        priority = int(kwargs.pop("dispy_job_priority", 0))
        timeout = kwargs.pop("dispy_job_timeout", None)
        files, objects = job_depends(kwargs.pop("dispy_job_depends", None) or ())
        options = JobOptions(
            timeout=None if timeout is None else float(timeout),
            files=files,
            node=None if node is None else node.name if isinstance(node, DispyNode) else str(node),
        )
        # the job's own globals travel with its arguments: opaque to the scheduler, like them
        payload = dumps((args, kwargs, objects) if objects else (args, kwargs))
        self._session.check_size(len(payload) + sum(len(f[1]) for f in files), "job arguments")
        job = DispyJob(args, kwargs, next(self._uids), time.time())
        job.id = next_job_id() if job_id is None else job_id
        self._tracker.add(job)
        if self._recorder is not None:
            self._recorder.submitted(job)
            job._on_id = self._recorder.id_set
            job._watch(self._recorder.job_status)
        self._session.enqueue(M.JobSpec(job._uid, priority, payload, options.to_wire()))
        return job

    async def asubmit(self, *args: Any, **kwargs: Any) -> Any:
        """Submits a job and awaits its result, from the caller's asyncio loop.

        Returns:
            the job's result.

        Raises:
            JobError: the job ended without a result (its `.job` says how).
            asyncio.CancelledError: the awaiting task was cancelled (the job is cancelled too).
        """
        job = self.submit(*args, **kwargs)
        return await asyncio.wrap_future(job_future(job, self.cancel))

    def map(self, args_iterable: Iterable[Any], progress: bool = False, timeout: float | None = None) -> list[Any]:
        """Runs one job per item and returns their results in order.

        Args:
            args_iterable: each item a tuple of arguments, or any other value
                as the only argument (wrap a tuple argument in a 1-tuple).
            progress: show a progress bar (done / running / failed) on stderr.
            timeout: seconds to wait for all of them.

        Raises:
            JobError: a job ended without a result (the first such, in order).
            TimeoutError: not all jobs ended within `timeout`.
        """
        jobs = [self.submit(*(a if isinstance(a, tuple) else (a,))) for a in args_iterable]
        if progress:
            finished = _progress_of(self._tracker, jobs, timeout)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            finished = all(job.finish.wait(None if deadline is None else max(0.0, deadline - time.monotonic())) for job in jobs)
        if not finished:
            raise TimeoutError(f"{sum(not j.done for j in jobs)} of {len(jobs)} jobs unfinished after {timeout} s")
        for job in jobs:
            if job.status != DispyJob.Finished:
                raise JobError(job, f"job {job.id if job.id is not None else job.args!r} ended without a result: {job.exception}")
        return [job.result for job in jobs]

    def executor(self) -> ClusterExecutor:
        """A `concurrent.futures.Executor` whose `submit(fn, ...)`/`map(fn, ...)` run jobs here.

        `fn` must be this cluster's computation; closing the executor leaves the cluster open.
        """
        return ClusterExecutor(self)

    # ---------------------------------------------------------- controlling

    def cancel(self, job: DispyJob) -> int:
        """Cancels a queued or running job; returns 0, or -1 if it already ended (then it is marked so)."""
        if not self._tracker.cancellable(job):
            return -1
        self._lt.call(self._session.cancel, [job._uid])
        return 0

    def wait(self, timeout: float | None = None, progress: bool = False) -> bool:
        """Waits until every submitted job has ended.

        Args:
            timeout: seconds to wait (None: no limit).
            progress: show a progress bar (done / running / failed) on stderr.

        Returns:
            False if jobs were still unfinished after `timeout`.
        """
        if progress:
            return _progress_of(self._tracker, None, timeout)
        return self._tracker.wait(timeout)

    def __call__(self) -> None:
        """dispy's `cluster()`: waits for every submitted job to end."""
        self.wait()

    def close(self, timeout: float | None = None, terminate: bool = False) -> bool:
        """Waits for jobs (up to `timeout`), then closes the cluster.

        Returns:
            True once closed; False, as dispy, if jobs were still unfinished
            after `timeout` and `terminate` is False: the cluster stays open
            and its jobs go on (call `close` again). With `terminate=True`
            unfinished jobs are cancelled: at once, or after `timeout` if one
            is given. The `recover_file`, if any, is removed.
        """
        if self._closed:
            return True
        finished = self.wait(timeout) if timeout is not None or not terminate else False
        if not finished and not terminate:
            return False
        self._closed = True
        try:
            self._lt.run(self._session.close(not finished, timeout=10.0), timeout=15.0)
        except (TimeoutError, DispyError) as exc:
            log.warning("closing cluster %s: %s", self.name, exc)
        finally:
            self._stop_io()
            self._tracker.close()
            if self._recorder is not None:
                self._recorder.close(remove=True)
        return True

    def _stop_io(self) -> None:
        """Stops the loop thread (once the cluster is closed or failed to open)."""
        atexit.unregister(self._close_at_exit)
        self._lt.stop()

    def shutdown(self) -> None:
        """Closes the cluster (dispy: and its scheduler, which for a shared one is not ours to stop)."""
        self.close()

    def __enter__(self) -> BaseCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # returns None: an exception in the block propagates (dispy's swallows it); with one in
        # flight the block's jobs are not waited for (a failed test or ^C must not hang): cancelled
        self.close(terminate=exc_type is not None)

    # ------------------------------------------------------------- status

    def status(self) -> ClusterStatus:
        """The scheduler's nodes with this cluster's use of them, and this cluster's unfinished jobs.

        Raises:
            DispyError: not connected to the scheduler; TimeoutError: it did not answer.
        """
        reply = self.scheduler_status()
        mine = self._tracker.nodes()
        nodes = []
        for name, info in sorted(reply.get("nodes", {}).items()):
            node = DispyNode(info.get("ip_addr", ""), name, int(info.get("cpus", 0)))
            node.avail_cpus = max(0, node.cpus - int(info.get("busy", 0)))
            node.avail_info = DispyNodeAvailInfo.from_report(info.get("avail") or {})
            node.update_time = time.time()
            if name in mine:
                node.busy, node.jobs_done, node.cpu_time = mine[name].busy, mine[name].jobs_done, mine[name].cpu_time
                node.cpus = min(node.cpus, mine[name].cpus or node.cpus)  # this cluster's share, as in dispy
            nodes.append(node)
        return ClusterStatus(nodes, self._tracker.counts().pending)

    def scheduler_status(self) -> dict[str, Any]:
        """The scheduler's view: users (share, busy, queued, usage), nodes, totals.

        Raises:
            DispyError: the cluster is closed, or not connected; TimeoutError: the scheduler did not answer.
        """
        if self._closed:  # its loop may be gone: say so, rather than fail inside it
            raise DispyError("cluster is closed")
        return self._lt.run(self._session.status(), timeout=self._session.timeout + 5)

    def print_status(self, wall_time: float | None = None) -> None:
        """Prints, per node, the jobs this cluster ran there and their time."""
        if wall_time is None:
            wall_time = time.time() - self._start_time
        print(f"\n{'Node':>30} | {'Jobs':>7} | {'Sec/Job':>9} | {'Node Time Sec':>13}")
        print("-" * 70)
        total_jobs, total_time = 0, 0.0
        for node in sorted(self._tracker.nodes().values(), key=lambda n: n.name):
            if node.jobs_done:
                label = f"{node.ip_addr} ({node.name})"
                print(f"{label:>30} | {node.jobs_done:>7} | {node.cpu_time / node.jobs_done:>9.3f} | {node.cpu_time:>13.3f}")
                total_jobs += node.jobs_done
                total_time += node.cpu_time
        print(f"\nTotal job time: {total_time:.3f} sec, wall time: {wall_time:.3f} sec, jobs: {total_jobs}\n")

    stats = print_status  # dispy's other name for it

    def node_jobs(self, node: str | DispyNode, from_node: bool = False) -> list[DispyJob]:
        """This cluster's jobs running on `node` (a name, IP address or `DispyNode`).

        `from_node` is accepted for dispy; the list comes from the scheduler's
        start reports either way.
        """
        key = node.name if isinstance(node, DispyNode) else node
        return [j for j in self._tracker.unfinished() if j.status in ACTIVE and key in (j.node, j.ip_addr)]

    # -------------------------------------------------------------- nodes

    def set_node_cpus(self, node: str | DispyNode, cpus: int) -> int:
        """Lets this cluster use at most `cpus` CPUs of `node` (a name, IP address or `DispyNode`).

        A negative `cpus` leaves that many of the node's CPUs unused (-1: all
        but one), as in dispy. Returns the CPUs set, or -1 (logged) if the
        scheduler has no such node.
        """
        found = self._find_node(node)
        if found is None:
            log.warning("set_node_cpus: the scheduler has no node %s", _node_name(node))
            return -1
        cpus = int(cpus)
        cpus = min(cpus, found.cpus) if cpus >= 0 else max(0, found.cpus + cpus)
        self._set_cpus(found.name, cpus)
        return cpus

    def _set_cpus(self, name: str, cpus: int) -> None:
        self._tracker.cap(name, cpus)
        self._lt.call(self._session.set_node_cpus, name, cpus)

    def _find_node(self, node: str | DispyNode) -> DispyNode | None:
        """The node called (or at the address) `node`: from this cluster's records, else the scheduler's."""
        key = _node_name(node)
        known = [n for n in self._tracker.nodes().values() if key in (n.name, n.ip_addr) and n.cpus > 0]
        if known:
            return known[0]
        try:
            nodes = self.status().nodes
        except (DispyError, TimeoutError) as exc:
            log.warning("cannot ask the scheduler for node %s: %s", key, exc)
            return None
        return next((n for n in nodes if key in (n.name, n.ip_addr)), None)

    def allocate_node(self, node: str | DispyNode | NodeAllocate) -> int:
        """Lets this cluster use `node` again, all its CPUs or a `NodeAllocate`'s `cpus`; returns 0."""
        cpus = node.cpus if isinstance(node, NodeAllocate) and node.cpus > 0 else ALL_CPUS
        name = node.host if isinstance(node, NodeAllocate) else _node_name(node)
        if "*" in name:
            raise ValueError(f"allocate_node takes one node's name, not a pattern ({name!r})")
        self._set_cpus(name, cpus)
        return 0

    def deallocate_node(self, node: str | DispyNode) -> int:
        """Stops giving this cluster's jobs to `node`; jobs running there finish. Returns 0."""
        self.set_node_cpus(node, 0)
        return 0

    def close_node(self, node: str | DispyNode, terminate_pending: bool = False) -> int:
        """Stops using `node`; with `terminate_pending`, cancels this cluster's jobs running there. Returns 0."""
        self.deallocate_node(node)
        if terminate_pending:
            for job in self.node_jobs(node):
                self.cancel(job)
        return 0

    def _allocate(self, node: DispyNode, setup_anew: bool = False) -> int:
        """A node joined: the first `NodeAllocate` that applies decides its CPUs for this cluster (dispy's rule),
        and its `depends` and `setup_args` (which `allocate` may have just set) the cluster's set-up there.

        Returns those CPUs. Plain entries only say what the scheduler already applies; a subclass's
        `allocate` runs here, once per node joining (and again for `resetup_node`).

        Args:
            setup_anew: load the cluster there again even when the entry asks for no set-up of its own
                (`resetup_node`).
        """
        total = self._total_cpus(node)  # not node.cpus: that is this cluster's cap, or 0 if it saw only jobs
        if not self._allocators and not setup_anew:
            return allocate_cpus(self.nodes, self, node.ip_addr, node.name, total)
        for entry in self.nodes:
            try:
                cpus = entry.allocate(self, node.ip_addr, node.name, total, node.avail_info, node.platform)
            except Exception:  # a user's NodeAllocate: its error must not stop the others
                log.exception("%s.allocate raised for node %s; not using the node", type(entry).__name__, node.name)
                cpus = 0
            if cpus >= 0:
                if cpus > 0 and (setup_anew or entry.depends or entry.setup_args):
                    self._setup_on(node, entry.depends, entry.setup_args)
                self._set_cpus(node.name, cpus)
                return cpus
        if setup_anew:
            self._setup_on(node, [], ())
        self._set_cpus(node.name, 0)
        return 0

    def _total_cpus(self, node: DispyNode) -> int:
        """The CPUs `node` offers, which `NodeAllocate.allocate` shares out: from the node's reports, else
        (a cluster that watches no nodes knows a node only from its jobs) from the scheduler."""
        total = self._tracker.total_cpus(node.name)
        if total is not None:
            return total
        try:
            info = self.scheduler_status().get("nodes", {}).get(node.name) or {}
        except (DispyError, TimeoutError) as exc:
            log.warning("cannot ask the scheduler for node %s's CPUs: %s", node.name, exc)
            info = {}
        return int(info.get("cpus", node.cpus))

    def _setup_on(self, node: DispyNode, depends: list[Any], setup_args: tuple[Any, ...]) -> None:
        """Sends the computation `node` loads: the cluster's, with a `NodeAllocate`'s own depends and setup_args."""
        if not isinstance(setup_args, tuple):  # dispy's rule for a NodeAllocate subclass that set something else
            setup_args = (setup_args,)
        opts = self._options
        blob = build_computation(self.computation, self._result_key, [*opts.depends, *depends], opts.setup,
                                 opts.cleanup, setup_args)  # fmt: skip
        self._session.check_size(len(blob), "computation")
        self._lt.call(self._session.resetup, node.name, blob)

    def resetup_node(self, node: str | DispyNode, terminate_pending: bool = False) -> int:
        """Sets the cluster up again on `node`, as dispy does: `allocate` of the `nodes` entries runs again
        for it (it may set new `depends` and `setup_args`), then the cluster is unloaded there (`cleanup`
        runs) once its running jobs end (with `terminate_pending`, they are cancelled), and loaded anew
        (`setup(*setup_args)`). Returns 0, or -1 if no such node serves this cluster.
        """
        name = _node_name(node)
        known = self._tracker.nodes()
        record = known.get(name) or next((n for n in known.values() if n.ip_addr == name), None)
        if record is None:
            log.error("resetup_node: no node %s is known to cluster %s", name, self.name)
            return -1
        if terminate_pending:
            for job in self.node_jobs(record):
                self.cancel(job)
        if self.nodes:
            self._allocate(record, setup_anew=True)
        else:
            self._setup_on(record, [], ())
        return 0

    def send_file(self, path: str, node: str | DispyNode) -> int:
        """Copies a file into this cluster's directory on `node`, where jobs started after it see it.

        Returns 0, or -1 (logged with the reason) if it cannot be read, the
        cluster is not loaded on that node yet, or the node refused it.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
            mode = stat.S_IMODE(os.stat(path).st_mode)
            self._session.check_size(len(data), f"file {path}")
            ok, why = self._lt.run(
                self._session.put_file(_node_name(node), os.path.basename(path), data, mode),
                timeout=self._session.timeout + 5,
            )
        except (OSError, DispyError, TimeoutError) as exc:
            ok, why = False, str(exc) or type(exc).__name__
        if not ok:
            log.error("send_file %s to %s: %s", path, _node_name(node), why)
        return 0 if ok else -1

    def discover_nodes(self, nodes: Any) -> int:
        """dispy probes hosts for nodes; here nodes dial the scheduler, so this asks it for them.

        Args:
            nodes: host names, IP patterns with `*` ('*': all), or `NodeAllocate`s.

        Nodes the scheduler has that match and this cluster has not heard of
        yet are announced as if they had just joined: `NodeAllocate`s decide
        on them, and `cluster_status` gets `DispyNode.Initialized`. Returns 0.

        Raises:
            DispyError: not connected to the scheduler; TimeoutError: it did not answer.
        """
        wanted = parse_nodes(nodes)
        reply = self.scheduler_status()
        known = self._tracker.nodes()
        found = [
            M.NodeInfo("joined", name, info.get("ip_addr", ""), int(info.get("cpus", 0)), int(info.get("busy", 0)),
                       dict(info.get("avail") or {}))
            for name, info in sorted(reply.get("nodes", {}).items())
            if name not in known and any(NodeAllocate.allocate(w, self, info.get("ip_addr", ""), name, 1) >= 0 for w in wanted)
        ]  # fmt: skip (NodeAllocate's own matching: a subclass's allocate runs once the node is announced)
        if found:
            self._tracker.deliver(Nodes(found))
        return 0


def _progress_of(tracker: JobTracker, jobs: list[DispyJob] | None, timeout: float | None) -> bool:
    """Shows a progress bar for `jobs` (or all the cluster's) until they end or `timeout`."""
    if jobs is None:
        return progress.follow(tracker, tracker.counts, timeout)
    return progress.follow(tracker, lambda: progress.count(jobs), timeout)


class SharedJobCluster(BaseCluster):
    """A cluster of jobs run on the shared scheduler's nodes (dispy's parameters, in dispy's order).

    Args:
        computation: the function each job calls, or a program's path.
        nodes: host names, IP patterns with `*`, `(host, port, cpus)` tuples
            or `NodeAllocate`s: the scheduler runs the cluster's jobs only on
            matching nodes, on at most the CPUs each entry allows.
        depends: files, modules, functions and classes jobs need.
        job_status: called as `job_status(job)` when a job starts or ends, on
            a thread of its own (`callback` is its deprecated alias).
        cluster_status: called as `cluster_status(status, node, job)`.
        ip_addr, port, ext_ip_addr: dispy's client addresses; ignored (warned): the client dials.
            So are dispy 4.15's `host`, `ext_host` and `client_port`; its
            `dispy_port` gives the scheduler's port as in dispy (`dispy_port + 2`).
        scheduler_node: the scheduler's host ('H' or 'H:P'; default
            `$DISPY_SCHEDULER`, then 127.0.0.1:9702); `scheduler_host` is the same.
        scheduler_port: overrides the port.
        **kwargs: the rest of dispy's parameters (`setup`, `cleanup`,
            `reentrant`, `secret`, `loglevel`, `dest_path`, `recover_file`, ...)
            and ours: `user` (default `$DISPY_USER`, then the login name;
            logging in by certificate, i.e. `certfile` and no secret, its CN),
            `timeout` (seconds to reach and open the scheduler), `limits`
            (what each job may use on a node: `timeout`, `memory`, `cpu_time`,
            `open_files`, `processes`, and `setup_timeout`; nodes apply the
            smaller of these and their own caps), `isolation` ("fork", one
            process per job, the nodes' default; or "worker", processes reused
            for many jobs of this cluster: docs/isolation.md). `cleanup=False`
            keeps the cluster's files on the nodes, as in dispy. See docs/client.md.

    Raises:
        SchedulerUnreachable, AuthenticationError, ClusterError: see `BaseCluster`.
        TypeError: a keyword dispy does not have.
        ValueError: `limits` names an unknown limit or a value that is no positive number (or size).
    """

    def __init__(
        self,
        computation: Callable[..., Any] | str,
        nodes: Any = None,
        depends: Sequence[Any] = (),
        job_status: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[..., Any] | None = None,
        ip_addr: Any = None,
        port: int | None = None,
        scheduler_node: str | None = None,
        scheduler_port: int | None = None,
        scheduler_host: str | None = None,
        **kwargs: Any,
    ) -> None:
        ignored = {
            "ip_addr": "the client dials the scheduler; it listens on no address",
            "host": "the client dials the scheduler; it listens on no address",
            "port": "the client dials the scheduler; it listens on no port",
            "pulse_interval": "nodes' heartbeats are set on the nodes",
        }
        dispy_port = kwargs.pop("dispy_port", None)
        if scheduler_port is None and dispy_port is not None:  # dispy 4.15: the scheduler listens on dispy_port + 2
            scheduler_port = int(dispy_port) + 2
        explicit = {"ip_addr": ip_addr, "port": port}
        options = cluster_options(
            "SharedJobCluster",
            {**kwargs, **{k: v for k, v in explicit.items() if v is not None}},
            ignored,
            nodes=nodes,
            depends=depends,
            job_status=job_status,
            cluster_status=cluster_status,
        )
        spec = scheduler_host or scheduler_node or os.environ.get("DISPY_SCHEDULER") or DEFAULT_SCHEDULER
        if "," in spec:  # a leader and its standbys: whichever leads is found and followed
            schedulers = Schedulers(spec, 9702 if scheduler_port is None else int(scheduler_port))
            super().__init__(computation, *schedulers.first, options, schedulers=schedulers)
        else:
            host, port_ = parse_scheduler(spec, scheduler_port)
            super().__init__(computation, host, port_, options)
        self._ready()


def _node_name(node: str | DispyNode) -> str:
    return node.name if isinstance(node, DispyNode) else str(node)
