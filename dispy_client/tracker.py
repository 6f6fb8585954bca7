"""`JobTracker`: a cluster's jobs, their outcomes, and the thread that delivers them.

Theory of operation. Three threads touch a cluster's jobs: user threads add
them (`add`), the loop thread hands in what the scheduler sent (`deliver`:
a queue put, never user code), and the dispatcher thread, owned here, applies
each item in order: it unpickles results, fills in the `DispyJob`, updates
this cluster's view of the nodes, and runs the user's `job_status` and
`cluster_status` callbacks and the job's watchers (futures, `await`). So a
slow callback never stalls the network, and callbacks see updates in order.

Callbacks follow dispy's timing: `job_status` for each provisional result
and each end (not for Running); `cluster_status` for each job status change
(Created with no node), and `DispyNode.Initialized` once per node, when the
node may run the cluster's jobs (its allocation granted CPUs) or, at the
latest, with its first job's start. A cluster's constructor holds the
dispatcher (`held`) until it returns (`release`), so no callback sees a
half-built cluster, as no dispy callback can.

Every change bumps `version` under `changed` (a Condition), which is what
the progress bar blocks on: no polling. `wait` blocks on its own condition
(same lock), told once no job is left (and their results are
acknowledged): a program waiting for its cluster is not woken for each job.

What the loop thread hands in during one turn of its loop goes to the
dispatcher as one queue item (one wake-up of that thread for a message's
worth of starts and results, not one per job), and it hands records in as
lists, a message's worth of one kind each (`updates.py`). The dispatcher
takes whatever has queued up by the time it is free, folds each run of job
news into one list per kind (`merged`: starts, provisional results, files,
ends, each job's own order), and applies a list of starts or results
together: one lock round trip and one wake-up of the `changed` waiters for
the list, then each job's callbacks and watchers, in the list's order. So
the busier it is, the longer its lists, and the less each job costs it. Results are unpickled on the dispatcher, outside the lock,
never on the loop thread (a result's own code may run, and in a JobCluster
that thread also runs the scheduler). Starts alone wait up to `STARTS_DELAY`
for a result to go with (the first item of another kind hands them over at
once, in order): a job's start and end usually arrive in separate turns, and
each hand-over is a wake-up of the dispatcher thread, its main cost per job.

Nothing from a job is unpickled or saved before its MAC is checked under
the cluster's own key (`dispy_wire.result_mac`): a result, provisional
result or file that fails ends its job `Terminated` with
`FORGED_TEXT` as its exception, and a warning is logged.

A terminal result is settled once its job is filled in and every callback
and watcher has run (a recover file's watcher writes its record then); the
dispatcher passes the settled job ids to `on_settled` in batches, which
acknowledges them to the scheduler: until then the scheduler holds each
result, so a client killed mid-callback loses none. A batch goes when the
dispatcher's queue is empty and it holds `ACK_BATCH` ids or its oldest is
`ACK_DELAY` seconds old (the queue's wait times out then), when no job is
left (before `wait` returns) and when the dispatcher stops: one
acknowledgement per few dozen jobs instead of one per result message, each
a wake-up of the loop thread and a message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, assert_never

from dispy_wire import messages as M
from dispy_wire import result_mac
from dispy_wire.payload import loads
from dispy_wire.status import JobStatus

from .job import DispyJob
from .node import DispyNode, DispyNodeAvailInfo
from .private_files import save_sent_file
from .updates import Closed, Created, Files, News, Nodes, Provisional, Results, Started, Turn, Unusable, Update

log = logging.getLogger("dispy_client")


@dataclass(frozen=True, slots=True)
class Counts:
    """Jobs of one cluster by where they are."""

    submitted: int
    running: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        return self.submitted - self.done


#: ended jobs `ended()` remembers (as `Ended` summaries: no result is kept alive for it), for a status page
ENDED_KEPT = 500


class Ended(NamedTuple):
    """What a status page shows of an ended job (dispy_client.httpd).

    A NamedTuple, not a frozen dataclass: one is made per job, on the dispatcher thread, and this is four
    times quicker to make."""

    uid: int
    id: Any  # the user's `job.id`
    status: int
    node: str | None
    submit_time: float
    start_time: float | None
    end_time: float | None


#: a job between its start and its end (a provisional result does not end it)
ACTIVE = frozenset({DispyJob.Running, DispyJob.ProvisionalResult})

#: settled results acknowledged together: this many, or those of this many seconds (see above)
ACK_BATCH = 256
ACK_DELAY = 0.02

#: starts wait this many seconds for a result to travel with (one wake-up of the dispatcher for both)
STARTS_DELAY = 0.005

#: a job whose result, provisional result or file failed its MAC check ends with this exception text
FORGED_TEXT = "result failed authentication"
FORGED_TYPE = "ResultAuthenticationError"


class JobTracker:
    """Args:
    name: the cluster's name (for the thread's name and log lines).
    cluster_id: the cluster's id, and
    result_key: its key, under which everything its jobs send must be MAC'd (`dispy_wire.result_mac`).
    job_status: called as `job_status(job)` on each status change.
    cluster_status: called as `cluster_status(status, node, job)`.
    dest_path: where files sent by jobs (`dispy_send_file`) are saved.
    on_node_joined: called on the dispatcher thread with each node that joins
        (after its `DispyNode` record exists), e.g. to run `NodeAllocate`s;
        returns the CPUs the cluster may use there (0: `Initialized` is not sent).
    on_settled: called on the dispatcher thread with the ids of terminal
        results it has fully handled, in batches.
    raw_output: jobs' stdout and stderr stay bytes (a program computation's, as in dispy).
    held: nothing is dispatched until `release()` (a cluster's constructor returns).
    """

    def __init__(
        self,
        name: str,
        cluster_id: str,
        result_key: bytes,
        job_status: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[[int, DispyNode | None, DispyJob | None], Any] | None = None,
        dest_path: str | None = None,
        on_node_joined: Callable[[DispyNode], int] | None = None,
        on_settled: Callable[[list[int]], Any] | None = None,
        raw_output: bool = False,
        held: bool = False,
    ) -> None:
        self._raw_output = raw_output
        self._released = threading.Event()
        if not held:
            self._released.set()
        self._initialized: set[str] = set()  # nodes told `Initialized` (dispatcher thread only)
        self._caps: dict[str, int] = {}  # node -> the CPUs this cluster may use there (allocation, set_node_cpus)
        self._totals: dict[str, int] = {}  # node -> the CPUs it offers, from its reports
        self._announced: set[str] = set()  # nodes whose joining the scheduler told us of (loop thread writes)
        self._on_node_joined = on_node_joined
        self._name = name
        self._cluster_id = cluster_id
        self._result_key = result_key
        self.on_settled = on_settled
        self._settled: list[int] = []
        self._settled_since = 0.0  # monotonic time of the oldest id in `_settled`
        self._job_status = job_status
        self._dest_path = dest_path or os.getcwd()
        self._cluster_status = cluster_status
        lock = threading.RLock()
        self.changed = threading.Condition(lock)
        self._all_done = threading.Condition(lock)  # told when the last tracked job ends
        self._quiet = True  # no job, and the results of those that ended handed to `on_settled`
        self.version = 0
        self._pending: list[Update] = []  # this loop turn's news (loop thread only)
        self._handing_over = False  # a hand-over is due at the end of this loop turn (loop thread only)
        self._starts_timer: asyncio.TimerHandle | None = None  # pending starts' hand-over (loop thread only)
        self._jobs: dict[int, DispyJob] = {}  # unfinished, by uid
        self._ending: dict[int, DispyJob] = {}  # out of `_jobs`, their results being applied (`_end`), by uid
        self._nodes: dict[str, DispyNode] = {}
        self._ended: deque[Ended] = deque(maxlen=ENDED_KEPT)
        self._submitted = self._running = self._done = self._failed = 0
        self._queue: queue.SimpleQueue[Update | Turn | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._dispatch_loop, name=f"dispy-{name}-callbacks", daemon=True)
        self._thread.start()

    # ------------------------------------------------------ user threads

    def add(self, job: DispyJob) -> None:
        """Tracks a job about to be submitted."""
        with self.changed:
            self._jobs[job._uid] = job
            self._quiet = False
            self._submitted += 1
            self._bump()
        if self._cluster_status is not None:  # dispy: cluster_status(Created, None, job) at each submit
            self._queue.put(Created(job))

    def get(self, uid: int) -> DispyJob | None:
        with self.changed:
            return self._jobs.get(uid)

    def cancellable(self, job: DispyJob) -> bool:
        """Whether `job` is one of ours that has not ended (and may be cancelled).

        A job whose result is being applied (out of the table, not yet marked
        ended: its result unpickled meanwhile) is waited for, so a caller told
        "no, it ended" finds it ended. Not on the dispatcher thread, which is
        the one applying it (a callback or an unpickled result's own code).
        """
        with self.changed:
            if self._jobs.get(job._uid) is job:
                return True
            if threading.current_thread() is not self._thread:
                self.changed.wait_for(lambda: self._ending.get(job._uid) is not job)
            return False

    def unfinished(self) -> list[DispyJob]:
        with self.changed:
            return list(self._jobs.values())

    def ended(self) -> list[Ended]:
        """The last `ENDED_KEPT` jobs that ended, oldest first."""
        with self.changed:
            return list(self._ended)

    def counts(self) -> Counts:
        with self.changed:
            return Counts(self._submitted, self._running, self._done, self._failed)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until every tracked job has ended; False on timeout."""
        with self._all_done:
            return self._all_done.wait_for(lambda: not self._jobs and self._quiet, timeout)

    def wait_change(self, seen: int, timeout: float | None = None) -> int:
        """Waits until `version` differs from `seen` (or `timeout`); returns it."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen, timeout)
            return self.version

    def cap(self, name: str, cpus: int) -> None:
        """This cluster may use `cpus` of node `name`: its `DispyNode.cpus` says so, as in dispy."""
        with self.changed:
            self._caps[name] = cpus
            node = self._nodes.get(name)
            if node is not None:
                node.cpus = min(self._totals.get(name) or node.cpus or cpus, cpus)

    def total_cpus(self, name: str) -> int | None:
        """The CPUs node `name` offers, from its reports; None if this cluster had none (it watches no nodes)."""
        with self.changed:
            return self._totals.get(name)

    def nodes(self) -> dict[str, DispyNode]:
        """This cluster's nodes by name (live records: read, do not change)."""
        with self.changed:
            return dict(self._nodes)

    def release(self) -> None:
        """The cluster's constructor has returned: callbacks may run."""
        self._released.set()

    def close(self) -> None:
        """Tells `cluster_status` the nodes are closed, then stops the dispatcher thread."""
        if not self._released.is_set():  # a constructor that failed: its cluster's callbacks never run
            self._cluster_status = self._job_status = self._on_node_joined = None
            self._released.set()
        if self._cluster_status is not None:
            self._queue.put(Closed())
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------ loop thread

    def deliver(self, news: News) -> None:
        """Hands a message's worth of news to the dispatcher, which applies it in order.

        On the loop thread, news is queued together at the end of the loop's turn (`_hand_over`),
        starts alone within `STARTS_DELAY`; node news goes at once (after those), as `wait_announced` expects.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        match news:
            case Started() if loop is not None:
                self._pending.append(news)
                if self._starts_timer is None and not self._handing_over:
                    self._starts_timer = loop.call_later(STARTS_DELAY, self._hand_over)
            case Provisional() | Files() | Results() | Unusable() if loop is not None:
                self._pending.append(news)
                if not self._handing_over:
                    self._handing_over = True
                    loop.call_soon(self._hand_over)
            case Nodes(infos):
                if loop is not None:
                    self._hand_over()
                self._queue.put(news)
                with self.changed:
                    self._announced.update(info.name for info in infos if info.event == "joined")
                    self.changed.notify_all()
            case _:  # from no loop (a test, recover_jobs' set-up): queued at once
                self._queue.put(news)

    def _hand_over(self) -> None:
        """The loop turn's items to the dispatcher, in one queue item."""
        self._handing_over = False
        if self._starts_timer is not None:
            self._starts_timer.cancel()
            self._starts_timer = None
        if self._pending:
            updates, self._pending = self._pending, []
            self._queue.put(Turn(updates))

    def wait_announced(self, name: str, timeout: float) -> bool:
        """Waits until the scheduler has told of node `name` joining (queued for the dispatcher, in order)."""
        with self.changed:
            return self.changed.wait_for(lambda: name in self._announced, timeout)

    # ------------------------------------------------ dispatcher thread

    def _dispatch_loop(self) -> None:
        self._released.wait()
        stopping = False
        while not stopping:
            wait = None if not self._settled else max(0.0, self._settled_since + ACK_DELAY - time.monotonic())
            try:
                entry = self._queue.get(timeout=wait)
            except queue.Empty:
                self._settle()
                continue
            updates: list[Update] = []
            while True:  # and whatever queued up while we were busy: applied together, in fewer, longer lists
                if entry is None:
                    stopping = True
                    break
                updates.extend(entry.updates if isinstance(entry, Turn) else (entry,))
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            for update in merged(updates):
                self._dispatch(update)
            idle = not self._jobs  # the program may close the cluster now: its results acknowledged first
            if self._settled and (idle or self._queue.empty() and (
                len(self._settled) >= ACK_BATCH or time.monotonic() - self._settled_since >= ACK_DELAY
            )):  # fmt: skip
                self._settle()
            if idle:
                with self._all_done:
                    if not self._jobs:  # none added meanwhile
                        self._quiet = True
                        self._all_done.notify_all()
        self._settle()

    def _settle(self) -> None:
        """The settled ids to `on_settled` (the scheduler may drop those results)."""
        if not self._settled:
            return
        settled, self._settled = self._settled, []
        if self.on_settled is not None:
            try:
                self.on_settled(settled)
            except Exception:
                log.exception("cannot acknowledge %d results", len(settled))

    def _dispatch(self, update: Update) -> None:
        """One update: the scheduler's news (`deliver`), a job created, or the cluster closing."""
        try:
            match update:
                case Results(results):
                    self._on_results(results)
                case Started(starts):
                    self._on_started(starts)
                case Provisional(results):
                    for r in results:
                        self._guarded(self._on_provisional, r)
                case Files(files):
                    for f in files:
                        self._guarded(self._on_file, f)
                case Nodes(infos):
                    for info in infos:
                        self._guarded(self._on_node, info)
                case Unusable(notes):
                    for note in notes:
                        self._guarded(self._on_unusable, note)
                case Created(job):
                    self._notify(DispyJob.Created, None, job)
                case Closed():
                    for node in self.nodes().values():
                        self._notify(DispyNode.Closed, node, None)
                case _:
                    assert_never(update)
        except Exception:
            log.exception("error while handling a job update")

    @staticmethod
    def _guarded(handle: Callable[[Any], Any], record: Any) -> None:
        """`handle(record)`: an error is logged, and the records after it are still handled."""
        try:
            handle(record)
        except Exception:
            log.exception("error while handling a job update")

    def _on_results(self, results: list[M.JobResult]) -> None:
        """Terminal results, ended together (`_end`); each then settled, unless handling its job failed."""
        ok = [
            r if result_mac.result_ok(self._result_key, self._cluster_id, r) else self._forged(r.job_id, "a result")
            for r in results
        ]
        failed = self._end(ok)
        if not self._settled:
            self._settled_since = time.monotonic()
        self._settled.extend(r.job_id for r in results if r.job_id not in failed)

    def _on_started(self, starts: list[M.JobStart]) -> None:
        """Jobs started: all marked Running under one lock, then each one's callbacks, in order."""
        started: list[tuple[DispyJob, DispyNode]] = []
        now = time.time()
        with self.changed:
            for start in starts:
                job = self._jobs.get(start.job_id)
                if job is None:
                    continue
                if job.status in ACTIVE:  # rerun elsewhere (reentrant): leaves its old node
                    self._nodes[job.node or ""].busy -= 1
                    self._running -= 1
                job.status = DispyJob.Running
                job.ip_addr, job.node, job.start_time = start.ip_addr, start.node, start.time
                node = self._nodes.get(start.node)
                if node is None:
                    node = self._nodes[start.node] = DispyNode(start.ip_addr, start.node, 0)
                node.busy += 1
                node.update_time = now
                self._running += 1
                started.append((job, node))
            if started:
                self._bump()
        for job, node in started:
            try:
                self._node_initialized(node)  # no news of it before (e.g. no node updates): its job shows it set up
                self._job_changed(job, node)
            except Exception:
                log.exception("error while handling the start of %r", job)

    def _node_initialized(self, node: DispyNode) -> None:
        """`cluster_status(Initialized)` for `node`, once until it leaves."""
        if node.name not in self._initialized:
            self._initialized.add(node.name)
            self._notify(DispyNode.Initialized, node, None)

    def _on_node(self, info: M.NodeInfo) -> None:
        """A node joined, reported or left: its record, then `cluster_status` (and allocation)."""
        with self.changed:
            node = self._nodes.get(info.name)
            if node is None:
                node = self._nodes[info.name] = DispyNode(info.ip_addr, info.name, info.cpus)
            self._totals[info.name] = info.cpus
            cap = self._caps.get(info.name)
            node.ip_addr, node.cpus = info.ip_addr, info.cpus if cap is None else min(info.cpus, cap)
            node.avail_cpus = max(0, info.cpus - info.busy)
            node.avail_info = DispyNodeAvailInfo.from_report(info.avail)
            node.platform = str(info.avail.get("platform", node.platform))
            node.update_time = time.time()
            self._bump()
        if info.event == "joined":
            granted = self._on_node_joined(node) if self._on_node_joined is not None else info.cpus
            if granted > 0:
                self._node_initialized(node)
        elif info.event == "left":
            self._initialized.discard(node.name)
            self._notify(DispyNode.Closed, node, None)
        elif node.name in self._initialized:  # dispy reports the resources of the cluster's nodes only
            self._notify(DispyNode.AvailInfo, node, None)

    def _on_unusable(self, msg: M.NodeUnusable) -> None:
        """The cluster will not run on a node: said in the log, and to `cluster_status` as the node's
        `Closed` (dispy's status for a node that no longer serves the cluster), with `node.failure` saying why."""
        log.warning("cluster %s cannot run on node %s: %s", self._name, msg.node, msg.reason)
        with self.changed:
            node = self._nodes.get(msg.node)
            if node is None:
                node = self._nodes[msg.node] = DispyNode(msg.ip_addr, msg.node)  # dispy's order: address, name
            node.failure = msg.reason
            node.update_time = time.time()
            self._bump()
        self._notify(DispyNode.Closed, node, None)

    def _on_provisional(self, r: M.JobResult) -> None:
        """`dispy_provisional_result` in the job: status and result now; the job goes on."""
        if not result_mac.result_ok(self._result_key, self._cluster_id, r):
            self._end([self._forged(r.job_id, "a provisional result")])
            return
        job = self.get(r.job_id)
        if job is None:
            return
        try:
            job.result = loads(r.result) if r.result is not None else None
        except BaseException as exc:  # unpickling runs the result's own code: even its SystemExit must not end
            # this thread (the dispatcher), or no later job of the cluster would ever end
            log.warning("cannot unpickle a provisional result of %r: %s", job, exc)
            return
        job.status = DispyJob.ProvisionalResult
        with self.changed:
            self._bump()
        self._job_changed(job, self._nodes.get(job.node or ""))

    def _on_file(self, f: M.JobFile) -> None:
        """`dispy_send_file` in the job: saved under its base name in `dest_path`, before the job ends."""
        if not result_mac.file_ok(self._result_key, self._cluster_id, f):
            self._end([self._forged(f.job_id, f"a file ({f.name!r})")])
            return
        name = os.path.basename(f.name) or "unnamed"
        try:
            save_sent_file(self._dest_path, name, f.data)  # 0600, through no symbolic link
        except OSError as exc:
            log.error("cannot save %s sent by job %d in %s: %s", name, f.job_id, self._dest_path, exc)

    def _forged(self, job_id: int, what: str) -> M.JobResult:
        """A record failed its MAC check: nothing of it is used; returns the `Terminated` result its job ends with."""
        log.warning("%s for job %d of cluster %s failed authentication (bad or missing MAC): not used",
                    what, job_id, self._cluster_id)  # fmt: skip
        job = self.get(job_id)
        if job is not None:
            job.result = None  # not even an earlier provisional result: the job's outcome is this failure
        status, now = int(JobStatus.TERMINATED), time.time()
        return M.JobResult(self._cluster_id, job_id, status, None, b"", b"", FORGED_TEXT, FORGED_TYPE, 0.0, now)

    def _end(self, results: list[M.JobResult]) -> set[int]:
        """The jobs' ends (each result authentic, or carrying nothing to unpickle), in order.

        Each job gets one end: the session hands on only a job's first
        terminal result, and a job ends here by leaving `_jobs` (under the lock,
        first), so any later result of it, one this tracker made (a forged
        record) included, finds no job and is not applied. Jobs are then filled
        in (results unpickled: user code, so outside the lock; meanwhile they
        are in `_ending`, which `cancellable` waits on), marked ended
        under one lock with one wake-up of `changed`'s waiters, and each one's
        callbacks and watchers run. Returns the ids whose handling failed (not settled).
        """
        jobs, ending = self._jobs, self._ending
        ended: list[tuple[DispyJob, bool]] = []
        with self.changed:
            for r in results:
                job = jobs.pop(r.job_id, None)
                if job is not None:
                    ended.append((job, job.status in ACTIVE))
                    ending[job._uid] = job  # until marked ended below: `cancellable` waits for that
        if not ended:
            return set()
        try:
            raw_output = self._raw_output
            by_id = {r.job_id: r for r in reversed(results)}  # each job's first: the one it was popped for
            for job, _ in ended:
                fill_job(job, by_id[job._uid], raw_output)
        finally:  # marked ended even if filling one failed: nobody waits on them for ever
            changed = self._mark_ended(ended)
        if any(job.finish.waited() for job, _ in changed):
            # a thread blocked on one of these jobs (`job()`, `job.finish.wait()`) was just woken: let it have the
            # GIL now, not after this thread's callbacks and acknowledgements (about 0.1-0.2 ms of a round trip)
            time.sleep(0)
        failed: set[int] = set()
        for job, node in changed:
            try:
                self._job_changed(job, node)
            except Exception:
                log.exception("error while handling the end of %r", job)
                failed.add(job._uid)
        return failed

    def _mark_ended(self, ended: list[tuple[DispyJob, bool]]) -> list[tuple[DispyJob, DispyNode | None]]:
        """Counts the filled-in `ended` jobs (each: whether it was running), sets their `finish`, wakes the waiters
        once; returns each job with its node."""
        nodes = self._nodes
        changed: list[tuple[DispyJob, DispyNode | None]] = []
        with self.changed:
            now = time.time()
            for job, was_running in ended:
                del self._ending[job._uid]
                node = nodes.get(job.node or "")
                if node is not None and was_running:
                    node.busy -= 1
                    node.jobs_done += 1
                    node.cpu_time += max(0.0, job.end_time - job.start_time) if job.end_time and job.start_time else 0.0
                    node.update_time = now
                    self._running -= 1
                self._done += 1
                self._failed += job.status != DispyJob.Finished
                self._ended.append(
                    Ended(job._uid, job.id, job.status, job.node, job.submit_time, job.start_time, job.end_time)
                )
                job.finish.set()
                changed.append((job, node))
            self._bump()
        return changed

    def _job_changed(self, job: DispyJob, node: DispyNode | None) -> None:
        if self._job_status is not None and job.status != DispyJob.Running:  # dispy: ends and provisional results
            try:
                self._job_status(job)
            except Exception:
                log.exception("job_status callback raised for %r", job)
        self._notify(job.status, node, job)  # dispy too passes no node for a job that never ran
        job._changed()

    def _notify(self, status: int, node: DispyNode | None, job: DispyJob | None) -> None:
        if self._cluster_status is None:
            return
        try:
            self._cluster_status(status, node, job)
        except Exception:
            log.exception("cluster_status callback raised for %r", node)

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()


def merged(updates: list[Update]) -> list[Update]:
    """`updates` with each run of job news folded into one list per kind: starts, provisional results, files, ends.

    That order is each job's own (it starts, sends, then ends), so a job's
    callbacks keep their order; a start of a job that already has news in
    the run (a rerun elsewhere), or a provisional result of a job that already
    sent a file in it (`dispy_send_file` then `dispy_provisional_result`),
    closes the run first. Node news, a job created and the close keep their
    place between runs.
    """
    if len(updates) < 3:
        return updates
    out: list[Update] = []
    starts: list[M.JobStart] = []
    provisional: list[M.JobResult] = []
    files: list[M.JobFile] = []
    results: list[M.JobResult] = []
    touched: set[int] = set()  # jobs with provisional results, files or ends in the run
    filed: set[int] = set()  # jobs with files in the run (a run's provisional results go out before its files)

    def close_run() -> None:
        if starts:
            out.append(Started(starts.copy()))
        if provisional:
            out.append(Provisional(provisional.copy()))
        if files:
            out.append(Files(files.copy()))
        if results:
            out.append(Results(results.copy()))
        for records in (starts, provisional, files, results, touched, filed):
            records.clear()

    for update in updates:
        match update:
            case Started(records):
                if touched and not touched.isdisjoint(start.job_id for start in records):
                    close_run()
                starts.extend(records)
            case Provisional(records):
                if filed and not filed.isdisjoint(r.job_id for r in records):
                    close_run()
                provisional.extend(records)
                touched.update(r.job_id for r in records)
            case Files(records):
                files.extend(records)
                touched.update(f.job_id for f in records)
                filed.update(f.job_id for f in records)
            case Results(records):
                results.extend(records)
                touched.update(r.job_id for r in records)
            case Nodes() | Unusable() | Created() | Closed():
                close_run()
                out.append(update)
            case _:
                assert_never(update)
    close_run()
    return out


def fill_job(job: DispyJob, r: M.JobResult, raw_output: bool = False) -> None:
    """Copies a terminal result into `job` (unpickling the value: user code may run).

    `raw_output`: stdout and stderr stay bytes (a program's output, as dispy gives it).
    """
    job.status = r.status
    job.stdout = r.stdout if raw_output else r.stdout.decode(errors="replace")
    job.stderr = r.stderr if raw_output else r.stderr.decode(errors="replace")
    if r.start_time:
        job.start_time = r.start_time
    job.end_time = r.end_time
    job.exception = r.exception or None
    job.exception_type = r.exception_type or None
    if r.status == DispyJob.Finished and r.result is not None:  # a plain int: no enum lookup per job
        try:
            job.result = loads(r.result)
        except BaseException as exc:  # unpickling runs the result's own code: even its SystemExit must not end
            # this thread (the dispatcher), or no later job of the cluster would ever end
            job.status = DispyJob.Terminated
            job.exception = f"cannot unpickle the job's result here: {type(exc).__name__}: {exc}"
            job.exception_type = type(exc).__name__
