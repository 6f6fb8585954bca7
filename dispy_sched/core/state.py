"""Records held by the scheduling core.

Plain slotted dataclasses, mutated only by `SchedulerCore` (policies read
them). Peers are named by opaque session ids chosen by the shell; the core
never sees a socket.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dispy_wire.cluster_options import ClusterOptions, Runtime
from dispy_wire.messages import JobFile, JobResult

from .placement import NodeEntry


class JobState(Enum):
    QUEUED = "queued"  # waiting in its cluster's queue
    RUNNING = "running"  # dispatched to a node, no result yet
    DONE = "done"  # terminal result held until the client acknowledges it
    #: running when the scheduler last stopped; waits for its node to report it
    ORPHANED = "orphaned"

    # members are singletons: hashed by identity in C, not by `Enum.__hash__` (Python, hashing the name), for the
    # set of allowed transitions every transition looks up
    __hash__ = object.__hash__


@dataclass(slots=True)
class Orphan:
    """A job that was running where the scheduler lost sight of it: it waits `until` for its node to report it."""

    job: JobRecord
    until: float
    #: the end of a job that is not reentrant and whose node did not come back: why it was Abandoned
    why: str


#: the options of a job that has none, shared by all such jobs (never mutated)
NO_OPTIONS: dict[str, Any] = {}


@dataclass(slots=True)
class JobRecord:
    cluster_id: str
    job_id: int
    priority: int
    seq: int  # global submission order; FIFO tie-breaker everywhere
    payload: bytes | None  # dropped once the job is done
    options: dict[str, Any]  # passed to the node with the job
    submit_time: float
    state: JobState = JobState.QUEUED
    node: str | None = None
    last_node: str = ""  # name of the node it runs or last ran on (outlives the node's session)
    #: the run of that node's job runner it was sent to (`NodeRecord.node_run`); '' if unknown
    node_run: str = ""
    start_time: float = 0.0
    attempts: int = 0
    cancel_requested: bool = False  # a kill was sent; the job must not run again
    #: the terminal result, while the core needs it in hand: kept here only
    #: without a store; with one (`CoreConfig.persist`) it is dropped at the
    #: end of the call that wrote it, and the shell reads it back from the store
    result: JobResult | None = None
    result_size: int = 0  # `result_cost` of its terminal result (0 until DONE), wherever the result is
    #: its terminal result's `JobStatus` once DONE, for people to see while the result itself may be on disk
    #: only; 0 for a job restored DONE from a store (its result, status included, is in the store)
    end_status: int = 0
    #: sent back by the job while its client was away (a tuple: a queued job holds the shared empty one, not a
    #: list of its own: 56 bytes per job of the scheduler's memory)
    files: tuple[JobFile, ...] = ()
    held: int = 0  # what its result and files count in its user's `held_bytes`
    pin: str | None = None  # the node (name or address) it must run on: `JobOptions.node`
    #: its client was told it runs: at dispatch, or, on a node that queues jobs (`NodeRecord.window`),
    #: once the node reports it started (a job waiting there is not yet Running for its user)
    started: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.cluster_id, self.job_id)



@dataclass(slots=True)
class ClusterRecord:
    cluster_id: str
    user: str
    name: str
    client: str | None  # session id of the attached client; None while detached
    computation: bytes
    reentrant: bool
    options: dict[str, Any]  # as the client sent them: journaled, and passed on to nodes
    seq: int  # creation order, for fcfs-style policies
    opts: ClusterOptions = ClusterOptions()  # `options`, checked
    opened: float = 0.0  # when it was opened (the core's clock); 0: unknown (journaled by an earlier version)
    jobs: dict[int, JobRecord] = field(default_factory=dict)
    # heap of (-priority, seq, job_id): higher priority first, then FIFO;
    # entries whose job is no longer queued are stale (flat tuples: this heap
    # holds one entry per queued job, so its size is most of the core's memory)
    queue: list[tuple[int, int, int]] = field(default_factory=list)
    queued: int = 0  # its QUEUED jobs: counted by the core's transitions alone, not by push/pop
    #: its jobs not DONE (counted by `_admit` and `_transition`): a closing cluster ends at 0, checked in O(1)
    unfinished: int = 0
    # jobs pinned to a node (`submit_node`), by node name or address; once there is
    # one, `unpinned` holds the others' entries (until then `queue` serves alone)
    pinned: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    unpinned: list[tuple[int, int, int]] | None = None
    busy: int = 0
    waiting: int = 0  # of `busy`: jobs sent ahead to a node that has not started them yet
    loaded_on: set[str] = field(default_factory=set)
    failed_on: dict[str, str] = field(default_factory=dict)  # node -> why it cannot run there (set-up failed, runtime)
    placement: list[NodeEntry] | None = None  # dispy's `nodes`; None: every node, every CPU
    ask_client: bool = False  # NodeAllocate subclasses: no CPU of a node until the client sets it
    overrides: dict[str, int] = field(default_factory=dict)  # node name -> CPUs, set by the client
    node_cpus: dict[str, int] = field(default_factory=dict)  # when restricted: node -> CPUs it may use
    busy_on: dict[str, int] = field(default_factory=dict)  # node -> its running jobs there
    node_blobs: dict[str, bytes] = field(default_factory=dict)  # node -> computation to load there instead
    resetting: set[str] = field(default_factory=set)  # nodes draining this cluster's jobs before a reload
    closing: bool = False
    #: a bulk cancel of its queued jobs is under way (the core's Cancelling): none of them starts until it is done
    cancelling: bool = False
    last_dispatch: float = -math.inf
    left_at: float = 0.0  # when its client left (meaningful while `client` is None)
    #: why it was released (its client away longer than the result retention); '' while it is not
    released: str = ""
    last_end: float = 0.0  # when its latest job ended
    #: seconds its jobs run, as its nodes measure them (`window.estimate`); 0.0: none measured yet
    run_estimate: float = 0.0

    def code_bytes(self) -> int:
        """What its computations (the cluster's, and those loaded anew on some nodes) count in `queued_bytes`."""
        return len(self.computation) + sum(len(blob) for blob in self.node_blobs.values())

    @property
    def restricted(self) -> bool:
        """Whether the cluster may use only some nodes, or only some CPUs of them."""
        return self.placement is not None or self.ask_client or bool(self.overrides)

    def cap_on(self, node_id: str, cpus: int) -> int | None:
        """The most jobs of it a node of `cpus` CPUs may hold, sent ahead included; None: as many as the node's
        window takes (unrestricted, or allowed all of its CPUs, as a JobCluster's own node is)."""
        if not self.restricted:
            return None
        allowed = self.node_cpus.get(node_id, 0)
        return None if allowed >= cpus else allowed

    def push(self, job: JobRecord) -> None:
        entry = (-job.priority, job.seq, job.job_id)
        heapq.heappush(self.queue, entry)
        pin = job.pin
        if pin:
            if self.unpinned is None:  # the first pinned job: the rest of the queue is unpinned
                self.unpinned = [e for e in self.queue if e[2] != job.job_id]
                heapq.heapify(self.unpinned)
            heapq.heappush(self.pinned.setdefault(pin, []), entry)
        elif self.unpinned is not None:
            heapq.heappush(self.unpinned, entry)

    def head(self) -> JobRecord | None:
        """The next queued job (wherever it may run), dropping stale heap entries on the way."""
        entry = self._top(self.queue)
        return None if entry is None else self.jobs[entry[2]]

    def runnable_on(self, *names: str) -> bool:
        """Whether a queued job may run on the node known by `names` (its name, its addresses)."""
        return any(self._top(heap) is not None for heap in self._heaps_for(names))

    def pop(self, *names: str) -> JobRecord:
        """Takes the next job that may run on the node known by `names` (its name, its addresses)."""
        tops = [(entry, heap) for heap in self._heaps_for(names) if (entry := self._top(heap)) is not None]
        assert tops, "pop from a cluster with nothing for this node"
        entry, heap = min(tops, key=lambda t: t[0])
        heapq.heappop(heap)  # its copies in the other heaps go stale: the job leaves QUEUED
        if self.unpinned is not None and len(self.queue) > 2 * self.queued + 64:
            self._compact()  # a pin waiting at the top keeps `queue` from shedding stale entries
        return self.jobs[entry[2]]

    def pinned_to(self, *names: str) -> list[JobRecord]:
        """The queued jobs pinned to the node known by `names`."""
        entries = [e for k in set(names) if k in self.pinned for e in self.pinned[k] if self._valid(e)]
        return [self.jobs[e[2]] for e in entries]

    def _compact(self) -> None:
        """Drops stale entries (and duplicates left by requeues) from every heap."""
        for heap in (self.queue, self.unpinned, *self.pinned.values()):
            assert heap is not None
            live = {e for e in heap if self._valid(e)}
            heap[:] = list(live)
            heapq.heapify(heap)
        self.pinned = {k: h for k, h in self.pinned.items() if h}

    def _heaps_for(self, names: tuple[str, ...]) -> list[list[tuple[int, int, int]]]:
        if self.unpinned is None:
            return [self.queue]
        return [self.unpinned, *(self.pinned[k] for k in set(names) if k in self.pinned)]

    def _top(self, heap: list[tuple[int, int, int]]) -> tuple[int, int, int] | None:
        while heap:
            if self._valid(heap[0]):
                return heap[0]
            heapq.heappop(heap)
        return None

    def _valid(self, entry: tuple[int, int, int]) -> bool:
        job = self.jobs.get(entry[2])
        return job is not None and job.state is JobState.QUEUED and job.seq == entry[1]


@dataclass(frozen=True, slots=True)
class Limits:
    """What the operator allows one user (the users file); None: no limit."""

    #: the user never holds more busy CPUs than this
    max_cpus: int | None = None
    #: a submit that would queue more jobs than this is refused beyond it
    max_queued_jobs: int | None = None
    #: job priorities above this are lowered to it
    priority_max: int | None = None
    #: authenticated connections at once (enforced by the shell, which holds them)
    max_connections: int | None = None
    #: clusters open at once (a detached cluster counts until its client returns)
    max_clusters: int | None = None
    #: bytes held for the user's work to do: arguments of its unfinished jobs
    #: (`job_cost`) and computations of its open clusters; a submit or open beyond it is refused
    max_queued_bytes: int | None = None
    #: bytes of results (and files) held until its clients acknowledge them
    #: (`result_cost`); at it, no new job of the user starts until they do
    max_held_bytes: int | None = None


NO_LIMITS = Limits()

#: bytes a job's record, heap entries and result envelope take beyond its
#: payloads (measured: tests/test_core_limits.py `test_record_overhead_is_what_the_limits_count`),
#: counted so that a flood of empty jobs or results is bounded by the byte limits too
RECORD_OVERHEAD = 512


def job_cost(payload: bytes) -> int:
    """What a queued or running job counts in its user's `queued_bytes`."""
    return len(payload) + RECORD_OVERHEAD


def result_cost(result: JobResult) -> int:
    """What a held result counts in its user's `held_bytes`."""
    value = result.result or b""
    text = len(result.exception) + len(result.exception_type)
    return len(value) + len(result.stdout) + len(result.stderr) + text + RECORD_OVERHEAD


def file_cost(f: JobFile) -> int:
    """What a file kept for an absent client counts in its user's `held_bytes`."""
    return len(f.data) + len(f.name) + RECORD_OVERHEAD


#: weight of a job's figure in its user's mean wait and run on nodes (`UserRecord.load`): about its last 64 jobs
#: (the plain mean of its first 64); a shorter memory makes the means noisy enough to tilt shares by points
#: (tests/test_fairness_sim.py, jobs of 0.2-0.6 s against 2-6 s: 1/16 gave 53% against 50% for 1/64)
STAY_WEIGHT = 1 / 64
#: a run time no job reaches (a bad node's clock): ignored
MAX_RUN = 1e7


@dataclass(slots=True)
class UserRecord:
    name: str
    share: float
    limits: Limits = NO_LIMITS
    busy: int = 0
    waiting: int = 0  # of `busy`: jobs sent ahead to a node that has not started them yet
    queued: int = 0
    usage: float = 0.0  # decayed CPU-seconds, as of `usage_time`
    usage_time: float = 0.0
    #: log2 of the decayed usage as of time 0: orders users by decayed usage
    #: without changing as time passes (see `usage_rank_of`)
    usage_rank: float = -math.inf
    finished: int = 0
    last_dispatch: float = -math.inf
    clusters: set[str] = field(default_factory=set)
    queued_bytes: int = 0  # see `Limits.max_queued_bytes`
    held_bytes: int = 0  # see `Limits.max_held_bytes`
    #: its jobs running when the scheduler last stopped, not yet reported by a node (they may run still)
    orphans: int = 0
    #: how its jobs spent their stay on nodes lately: mean seconds waiting there for a CPU (sent ahead), and
    #: running (means over its last jobs, `STAY_WEIGHT`, and of how many jobs so far); they make `load`
    wait_mean: float = 0.0
    run_mean: float = 0.0
    waits: int = 0
    runs: int = 0

    @property
    def load(self) -> float:
        """Its `busy` CPUs as fair share counts them: its jobs on nodes, by the part of their stay they run.

        A job sent ahead to a node waits there for a CPU, behind whatever the
        node already holds, then runs; `busy` counts it all that time. Where
        jobs wait as long as they run, a user of short jobs holds many
        waiting ones for each one running, a user of long jobs few: equal
        `busy` would give the long jobs most of the CPU time. By Little's law
        a user's running jobs are, on average, `busy` times its jobs' mean
        run over their mean stay (wait and run): the CPUs it really uses,
        which fair share evens out. Known at once when the job is sent (no
        waiting for it to start), so decisions do not lag the node's queue.
        Without jobs sent ahead (no wait), or before a job of the user ended, it is `busy`.
        """
        if self.wait_mean <= 0 or self.run_mean <= 0:
            return float(self.busy)
        return self.busy * self.run_mean / (self.run_mean + self.wait_mean)

    def note_wait(self, seconds: float) -> None:
        """A job of the user started on its node `seconds` after it was sent there."""
        self.waits += 1
        self.wait_mean += (max(0.0, seconds) - self.wait_mean) * max(STAY_WEIGHT, 1 / self.waits)

    def note_run(self, seconds: float) -> None:
        """A job of the user ran `seconds` (its node's figure; one no clock gives is ignored)."""
        if math.isfinite(seconds) and 0 <= seconds < MAX_RUN:
            self.runs += 1
            self.run_mean += (seconds - self.run_mean) * max(STAY_WEIGHT, 1 / self.runs)

    @property
    def capped(self) -> bool:
        """At `max_cpus` (counting orphans, which a node may yet report running), or holding `max_held_bytes`
        of results: gets no more CPUs until that changes."""
        cap = self.limits.max_cpus
        return (cap is not None and self.busy + self.orphans >= cap) or self.holding_too_much

    @property
    def holding_too_much(self) -> bool:
        """Results its clients have not acknowledged reach `max_held_bytes`: its jobs wait for them."""
        return self.limits.max_held_bytes is not None and self.held_bytes >= self.limits.max_held_bytes

    def decayed_usage(self, now: float, half_life: float) -> float:
        return decay(self.usage, self.usage_time, now, half_life)

    def set_usage(self, usage: float, as_of: float, half_life: float) -> None:
        self.usage, self.usage_time = usage, as_of
        self.usage_rank = usage_rank_of(usage, as_of, half_life)

    def add_usage(self, cpu_seconds: float, now: float, half_life: float) -> None:
        self.set_usage(self.decayed_usage(now, half_life) + cpu_seconds, max(now, self.usage_time), half_life)


def decay(usage: float, as_of: float, now: float, half_life: float) -> float:
    """`usage` CPU-seconds as of `as_of`, halved per `half_life` until `now` (no decay if half_life <= 0)."""
    if half_life <= 0 or now <= as_of:
        return usage
    return usage * math.exp2(-(now - as_of) / half_life)


def usage_rank_of(usage: float, as_of: float, half_life: float) -> float:
    """A time-invariant rank of decayed usage: log2(usage at time 0).

    Decayed usage u(t) = u0 * 2^(-(t - t0) / half_life) shrinks by the same
    factor for every user as time passes, so its order never changes on its
    own: comparing log2(u0) + t0 / half_life orders users exactly as their
    decayed usage at any common time would, and lets the core keep users in
    a heap keyed on it without re-keying them every tick (no overflow either,
    as 2^(t / half_life) would for years of seconds).
    """
    if usage <= 0:
        return -math.inf
    if half_life <= 0:
        return math.log2(usage)
    return math.log2(usage) + as_of / half_life


@dataclass(slots=True)
class NodeRecord:
    node_id: str  # session id
    name: str
    ip_addr: str
    cpus: int
    heartbeat: float  # seconds between the node's reports
    last_seen: float
    busy: int = 0  # its jobs: running, and sent ahead of a free CPU (`window`)
    waiting: int = 0  # of `busy`: jobs sent ahead that it has not started yet
    jobs: set[tuple[str, int]] = field(default_factory=set)
    loaded: set[str] = field(default_factory=set)
    avail: dict[str, Any] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()  # ip_addr first, then what the node reports of its own
    runtime: Runtime | None = None  # its jobs' Python and cloudpickle, if it said
    #: seconds the node keeps running its jobs after losing us (so long they wait for it, orphaned)
    grace: float = 0.0
    offered: int = 0  # CPUs the node offers; `cpus` is that under the operator's cap
    drained: bool = False  # by the operator: no new jobs start here
    #: the node queues jobs beyond its CPUs (starting each as a CPU frees) and reports their starts
    queues: bool = False
    #: jobs it is sent beyond its CPUs (prefetched), so that a result and the next job to run cross
    #: the wire in the same batch, not one after the other (`SchedulerCore._set_window`)
    window: int = 0
    #: the run of its job runner (`NodeJoined.node_run`); '' if it did not say
    node_run: str = ""
    #: seconds the jobs it ran lately took, whatever their cluster (`window.estimate`); 0.0: none yet
    run_estimate: float = 0.0

    @property
    def free(self) -> int:
        """Jobs it may be sent now: its free CPUs and what is left of its window."""
        return self.cpus + self.window - self.busy

    @property
    def load(self) -> float:
        return self.busy / self.cpus if self.cpus > 0 else math.inf
