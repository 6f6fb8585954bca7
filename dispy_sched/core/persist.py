"""What the core asks the shell to keep across restarts, and how it finds it again.

Theory of operation
-------------------
With `CoreConfig.persist` on, every change the core makes to a cluster, a
job or a user's usage is noted here (`Changes`), by the one place that makes
it: `_transition` for job states, the submit handler for new jobs, the
forget helpers for acknowledged jobs and finished clusters, the usage
accounting for users. At the end of `handle` the notes become one `Persist`
action, first among that call's actions: the shell writes it in one
transaction and only then sends the rest (acceptances, results), so nothing
is acknowledged that a crash could lose (principle 4 of DESIGN.md).

A job noted several times in one call is written once, as it is at the end
of the call; a job created and forgotten in the same call is not written at
all. Rows are plain values (no records, no session ids: a node is named by
its name, which outlives its connection), and `StateRestored` takes the same
rows back, so what is written is exactly what a restart reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from dispy_wire.messages import JobResult

if TYPE_CHECKING:
    from .state import ClusterRecord, JobRecord, UserRecord


@dataclass(frozen=True, slots=True)
class ClusterRow:
    cluster_id: str
    user: str
    name: str
    computation: bytes  # stored once per cluster, with its depends
    reentrant: bool
    options: dict[str, Any]
    seq: int
    closing: bool
    overrides: dict[str, int]  # node name -> CPUs, as the client set them (set_node_cpus)
    opened: float = 0.0  # when it was opened; 0: unknown


class JobRow(NamedTuple):
    """A job as stored. A tuple, not a dataclass: one is made for every job written, several times over its life,
    and a tuple is made several times faster (its fields' order is the jobs table's columns', journal.py)."""

    cluster_id: str
    job_id: int
    priority: int
    seq: int
    payload: bytes | None  # None once the job is done
    options: dict[str, Any]
    submit_time: float
    state: str  # a `JobState` value; an orphaned job is written as running
    node: str  # the name of the node it runs (or last ran) on; '' if none
    attempts: int
    cancel_requested: bool
    #: the terminal result, until the client acknowledges it; a store's `load`
    #: leaves it out (None) and gives `result_size`: the result stays on disk
    #: until the shell reads it for a client (`StateStore.read_results`)
    result: JobResult | None
    result_size: int = 0  # `state.result_cost` of the terminal result; 0: none
    #: the run of `node`'s job runner it was sent to (`JobRecord.node_run`); '' if unknown
    node_run: str = ""


@dataclass(frozen=True, slots=True)
class UsageRow:
    user: str
    cpu_seconds: float  # decayed usage ...
    as_of: float  # ... as of this time


@dataclass(frozen=True, slots=True)
class SettingRow:
    """What an operator set that outlives a restart (the admin API): per node or user name, one value."""

    #: DRAIN (value 1), CPUS (the node's cap), SHARE (the user's share until the users file is reread), or
    #: CANCEL (name: a cluster id; value: the submit sequence number up to which its queued jobs are being cancelled)
    kind: str
    name: str
    value: float


DRAIN, CPUS, SHARE, CANCEL = "drain", "cpus", "share", "cancel"


def cluster_row(cluster: ClusterRecord) -> ClusterRow:
    return ClusterRow(
        cluster.cluster_id, cluster.user, cluster.name, cluster.computation, cluster.reentrant,
        cluster.options, cluster.seq, cluster.closing, dict(cluster.overrides), cluster.opened,
    )  # fmt: skip


def job_row(job: JobRecord) -> JobRow:
    state = job.state._value_  # not `.value`: an Enum property, slow for every job written
    state = "running" if state == "orphaned" else state
    return JobRow(
        job.cluster_id, job.job_id, job.priority, job.seq, job.payload, job.options, job.submit_time,
        state, job.last_node, job.attempts, job.cancel_requested, job.result, job.result_size, job.node_run,
    )  # fmt: skip


class Changes:
    """What one `handle` call changed, by key, until it becomes a `Persist` action."""

    __slots__ = ("clusters", "gone_clusters", "new_jobs", "changed_jobs", "gone_jobs", "users", "settings")

    def __init__(self) -> None:
        self.clusters: dict[str, ClusterRecord] = {}
        self.gone_clusters: set[str] = set()
        self.new_jobs: dict[tuple[str, int], JobRecord] = {}
        self.changed_jobs: dict[tuple[str, int], JobRecord] = {}
        self.gone_jobs: set[tuple[str, int]] = set()
        self.users: dict[str, UserRecord] = {}
        #: an operator's drains, CPU caps or shares changed: all of them are written anew (they are few)
        self.settings = False

    def __bool__(self) -> bool:
        return bool(
            self.clusters or self.gone_clusters or self.new_jobs or self.changed_jobs or self.gone_jobs or self.users
            or self.settings
        )

    def cluster(self, cluster: ClusterRecord) -> None:
        self.clusters[cluster.cluster_id] = cluster

    def cluster_gone(self, cluster_id: str) -> None:
        """The cluster and every job of it: the store drops its jobs with it."""
        self.clusters.pop(cluster_id, None)
        self.gone_clusters.add(cluster_id)
        for jobs in (self.new_jobs, self.changed_jobs):
            for key in [k for k in jobs if k[0] == cluster_id]:
                del jobs[key]
        self.gone_jobs = {k for k in self.gone_jobs if k[0] != cluster_id}

    def job_new(self, job: JobRecord) -> None:
        self.gone_jobs.discard(job.key)  # a job of that id gone this turn: the new row replaces its row
        self.new_jobs[job.key] = job

    def job_changed(self, job: JobRecord) -> None:
        if job.key not in self.new_jobs:
            self.changed_jobs[job.key] = job

    def job_gone(self, job: JobRecord) -> None:
        self.changed_jobs.pop(job.key, None)
        if self.new_jobs.pop(job.key, None) is None:
            self.gone_jobs.add(job.key)

    def user(self, user: UserRecord) -> None:
        self.users[user.name] = user
