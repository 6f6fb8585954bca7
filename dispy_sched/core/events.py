"""Events: what happened, as told to `SchedulerCore.handle` by the shell.

Named as facts. `client` and `node` are the shell's session ids. Time is not
in the events: `handle(..., now=...)` gives it once per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dispy_wire.cluster_options import Runtime
from dispy_wire.messages import JobFile, JobRef, JobResult, JobSpec, PutFile

from .persist import ClusterRow, JobRow, SettingRow
from .state import Limits


class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ClusterOpened(Event):
    client: str
    user: str
    cluster_id: str
    name: str
    computation: bytes
    reentrant: bool
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobsSubmitted(Event):
    client: str
    cluster_id: str
    jobs: list[JobSpec]


@dataclass(frozen=True, slots=True)
class JobsCancelled(Event):
    client: str
    cluster_id: str
    job_ids: list[int]


@dataclass(frozen=True, slots=True)
class ResultsAcked(Event):
    client: str
    cluster_id: str
    job_ids: list[int]


@dataclass(frozen=True, slots=True)
class ClusterClosed(Event):
    client: str
    cluster_id: str
    terminate: bool


@dataclass(frozen=True, slots=True)
class NodeCpusSet(Event):
    """The cluster's client caps its use of the node(s) named `node`; a negative `cpus` lifts the cap."""

    client: str
    cluster_id: str
    node: str
    cpus: int


@dataclass(frozen=True, slots=True)
class ResetupRequested(Event):
    """The client wants its cluster loaded again, with `computation`, on the node(s) called `node`."""

    client: str
    cluster_id: str
    node: str
    computation: bytes


@dataclass(frozen=True, slots=True)
class FilePutRequested(Event):
    """The client sends a file to its cluster's directory on one node."""

    client: str
    put: PutFile


@dataclass(frozen=True, slots=True)
class FilePutDone(Event):
    node: str
    ref: str
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class StatusRequested(Event):
    client: str
    ref: str
    user: str  # who asks: with `private_data`, it sees other users only as totals


@dataclass(frozen=True, slots=True)
class ClientLeft(Event):
    client: str


@dataclass(frozen=True, slots=True)
class NodeJoined(Event):
    node: str
    name: str
    ip_addr: str
    cpus: int
    heartbeat: float
    addresses: tuple[str, ...] = ()  # the node's own interface addresses, as it reports them
    #: jobs the node still holds from an earlier connection (running, or with a result to send)
    jobs: tuple[JobRef, ...] = ()
    #: clusters the node still has loaded from an earlier connection
    clusters: tuple[str, ...] = ()
    #: the Python and cloudpickle its jobs run with (None: not reported, taken to fit every cluster)
    runtime: Runtime | None = None
    #: seconds the node keeps its jobs running without a scheduler (its --scheduler-grace; 0: it kills them)
    grace: float = 0.0
    #: it queues jobs beyond its CPUs and reports each one's start (`StartsReported`): it may be sent a window more
    queues: bool = False
    #: the node's run: a random id, new whenever the node drops what it held unreported (at its start, or when
    #: it gives its jobs up); the same id means every job sent to it since is either in `jobs` (or its result
    #: was recorded) or never arrived ('': not said, or `jobs` is incomplete: nothing is inferred)
    node_run: str = ""


@dataclass(frozen=True, slots=True)
class NodeReported(Event):
    node: str
    avail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResultsArrived(Event):
    node: str
    results: list[JobResult]


@dataclass(frozen=True, slots=True)
class StartsReported(Event):
    """A node that queues jobs (`NodeJoined.queues`) started these: their clients now see them Running."""

    node: str
    jobs: list[JobRef]


@dataclass(frozen=True, slots=True)
class JobsReturned(Event):
    """A node gave back jobs it was asked to (`RecallJobs`) and never started: they may run anywhere."""

    node: str
    jobs: list[JobRef]


@dataclass(frozen=True, slots=True)
class FilesArrived(Event):
    node: str
    files: list[JobFile]


@dataclass(frozen=True, slots=True)
class ClusterFailedOnNode(Event):
    node: str
    cluster_id: str
    message: str


@dataclass(frozen=True, slots=True)
class NodeLeft(Event):
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """Periodic: lets the core notice nodes that stopped reporting.

    `stalled` is how long the shell itself did not run before this tick
    (the process was stopped, or its loop starved): the peers' silence in
    that time is the scheduler's, not theirs, so nobody is blamed for it.
    """

    stalled: float = 0.0


@dataclass(frozen=True, slots=True)
class CancellingResumed(Event):
    """The shell's answer to `ResumeCancelling`: a call in which the core ends the next slice of bulk-cancelled queued jobs."""


@dataclass(frozen=True, slots=True)
class UsageRestored(Event):
    """Decayed usage saved by an earlier run: user -> (CPU-seconds, as of time).

    Added to what the core already counts for that user, decayed to now.
    """

    usage: dict[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class StateRestored(Event):
    """What an earlier run of the scheduler wrote to its journal, read back at start.

    Jobs written as running become orphans: they wait up to `adopt_within`
    seconds for a node to report them (`NodeJoined.jobs`); then a reentrant
    one is queued again and any other ends Abandoned.
    """

    clusters: list[ClusterRow]
    jobs: list[JobRow]
    usage: dict[str, tuple[float, float]]
    adopt_within: float
    #: the operator's drains, CPU caps and shares (the admin API's), as last written
    settings: list[SettingRow] = field(default_factory=list)


# -- from the operator (the HTTP API, SIGHUP) ---------------------------------
# Each carries a `ref` that the core's `AnswerAdmin` names in reply; `by` is the
# user who asks (who may touch only their own clusters), None for an administrator.


@dataclass(frozen=True, slots=True)
class CancelRequested(Event):
    """Cancel jobs of a cluster: queued ones end at once, running ones are killed on their nodes."""

    ref: str
    by: str | None
    cluster_id: str
    #: None: every job of the cluster that has not ended
    job_ids: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class NodeDrainSet(Event):
    """A drained node (by name) gets no new jobs; those running there finish. Kept across its reconnects."""

    ref: str
    name: str
    drained: bool


@dataclass(frozen=True, slots=True)
class NodeCpusCapped(Event):
    """The node called `name` is given at most `cpus` CPUs (never more than it offers); negative lifts the cap."""

    ref: str
    name: str
    cpus: int


@dataclass(frozen=True, slots=True)
class UserShareSet(Event):
    """A user's fair-share weight, until the users file is read again."""

    ref: str
    user: str
    share: float


@dataclass(frozen=True, slots=True)
class UsersReloaded(Event):
    """The users file was read again: every user's share and limits as it now says.

    A user it no longer names gets the default share and `default_limits`.
    """

    ref: str
    shares: dict[str, float]
    limits: dict[str, Limits]
    default_limits: Limits
