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

from dispy_wire.messages import JobResult


class JobState(Enum):
    QUEUED = "queued"  # waiting in its cluster's queue
    RUNNING = "running"  # dispatched to a node, no result yet
    DONE = "done"  # terminal result held until the client acknowledges it


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
    start_time: float = 0.0
    attempts: int = 0
    cancel_requested: bool = False  # a kill was sent; the job must not run again
    result: JobResult | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.cluster_id, self.job_id)

    @property
    def sort_key(self) -> tuple[int, int]:
        """Queue order inside a cluster: higher priority first, then FIFO."""
        return (-self.priority, self.seq)


@dataclass(slots=True)
class ClusterRecord:
    cluster_id: str
    user: str
    name: str
    client: str | None  # session id of the attached client; None while detached
    computation: bytes
    reentrant: bool
    options: dict[str, Any]
    seq: int  # creation order, for fcfs-style policies
    jobs: dict[int, JobRecord] = field(default_factory=dict)
    # heap of (sort_key, job_id); entries whose job is no longer queued are stale
    queue: list[tuple[tuple[int, int], int]] = field(default_factory=list)
    queued: int = 0
    busy: int = 0
    loaded_on: set[str] = field(default_factory=set)
    failed_on: dict[str, str] = field(default_factory=dict)  # node -> why set-up failed
    closing: bool = False
    last_dispatch: float = -math.inf

    def push(self, job: JobRecord) -> None:
        heapq.heappush(self.queue, (job.sort_key, job.job_id))
        self.queued += 1

    def head(self) -> JobRecord | None:
        """The next queued job, dropping stale heap entries on the way."""
        queue = self.queue
        while queue:
            job = self.jobs.get(queue[0][1])
            if job is not None and job.state is JobState.QUEUED and job.sort_key == queue[0][0]:
                return job
            heapq.heappop(queue)
        return None

    def pop(self) -> JobRecord:
        job = self.head()
        assert job is not None, "pop from an empty cluster queue"
        heapq.heappop(self.queue)
        self.queued -= 1
        return job


@dataclass(slots=True)
class UserRecord:
    name: str
    share: float
    busy: int = 0
    queued: int = 0
    usage: float = 0.0  # decayed CPU-seconds, as of `usage_time`
    usage_time: float = 0.0
    finished: int = 0
    clusters: set[str] = field(default_factory=set)

    def decayed_usage(self, now: float, half_life: float) -> float:
        if half_life <= 0 or now <= self.usage_time:
            return self.usage
        return self.usage * 0.5 ** ((now - self.usage_time) / half_life)

    def add_usage(self, cpu_seconds: float, now: float, half_life: float) -> None:
        self.usage = self.decayed_usage(now, half_life) + cpu_seconds
        self.usage_time = max(now, self.usage_time)


@dataclass(slots=True)
class NodeRecord:
    node_id: str  # session id
    name: str
    ip_addr: str
    cpus: int
    heartbeat: float  # seconds between the node's reports
    last_seen: float
    busy: int = 0
    jobs: set[tuple[str, int]] = field(default_factory=set)
    loaded: set[str] = field(default_factory=set)
    avail: dict[str, Any] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.cpus - self.busy

    @property
    def load(self) -> float:
        return self.busy / self.cpus if self.cpus > 0 else math.inf
