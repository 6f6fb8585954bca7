"""A deterministic simulation harness for the scheduling core.

A virtual clock (integer ticks, so no float drift), simulated nodes that
"run" each dispatched job for a duration drawn from a seeded
`random.Random`, and answer with a `JobResult` in a `ResultsArrived` event
when it ends. No sockets, no threads, no sleeping: thousands of jobs per
second of wall time, and the same seed gives the same run.

Every job that completes at the same tick on the same node is reported in
one `ResultsArrived`, and all events of a tick go to the core in one
`handle` call, as the real shell batches them.

Simulated clients acknowledge each result they are given in the next
`handle`, as a dispy client does: the core forgets those jobs.

Nodes added with `queues=True` behave as a real node that queues jobs sent
ahead (the core's prefetch window): they run at most their CPUs' worth at
once, start the rest in the order they came as CPUs free, and report each
start (`StartsReported`) with that tick's results.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from dispy_sched.core import SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_wire.messages import JobRef, JobResult, JobSpec
from dispy_wire.status import JobStatus


@dataclass(slots=True)
class Run:
    """One job's stay on a node, as the simulated node saw it."""

    user: str
    cluster_id: str
    job_id: int
    node: str
    start: float
    end: float  # planned end; the actual one if it was killed


class Simulation:
    """Drives a `SchedulerCore` with simulated clients and nodes.

    Args:
        core: the core under test, freshly built.
        seed: seeds the job durations.
        job_seconds: (shortest, longest) job duration, drawn uniformly.
        resolution: seconds per tick of the virtual clock.
        check_every: run `check_invariants` every this many `handle` calls
            (0: never; the check is O(jobs)).
    """

    def __init__(
        self,
        core: SchedulerCore,
        *,
        seed: int,
        job_seconds: tuple[float, float] = (1.0, 3.0),
        resolution: float = 0.01,
        check_every: int = 0,
    ) -> None:
        self.core = core
        self.rng = random.Random(seed)
        self.resolution = resolution
        self.job_ticks = (self.ticks(job_seconds[0]), self.ticks(job_seconds[1]))
        self.check_every = check_every
        self.tick = 0
        self.handle_calls = 0
        self.user_of: dict[str, str] = {}  # cluster -> user
        self.client_of: dict[str, str] = {}  # cluster -> client session
        self.next_job: dict[str, int] = defaultdict(int)
        self.fixed_ticks: dict[tuple[str, int], int] = {}  # jobs submitted with a set duration
        self.cluster_ticks: dict[str, tuple[int, int]] = {}  # clusters with their own job lengths
        self.running: dict[tuple[str, int], Run] = {}
        self.runs: list[Run] = []  # finished
        self.rejects: list[A.Reject] = []
        self.backlog: dict[str, int] = {}  # cluster -> queued jobs to keep
        self._ends: list[tuple[int, int, str, str, int]] = []  # (tick, seq, node, cluster, job)
        self._seq = 0
        self._nodes_made = 0
        self._inbox: list[E.Event] = []
        #: nodes that queue what they are sent beyond their CPUs: node -> (CPUs, jobs waiting there for one)
        self._queues: dict[str, tuple[int, deque[tuple[str, int]]]] = {}
        self._busy: dict[str, int] = defaultdict(int)  # queueing node -> jobs it runs now

    # ------------------------------------------------------------- clock

    def ticks(self, seconds: float) -> int:
        return max(1, round(seconds / self.resolution))

    @property
    def now(self) -> float:
        return self.tick * self.resolution

    # ---------------------------------------------------------- peers

    def add_nodes(
        self, count: int, cpus: int, *, prefix: str = "n", heartbeat: float = 1e9, queues: bool = False
    ) -> list[str]:
        names = [f"{prefix}{self._nodes_made + i}" for i in range(count)]
        self._nodes_made += count
        if queues:
            self._queues.update((n, (cpus, deque())) for n in names)
        self.send(*(E.NodeJoined(n, f"host-{n}", "10.0.0.1", cpus, heartbeat, queues=queues) for n in names))
        return names

    def open(self, user: str, cluster_id: str | None = None, *, job_seconds: tuple[float, float] | None = None) -> str:
        """Opens a cluster for `user`; its jobs last `job_seconds` (default: the simulation's)."""
        cid = cluster_id or f"{user}-{len(self.user_of)}"
        self.user_of[cid], self.client_of[cid] = user, f"client-{cid}"
        if job_seconds is not None:
            self.cluster_ticks[cid] = (self.ticks(job_seconds[0]), self.ticks(job_seconds[1]))
        self.send(E.ClusterOpened(f"client-{cid}", user, cid, cid, b"computation", True, {}))
        return cid

    def submit(self, cluster_id: str, count: int, *, seconds: float | None = None, priority: int = 0) -> list[int]:
        """Queues `count` jobs for the next `handle`; returns their ids."""
        first = self.next_job[cluster_id]
        ids = list(range(first, first + count))
        self.next_job[cluster_id] += count
        if seconds is not None:
            for job_id in ids:
                self.fixed_ticks[(cluster_id, job_id)] = self.ticks(seconds)
        self._inbox.append(
            E.JobsSubmitted(self.client_of[cluster_id], cluster_id, [JobSpec(j, priority, b"", {}) for j in ids])
        )
        return ids

    def keep_queued(self, cluster_id: str, jobs: int) -> None:
        """Makes this cluster's user saturating: tops its queue up to `jobs` before each step."""
        self.backlog[cluster_id] = jobs

    def send(self, *events: E.Event) -> list[A.Action]:
        """Hands queued and given events to the core now, and plays its actions."""
        self._top_up()
        batch, self._inbox = [*self._inbox, *events], []
        actions = self.core.handle(*batch, now=self.now)
        self.handle_calls += 1
        if self.check_every and self.handle_calls % self.check_every == 0:
            check_invariants(self.core)
        self._play(actions)
        return actions

    # ------------------------------------------------------------ running

    def run_until(self, seconds: float) -> None:
        """Advances the clock, delivering each tick's completed jobs in one `handle`."""
        stop = round(seconds / self.resolution)
        if self._inbox:
            self.send()
        while self._ends and self._ends[0][0] <= stop:
            self.tick = self._ends[0][0]
            by_node: dict[str, list[JobResult]] = defaultdict(list)
            while self._ends and self._ends[0][0] == self.tick:
                _, _, node, cid, job_id = heapq.heappop(self._ends)
                run = self.running.pop((cid, job_id), None)
                if run is None or run.node != node:
                    continue  # killed earlier
                self.runs.append(run)
                by_node[node].append(self._result(run, JobStatus.FINISHED))
                if node in self._queues:
                    self._busy[node] -= 1
            for node in by_node:
                if node in self._queues:
                    self._start_queued(node)
            self.send(*(E.ResultsArrived(n, rs) for n, rs in by_node.items()))
        self.tick = max(self.tick, stop)

    def _top_up(self) -> None:
        for cid, want in self.backlog.items():
            cluster = self.core.clusters.get(cid)
            queued = cluster.queued if cluster is not None else 0
            pending = sum(len(e.jobs) for e in self._inbox if isinstance(e, E.JobsSubmitted) and e.cluster_id == cid)
            if queued + pending < want:
                self.submit(cid, want - queued - pending)

    def _play(self, actions: Iterable[A.Action]) -> None:
        for action in actions:
            if isinstance(action, A.Dispatch):
                queue = self._queues.get(action.node)
                for job in action.jobs:
                    if queue is None:
                        self._start(action.node, job.cluster_id, job.job_id)
                    else:
                        queue[1].append((job.cluster_id, job.job_id))
                if queue is not None:
                    self._start_queued(action.node)
            elif isinstance(action, A.KillJobs):
                queue = self._queues.get(action.node)
                waiting = [(r.cluster_id, r.job_id) for r in action.jobs if queue and (r.cluster_id, r.job_id) in queue[1]]
                for key in waiting:  # never started: dropped there, ended at once
                    assert queue is not None
                    queue[1].remove(key)
                    self.running[key] = Run(self.user_of[key[0]], key[0], key[1], action.node, self.now, self.now)
                killed = [self.running.pop((r.cluster_id, r.job_id)) for r in action.jobs]
                for run in killed:
                    run.end = self.now
                    self.runs.append(run)
                if queue is not None:
                    self._busy[action.node] -= len(killed) - len(waiting)
                    self._start_queued(action.node)
                self._inbox.append(E.ResultsArrived(action.node, [self._result(r, JobStatus.TERMINATED) for r in killed]))
            elif isinstance(action, A.DeliverResults):  # collected, as a client does, in the next `handle`
                self._inbox.append(E.ResultsAcked(action.client, action.cluster_id, [r.job_id for r in action.results]))
            elif isinstance(action, A.Reject):
                self.rejects.append(action)

    def _start(self, node: str, cluster_id: str, job_id: int) -> None:
        key = (cluster_id, job_id)
        ticks = self.fixed_ticks.get(key) or self.rng.randint(*self.cluster_ticks.get(cluster_id, self.job_ticks))
        end = self.tick + ticks
        self.running[key] = Run(self.user_of[cluster_id], cluster_id, job_id, node, self.now, end * self.resolution)
        self._seq += 1
        heapq.heappush(self._ends, (end, self._seq, node, cluster_id, job_id))

    def _start_queued(self, node: str) -> None:
        """A queueing node starts what waits there on its free CPUs, and reports the starts."""
        cpus, queue = self._queues[node]
        started: list[JobRef] = []
        while queue and self._busy[node] < cpus:
            cluster_id, job_id = queue.popleft()
            self._start(node, cluster_id, job_id)
            self._busy[node] += 1
            started.append(JobRef(cluster_id, job_id))
        if started:
            self._inbox.append(E.StartsReported(node, started))

    def _result(self, run: Run, status: JobStatus) -> JobResult:
        return JobResult(run.cluster_id, run.job_id, int(status), None, b"", b"", "", "", run.start, run.end)

    # ---------------------------------------------------------- measures

    def next_completion(self) -> float | None:
        """When the next running job ends (the next CPU to free up), if any."""
        return self._ends[0][0] * self.resolution if self._ends else None

    def first_start(self, cluster_id: str) -> float | None:
        starts = [r.start for r in [*self.runs, *self.running.values()] if r.cluster_id == cluster_id]
        return min(starts, default=None)

    def busy_seconds(self, start: float, end: float) -> dict[str, float]:
        """CPU-seconds each user's jobs were running between `start` and `end`."""
        out: dict[str, float] = defaultdict(float)
        for run in [*self.runs, *self.running.values()]:
            overlap = min(run.end, end, self.now) - max(run.start, start)
            if overlap > 0:
                out[run.user] += overlap
        return dict(out)

    def shares(self, start: float, end: float) -> dict[str, float]:
        """Each user's fraction of the busy CPU-time between `start` and `end`."""
        busy = self.busy_seconds(start, end)
        total = sum(busy.values())
        return {user: seconds / total for user, seconds in busy.items()} if total else {}


def peak_busy(sim: Simulation, user: str) -> int:
    """The most CPUs `user` ever held at once, from every run so far."""
    edges = sorted(
        (t, step)
        for r in [*sim.runs, *sim.running.values()]
        if r.user == user
        for t, step in ((r.start, 1), (r.end, -1))
    )
    peak = busy = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start (+1)
        busy += step
        peak = max(peak, busy)
    return peak


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index: 1 when all values are equal, 1/n when one takes all."""
    xs = list(values)
    squares = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * squares) if squares else 1.0
