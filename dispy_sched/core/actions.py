"""Actions: what the shell must do, as returned by `SchedulerCore.handle`.

Named as imperatives. Each maps onto one wire message to one peer (or, for
`DropNode`, closing a connection). Within one `handle` call there is at most
one action of each batched kind per peer and cluster, so a burst of events
leaves as one frame per peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from dispy_wire.messages import JobFile, JobRef, JobResult, JobStart, NodeInfo, PutFile, RunJob

from .persist import ClusterRow, JobRow, SettingRow, UsageRow


class Action:
    __slots__ = ()


# -- to the state store -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist(Action):
    """Everything one `handle` call changed, to be written in one transaction.

    Always the first action of its call: the shell commits it before it sends
    the others, so no acknowledgement gets ahead of its record (what
    acknowledges nothing leaves while the commit syncs: dispy_sched/ahead.py).
    Applied in field order: clusters, new jobs, changed jobs, forgotten jobs,
    forgotten clusters (with all their jobs), usage, then the operator's settings (None: unchanged; a list
    replaces all that are stored).
    """

    clusters: list[ClusterRow]
    new_jobs: list[JobRow]
    changed_jobs: list[JobRow]
    gone_jobs: list[tuple[str, int]]
    gone_clusters: list[str]
    usage: list[UsageRow]
    settings: list[SettingRow] | None = None


# -- to nodes ----------------------------------------------------------------


class JobEnd(NamedTuple):
    """One job's accounting record: who ran what, where, for how long, and how it ended.

    A tuple in the order of `accounting.COLUMNS`, so the stores write it as it is (a busy scheduler makes
    thousands a second: a tuple is cheaper to build than a dataclass, and needs no conversion to a row).
    """

    user: str
    cluster_id: str
    cluster_name: str
    job_id: int
    node: str  # "" if it never ran
    status: str  # the `JobStatus` name: Finished, Terminated, Cancelled, Abandoned
    submit_time: float  # Unix time the scheduler accepted it
    start_time: float  # as the node reports it (the end time for a job that never ran)
    end_time: float
    cpu_time: float  # CPU seconds the node measured (0: did not run, or not measured)
    max_rss: int  # bytes, as the node measured it
    reason: str  # why it did not finish: the exception's last line, or the scheduler's reason ("" if Finished)


@dataclass(frozen=True, slots=True)
class RecordJobEnds(Action):
    """Write these accounting records (`CoreConfig.accounting`); after the turn's Persist, before the rest."""

    ends: list[JobEnd]


@dataclass(frozen=True, slots=True)
class LoadCluster(Action):
    node: str
    cluster_id: str
    user: str
    computation: bytes
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dispatch(Action):
    node: str
    jobs: list[RunJob]


@dataclass(frozen=True, slots=True)
class KillJobs(Action):
    node: str
    jobs: list[JobRef]


@dataclass(frozen=True, slots=True)
class RecallJobs(Action):
    """Ask a node to give back these jobs sent ahead of a free CPU if it has not started them (`JobsReturned`)."""

    node: str
    jobs: list[JobRef]


@dataclass(frozen=True, slots=True)
class ConfirmResults(Action):
    """Tell a node that these jobs' results are recorded: it keeps each until then."""

    node: str
    jobs: list[JobRef]


@dataclass(frozen=True, slots=True)
class UnloadCluster(Action):
    node: str
    cluster_id: str


@dataclass(frozen=True, slots=True)
class ForwardFile(Action):
    node: str
    put: PutFile


@dataclass(frozen=True, slots=True)
class ReportFilePut(Action):
    client: str
    ref: str
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class DropNode(Action):
    """Close the node's connection: the core has already written it off."""

    node: str
    reason: str


# -- to clients --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfirmOpened(Action):
    client: str
    cluster_id: str
    resumed: bool
    #: a resumed cluster's job ids, all states (`JobsKnown`)
    known: list[int] | None = None


@dataclass(frozen=True, slots=True)
class ConfirmAccepted(Action):
    client: str
    cluster_id: str
    job_ids: list[int]


@dataclass(frozen=True, slots=True)
class NotifyStarted(Action):
    client: str
    cluster_id: str
    starts: list[JobStart]


@dataclass(frozen=True, slots=True)
class DeliverResults(Action):
    client: str
    cluster_id: str
    results: list[JobResult]


@dataclass(frozen=True, slots=True)
class DeliverStored(Action):
    """Send results the store holds (the core kept only their ids and sizes): the shell reads them back.

    `jobs` are (job id, `state.result_cost`) pairs, so the shell can read
    them in slices that fit its output buffer.
    """

    client: str
    cluster_id: str
    jobs: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class NotifyNodes(Action):
    client: str
    cluster_id: str
    nodes: list[NodeInfo]


@dataclass(frozen=True, slots=True)
class DeliverFiles(Action):
    client: str
    files: list[JobFile]


@dataclass(frozen=True, slots=True)
class ConfirmClosed(Action):
    client: str
    cluster_id: str


@dataclass(frozen=True, slots=True)
class ResumeCancelling(Action):
    """Call the core again soon (`CancellingResumed`), after serving what else has arrived.

    Bulk cancels (a close, an operator's cancel of a whole cluster, a cluster
    no node can run, a long list of jobs) still hold queued jobs to end: the
    core ends `CoreConfig.close_slice` of them per call, so that one cancel
    of a huge queue does not hold the loop past the peers' liveness window.
    Returned by every call while some remain; one pending call at a time is
    enough.
    """


@dataclass(frozen=True, slots=True)
class ReportStatus(Action):
    client: str
    ref: str
    status: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReleaseCluster(Action):
    """Nothing for the shell to send: a cluster whose program stayed away too long was released
    (`CoreConfig.result_retention`); log it."""

    user: str
    cluster_id: str
    name: str
    results: int  # results nobody collected, dropped with it
    jobs: int  # queued or running jobs it cancelled or stopped
    why: str  # what a returning program is told


@dataclass(frozen=True, slots=True)
class NotifyUnusable(Action):
    """Tell a cluster's client (and the log) that the cluster will not run on a node, and why."""

    client: str
    user: str
    cluster_id: str
    name: str  # the cluster's
    node: str  # the node's name
    ip_addr: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reject(Action):
    """Tell a client that a request failed (non-fatal `Error` frame)."""

    client: str
    code: str
    message: str
    ref: str


# -- to the shell itself -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerAdmin(Action):
    """The outcome of an operator's request (`events.CancelRequested` and the like), named by its `ref`."""

    ref: str
    #: "" when done; else an `ErrorCode` value
    error: str
    message: str
