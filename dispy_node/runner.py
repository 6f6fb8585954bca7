"""The daemon's side of the zygotes: one per loaded cluster, driven over pipes.

Theory of operation. `Runner` owns every cluster of one scheduler session.
`load` makes the cluster's directory, starts a zygote (`python -m
dispy_node.zygote`, its own session, as the account jobs run as) and sends it
the computation; jobs that arrive before it answers `Ready` wait in a queue,
as do jobs beyond the cluster's own CPU cap (`LoadCluster.options["cpus"]`).
A zygote that is not `Ready` within the setup timeout is killed and its
cluster fails here. Each job's limits are merged here (`limits.effective`)
from the node's caps and the cluster's and job's options, and travel to the
zygote as plain numbers. Each job the runner accepts is owed exactly one `JobResult`, handed to
`on_result`, except when the cluster fails to load (`on_failed`: the scheduler
requeues its jobs itself) and after `close()` (the session is gone; nothing is
reported any more).

Each load is one incarnation of its cluster (`lifecycle.py`): its phase
(starting, ready, unloading, failed, stopped, retired) changes only by that
module's transition table, and the chain per cluster id there is the only
record of which incarnation is live and which are ending; a later load of the
same id starts its zygote only once every earlier one is retired (`gone`).

Zygote death: a zygote that exits without being asked to is a failure of its
cluster on this node. Its started jobs are killed (by process group, from the
pids it reported) and reported TERMINATED, since they may have run; jobs still
queued are dropped; then `on_failed`. It is not restarted: a zygote that died
once (OOM killer, a crashing extension module) would likely die again, and the
scheduler can still run the cluster on other nodes.

Queue: the scheduler may send more jobs than the node has CPUs (its prefetch
window), so that the next job is here when a CPU frees. The runner starts at
most `slots` jobs at once across its clusters (the CPUs the node offers; None:
no bound), oldest arrival first, each when a CPU frees, and reports each start
(`on_started`): until then the job is queued here, not running; a kill drops
it with its result at once, and a recall (`recall`) drops it without one, the
scheduler taking it back. `busy` counts the jobs owed a result. A result comes
only once the job's whole process tree is gone (the zygote sees to that; if
the zygote itself dies, `_died` hunts the orphans by their mark).

Sent on (worker isolation): while every offered CPU is busy, a cluster's
queued jobs are sent on to its zygote, `NEXT_DEPTH` per running job
(`zp.RunNext`), which starts each in the place of a job of that cluster that
ends after it came: a worker finds its next job at hand instead of waiting
a round trip through this process. While several clusters have jobs queued,
only those whose jobs are short (`SHORT_RUN`) send theirs on, and none once
another cluster has waited `OVERTAKEN_FOR` without a start (`_send_next`). Such a job is owed a result but is not
running (`running`) until the zygote's Started, which comes before the Done
of the job whose place it took, so this process never counts fewer jobs
running than there are. One still waiting when a CPU frees here is started
at once (`zp.StartNext`); when the offer shrinks, or the scheduler recalls
one, those not started are taken back (`zp.Withdraw`; the recalled ones are
returned late, `on_returned`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from dispy_wire import isolation, result_mac
from dispy_wire.cluster_options import BadOptions, ClusterOptions, JobOptions
from dispy_wire.framing import FrameDecoder
from dispy_wire.messages import JobFile, JobRef, JobResult, RunJob
from dispy_wire.status import JobStatus

from . import account, cgroups, channel, job_process, killtree, limits, workdir
from .account import Account, AccountPool, PoolExhausted
from .lifecycle import Chains, Incarnation, Phase
from .worker import AHEAD, WorkerPolicy
from . import zygote_protocol as zp

logger = logging.getLogger(__name__)

ResultSink = Callable[[JobResult], None]
StartSink = Callable[[JobRef], None]
ReturnSink = Callable[[list[JobRef]], None]
FileSink = Callable[[JobFile], None]
FailureSink = Callable[[str, str], None]

#: a cluster id becomes a directory name: nothing that could climb out of work_dir
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: the statuses a job ends with on a node
_ENDS = {JobStatus.FINISHED, JobStatus.TERMINATED, JobStatus.CANCELLED, JobStatus.ABANDONED}
#: beyond kill_grace, how long a zygote gets to exit after its stdin is closed, before SIGKILL
STOP_SLACK = 3.0
#: beyond kill_grace, how long an Unload may take (cleanup included)
UNLOAD_SLACK = 10.0
#: jobs sent on to a worker cluster's zygote per running job (`_send_next`): its workers' jobs handed
#: ahead (worker.AHEAD) and one more, so that a place that frees there is taken at once
NEXT_DEPTH = AHEAD + 1
#: seconds a worker cluster's jobs run, on average (`_Cluster.run_time`), at most for its jobs to be sent on while
#: other clusters have jobs queued too: those wait behind its jobs sent on, so only where that wait is short
#: (about the scheduler's prefetch target, the queued work per CPU it aims at where jobs are short)
SHORT_RUN = 0.005
#: weight of each job's run time in the cluster's average (`_Cluster.run_time`)
_RUN_WEIGHT = 0.2
#: seconds a cluster's queued jobs may wait, none of its jobs starting, while other clusters' jobs sent on take the
#: places that free (`_send_next`); then no more are sent on until one of its starts: no cluster waits for long
OVERTAKEN_FOR = 0.02


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """What the runner needs of the node's settings.

    Args:
        work_dir: clusters' directories are made under it (`<work_dir>/<cluster_id>`).
        kill_grace: seconds between SIGTERM and SIGKILL when a job is killed.
        account: who zygotes and jobs run as.
        accounts: with --job-uids, the pool each cluster takes a uid of its own from (instead of `account`).
        caps: the node's limits; clusters and jobs may ask for less.
        max_output: bytes kept of each job's stdout and of its stderr.
        setup_timeout: seconds a zygote has to load and run `setup`.
        node_name, node_ip_addr: what jobs see as `dispy_node_name` and `dispy_node_ip_addr`.
        cgroups: where jobs make their control groups (`cgroups.prepare`), or None.
        spawn: start each job as a new interpreter instead of a fork (see loading.py).
        workers: the default isolation of clusters that do not choose one, and when workers are retired.
    """

    work_dir: Path
    kill_grace: float = 5.0
    account: Account | None = None
    accounts: AccountPool | None = None
    caps: limits.Limits = limits.Limits()
    max_output: int = 4 << 20
    setup_timeout: float = 60.0
    node_name: str = ""
    node_ip_addr: str = ""
    cgroups: cgroups.JobGroups | None = None
    spawn: bool = not hasattr(os, "fork")
    workers: WorkerPolicy = WorkerPolicy()

    @property
    def run_as(self) -> Account:
        return self.account or account.resolve(None)


class _Remnant:
    """An unload of a cluster that is not loaded: only its directory to remove."""

    def __init__(self) -> None:
        self.end_task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()


class Runner:
    """Every cluster of one scheduler session.

    Args:
        config: the node's settings.
        on_result: receives each job's one result.
        on_failed: receives (cluster_id, message) when a cluster cannot run here.
        on_file: receives files jobs send back (`dispy_send_file`); None drops them.
    """

    def __init__(
        self, config: RunnerConfig, on_result: ResultSink, on_failed: FailureSink, on_file: FileSink | None = None,
        on_started: StartSink | None = None, on_returned: ReturnSink | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.work_dir = config.work_dir
        self.kill_grace = config.kill_grace
        self.account = config.run_as
        self._on_result = on_result
        self._on_failed = on_failed
        self._on_file = on_file
        #: every cluster id's incarnations (lifecycle.py): the only record of which is live and which are ending
        self._chains: Chains[_Cluster | _Remnant] = Chains()
        self._closed = False
        self._on_started = on_started
        self._on_returned = on_returned
        #: jobs started at once at most, across clusters (the CPUs the node offers); None: every job as it comes
        self.slots: int | None = None
        #: numbers jobs as they arrive: queued jobs start oldest first, whatever their cluster
        self.arrivals = itertools.count()

    @property
    def empty(self) -> bool:
        """No cluster at all, loaded or ending: so no job it still owes a result."""
        return next(self._chains.all_live(), None) is None and next(self._chains.ending(), None) is None

    @property
    def busy(self) -> int:
        """Jobs received and not yet reported."""
        return sum(c.owed for c in self._live())

    @property
    def running(self) -> int:
        """Jobs started (handed to their zygotes) and not yet ended: at most `slots`."""
        return sum(c.running for c in self._live())

    @property
    def clusters(self) -> int:
        """Clusters loaded (or loading), unloads in progress included."""
        return sum(1 for _ in self._chains.all_live()) + sum(1 for _ in self._chains.ending())

    def _live(self) -> list[_Cluster]:
        return [inc.body for inc in self._chains.all_live() if isinstance(inc.body, _Cluster)]

    def _live_one(self, cluster_id: str) -> _Cluster | None:
        inc = self._chains.live(cluster_id)
        return inc.body if inc is not None and isinstance(inc.body, _Cluster) else None

    def load(self, cluster_id: str, computation: bytes, options: Mapping[str, Any] | None = None) -> None:
        """Starts the cluster's zygote; a repeated load of a live cluster is ignored.

        Options the node acts on: `keep_files` (leave job directories behind),
        `cpus` (run at most that many of its jobs at once here), `setup_timeout`,
        `isolation` (`dispy_wire.isolation`), and default limits for its jobs
        (`timeout`, `memory`, `cpu_time`, `open_files`).
        """
        if self._chains.live(cluster_id) is not None:
            logger.info("cluster %s is already loaded", cluster_id)
            return
        if not _safe_id(cluster_id):
            self.cluster_failed(cluster_id, f"cluster id {cluster_id!r} is not a safe directory name")
            return
        try:
            settings = _ClusterSettings.parse(dict(options or {}), self.config)
        except limits.BadOption as exc:
            self.cluster_failed(cluster_id, str(exc))
            return

        def make(before: Incarnation[_Cluster | _Remnant] | None) -> _Cluster:
            return _Cluster(self, cluster_id, computation, settings, before.body.gone if before is not None else None)

        inc = self._chains.begin(cluster_id, make)
        assert inc is not None and isinstance(inc.body, _Cluster)  # none was live
        inc.body.start(inc)

    def run(self, jobs: Iterable[RunJob]) -> None:
        """Starts jobs, in one write per cluster."""
        by_cluster: dict[str, list[RunJob]] = {}
        for job in jobs:
            by_cluster.setdefault(job.cluster_id, []).append(job)
        for cluster_id, batch in by_cluster.items():
            cluster = self._live_one(cluster_id)
            if cluster is not None:
                cluster.run(batch)
            elif not self._chains.dropping(cluster_id):
                for job in batch:
                    self.report(_verdict(cluster_id, job.job_id, JobStatus.TERMINATED, "unknown cluster"))

    def set_slots(self, slots: int | None) -> None:
        """Starts at most `slots` jobs at once from now on (more, if it grew, at once; none is stopped).

        Fewer: jobs sent on to take running ones' places are taken back (those not started yet come
        back to the queue), so no more jobs start than are offered."""
        if slots is not None and (self.slots is None or slots < self.slots):
            for cluster in self._live():
                cluster.withdraw_next()
        self.slots = slots
        self.start_waiting()

    def start_waiting(self) -> None:
        """Starts queued jobs while a slot is free: the oldest first, across the ready clusters; then
        sends jobs on to take the places of running ones (`_send_next`)."""
        live = self._live()  # once: this runs at each job's end
        held = [c for c in live if c.hold_writes()]
        try:
            self._start_free(live)
            self._send_next(live)
        finally:
            for cluster in held:  # what each zygote got here goes in one write
                cluster.flush_writes()

    def _start_free(self, live: list[_Cluster]) -> None:
        clusters = [c for c in live if c.startable]
        if not clusters:
            return
        free = None if self.slots is None else self.slots - sum(c.running for c in live)
        if free is not None and free <= 0:
            return
        # the first `free` arrivals among the queues' heads (each queue is in arrival order)
        heads = sorted((arrival, i) for i, c in enumerate(clusters) for arrival in c.waiting(free))
        share = [0] * len(clusters)
        for _, i in heads[:free] if free is not None else heads:
            share[i] += 1
        for cluster, n in zip(clusters, share):
            if n:
                cluster.start_queued(n)

    def _send_next(self, live: list[_Cluster]) -> None:
        """Every slot busy: a worker cluster's queued jobs go to its zygote as the next job of each running
        one (`zp.RunNext`), so a worker that ends a job finds the next at hand, with no round trip through
        this process; only while no more jobs run than offered (after the offer shrank, each place that
        frees goes).

        While several clusters have jobs queued, each place that frees should go to the oldest arrival,
        whichever cluster's it is; a job sent on takes the place of one of its own cluster's instead, before
        older jobs of others. So then only clusters whose jobs are short (`SHORT_RUN` on average) send
        theirs on: the others' wait a few milliseconds more, as the scheduler's prefetch window already
        makes them wait, and a free slot still goes to the oldest (`_start_free`); and only until a cluster
        that could start a job has waited `OVERTAKEN_FOR` with none of its jobs starting: then none is sent on
        until one of its starts, so the scheduler's fair share, which counts jobs sent to the node, is not
        undone here. Clusters whose jobs take longer keep the strict order: none of theirs is sent on."""
        queued = [c for c in live if c.queued and c.takes_next]
        if not queued or (self.slots is not None and sum(c.running for c in live) > self.slots):
            return
        several = sum(1 for c in live if c.queued) > 1
        if several:
            now = time.monotonic()
            if any(c.startable and now - c.unstarted_since > OVERTAKEN_FOR for c in live if c.queued):
                return  # (those sent on already run out: then a place that frees goes to the oldest)
        for cluster in queued:
            if not several or cluster.run_time <= SHORT_RUN:
                cluster.send_next()

    def recall(self, refs: Iterable[JobRef]) -> list[JobRef]:
        """Drops the jobs of `refs` still queued, reporting nothing of them: those returned (they never start here).

        One sent on to its zygote to take a running job's place (`_send_next`) is asked back: if it had not
        started, it goes to `on_returned` once the zygote gives it back; else it ends here as it would."""
        returned = []
        for ref in refs:
            cluster = self._live_one(ref.cluster_id)
            if cluster is not None and cluster.recall(ref.job_id):
                returned.append(ref)
        return returned

    def returned(self, refs: list[JobRef]) -> None:
        if not self._closed and self._on_returned is not None:
            self._on_returned(refs)

    def kill(self, refs: Iterable[JobRef], reason: str = "", status: JobStatus = JobStatus.CANCELLED) -> None:
        """Kills jobs' trees; each is reported with `status` and `reason` (unless its result is already out)."""
        for ref in refs:
            cluster = self._live_one(ref.cluster_id)
            if cluster is not None:
                cluster.kill(ref.job_id, reason, status)

    def give_up_all(self, reason: str) -> None:
        """Kills every job of every cluster; each is reported ABANDONED with `reason`, so the
        scheduler reruns it elsewhere if its cluster is reentrant."""
        for cluster in self._live():
            for job_id in cluster.job_ids():
                cluster.kill(job_id, reason, JobStatus.ABANDONED)

    def unload(self, cluster_id: str) -> asyncio.Task[None]:
        """Cancels the cluster's jobs, runs its cleanup, stops its zygote, removes its directory.

        Returns:
            The task doing it, which may take `kill_grace` seconds and more; a
            new load of the same cluster meanwhile waits for it.
        """
        self._chains.forget_failure(cluster_id)
        inc = self._chains.live(cluster_id)
        if inc is not None:
            assert isinstance(inc.body, _Cluster)
            # a ready zygote cancels its jobs and runs cleanup; one still loading is just stopped
            inc.to(Phase.UNLOADING if inc.phase is Phase.READY else Phase.STOPPED, "unload asked")
            return self._ending(inc, self._unload(inc.body))
        newest = self._chains.newest(cluster_id)
        if newest is not None and newest.body.end_task is not None:  # failed or unloading already: that end is the one
            return newest.body.end_task
        return self._ending(self._chains.remnant(cluster_id, _Remnant()), self._remove_dir(cluster_id))

    def _ending(self, inc: Incarnation[_Cluster | _Remnant], coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Runs an incarnation's end; once it is over the incarnation is retired, and a later one may start."""
        task = asyncio.create_task(coro)
        inc.body.end_task = task

        def ended(_: asyncio.Task[None]) -> None:
            if inc.phase is not Phase.STOPPED:  # its end failed before stopping it: it is over all the same
                inc.to(Phase.STOPPED, "end task over")
            self._chains.retire(inc)
            inc.body.gone.set()

        task.add_done_callback(ended)
        return task

    async def _unload(self, cluster: _Cluster) -> None:
        try:
            await cluster.unload()
        finally:  # whatever went wrong, its processes, group, directory and uid are dealt with
            await cluster.retire(remove_dir=not cluster.settings.keep_files)

    async def _remove_dir(self, cluster_id: str) -> None:
        if _safe_id(cluster_id):
            await asyncio.to_thread(shutil.rmtree, self.work_dir / cluster_id, True)

    async def _discard(self, cluster: _Cluster) -> None:
        try:
            await cluster.stop()
        finally:
            await cluster.retire(remove_dir=True)

    def held(self) -> tuple[list[JobRef], list[str]]:
        """The jobs this runner owes results for, and the clusters it has loaded (not those ending)."""
        live = self._live()
        return [JobRef(c.cluster_id, job_id) for c in live for job_id in c.job_ids()], [c.cluster_id for c in live]

    async def close(self) -> None:
        """Kills every job tree and zygote (SIGTERM, grace, SIGKILL), removes their directories
        (unless kept); reports nothing more."""
        self._closed = True
        live = list(self._chains.all_live())
        ending = list(self._chains.ending())
        tasks = [i.body.end_task for i in ending if i.body.end_task is not None]  # they retire theirs
        stopping = [i.body for i in live + ending if isinstance(i.body, _Cluster)]
        await asyncio.gather(*(c.stop() for c in stopping), *tasks, return_exceptions=True)
        for inc in live:
            assert isinstance(inc.body, _Cluster)
            await inc.body.retire(remove_dir=not inc.body.settings.keep_files)
            self._chains.retire(inc)
            inc.body.gone.set()

    # -- from the clusters ---------------------------------------------------

    def report(self, result: JobResult) -> None:
        if not self._closed:
            self._on_result(result)

    def started(self, ref: JobRef) -> None:
        if not self._closed and self._on_started is not None:
            self._on_started(ref)

    def put_file(self, cluster_id: str, name: str, data: bytes, mode: int, reply: Callable[[bool, str], None]) -> None:
        """Adds a file to a cluster's directory (`send_file`); `reply(ok, message)` says how it went."""
        cluster = self._live_one(cluster_id)
        if cluster is None:
            reply(False, f"cluster {cluster_id} is not loaded on this node")
        else:
            cluster.put_file(name, data, mode, reply)

    def send_file(self, file: JobFile) -> None:
        if not self._closed and self._on_file is not None:
            self._on_file(file)

    def mark_failed(self, which: _Cluster, why: str) -> None:
        """`which` (if still the live incarnation) fails now; `cluster_failed` ends it later."""
        self._chains.fail(which.life, why)

    def cluster_failed(self, cluster_id: str, message: str, which: _Cluster | None = None) -> None:
        """The cluster cannot run here: its zygote goes, its late jobs are dropped.

        `which`: the incarnation that failed; an earlier one, ending already, fails nothing.
        None: the load was refused before any incarnation began.
        """
        if which is None:
            self._chains.refuse(cluster_id)
        elif which.end_task is not None:  # ending already: that end stands
            return
        elif which.life.phase is not Phase.FAILED and not self._chains.fail(which.life, message):
            logger.info("cluster %s: an ended incarnation failed (%s); ignored", cluster_id, message)
            return
        if which is not None:
            which.fail_puts(f"cluster failed on this node: {message}")
            self._ending(which.life, self._discard(which))
        logger.warning("cluster %s cannot run here: %s", cluster_id, message)
        if not self._closed:
            self._on_failed(cluster_id, message)


@dataclass(frozen=True, slots=True)
class _ClusterSettings:
    """What a cluster's LoadCluster options ask of this node."""

    options: dict[str, Any]  # also the defaults of its jobs' limits
    keep_files: bool
    cpus: int | None
    setup_timeout: float
    isolation: str  # dispy_wire.isolation: a process per job, or reused workers

    @classmethod
    def parse(cls, options: dict[str, Any], config: RunnerConfig) -> _ClusterSettings:
        """Raises BadOption for an option of the wrong type."""
        try:
            opts = ClusterOptions.from_wire(options)
        except BadOptions as exc:
            raise limits.BadOption(str(exc)) from None
        timeout = opts.limits.get("setup_timeout", config.setup_timeout)
        mode = opts.isolation or config.workers.isolation
        return cls(dict(opts.limits), opts.keep_files, opts.cpus, min(timeout, config.setup_timeout), mode)


class _Cluster:
    """One zygote process and the jobs it owes results for."""

    def __init__(
        self, runner: Runner, cluster_id: str, computation: bytes, settings: _ClusterSettings,
        after: asyncio.Event | None,
    ) -> None:  # fmt: skip
        self.runner = runner
        self.cluster_id = cluster_id
        self.settings = settings
        self.dir = runner.work_dir / cluster_id
        self.account: Account | None = None  # who its zygote and jobs run as, once it starts
        self._placing: asyncio.Future[None] | None = None  # its group being made, off the loop
        self.life: Incarnation[_Cluster | _Remnant]  # set by start()
        self.end_task: asyncio.Task[None] | None = None  # its unload or discard, once it ends
        self.gone = asyncio.Event()  # retired: the next incarnation of its id may start
        self._queued: dict[int, RunJob] = {}  # until Ready, beyond the cluster's cpus, and for a free slot
        self._arrived: dict[int, int] = {}  # queued job -> its number in the runner's arrival order
        self._files: list[zp.AddFile] = []  # until Ready
        self._groups: dict[int, str] = {}  # job -> control group made for it, until its tree is gone
        self._replies: dict[int, Callable[[bool, str], None]] = {}  # AddFile ref -> who waits
        self._refs = itertools.count(1)
        self._running: dict[int, int | None] = {}  # job_id -> pid (once Started), sent to the zygote
        #: of those, the jobs sent as RunNext that have not started yet: not running, not in the queue
        self._next: dict[int, tuple[RunJob, int]] = {}  # job_id -> (job, arrival), to queue it again if withdrawn
        self._withdrawing: set[int] = set()  # of those, asked back (zp.Withdraw)
        self._recalled: set[int] = set()  # of those, recalled by the scheduler: returned, not queued, if they come back
        #: of those, killed meanwhile (the zygote, having given them back, finds nothing to kill): they end as they come
        self._killed_back: dict[int, tuple[JobStatus, str]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._computation = computation
        self._unloaded = asyncio.Event()  # Unloaded received, or no point waiting for it
        self._freed = False  # a job ended (or came back) in the zygote's messages being read: start others
        self._plain_limits: limits.Limits | None = None  # those of its jobs without options (`_limits_of`)
        self._after = after  # the retirement of this cluster's previous incarnation
        self._task: asyncio.Task[None] | None = None
        self._held: list[bytes] | None = None  # frames for the zygote held to go in one write (`hold_writes`)
        #: seconds its jobs ran, on average (weighted to the latest, `_RUN_WEIGHT`): none ended yet, infinite
        self.run_time = math.inf
        #: since when its queued jobs wait with none of its jobs starting (monotonic; its queue was empty, or one started)
        self.unstarted_since = time.monotonic()

    def start(self, life: Incarnation[_Cluster | _Remnant]) -> None:
        self.life = life
        self._task = asyncio.create_task(self._main())

    @property
    def owed(self) -> int:
        return len(self._queued) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running) - len(self._next)

    @property
    def queued(self) -> bool:
        return bool(self._queued)

    @property
    def startable(self) -> bool:
        """Ready, with a queued job (or one sent on as RunNext) its own CPU cap lets start."""
        cap = self.settings.cpus
        return self.life.phase is Phase.READY and bool(self._queued or self._next) and (cap is None or self.running < cap)

    def _next_startable(self) -> list[int]:
        """The RunNext jobs a free CPU may start at once (`zp.StartNext`): all but those being withdrawn."""
        return [job_id for job_id in self._next if job_id not in self._withdrawing]

    @property
    def takes_next(self) -> bool:
        """Its zygote takes RunNext: ready, in worker isolation (whose Started go before the Done of the same
        turn, as `_send_next` needs)."""
        return self.life.phase is Phase.READY and self.settings.isolation == isolation.WORKER

    def waiting(self, most: int | None) -> list[int]:
        """The arrival numbers of the (at most `most`) jobs it would start next: those sent on as RunNext (they
        came first), then the queued ones."""
        cap = self.settings.cpus
        heads = [self._next[job_id][1] for job_id in self._next_startable()]
        total = len(heads) + len(self._queued)
        room = total if cap is None else max(0, cap - self.running)
        n = min(room, total) if most is None else min(room, total, most)
        heads += (self._arrived[job_id] for job_id in itertools.islice(self._queued, max(0, n - len(heads))))
        return heads[:n]

    def job_ids(self) -> list[int]:
        return [*self._queued, *self._running]

    def run(self, jobs: list[RunJob]) -> None:
        if not self.life.live:
            for job in jobs:
                self.runner.report(_verdict(self.cluster_id, job.job_id, JobStatus.TERMINATED, "cluster is unloading"))
            return
        fresh = [j for j in jobs if j.job_id not in self._queued and j.job_id not in self._running]
        if len(fresh) < len(jobs):
            logger.info("cluster %s: %d repeated job(s) ignored", self.cluster_id, len(jobs) - len(fresh))
        if fresh and not self._queued:
            self.unstarted_since = time.monotonic()
        for job in fresh:
            self._queued[job.job_id] = job
            self._arrived[job.job_id] = next(self.runner.arrivals)
        if self.life.phase is Phase.READY:
            self.runner.start_waiting()

    def fail_puts(self, why: str) -> None:
        """Answers every file still waiting for the zygote: it will not come."""
        replies, self._replies, self._files = self._replies, {}, []
        for reply in replies.values():
            reply(False, why)

    def put_file(self, name: str, data: bytes, mode: int, reply: Callable[[bool, str], None]) -> None:
        if not self.life.live:
            reply(False, f"cluster {self.cluster_id} is unloading on this node")
            return
        ref = next(self._refs)
        self._replies[ref] = reply
        msg = zp.AddFile(ref, name, data, mode)
        if self.life.phase is Phase.READY:
            self._write(zp.encode(msg))
        else:
            self._files.append(msg)

    def send_next(self) -> None:
        """Sends queued jobs on as RunNext, `NEXT_DEPTH` per running job, less those already waiting there."""
        want = self.running * NEXT_DEPTH - len(self._next)
        if want > 0:
            self.start_queued(want, ahead=True)

    def withdraw_next(self) -> None:
        """Asks the zygote back for the RunNext jobs not started (`_withdrawn` queues them again)."""
        asked = [job_id for job_id in self._next if job_id not in self._withdrawing]
        if asked and self.life.reports:
            self._withdrawing.update(asked)
            self._write(zp.encode(zp.Withdraw(asked)))

    def _forget_withdrawal(self, job_id: int) -> None:
        """The zygote started or ended a RunNext job before it read our Withdraw: nothing comes back of it."""
        self._withdrawing.discard(job_id)
        self._recalled.discard(job_id)
        self._killed_back.pop(job_id, None)

    def _withdrawn(self, job_ids: list[int]) -> None:
        """Back from the zygote, never started: queued again in their arrival order."""
        back = {}
        returned = []
        for job_id in job_ids:
            if job_id not in self._withdrawing:  # not asked back: no honest zygote says so (user code can write here)
                continue
            entry = self._next.pop(job_id)
            del self._running[job_id]
            killed = self._killed_back.pop(job_id, None)
            if killed is not None:
                self._drop_groups(job_id)
                self.runner.report(_verdict(self.cluster_id, job_id, killed[0], killed[1] or "cancelled"))
            elif job_id in self._recalled:
                returned.append(JobRef(self.cluster_id, job_id))
            else:
                back[job_id] = entry
        self._withdrawing.difference_update(job_ids)
        self._recalled.difference_update(job_ids)
        if returned:
            self.runner.returned(returned)
        if back:
            if not self._queued:
                self.unstarted_since = time.monotonic()
            items = sorted([*back.items(), *((j, (q, self._arrived[j])) for j, q in self._queued.items())],
                           key=lambda item: item[1][1])  # fmt: skip
            self._queued = {job_id: job for job_id, (job, _) in items}
            self._arrived = {job_id: arrival for job_id, (_, arrival) in items}

    def start_queued(self, most: int, ahead: bool = False) -> None:
        """Sends the zygote up to `most` queued jobs (as the cluster's CPU cap allows), in one write.

        `ahead`: as RunNext, each to take the place of a running job (no cap to check: it replaces one of ours).
        """
        frames = []
        caps = self.runner.config.caps
        started = 0
        if not ahead:  # a RunNext job that found no place yet (no job ended after it came) starts first
            cap = self.settings.cpus
            now = self._next_startable()[: most if cap is None else max(0, min(most, cap - self.running))]
            for job_id in now:
                del self._next[job_id]
                self.runner.started(JobRef(self.cluster_id, job_id))
            if now:
                frames.append(zp.encode(zp.StartNext(now)))
                started = len(now)
        began = started > 0  # a job of ours starts in this call (one sent ahead starts at its Started)
        while self._queued and started < most and (
            ahead or self.settings.cpus is None or self.running < self.settings.cpus
        ):  # fmt: skip
            job_id = next(iter(self._queued))
            job = self._queued.pop(job_id)
            arrival = self._arrived.pop(job_id)
            try:
                job_limits, files = self._limits_of(job, caps)
                group = self._make_group(job_id, job_limits)
            except limits.BadOption as exc:
                self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.TERMINATED, str(exc), "BadOption"))
                continue
            except OSError as exc:  # never run a job without the limits it was given
                why = f"cannot set the job's control group: {exc}"
                self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.TERMINATED, why, "OSError"))
                continue
            self._running[job_id] = None
            started += 1
            if ahead:  # it starts when the zygote says so (Started)
                self._next[job_id] = (job, arrival)
                frames.append(zp.encode(zp.RunNext(job_id, job.payload, list(job_limits), files, group)))
            else:
                frames.append(zp.encode(zp.Run(job_id, job.payload, list(job_limits), files, group)))
                self.runner.started(JobRef(self.cluster_id, job_id))
                began = True
        if began:  # once per call, not per job
            self.unstarted_since = time.monotonic()
        self._write(b"".join(frames))

    def _limits_of(self, job: RunJob, caps: limits.Limits) -> tuple[limits.Limits, list[Any]]:
        """The job's limits and own files. Those of a job without options of its own (most) are the cluster's,
        merged once.

        Raises:
            limits.BadOption: an option of the job, or of the cluster, of the wrong type.
        """
        if job.options:
            return limits.effective(caps, self.settings.options, job.options), _job_files(job.options)
        if self._plain_limits is None:
            self._plain_limits = limits.effective(caps, self.settings.options, {})
        return self._plain_limits, []

    def _make_group(self, job_id: int, job_limits: limits.Limits) -> str:
        """The job's control group, when the node has cgroups ("" if not): its limits, and a tree no process leaves.

        Made here, by the daemon, so that the job can join it but not change it.
        """
        groups = self.runner.config.cgroups
        if groups is None or self.settings.isolation == isolation.WORKER:  # workers share the cluster's group
            return ""
        name = f"{self.cluster_id}/job-{job_id}"
        assert self.account is not None  # jobs run once the zygote is ready
        cgroups.make(groups, name, job_limits.memory, job_limits.processes, self.account.uid, self.account.gid)
        self._groups[job_id] = name
        return name

    def _drop_groups(self, *job_ids: int) -> None:
        """Removes the control groups of jobs whose trees are gone."""
        groups = self.runner.config.cgroups
        for job_id in job_ids:
            name = self._groups.pop(job_id, None)
            if name is not None and groups is not None:
                cgroups.remove(groups, name)

    def recall(self, job_id: int) -> bool:
        """Drops a queued job without a result (the scheduler takes it back); False if it is not queued.

        A RunNext job not started yet is asked back from the zygote (`_withdrawn` returns it)."""
        if self._queued.pop(job_id, None) is None:
            if job_id in self._next and self.life.reports:
                self._recalled.add(job_id)
                if job_id not in self._withdrawing:
                    self._withdrawing.add(job_id)
                    self._write(zp.encode(zp.Withdraw([job_id])))
            return False
        del self._arrived[job_id]
        return True

    def kill(self, job_id: int, reason: str = "", status: JobStatus = JobStatus.CANCELLED) -> None:
        if self._queued.pop(job_id, None) is not None:  # never started: dropped, its result at once
            del self._arrived[job_id]
            self.runner.report(_verdict(self.cluster_id, job_id, status, reason or "cancelled"))
        elif job_id in self._running and self.life.reports:
            if job_id in self._withdrawing:  # if the zygote gave it back already, the Kill finds nothing there
                self._killed_back[job_id] = (status, reason)
            self._write(zp.encode(zp.Kill(job_id, int(status), reason)))

    async def unload(self) -> None:
        """Unload as asked by the scheduler: jobs are CANCELLED, cleanup runs."""
        for job_id in list(self._queued):
            self.kill(job_id)
        if self.life.phase is Phase.UNLOADING:
            self._write(zp.encode(zp.Unload()))
            try:
                await asyncio.wait_for(self._unloaded.wait(), self.runner.kill_grace + UNLOAD_SLACK)
            except TimeoutError:
                logger.warning("cluster %s: zygote did not unload in time; killed", self.cluster_id)
        await self.stop()
        for job_id in list(self._running):  # only if the zygote died or hung: it reports its own
            self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.CANCELLED, "cancelled"))
        self._running.clear()
        self._next.clear()
        self._withdrawing.clear()
        self._recalled.clear()
        self._killed_back.clear()
        self.runner.start_waiting()  # their slots go to other clusters' queued jobs

    async def stop(self) -> None:
        """Stops the zygote; it kills its jobs' trees (SIGTERM, grace, SIGKILL), reporting none."""
        if self.life.phase is not Phase.STOPPED:
            self.life.to(Phase.STOPPED, "stop")
        self._unloaded.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the zygote's cue to kill its jobs and exit
            try:
                await asyncio.wait_for(proc.wait(), self.runner.kill_grace + STOP_SLACK)
            except TimeoutError:
                logger.warning("cluster %s: zygote %d did not stop; SIGKILL", self.cluster_id, proc.pid)
                killtree.killpg(proc.pid, signal.SIGKILL)  # with whatever its setup started
                await self._kill_jobs(proc.pid)
        self._drop_groups(*self._groups)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if proc is not None and proc.returncode is None:
            await proc.wait()

    async def retire(self, remove_dir: bool) -> None:
        """After stop(): what is left in its control group is killed and the group goes; its directory
        goes, or, kept, is sealed (the node's, 0700: its uid may serve another cluster next); its uid
        goes back to the pool, unless the directory could not be sealed."""
        if self._after is not None:  # stopped before it started: its predecessor's retirement goes first,
            await self._after.wait()  # or a later incarnation could start while that one ends
            self._after = None
        if self._placing is not None:  # a group still being made must be made before it is purged
            await asyncio.wait([self._placing])
        if self.runner.config.cgroups is not None:
            await asyncio.to_thread(cgroups.purge, self.runner.config.cgroups, self.cluster_id)
        pool, acct, self.account = self.runner.config.accounts, self.account, None
        try:
            if remove_dir:
                await asyncio.to_thread(shutil.rmtree, self.dir, True)
            elif pool is not None and acct is not None:
                await asyncio.to_thread(workdir.seal, self.dir)
        except OSError as exc:
            logger.error("cluster %s: cannot seal its kept directory (%s): uid %d stays out of use",
                         self.cluster_id, exc, acct.uid if acct else -1)  # fmt: skip
            return
        if pool is not None and acct is not None:
            await asyncio.to_thread(pool.give_back, acct)  # only once nothing of it is left

    # -- the zygote ----------------------------------------------------------

    async def _main(self) -> None:
        if self._after is not None:
            await self._after.wait()
            self._after = None
        pool = self.runner.config.accounts
        try:  # looking at every process is slow: off the loop; taking a uid is not, and is not cancelled
            busy = await asyncio.to_thread(pool.survey) if pool is not None else set()
            self.account = account = pool.acquire(busy) if pool is not None else self.runner.account
        except PoolExhausted as exc:
            self.runner.cluster_failed(self.cluster_id, str(exc), self)
            return
        try:
            await asyncio.to_thread(workdir.prepare_cluster_dir, self.dir, account.uid, account.gid)
            as_user: dict[str, Any] = {} if account.is_self else {
                "user": account.uid, "group": account.gid, "extra_groups": [],
            }  # fmt: skip
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispy_node.zygote",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd="/",
                start_new_session=True,  # a Ctrl-C at the daemon's terminal is the daemon's to handle
                env={**os.environ, **killtree.placeholder(), "TMPDIR": str(self.dir / workdir.TMP)}, **as_user,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (not only OSError: uvloop refuses user= with ValueError)
            why = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            self.runner.cluster_failed(self.cluster_id, f"cannot start a zygote: {why}", self)  # else its jobs hang
            return
        config = self.runner.config
        if config.cgroups is not None:
            try:  # before it hears of its cluster, so before any job of it forks; a stale group may take a purge
                self._placing = asyncio.ensure_future(asyncio.to_thread(
                    cgroups.place, config.cgroups, self.cluster_id, self._proc.pid, account.uid, account.gid
                ))  # fmt: skip
                await asyncio.shield(self._placing)  # if we are stopped meanwhile, retire() waits for it
            except OSError as exc:  # its stop() ends the zygote
                why = f"cannot place the zygote in its control group: {exc}"
                self.runner.cluster_failed(self.cluster_id, why, self)
                return
        load = zp.Load(
            self.cluster_id, str(self.dir), self._computation, config.kill_grace, logger.getEffectiveLevel(),
            config.max_output, self.settings.keep_files, config.node_name, config.node_ip_addr,
            config.cgroups.parents if config.cgroups else {}, config.spawn,
        )  # fmt: skip
        self._computation = b""
        self._write(zp.encode(load))
        if self.settings.isolation == isolation.WORKER:
            self._write(zp.encode(zp.Workers(config.workers.max_jobs, config.workers.max_growth)))
        timer = asyncio.get_running_loop().call_later(self.settings.setup_timeout, self._setup_timed_out)
        assert self._proc.stdout is not None
        decoder = FrameDecoder(max_size=zp.MAX_REPLY, expect_preamble=False)
        garbled = ""
        try:
            while data := await self._proc.stdout.read(1 << 20):
                decoder.feed(data)
                for frame in decoder.frames():
                    self._handle(zp.decode(frame))
                if self._freed:  # once for all the jobs that ended in this read: one write to the zygote
                    self._freed = False
                    self.runner.start_waiting()
        except Exception as exc:  # noqa: BLE001  (the zygote runs user code as the jobs' account: never trusted)
            garbled = f"zygote sent a malformed message ({type(exc).__name__}: {exc})"
            logger.error("cluster %s: %s; killed", self.cluster_id, garbled)
            killtree.killpg(self._proc.pid, signal.SIGKILL)
        finally:
            timer.cancel()
        code = await self._proc.wait()
        self._unloaded.set()  # whether it said so or not
        if self.life.live:
            await self._died(garbled or f"zygote process died ({_exit_text(code)})")
        elif garbled:  # unloading: its jobs are gone with it or go now
            await self._kill_jobs(self._proc.pid)

    def _setup_timed_out(self) -> None:
        if self.life.phase is Phase.STARTING:
            timeout = self.settings.setup_timeout
            self.runner.cluster_failed(self.cluster_id, f"setup did not finish within {timeout:g} s", self)

    def _handle(self, msg: Any) -> None:
        """One message of the zygote. Raises ValueError for one no honest zygote sends (see `_check`)."""
        if not self.life.reports:
            return
        self._check(msg)
        if isinstance(msg, zp.Done):
            if msg.job_id in self._running:
                ran = self._running.pop(msg.job_id) is not None  # Started (its pid) comes before its Done
                if self._next.pop(msg.job_id, None) is not None:  # killed before it started
                    self._forget_withdrawal(msg.job_id)
                self._drop_groups(msg.job_id)
                self.runner.report(JobResult(self.cluster_id, *msg))
                self._freed = True
                if ran:
                    self._ran(max(0.0, msg.end_time - msg.start_time))
        elif isinstance(msg, zp.Started):
            if msg.job_id in self._running:
                self._running[msg.job_id] = msg.pid
                if self._next.pop(msg.job_id, None) is not None:  # in the place of a job whose Done follows
                    self._forget_withdrawal(msg.job_id)
                    self.runner.started(JobRef(self.cluster_id, msg.job_id))
                    self.unstarted_since = time.monotonic()
        elif isinstance(msg, zp.Withdrawn):
            self._withdrawn(msg.job_ids)
            self._freed = True
        elif isinstance(msg, zp.Provisional):
            if msg.job_id in self._running:  # passed on as is: the job goes on running
                now = time.time()
                result = JobResult(
                    self.cluster_id, msg.job_id, JobStatus.PROVISIONAL_RESULT, msg.result, b"", b"", "", "", now, now, msg.mac
                )
                self.runner.report(result)
        elif isinstance(msg, zp.File):
            if msg.job_id in self._running:
                self.runner.send_file(JobFile(self.cluster_id, *msg))
        elif isinstance(msg, zp.Ready):
            if self.life.phase is not Phase.STARTING:
                raise ValueError(f"Ready when {self.life.phase.value}")
            self.life.to(Phase.READY, "zygote ready")
            files, self._files = self._files, []
            self._write(b"".join(zp.encode(f) for f in files))  # before any job: they may need them
            self.runner.start_waiting()
        elif isinstance(msg, zp.FileAdded):
            reply = self._replies.pop(msg.ref, None)
            if reply is not None:
                reply(msg.ok, msg.message)
        elif isinstance(msg, zp.SetupFailed):
            if self.life.phase is Phase.STARTING:  # an answer to Load, and to nothing else
                self.runner.cluster_failed(self.cluster_id, msg.message, self)
        elif isinstance(msg, zp.Unloaded):
            self._unloaded.set()

    def _ran(self, seconds: float) -> None:
        """One of its jobs ran `seconds`: into its average (`run_time`), the first one as it is."""
        self.run_time = seconds if math.isinf(self.run_time) else self.run_time + _RUN_WEIGHT * (seconds - self.run_time)

    def _check(self, msg: Any) -> None:
        """Bounds what is passed on: user code shares the zygote's account and can write on its pipe.

        Raises:
            ValueError: a status or size no honest zygote sends.
        """
        max_output = self.runner.config.max_output + 256  # and the note where it was cut
        if isinstance(msg, (zp.Done, zp.Provisional, zp.File)) and len(msg.mac) > result_mac.MAC_SIZE:
            raise ValueError(f"MAC of {len(msg.mac)} bytes (at most {result_mac.MAC_SIZE})")
        if isinstance(msg, zp.Done):
            sizes = {"result": (len(msg.result or b""), job_process.MAX_RESULT),
                     "stdout": (len(msg.stdout), max_output), "stderr": (len(msg.stderr), max_output),
                     "exception": (len(msg.exception.encode(errors="replace")), job_process.MAX_EXCEPTION + 1024),
                     "exception type": (len(msg.exception_type), 256)}  # fmt: skip
            if msg.status not in _ENDS:
                raise ValueError(f"status {msg.status} is no job's end")
            if not (0 <= msg.cpu_time < 1e9 and 0 <= msg.max_rss < 1 << 50):  # NaN fails too
                raise ValueError(f"CPU time {msg.cpu_time} or max RSS {msg.max_rss} no job uses")
        elif isinstance(msg, zp.Provisional):
            sizes = {"provisional result": (len(msg.result), job_process.MAX_RESULT)}
        elif isinstance(msg, zp.File):
            sizes = {"file": (len(msg.data), channel.MAX_RECORD), "file name": (len(msg.name), 255)}
        elif isinstance(msg, zp.SetupFailed):
            sizes = {"setup failure": (len(msg.message.encode(errors="replace")), job_process.MAX_EXCEPTION + 1024)}
        elif isinstance(msg, zp.FileAdded):
            sizes = {"file reply": (len(msg.message.encode(errors="replace")), 4096)}
        elif isinstance(msg, zp.Started):
            if not 0 < msg.pid < 1 << 31:
                raise ValueError(f"pid {msg.pid} is no process")
            return
        else:
            return
        for what, (size, limit) in sizes.items():
            if size > limit:
                raise ValueError(f"{what} of {size} bytes (at most {limit})")

    async def _died(self, why: str) -> None:
        assert self._proc is not None
        self.runner.mark_failed(self, why)  # nothing more is reported but what follows
        self.fail_puts(why)
        try:
            await self._kill_jobs(self._proc.pid)
        finally:
            self._drop_groups(*self._groups)
        for job_id in list(self._running):
            self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.TERMINATED, why, "ZygoteDied"))
        self._running.clear()
        self._next.clear()
        self._withdrawing.clear()
        self._recalled.clear()
        self._killed_back.clear()
        self._queued.clear()
        self._arrived.clear()
        self.runner.cluster_failed(self.cluster_id, why, self)
        self.runner.start_waiting()  # its slots go to other clusters' queued jobs

    async def _kill_jobs(self, zygote_pid: int) -> None:
        """Orphaned jobs of a dead zygote: their groups, then anything else carrying their mark."""
        for pid in self._running.values():
            if pid and self._is_job_leader(pid):
                killtree.killpg(pid, signal.SIGKILL)
        left = await asyncio.to_thread(killtree.kill_marked, f"{zygote_pid}.", self.runner.kill_grace + STOP_SLACK)
        if left:
            logger.error("cluster %s: processes %s of its jobs survived SIGKILL", self.cluster_id, left)

    def _is_job_leader(self, pid: int) -> bool:
        """A pid the zygote said is a job's: a group leader of the cluster's account, or we kill nothing.

        The pid came over the zygote's pipe, which the cluster's own code can write on: it must
        not turn the daemon (root) onto a process its jobs could not signal themselves.
        """
        try:
            uid = psutil.Process(pid).uids().real
            leader = os.getpgid(pid) == pid
        except (psutil.Error, OSError, ValueError, OverflowError):
            return False
        if self.account is not None and uid == self.account.uid and leader:
            return True
        logger.warning("cluster %s: pid %d is no job of it; not killed", self.cluster_id, pid)
        return False

    def hold_writes(self) -> bool:
        """Holds what is written to the zygote until `flush_writes` (False if it is held already)."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def flush_writes(self) -> None:
        held, self._held = self._held, None
        if held:
            self._write(b"".join(held))

    def _write(self, data: bytes) -> None:
        if not data or self._proc is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return  # still starting: Load goes first and the queue follows Ready
        if self._held is not None:
            self._held.append(data)
            return
        self._proc.stdin.write(data)


def _safe_id(cluster_id: str) -> bool:
    return _SAFE_ID.fullmatch(cluster_id) is not None and cluster_id not in (".", "..")


def _verdict(cluster_id: str, job_id: int, status: JobStatus, why: str, kind: str = "") -> JobResult:
    """A result decided by the daemon, for a job that produced none itself."""
    now = time.time()
    return JobResult(cluster_id, job_id, int(status), None, b"", b"", why, kind, now, now)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _job_files(options: dict[str, Any]) -> list[Any]:
    """The job's own files (`submit(..., dispy_job_depends=[...])`), checked for shape.

    Raises:
        limits.BadOption: not a list of [name, bytes, mode].
    """
    try:
        return [list(f) for f in JobOptions.from_wire(options).files]
    except BadOptions as exc:
        raise limits.BadOption(str(exc)) from None
