"""The scheduling core: all of the scheduler's state and decisions, no I/O.

Theory of operation
-------------------
The shell feeds `handle(*events, now=...)` with what happened (a client
submitted jobs, a node joined, results arrived, a tick passed) and executes
the actions it returns (dispatch these jobs to that node, deliver those
results to that client). Nothing here reads a clock, touches a socket,
unpickles user data or logs; time and session ids come in from outside, so
every run is reproducible from its event sequence.

Invariants (checked by `invariants.check_invariants` in tests):
- a job is in exactly one of: its cluster's queue (QUEUED), one node's job
  set (RUNNING), its cluster's undelivered results (DONE), the orphans of a
  restart waiting for their node to report them (ORPHANED);
- a node's, a user's and a cluster's `busy` equal their RUNNING jobs;
- a user's `queued_bytes` is what its open clusters' computations and its
  unfinished jobs' arguments cost, its `held_bytes` what its DONE jobs'
  results and kept files cost (`state.job_cost`, `result_cost`, `file_cost`);
  a job refused at submit is in neither: the core keeps no record of it;
- a job leaves RUNNING only on its node's result, on that node's loss, or on
  its cluster's set-up failure there: never twice, so each accepted job gets
  exactly one terminal result (principle 4 of DESIGN.md);
- a closing cluster, or one with a bulk cancel under way (`cancelling`),
  is never in the ready index (none of its queued jobs starts, nor counts in
  fair share); a closing one with queued jobs has a sweep covering them all.

Cancelling: a call ends at most `CoreConfig.close_slice` queued jobs. A
cancel of named jobs that fits in what is left of that ends them at once
(`_cancel`); a bigger one, a close (or release), an operator's cancel of a
whole cluster and a cluster no node can run each record what is to end in the
cluster's sweep (`sweeps.py`), and every call ends the rest of its
`close_slice` of them (`_sweep`), oldest cancel first: at 15 to 40 us a job
(its result, journal row and accounting record), ending a million in one call
would hold the shell's loop for tens of seconds, past the peers' 8 s liveness
window. While
some remain, every call returns `ResumeCancelling`, and the shell calls again
(`CancellingResumed`) after serving what else arrived; a small cancel ends in
the call that accepted it. Meanwhile the cluster is out of the ready index,
so nothing of what was cancelled starts, and what was submitted after waits.
A job queued again in a closing cluster (its node lost) ends too. A restart
resumes: a closing cluster is read back closing, an operator's cancel of a
whole cluster as a `CANCEL` setting, named jobs still to end as queued with
`cancel_requested` (`Sweep.mark`); each job still ends once, and a closing
cluster goes with its last job.

Persistence: with `CoreConfig.persist`, each call's changes to clusters,
jobs and usage leave as one `Persist` action ahead of the others (see
`persist.py`); `StateRestored` reads them back after a restart, when jobs
that were running become orphans until a node reports them (`NodeJoined.jobs`)
or `adopt_within` passes.

Every state change of a job goes through `_transition`, which checks it
against `JOB_TRANSITIONS` and records it, with the stimulus that caused it,
in a bounded log (`story()` replays one job's history).

Batching: handlers only queue outgoing work in an `_Outbox`; at the end of
`handle` the scheduling pass fills free CPUs, and the outbox is flushed as at
most one action of each kind per peer and cluster. A node whose jobs end is
re-keyed among the free nodes once per call, as the pass begins, not once
per job (`_stale_free`).

Prefetch: a node that queues jobs (`NodeJoined.queues`) is sent up to
`CoreConfig.prefetch` jobs per CPU beyond its CPUs (its `window`); it starts
each as a CPU frees and reports the start (`StartsReported`), when the
client is told the job runs. So a node never idles for a round trip to the
scheduler (and its journal commit) between two jobs, and each turn's
results, dispatches and commit carry several jobs. A prefetched job is
RUNNING for the core from its dispatch: it counts in `busy` of its node,
cluster and user like a running one (and in their `waiting` until it
starts), so `max_cpus` and the clusters' CPU allowances hold it as they
hold a running job. Fair share weighs it by the part of their stay on nodes
its user's jobs spend running (`UserRecord.load`, from the waits that start
reports show and the run times results show): the node starts its queue in
the order it came, so a short job behind long ones waits about as long as
they run, and counting it fully tilted shares toward users of long jobs.
The node may start it at any moment, its report lost with the node: so
when the node is lost it is treated as a running job is (rerun if
reentrant, else orphaned or Abandoned), never run twice.
People see it queued until it starts (`status`: busy is running, queued
includes waiting). A cluster allowed only some of a node's CPUs (its
`nodes=` or `set_node_cpus`) is sent no more than those there, no window;
one allowed all of them (a JobCluster's own node, say) is held by the
node's window as any cluster is, and when its allowance is cut the node is
asked back what it holds of that cluster and has not started. A node the
operator caps below what it offers gets no window (it would run the window
on CPUs the cap withholds), and a node drained, or capped below what it
holds, is asked to give back what it has not started (`RecallJobs`); what
it returns (`JobsReturned`) never ran and is queued again, reentrant or
not.

Adaptive window: with `CoreConfig.prefetch_max` above `prefetch`, the
window per CPU is sized from how long jobs run (`window.py`): enough for
`prefetch_target` seconds of queued work per CPU, between `prefetch` and
`prefetch_max`. A node's window (which keeps it among the free nodes) comes
from the run times of every job it ran lately; a job of a cluster is sent
to it only while the node holds fewer than its CPUs times one plus the
cluster's own depth. When the cluster the policy picks for a node does not
fit there, the node waits for its queue to shorten (its CPUs drain it in
milliseconds when the window is deep) rather than take the next cluster's
job: else a deep window of short jobs would keep the policy's pick off the
node for as long as short jobs keep coming. Meanwhile it is parked, out of
the free nodes, until its next change (a job's end there, at the latest:
all its CPUs are busy), not tried again at every call.

Jobs lost on the wire: a node names the run of its job runner
(`NodeJoined.node_run`), and each job records the run it was sent to. A node
that comes back (after a scheduler restart or takeover, or a lost connection)
as the same run lists every job it ever got and has no recorded result for,
so one it does not list never reached it and is queued again, reentrant or
not (`_never_arrived`); a node of another run restarted and lost its jobs.
"""

from __future__ import annotations

from collections import defaultdict, deque
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dispy_wire.cluster_options import BadOptions, ClusterOptions, JobOptions
from dispy_wire.errors import ErrorCode
from dispy_wire.messages import JobFile, JobRef, JobResult, JobSpec, JobStart, NodeInfo, RunJob
from dispy_wire.status import JobStatus

from . import actions as A
from . import events as E
from . import window
from .keyed_heap import KeyedHeap
from .persist import CANCEL, CPUS, DRAIN, SHARE, Changes, ClusterRow, JobRow, SettingRow, UsageRow, cluster_row, job_row
from .ready import ReadyIndex
from .sweeps import EVERY_JOB, Sweep
from .placement import allowed_cpus, compile_nodes
from .state import (
    NO_LIMITS, NO_OPTIONS, ClusterRecord, JobRecord, JobState, Limits, NodeRecord, Orphan, UserRecord, decay,
    file_cost, job_cost, result_cost,
)

if TYPE_CHECKING:  # the policies package imports the core's records
    from ..policies.base import Policy

#: released cluster ids remembered to tell a returning program why (`_release_cluster`)
MAX_RELEASED = 10_000

JOB_TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.QUEUED, JobState.RUNNING),  # dispatched
        (JobState.QUEUED, JobState.DONE),  # cancelled while queued (a job refused at submit gets no record)
        (JobState.RUNNING, JobState.DONE),  # result arrived, or abandoned
        (JobState.RUNNING, JobState.QUEUED),  # node lost (reentrant) or set-up failed
        (JobState.RUNNING, JobState.ORPHANED),  # node lost, but it keeps its jobs for a grace: it may come back
        (JobState.ORPHANED, JobState.RUNNING),  # after a restart or a node's loss: the node reported it still runs it
        (JobState.ORPHANED, JobState.QUEUED),  # ... no node did in time (reentrant)
        (JobState.ORPHANED, JobState.DONE),  # ... (not reentrant: abandoned), or cancelled
    }
)
#: characters of a job's end reason kept in its accounting record
REASON_LIMIT = 200


#: event type -> the name of the `SchedulerCore` method that handles it (`_handles`)
_HANDLERS: dict[type[E.Event], str] = {}
_Handler = TypeVar("_Handler", bound=Callable[..., None])


def _handles(kind: type[E.Event]) -> Callable[[_Handler], _Handler]:
    """Registers a `SchedulerCore` method as the handler of one event type (exactly that type: events do not
    subclass one another)."""

    def register(method: _Handler) -> _Handler:
        assert kind not in _HANDLERS, f"two handlers for {kind.__name__}"
        _HANDLERS[kind] = method.__name__
        return method

    return register


@dataclass(frozen=True, slots=True)
class CoreConfig:
    #: weight of users not named in the users file
    default_share: float = 1.0
    #: per-user share, by name
    shares: dict[str, float] | None = None
    #: per-user limits, by name
    limits: dict[str, Limits] | None = None
    #: the limits of users not named in `limits`
    default_limits: Limits = NO_LIMITS
    #: a client's status shows other users only as totals (Slurm's PrivateData)
    private_data: bool = True
    #: seconds a cluster's client may stay away (dispy's zombie_interval): then
    #: the cluster is released, its queued jobs cancelled, its running ones
    #: stopped and its uncollected results dropped; 0: kept forever
    result_retention: float = 3600.0
    #: half-life of decayed usage (seconds)
    usage_half_life: float = 3600.0
    #: a node is lost after this many heartbeat intervals without a report
    heartbeat_misses: float = 3.0
    #: transitions kept for `story()`
    log_size: int = 100_000
    #: emit a `Persist` action per call with what it changed (for the journal)
    persist: bool = False
    #: emit a `RecordJobEnds` action per call with the jobs that ended (for accounting)
    accounting: bool = False
    #: jobs per CPU a node that queues them is sent beyond its CPUs (see Prefetch above); 0: none
    prefetch: int = 0
    #: the most jobs per CPU sent ahead where jobs are short (see Adaptive window above); not above `prefetch`: off
    prefetch_max: int = 0
    #: seconds of queued work per CPU the adaptive window aims at
    prefetch_target: float = 0.005
    #: queued jobs ended per call by closes and other bulk cancels (see Cancelling above): at 2,000, a loop turn of 0.1 to 0.2 s
    #: on a busy 2-core machine, shell included (benchmarks/close.py)
    close_slice: int = 2000


class _Outbox:
    """Outgoing work of one `handle` call, merged per peer and cluster."""

    def __init__(self) -> None:
        self.immediate: list[A.Action] = []
        self.dispatch: dict[str, list[RunJob]] = defaultdict(list)
        self.recorded: dict[str, list[JobRef]] = defaultdict(list)
        self.accepted: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.started: dict[tuple[str, str], list[JobStart]] = defaultdict(list)
        self.results: dict[tuple[str, str], list[JobResult]] = defaultdict(list)
        self.files: dict[str, list[JobFile]] = defaultdict(list)
        self.nodes: dict[tuple[str, str], list[NodeInfo]] = defaultdict(list)
        #: results the store holds, by (job id, size): the shell reads them back
        self.stored: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        self.closed: list[A.Action] = []
        self.ended: list[A.JobEnd] = []

    def flush(self) -> list[A.Action]:
        out: list[A.Action] = [A.RecordJobEnds(self.ended)] if self.ended else []
        out += self.immediate
        out += [A.Dispatch(n, jobs) for n, jobs in self.dispatch.items()]
        out += [A.ConfirmAccepted(c, cid, ids) for (c, cid), ids in self.accepted.items()]
        out += [A.NotifyStarted(c, cid, s) for (c, cid), s in self.started.items()]
        out += [A.NotifyNodes(c, cid, n) for (c, cid), n in self.nodes.items()]
        out += [A.DeliverFiles(c, f) for c, f in self.files.items()]  # before the results of their jobs
        out += [A.DeliverResults(c, cid, r) for (c, cid), r in self.results.items()]
        out += [A.DeliverStored(c, cid, jobs) for (c, cid), jobs in self.stored.items()]
        # after the results: each peer's frames go out in one write, in the order of its first frame this call,
        # and a client waits on its result while the node's confirmation only lets it drop its copy
        out += [A.ConfirmResults(n, refs) for n, refs in self.recorded.items()]
        out += self.closed
        return out


class SchedulerCore:
    """State and decisions of the scheduler.

    Args:
        policy: ranks users and clusters for free CPUs (`policies.base.Policy`).
        config: tunables; see `CoreConfig`.
    """

    def __init__(self, policy: Policy, config: CoreConfig | None = None) -> None:
        self.policy = policy
        self.config = config or CoreConfig()
        self.usage_half_life = self.config.usage_half_life
        self.now = 0.0
        self.users: dict[str, UserRecord] = {}
        self.clusters: dict[str, ClusterRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        #: users and clusters with queued jobs, in the policy's order
        self.ready = ReadyIndex(policy, self.users, self.clusters)
        #: event type -> its handler, bound (a dict lookup: `singledispatchmethod` costs a wrapper per event)
        self._handlers: dict[type[E.Event], Callable[[Any], None]] = {
            kind: getattr(self, name) for kind, name in _HANDLERS.items()
        }
        self.log: deque[tuple[str, str, int, str, str]] = deque(maxlen=self.config.log_size)
        #: nodes with a free CPU, least loaded first
        self._free_nodes: KeyedHeap[str] = KeyedHeap()
        #: free nodes kept out of `_free_nodes` while the cluster picked for them waits for their queue to shorten
        #: (see Adaptive window): taken back at their next change (`_update_free`), a job's end there at the latest
        self._parked: set[str] = set()
        #: nodes whose jobs ended in this call: re-keyed among the free ones once, before the scheduling pass
        #: (a node's results come in batches: one re-key per node, not one per job); a dict, not a set, so that
        #: they are re-keyed in a fixed order (nodes of equal keys keep it in the heap: runs are reproducible)
        self._stale_free: dict[str, None] = {}
        #: clusters whose clients follow the nodes (options["node_updates"])
        self._watchers: set[str] = set()
        #: files on their way to nodes: (node, ref) -> client waiting for the answer
        self._puts: dict[tuple[str, str], str] = {}
        self._seq = 0
        self._out = _Outbox()
        self._stimulus = ""
        #: what this call changed, for the journal (kept empty unless `config.persist`)
        self._changes = Changes()
        #: jobs running when the scheduler last stopped, or on a node lost since, until a node reports them
        #: or their deadline passes
        self._orphans: dict[tuple[str, int], Orphan] = {}
        self._adopt_until = 0.0
        #: jobs whose result this call wrote: with a store, the core lets go of it once written
        self._written: list[JobRecord] = []
        #: released clusters, id -> (user, why), so a returning client is told why (oldest dropped first)
        self._released: dict[str, tuple[str, str]] = {}
        #: per-user shares and limits (the users file's, as last read; an operator may change a share)
        self.shares: dict[str, float] = dict(self.config.shares or {})
        self.limits: dict[str, Limits] = dict(self.config.limits or {})
        self.default_limits = self.config.default_limits
        #: names of the nodes an operator drained: no new jobs there (kept while they are away)
        self.drained: set[str] = set()
        #: node name -> the most CPUs an operator lets it have
        self.cpu_caps: dict[str, int] = {}
        #: user -> the share an operator set, which holds (across restarts) until the users file is read again
        self.share_overrides: dict[str, float] = {}
        #: cluster id -> the bulk cancel of its queued jobs under way, oldest first (an entry may outlive its
        #: cluster until `_sweep` reaches it)
        self._sweeps: dict[str, Sweep] = {}
        #: queued jobs cancels may still end in this call (`close_slice` a call: see Cancelling)
        self._budget = self.config.close_slice

    # ---------------------------------------------------------------- entry

    def handle(self, *events: E.Event, now: float) -> list[A.Action]:
        """Applies events in order, fills free CPUs, returns the actions."""
        self.now = max(self.now, now)
        self._budget = self.config.close_slice
        handlers = self._handlers
        for event in events:
            kind = type(event)
            self._stimulus = kind.__name__
            handler = handlers.get(kind)
            if handler is None:
                raise TypeError(f"no handler for {kind.__name__}")
            handler(event)
        if self._sweeps:
            self._stimulus = "cancel"
            self._sweep()
        self._stimulus = "schedule"
        self._schedule()
        out, self._out = self._out, _Outbox()
        actions = out.flush()
        if self._changes:
            actions.insert(0, self._persist_action())
        if self._sweeps:
            actions.append(A.ResumeCancelling())
        for job in self._written:  # in the Persist (and any DeliverResults) above: the store has it now
            job.result = None
        self._written.clear()
        return actions

    def story(self, cluster_id: str, job_id: int) -> list[tuple[str, str, int, str, str]]:
        """Every recorded transition of one job: (stimulus, cluster, job, from, to)."""
        return [entry for entry in self.log if entry[1] == cluster_id and entry[2] == job_id]

    # ------------------------------------------------------------- handlers

    @_handles(E.ClusterOpened)
    def _on_cluster_opened(self, ev: E.ClusterOpened) -> None:
        cluster = self.clusters.get(ev.cluster_id)
        if cluster is not None:
            if cluster.user != ev.user:
                self._reject(ev.client, ErrorCode.UNKNOWN_CLUSTER, f"cluster {ev.cluster_id} belongs to another user", ev.cluster_id)
                return
            if cluster.released:  # its running jobs are still being stopped: the id is free once they are
                self._reject(ev.client, ErrorCode.RELEASED, f"{cluster.released}; its jobs are being stopped, open it again", ev.cluster_id)
                return
            # re-attach after a reconnect: resend what the client may have missed
            cluster.client = ev.client
            cluster.left_at = 0.0
            self._out.immediate.append(A.ConfirmOpened(ev.client, ev.cluster_id, True, list(cluster.jobs)))
            for job in cluster.jobs.values():
                if job.files:
                    self._out.files[ev.client] += job.files
                    held = sum(file_cost(f) for f in job.files)
                    job.held -= held
                    self._hold(cluster, -held)
                    job.files = ()
                if job.state is JobState.RUNNING and job.node is not None and job.started:
                    self._notify_started(cluster, job)
                elif job.state is JobState.DONE and job.result is not None:
                    self._out.results[(ev.client, cluster.cluster_id)].append(job.result)
                elif job.state is JobState.DONE:
                    self._out.stored[(ev.client, cluster.cluster_id)].append((job.job_id, job.result_size))
            self._introduce_nodes(cluster)
            self._maybe_finish_close(cluster)  # a close that waited for this client
            return
        gone = self._released.get(ev.cluster_id)
        if gone is not None and gone[0] == ev.user:  # told once; the program goes on with a new cluster of that id
            del self._released[ev.cluster_id]
            self._reject(ev.client, ErrorCode.RELEASED, gone[1], ev.cluster_id)
        try:
            opts = ClusterOptions.from_wire(ev.options)
        except BadOptions as exc:
            self._reject(ev.client, ErrorCode.BAD_REQUEST, f"cluster {ev.name}: {exc}", ev.cluster_id)
            return
        user = self._user(ev.user)
        refusal = self._over_open_limits(user, len(ev.computation))
        if refusal:
            self._reject(ev.client, ErrorCode.LIMIT, f"cluster {ev.name} refused: {refusal}", ev.cluster_id)
            return
        self._seq += 1
        row = ClusterRow(
            ev.cluster_id, ev.user, ev.name, ev.computation, ev.reentrant, dict(ev.options), self._seq, False, {}, self.now
        )
        cluster = self._add_cluster(row, opts, ev.client)
        self._introduce_nodes(cluster)
        self._out.immediate.append(A.ConfirmOpened(ev.client, ev.cluster_id, False))
        for node in self.nodes.values():  # after the confirmation: its client hears of them as an open cluster's
            self._check_runtime(cluster, node)

    def _add_cluster(self, row: ClusterRow, opts: ClusterOptions, client: str | None) -> ClusterRecord:
        """A new cluster, opened by a client or read back from the journal."""
        user = self._user(row.user)
        cluster = ClusterRecord(
            row.cluster_id, row.user, row.name, client, row.computation, row.reentrant, row.options, row.seq, opts,
            opened=row.opened,
        )
        cluster.placement = compile_nodes(opts.nodes)
        cluster.ask_client = opts.allocate_by_client
        cluster.closing = row.closing
        cluster.overrides = dict(row.overrides)
        for node in self.nodes.values():
            self._place(cluster, node)
        if opts.node_updates:
            self._watchers.add(cluster.cluster_id)
        self.clusters[row.cluster_id] = cluster
        user.clusters.add(row.cluster_id)
        user.queued_bytes += cluster.code_bytes()
        if client is None:  # read back after a restart: detached until its program re-attaches
            cluster.left_at = self.now
        self._note_cluster(cluster)
        return cluster

    @_handles(E.JobsSubmitted)
    def _on_jobs_submitted(self, ev: E.JobsSubmitted) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is None:
            return
        if cluster.closing:
            self._reject(ev.client, ErrorCode.BAD_REQUEST, f"cluster {cluster.name} is closing", ev.cluster_id)
            return
        user = self.users[cluster.user]
        limits = user.limits
        accepted = self._out.accepted[(ev.client, ev.cluster_id)]
        refused: dict[str, list[JobSpec]] = {}  # why -> the jobs refused for it
        malformed: dict[str, list[JobSpec]] = {}  # ... for options that are not `JobOptions`
        for spec in ev.jobs:
            accepted.append(spec.job_id)
            if spec.job_id in cluster.jobs:
                continue  # a resent submit: idempotent on the job id
            options = spec.options
            plain = type(options) is dict and not options  # most jobs: no options to check
            try:
                pin = None if plain else JobOptions.from_wire(options).node
            except BadOptions as exc:
                malformed.setdefault(str(exc), []).append(spec)
                continue
            why = self._over_submit_limits(user, spec)
            if why:
                refused.setdefault(why, []).append(spec)
                continue
            self._seq += 1
            priority = spec.priority if limits.priority_max is None else min(spec.priority, limits.priority_max)
            # most jobs have no options: they share one empty map, not 64 bytes each (nothing mutates it)
            options = NO_OPTIONS if plain else options
            job = JobRecord(ev.cluster_id, spec.job_id, priority, self._seq, spec.payload, options, self.now, pin=pin)
            if self.config.persist:
                self._changes.job_new(job)
            self._admit(cluster, job, "new")
        for why, specs in refused.items():
            self._refuse(cluster, specs, len(ev.jobs), why)
        for why, specs in malformed.items():
            self._refuse(cluster, specs, len(ev.jobs), why, ErrorCode.BAD_REQUEST)
        self._end_if_nowhere(cluster)
        self.ready.update(cluster)

    @_handles(E.JobsCancelled)
    def _on_jobs_cancelled(self, ev: E.JobsCancelled) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is not None:
            self._cancel(cluster, ev.job_ids)

    @_handles(E.ResultsAcked)
    def _on_results_acked(self, ev: E.ResultsAcked) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is None:
            return
        for job_id in ev.job_ids:
            job = cluster.jobs.get(job_id)
            if job is not None and job.state is JobState.DONE:
                self._forget(cluster, job)
        self._maybe_finish_close(cluster)

    @_handles(E.ClusterClosed)
    def _on_cluster_closed(self, ev: E.ClusterClosed) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is None:
            return
        self._start_closing(cluster)  # its queued jobs end in slices, the first at the end of this call
        if ev.terminate:
            self._cancel(cluster, self._running_ids(cluster))
        # results the client never acknowledged are dropped with the cluster
        for job in self._done_jobs(cluster):
            self._forget(cluster, job)
        self._maybe_finish_close(cluster)

    def _running_ids(self, cluster: ClusterRecord) -> list[int]:
        """Its RUNNING and ORPHANED jobs, found through its nodes and the orphans: no scan of its (maybe huge) queue."""
        if cluster.unfinished == cluster.queued:
            return []
        cid = cluster.cluster_id
        ids = [key[1] for node_id in cluster.busy_on for key in self.nodes[node_id].jobs if key[0] == cid]
        return sorted(ids + [key[1] for key in self._orphans if key[0] == cid])

    @staticmethod
    def _done_jobs(cluster: ClusterRecord) -> list[JobRecord]:
        """Its DONE jobs: a scan of its jobs only when it has some."""
        if len(cluster.jobs) == cluster.unfinished:
            return []
        return [j for j in cluster.jobs.values() if j.state is JobState.DONE]

    def _start_closing(self, cluster: ClusterRecord) -> None:
        """Marks a cluster closing: it leaves the ready index, and its queued jobs end (see Cancelling)."""
        cluster.closing = True
        self._note_cluster(cluster)
        self.ready.update(cluster)
        if cluster.queued:
            self._sweep_closing(cluster)

    def _sweep_closing(self, cluster: ClusterRecord) -> None:
        """Ends every queued job of a closing cluster (see Cancelling), also one queued again later."""
        self._sweep_of(cluster).cover(EVERY_JOB, JobStatus.CANCELLED, "cancelled before it started")

    def _sweep_of(self, cluster: ClusterRecord) -> Sweep:
        """The cluster's sweep, begun if need be: from now on none of its queued jobs starts until it is done."""
        sweep = self._sweeps.get(cluster.cluster_id)
        if sweep is None or sweep.cluster is not cluster:
            sweep = self._sweeps[cluster.cluster_id] = Sweep(cluster)
            cluster.cancelling = True
            self.ready.update(cluster)
        return sweep

    def _sweep(self) -> None:
        """Ends up to `close_slice` queued jobs of bulk cancels, oldest cancel first (see Cancelling)."""
        budget = self._budget
        while self._sweeps and budget > 0:
            cluster_id, sweep = next(iter(self._sweeps.items()))
            cluster = sweep.cluster
            if self.clusters.get(cluster_id) is cluster:
                if sweep.nowhere and not self._nowhere_why(cluster):  # a node that may run them came: they wait
                    sweep.uncover()
                budget, done = sweep.step(budget, self._end_queued)  # may drop the cluster
                if not done:
                    break
            del self._sweeps[cluster_id]
            cluster.cancelling = False
            if self.clusters.get(cluster_id) is cluster:
                self.ready.update(cluster)
            if sweep.lasting:
                self._note_settings()
        if self.config.persist:
            for sweep in self._sweeps.values():  # listed jobs left for later calls: the cancel outlives a restart
                sweep.mark(self._note_job)

    def _end_queued(self, cluster: ClusterRecord, job: JobRecord, status: JobStatus, why: str) -> None:
        self._finish(cluster, job, _synthetic(job, status, why, self.now))

    @_handles(E.CancellingResumed)
    def _on_cancelling_resumed(self, ev: E.CancellingResumed) -> None:
        """Nothing to do here: every call ends a slice (`handle`); this one is the shell's call for it."""

    @_handles(E.NodeCpusSet)
    def _on_node_cpus_set(self, ev: E.NodeCpusSet) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is None:
            return
        if ev.cpus < 0:
            cluster.overrides.pop(ev.node, None)
        else:
            cluster.overrides[ev.node] = ev.cpus
        self._note_cluster(cluster)  # kept: an absent client cannot set it again after a restart
        if not cluster.restricted:
            cluster.node_cpus.clear()
        for node in self.nodes.values():
            self._place(cluster, node)
            self._fit_allowance(cluster, node)
        self._end_if_nowhere(cluster)

    @_handles(E.ResetupRequested)
    def _on_resetup_requested(self, ev: E.ResetupRequested) -> None:
        cluster = self._owned(ev.client, ev.cluster_id)
        if cluster is None:
            return
        user = self.users[cluster.user]
        targets = [n for n in self.nodes.values() if ev.node in (n.name, *n.addresses)]
        more = sum(len(ev.computation) - len(cluster.node_blobs.get(n.node_id, b"")) for n in targets)
        refusal = self._over_open_limits(user, more, opening=False)
        if refusal:
            self._reject(ev.client, ErrorCode.LIMIT, f"set-up of cluster {cluster.name} anew refused: {refusal}", ev.cluster_id)
            return
        for node in targets:
            user.queued_bytes += len(ev.computation) - len(cluster.node_blobs.get(node.node_id, b""))
            cluster.node_blobs[node.node_id] = ev.computation
            if cluster.failed_on.pop(node.node_id, None) is not None:  # a set-up that failed is tried anew
                self._check_runtime(cluster, node)  # unless the node cannot load it at all
            if node.node_id in cluster.loaded_on:  # no new jobs there until its running ones end
                cluster.resetting.add(node.node_id)
                self._reload_when_idle(cluster, node)

    def _reload_when_idle(self, cluster: ClusterRecord, node: NodeRecord) -> None:
        """Unloads a draining cluster from a node once none of its jobs run there; the next dispatch loads it anew."""
        if node.node_id in cluster.resetting and not cluster.busy_on.get(node.node_id):
            cluster.resetting.discard(node.node_id)
            cluster.loaded_on.discard(node.node_id)
            node.loaded.discard(cluster.cluster_id)
            self._out.immediate.append(A.UnloadCluster(node.node_id, cluster.cluster_id))

    @_handles(E.FilePutRequested)
    def _on_file_put_requested(self, ev: E.FilePutRequested) -> None:
        put = ev.put
        cluster = self._owned(ev.client, put.cluster_id)
        if cluster is None:
            return
        targets = [
            n for n in cluster.loaded_on
            if put.node in (self.nodes[n].name, *self.nodes[n].addresses) and n not in cluster.resetting
        ]  # fmt: skip
        if not targets:
            why = f"cluster {cluster.name} is not loaded (or is being set up again) on a node called {put.node!r}"
            self._out.immediate.append(A.ReportFilePut(ev.client, put.ref, False, why))
            return
        node_id = targets[0]
        self._puts[(node_id, put.ref)] = ev.client
        self._out.immediate.append(A.ForwardFile(node_id, put))

    @_handles(E.FilePutDone)
    def _on_file_put_done(self, ev: E.FilePutDone) -> None:
        client = self._puts.pop((ev.node, ev.ref), None)
        if client is not None:
            self._out.immediate.append(A.ReportFilePut(client, ev.ref, ev.ok, ev.message))

    @_handles(E.StatusRequested)
    def _on_status_requested(self, ev: E.StatusRequested) -> None:
        viewer = ev.user if self.config.private_data else None
        self._out.immediate.append(A.ReportStatus(ev.client, ev.ref, self.status(viewer)))

    @_handles(E.ClientLeft)
    def _on_client_left(self, ev: E.ClientLeft) -> None:
        # queued and running jobs go on; results wait for the client to return
        for cluster in self.clusters.values():
            if cluster.client == ev.client:
                cluster.client = None
                cluster.left_at = self.now

    @_handles(E.NodeJoined)
    def _on_node_joined(self, ev: E.NodeJoined) -> None:
        offered = max(0, ev.cpus)
        node = NodeRecord(ev.node, ev.name, ev.ip_addr, self._capped(ev.name, offered), ev.heartbeat, self.now)
        node.offered = offered
        node.drained = ev.name in self.drained
        node.grace = ev.grace if math.isfinite(ev.grace) and ev.grace > 0 else 0.0
        node.addresses = (ev.ip_addr, *(a for a in ev.addresses if a != ev.ip_addr))
        node.runtime = ev.runtime
        node.queues = ev.queues
        node.node_run = ev.node_run
        self._set_window(node, node.cpus)
        self.nodes[ev.node] = node
        self._update_free(node)
        for cluster in list(self.clusters.values()):  # a cluster may end (and go) for want of nodes
            self._place(cluster, node)
            self._check_runtime(cluster, node)
        self._announce(node, "joined")
        self._adopt(node, ev.jobs, ev.clusters)
        self._never_arrived(node)
        # orphans last seen on this node that it did not report are gone with its earlier run: no point waiting
        gone = [o for o in self._orphans.values() if o.job.last_node == node.name]
        if gone:
            for orphan in gone:
                orphan.until = self.now
            self._write_off_orphans()

    def _never_arrived(self, node: NodeRecord) -> None:
        """Queues again the jobs sent to this run of `node` (`node_run`) that it did not report: they never arrived.

        A node's runner keeps every job it is sent until the scheduler has
        recorded its result (queued, running, or ended with the result kept:
        dispy_node/keeper.py) and lists them all when it joins; a node that
        drops anything unreported (it restarted, or gave its jobs up when the
        scheduler stayed away beyond its grace) starts a new run, with a new
        id. So a job sent to the same run and
        not listed was lost on the wire, as the scheduler or the connection
        died in the instant it was sent: it never ran, and may run anywhere,
        reentrant or not. A job sent to another run of the node (it
        restarted) is gone with that run: `_write_off_orphans` decides.
        """
        if not node.node_run:
            return
        lost = [o.job for o in self._orphans.values() if o.job.last_node == node.name and o.job.node_run == node.node_run]
        for job in lost:  # sent before the scheduler restarted, or before the node's connection was lost
            self._settle_orphan(self._orphans.pop(job.key), rerun=True)
        # a session whose end is not noticed yet: the node left it for this one, so it is gone, and what it
        # was sent and this one does not list never arrived (`_lose_node` sees this heir)
        for old in [n for n in self.nodes.values() if n is not node and self._same_run(n, node)]:
            reason = f"node {node.name} logged in again on another connection"
            self._lose_node(old.node_id, reason)
            self._out.immediate.append(A.DropNode(old.node_id, reason))

    @staticmethod
    def _same_run(a: NodeRecord, b: NodeRecord) -> bool:
        """Whether two sessions are of one run of a node's runner (which holds one session at a time)."""
        return bool(a.node_run) and a.node_run == b.node_run and a.name == b.name

    def _adopt(self, node: NodeRecord, jobs: Iterable[JobRef], clusters: Iterable[str]) -> None:
        """Takes over what a (re)connecting node still holds from before; ends what nobody wants any more.

        A job orphaned by a restart runs on where it is, as does one the core
        still thinks runs on an earlier session of the same node (that
        connection's end has not been noticed yet); any other job the node
        reports has been written off or rerun meanwhile, so it is killed.
        """
        for cluster_id in clusters:
            cluster = self.clusters.get(cluster_id)
            if cluster is None:
                self._out.immediate.append(A.UnloadCluster(node.node_id, cluster_id))
            else:
                node.loaded.add(cluster_id)
                cluster.loaded_on.add(node.node_id)
        kills: list[JobRef] = []
        for ref in jobs:
            orphan = self._orphans.pop((ref.cluster_id, ref.job_id), None)
            if orphan is None:
                moved = self._running_on_namesake(ref, node)
                if moved is None:
                    kills.append(ref)
                continue
            job = orphan.job
            cluster = self.clusters[job.cluster_id]
            if cluster.cluster_id not in node.loaded:
                node.loaded.add(cluster.cluster_id)
                cluster.loaded_on.add(node.node_id)
            self._transition(job, JobState.RUNNING)
            self._occupy(cluster, job, node)
            self._notify_started(cluster, job)
            if job.cancel_requested:
                kills.append(ref)
        if kills:
            self._out.immediate.append(A.KillJobs(node.node_id, kills))

    @_handles(E.NodeReported)
    def _on_node_reported(self, ev: E.NodeReported) -> None:
        node = self.nodes.get(ev.node)
        if node is None:
            return
        node.last_seen = self.now
        node.avail = dict(ev.avail)
        grace = ev.avail.get("scheduler_grace")  # a node may shorten the wait it announced: 0 as it stops for good
        if isinstance(grace, (int, float)) and not isinstance(grace, bool) and 0 <= grace < node.grace:
            node.grace = float(grace)
        cpus = ev.avail.get("cpus")
        if isinstance(cpus, int) and not isinstance(cpus, bool) and cpus >= 0 and cpus != node.offered:
            node.offered = cpus
            self._set_cpus(node)
        self._announce(node, "report")

    def _set_window(self, node: NodeRecord, cpus: int) -> None:
        """Sizes the jobs `node` (to be given `cpus`) is sent beyond its CPUs.

        No window for a node that does not queue them, nor for one the
        operator caps: it starts what it is sent on the CPUs it offers, so a
        window would run on CPUs the cap withholds.
        """
        node.window = self._depth(node.run_estimate) * cpus if node.queues and cpus == node.offered else 0

    def _depth(self, run_estimate: float) -> int:
        """Jobs per CPU sent ahead for jobs estimated to run `run_estimate` seconds (see Adaptive window)."""
        cfg = self.config
        return window.depth(run_estimate, cfg.prefetch, cfg.prefetch_max, cfg.prefetch_target)

    def _capped(self, name: str, offered: int) -> int:
        cap = self.cpu_caps.get(name)
        return offered if cap is None else min(cap, offered)

    def _set_cpus(self, node: NodeRecord) -> None:
        """Applies what the node offers and the operator's cap to the CPUs it is given."""
        cpus, window = self._capped(node.name, node.offered), node.window
        self._set_window(node, cpus)
        if cpus == node.cpus:
            if node.window != window:  # a cap lifted, or the offer down to the cap
                self._update_free(node)
            return
        node.cpus = cpus  # fewer than it runs: none is stopped, no new one starts until they are fewer
        self._update_free(node)
        recalled = node.busy > node.cpus + node.window
        if recalled:  # what it holds beyond may not start there
            self._recall(node)
        for cluster in self.clusters.values():  # "all CPUs but N" moves with them
            self._place(cluster, node)
            if not recalled:
                self._fit_allowance(cluster, node)

    def _fit_allowance(self, cluster: ClusterRecord, node: NodeRecord) -> None:
        """Asks `node` back what it holds of `cluster` and has not started, if that is beyond an allowance just cut
        (by its client, or by the node's offer where it is all CPUs but N)."""
        cap = cluster.cap_on(node.node_id, node.cpus)
        if cap is not None and cluster.busy_on.get(node.node_id, 0) > cap:
            self._recall(node, cluster.cluster_id)

    @_handles(E.ResultsArrived)
    def _on_results_arrived(self, ev: E.ResultsArrived) -> None:
        node = self.nodes.get(ev.node)
        if node is None:
            return
        node.last_seen = self.now
        recorded = self._out.recorded[ev.node]
        for result in ev.results:
            if result.status != JobStatus.PROVISIONAL_RESULT:  # the node keeps each until told (late ones too)
                recorded.append(JobRef(result.cluster_id, result.job_id))
            cluster = self.clusters.get(result.cluster_id)
            job = cluster.jobs.get(result.job_id) if cluster else None
            if cluster is None or job is None or job.state is not JobState.RUNNING or job.node != ev.node:
                continue  # late or repeated: the job already has its result
            if result.status == JobStatus.PROVISIONAL_RESULT:
                if cluster.client is not None:  # passed on; the job goes on running
                    self._out.results[(cluster.client, cluster.cluster_id)].append(result)
                continue
            user = self.users[cluster.user]
            user.add_usage(max(0.0, result.end_time - result.start_time), self.now, self.usage_half_life)
            user.note_run(result.end_time - result.start_time)  # re-keyed by `_release` or `_displace` below
            self._note_user(user)
            if node.queues and (result.status == JobStatus.FINISHED or result.status == JobStatus.TERMINATED):
                self._measure(cluster, node, result)
            if result.status == JobStatus.ABANDONED and cluster.reentrant and not job.cancel_requested:
                self._displace(cluster, job, node, rerun=True, why=result.exception)  # the node gave up on it
                continue
            self._release(job, node, cluster)
            self._finish(cluster, job, result)

    def _measure(self, cluster: ClusterRecord, node: NodeRecord, result: JobResult) -> None:
        """Notes how long a job ran, for the windows of its cluster and its node (see Adaptive window)."""
        cluster.run_estimate = window.estimate(cluster.run_estimate, result.start_time, result.end_time)
        estimate = window.estimate(node.run_estimate, result.start_time, result.end_time)
        if estimate != node.run_estimate:
            node.run_estimate = estimate
            self._set_window(node, node.cpus)  # the job's `_release` next puts the node among the free ones, or not

    @_handles(E.StartsReported)
    def _on_starts_reported(self, ev: E.StartsReported) -> None:
        if ev.node not in self.nodes:
            return
        users: set[str] = set()
        for cluster, job in self._unstarted_on(ev.node, ev.jobs):  # others ended already (a short job's result
            self.users[cluster.user].note_wait(self.now - job.start_time)  # may come first), or moved on
            users.add(cluster.user)  # fair share's `load` moved: re-keyed once per user, not per job
            job.start_time = self.now  # its start from now on, no longer its dispatch
            self._notify_started(cluster, job)
        for name in users:
            self.ready.update_user(self.users[name])

    @_handles(E.JobsReturned)
    def _on_jobs_returned(self, ev: E.JobsReturned) -> None:
        node = self.nodes.get(ev.node)
        if node is None:
            return
        for cluster, job in self._unstarted_on(ev.node, ev.jobs):  # the only ones it may give back
            self._displace(cluster, job, node, rerun=True, why="")  # it never started: any node may run it

    def _unstarted_on(self, node_id: str, refs: Iterable[JobRef]) -> Iterator[tuple[ClusterRecord, JobRecord]]:
        """The jobs of `refs` sent to `node_id` and not yet started there (a node's report of them is current)."""
        for ref in refs:
            cluster = self.clusters.get(ref.cluster_id)
            job = cluster.jobs.get(ref.job_id) if cluster else None
            if cluster and job and job.state is JobState.RUNNING and job.node == node_id and not job.started:
                yield cluster, job

    def _recall(self, node: NodeRecord, cluster_id: str | None = None) -> None:
        """Asks `node` to give back the jobs it was sent ahead and has not started (drained, or capped; or those
        of `cluster_id` alone, its allowance there cut below what it holds)."""
        if node.waiting:
            refs = [
                JobRef(c, j) for c, j in sorted(node.jobs)
                if (cluster_id is None or c == cluster_id) and not self.clusters[c].jobs[j].started
            ]  # fmt: skip
            if refs:
                self._out.immediate.append(A.RecallJobs(node.node_id, refs))

    @_handles(E.FilesArrived)
    def _on_files_arrived(self, ev: E.FilesArrived) -> None:
        for f in ev.files:
            cluster = self.clusters.get(f.cluster_id)
            job = cluster.jobs.get(f.job_id) if cluster else None
            if cluster is None or job is None or job.state is not JobState.RUNNING or job.node != ev.node:
                continue  # from a job this node no longer runs
            if cluster.client is not None:
                self._out.files[cluster.client].append(f)
            else:  # kept (only while nobody can take it) and sent when the client re-attaches
                job.files += (f,)
                job.held += file_cost(f)
                self._hold(cluster, file_cost(f))

    @_handles(E.ClusterFailedOnNode)
    def _on_cluster_failed_on_node(self, ev: E.ClusterFailedOnNode) -> None:
        node = self.nodes.get(ev.node)
        cluster = self.clusters.get(ev.cluster_id)
        if node is None or cluster is None:
            return
        cluster.failed_on[ev.node] = ev.message
        cluster.loaded_on.discard(ev.node)
        node.loaded.discard(ev.cluster_id)
        # its jobs never started there: back to the queue, whatever `reentrant` says
        for key in [k for k in node.jobs if k[0] == ev.cluster_id]:
            self._displace(cluster, cluster.jobs[key[1]], node, rerun=True, why="")
        self._unusable(cluster, node, ev.message)  # the node's words: "setup failed: <traceback>", ...
        self._maybe_finish_close(cluster)

    def _check_runtime(self, cluster: ClusterRecord, node: NodeRecord) -> None:
        """Keeps a cluster off a node whose Python or cloudpickle cannot load what its client pickled."""
        want, has = cluster.opts.runtime, node.runtime
        why = want.mismatch(has) if want is not None and has is not None else ""
        if why:
            cluster.failed_on[node.node_id] = why
            self._unusable(cluster, node, why)

    def _unusable(self, cluster: ClusterRecord, node: NodeRecord, why: str) -> None:
        """`cluster` will not run on `node` (`failed_on` holds why): its client hears of it, jobs pinned
        there end, and, when no node is left that could run the cluster, so do its queued jobs."""
        if cluster.client is not None:
            self._out.immediate.append(
                A.NotifyUnusable(cluster.client, cluster.user, cluster.cluster_id, cluster.name, node.name, node.ip_addr, why)
            )
        pinned = [j.job_id for j in cluster.pinned_to(node.name, *node.addresses)]
        self._cancel(cluster, pinned, JobStatus.TERMINATED,
                     f"cluster {cluster.name} cannot run on node {node.name}, to which this job was pinned: {why}")  # fmt: skip
        self._end_if_nowhere(cluster)

    def _end_if_nowhere(self, cluster: ClusterRecord) -> None:
        """Ends the queued jobs of a cluster that no connected node can run (every node it may use
        refused it), with the reasons: they would wait for ever. A node that joins later may take
        the jobs submitted after that."""
        why = self._nowhere_why(cluster) if cluster.queued else ""
        if why:
            sweep = self._sweep_of(cluster)  # a slice per call (see Cancelling), while no node may take them
            alone = sweep.upto < 0 or sweep.nowhere  # no other cancel of the whole queue it would stop with it
            sweep.cover(self._seq, JobStatus.TERMINATED, why)
            sweep.nowhere = alone

    def _nowhere_why(self, cluster: ClusterRecord) -> str:
        """Why no connected node can run `cluster` (every node it may use refused it); '' when one may, or none is here."""
        if not cluster.failed_on:
            return ""
        usable = [n for n in self.nodes if not cluster.restricted or cluster.node_cpus.get(n, 0) > 0]
        if not usable or any(n not in cluster.failed_on for n in usable):
            return ""
        reasons = "; ".join(f"node {self.nodes[n].name}: {cluster.failed_on[n]}" for n in usable)
        return f"cluster {cluster.name} cannot run on any node ({reasons})"

    @_handles(E.NodeLeft)
    def _on_node_left(self, ev: E.NodeLeft) -> None:
        self._lose_node(ev.node, ev.reason)

    @_handles(E.UsageRestored)
    def _on_usage_restored(self, ev: E.UsageRestored) -> None:
        for name, (usage, as_of) in ev.usage.items():
            if not (math.isfinite(usage) and math.isfinite(as_of) and usage >= 0):
                continue  # the shell's store is ours, but a bad row must not poison the order
            user = self._user(name)
            restored = decay(usage, as_of, self.now, self.usage_half_life)
            user.set_usage(user.decayed_usage(self.now, self.usage_half_life) + restored, self.now, self.usage_half_life)
            self.ready.update_user(user)
            self._note_user(user)

    # ------------------------------------------------- operator's requests

    def _answer(self, ref: str, error: ErrorCode | None, message: str) -> None:
        self._out.immediate.append(A.AnswerAdmin(ref, str(error) if error else "", message))

    @_handles(E.CancelRequested)
    def _on_cancel_requested(self, ev: E.CancelRequested) -> None:
        cluster = self.clusters.get(ev.cluster_id)
        if cluster is None or (ev.by is not None and cluster.user != ev.by):  # another's: as if there were none
            self._answer(ev.ref, ErrorCode.UNKNOWN_CLUSTER, f"no cluster {ev.cluster_id}")
            return
        who = f"user {ev.by}" if ev.by is not None else "an administrator"
        why = f"cancelled by {who}"
        if ev.job_ids is None:  # the whole cluster: its queue is not scanned, but taken from the head a slice per call
            count = cluster.unfinished
            self._cancel(cluster, self._running_ids(cluster), why=why)
            if cluster.queued:
                sweep = self._sweep_of(cluster)
                sweep.cover(self._seq, JobStatus.CANCELLED, why)
                sweep.lasting = True
                self._note_settings()
        else:
            ids = list(ev.job_ids)
            ended = [i for i in ids if i not in cluster.jobs or cluster.jobs[i].state is JobState.DONE]
            if ended:
                self._answer(ev.ref, ErrorCode.BAD_REQUEST, f"job {ended[0]} of cluster {ev.cluster_id} is not queued or running")
                return
            count = len(ids)
            self._cancel(cluster, ids, why=why)
        self._answer(ev.ref, None, f"{count} jobs of cluster {cluster.name} ({ev.cluster_id}) cancelled")

    def _nodes_called(self, name: str) -> list[NodeRecord]:
        return [n for n in self.nodes.values() if n.name == name]

    @_handles(E.NodeDrainSet)
    def _on_node_drain_set(self, ev: E.NodeDrainSet) -> None:
        nodes = self._nodes_called(ev.name)
        if not nodes and not ev.drained and ev.name not in self.drained:
            self._answer(ev.ref, ErrorCode.BAD_REQUEST, f"no node {ev.name} is connected or drained")
            return
        if ev.drained:
            self.drained.add(ev.name)  # also one not connected now: it comes back drained
        else:
            self.drained.discard(ev.name)
        for node in nodes:
            node.drained = ev.drained
            self._update_free(node)
            if node.drained:
                self._recall(node)
        self._note_settings()
        state = "drained: no new jobs start there" if ev.drained else "undrained"
        self._answer(ev.ref, None, f"node {ev.name} {state}" + ("" if nodes else " (not connected now)"))

    @_handles(E.NodeCpusCapped)
    def _on_node_cpus_capped(self, ev: E.NodeCpusCapped) -> None:
        nodes = self._nodes_called(ev.name)
        if not nodes:
            self._answer(ev.ref, ErrorCode.BAD_REQUEST, f"no node {ev.name} is connected")
            return
        if ev.cpus < 0:
            self.cpu_caps.pop(ev.name, None)
        else:
            self.cpu_caps[ev.name] = ev.cpus
        self._note_settings()
        for node in nodes:
            self._set_cpus(node)
        self._answer(ev.ref, None, f"node {ev.name} is given {nodes[0].cpus} of its {nodes[0].offered} CPUs")

    @_handles(E.UserShareSet)
    def _on_user_share_set(self, ev: E.UserShareSet) -> None:
        if not (math.isfinite(ev.share) and ev.share > 0):
            self._answer(ev.ref, ErrorCode.BAD_REQUEST, f"a share must be a number above 0, not {ev.share!r}")
            return
        if ev.user not in self.users and ev.user not in self.shares:
            self._answer(ev.ref, ErrorCode.BAD_REQUEST, f"no user {ev.user} in the users file or connected")
            return
        self.shares[ev.user] = self.share_overrides[ev.user] = ev.share
        self._note_settings()
        user = self._user(ev.user)
        user.share = ev.share
        self.ready.update_user(user)
        self._answer(ev.ref, None, f"user {ev.user} has share {ev.share:g} (until the users file is read again)")

    @_handles(E.UsersReloaded)
    def _on_users_reloaded(self, ev: E.UsersReloaded) -> None:
        self.shares, self.limits, self.default_limits = dict(ev.shares), dict(ev.limits), ev.default_limits
        if self.share_overrides:  # the file's shares again
            self.share_overrides.clear()
            self._note_settings()
        for user in self.users.values():
            user.share = float(self.shares.get(user.name, self.config.default_share))
            user.limits = self.limits.get(user.name, self.default_limits)
            self.ready.update_user(user)
        self._answer(ev.ref, None, f"users file read: {len(ev.shares)} users")

    def _running_on_namesake(self, ref: JobRef, node: NodeRecord) -> JobRecord | None:
        """Moves a job RUNNING on an earlier session of `node` (by name) to this one."""
        cluster = self.clusters.get(ref.cluster_id)
        job = cluster.jobs.get(ref.job_id) if cluster is not None else None
        if cluster is None or job is None or job.state is not JobState.RUNNING or job.node is None:
            return None
        old = self.nodes[job.node]
        if old is node or old.name != node.name:
            return None
        started = job.started
        self._release(job, old, cluster)
        job.started = started
        self._occupy(cluster, job, node)
        self._note_job(job)
        if job.cancel_requested:
            self._out.immediate.append(A.KillJobs(node.node_id, [ref]))
        return job

    @_handles(E.StateRestored)
    def _on_state_restored(self, ev: E.StateRestored) -> None:
        self._restore_settings(ev.settings)
        self._on_usage_restored(E.UsageRestored(ev.usage))
        for row in ev.clusters:
            try:
                opts = ClusterOptions.from_wire(row.options)
            except BadOptions:  # accepted when it was opened: the same parser accepts it again
                opts = ClusterOptions()
            self._add_cluster(row, opts, None)  # nodes join after a restart: they are checked then
            self._seq = max(self._seq, row.seq)
        self._adopt_until = self.now + ev.adopt_within  # the orphans' deadline
        listed: dict[str, list[int]] = defaultdict(list)  # queued jobs marked by a cancel of named jobs not yet done
        for job_row_ in ev.jobs:
            cluster = self.clusters.get(job_row_.cluster_id)
            if cluster is not None:
                self._restore_job(cluster, job_row_)
                if job_row_.state == JobState.QUEUED.value and job_row_.cancel_requested:
                    listed[cluster.cluster_id].append(job_row_.job_id)
        for cluster_id, ids in listed.items():  # one list a cluster, every job read back being older than `_seq`
            self._sweep_of(self.clusters[cluster_id]).add(ids, JobStatus.CANCELLED, "cancelled before it started", self._seq)
        for setting in ev.settings:  # an operator's cancel of a whole cluster, under way: it goes on
            if setting.kind == CANCEL:
                # its `upto` came from the submit counter, which the rows kept may not reach (clusters opened
                # since were forgotten): jobs accepted from now on must come after it, or it would take them
                self._seq = max(self._seq, int(setting.value))
            cluster = self.clusters.get(setting.name) if setting.kind == CANCEL else None
            if cluster is not None and cluster.queued:
                sweep = self._sweep_of(cluster)
                sweep.cover(int(setting.value), JobStatus.CANCELLED, "cancelled by an operator before the scheduler restarted")
                sweep.lasting = True
        for cluster in self.clusters.values():
            self.ready.update(cluster)
        self._changes = Changes()  # what was just read is what the journal holds

    def _restore_settings(self, rows: list[SettingRow]) -> None:
        """The operator's drains, caps and shares as last written (before any node or user is back)."""
        for row in rows:
            if row.kind == DRAIN:
                self.drained.add(row.name)
            elif row.kind == CPUS:
                self.cpu_caps[row.name] = int(row.value)
            elif row.kind == SHARE:  # the user is listed with it, as after the set-share
                self.shares[row.name] = self.share_overrides[row.name] = row.value
                user = self._user(row.name)
                user.share = row.value
                self.ready.update_user(user)

    def _restore_job(self, cluster: ClusterRecord, row: JobRow) -> None:
        try:
            pin = JobOptions.from_wire(row.options).node if row.options else None
        except BadOptions:  # accepted at submit: the same parser accepts it again
            pin = None
        options = row.options or NO_OPTIONS
        job = JobRecord(row.cluster_id, row.job_id, row.priority, row.seq, row.payload, options, row.submit_time, pin=pin)
        job.attempts, job.cancel_requested, job.last_node = row.attempts, row.cancel_requested, row.node
        job.node_run = row.node_run
        self._seq = max(self._seq, row.seq)
        if row.state == JobState.DONE.value:
            size = row.result_size or (result_cost(row.result) if row.result is not None else 0)
            job.state, job.payload, job.result_size = JobState.DONE, None, size
            # the store keeps it; a store that handed it back anyway is not held in memory either
            job.result = row.result if not self.config.persist else None
            job.held = size
            self._hold(cluster, size)
        elif row.state == JobState.RUNNING.value:
            job.state = JobState.ORPHANED
            why = (
                f"the scheduler restarted while this job ran on node {job.last_node or '?'}, "
                "and no node reported it since; not reentrant, so it is not run again"
            )
            self._orphans[job.key] = Orphan(job, self._adopt_until, why)
        self._admit(cluster, job, "journal")

    def _write_off_orphans(self) -> None:
        """Orphans no node reported in time: reentrant ones run again, the others end Abandoned."""
        due = [o for o in self._orphans.values() if self.now >= o.until]
        for orphan in due:
            del self._orphans[orphan.job.key]
            self._settle_orphan(orphan, rerun=self.clusters[orphan.job.cluster_id].reentrant)

    def _settle_orphan(self, orphan: Orphan, rerun: bool) -> None:
        """An orphan taken off the list: Cancelled if a cancel was asked, else queued again if `rerun`
        (it never ran, or may run twice), else Abandoned for its reason."""
        job = orphan.job
        cluster = self.clusters[job.cluster_id]
        if job.cancel_requested:
            self._finish(cluster, job, _synthetic(job, JobStatus.CANCELLED, "cancelled", self.now))
        elif rerun:
            self._requeue(cluster, job)
        else:
            self._finish(cluster, job, _synthetic(job, JobStatus.ABANDONED, orphan.why, self.now))

    def _forgive_stall(self, stalled: float) -> None:
        """The scheduler itself did not run for `stalled` seconds: what nobody heard meanwhile is its own doing.

        Each node gets a whole heartbeat window from now (its reports of
        that time are still unread, or it is redialing), and each orphan's
        deadline moves by the stall: its node had no chance to report it.
        """
        for node in self.nodes.values():
            node.last_seen = max(node.last_seen, self.now)
        for orphan in self._orphans.values():
            orphan.until += stalled

    @_handles(E.Tick)
    def _on_tick(self, ev: E.Tick) -> None:
        if ev.stalled > 0:
            self._forgive_stall(ev.stalled)
        if self._orphans:
            self._write_off_orphans()
        for node in list(self.nodes.values()):
            if self.now - node.last_seen > node.heartbeat * self.config.heartbeat_misses:
                reason = f"no report for {self.now - node.last_seen:.1f} s"
                self._lose_node(node.node_id, reason)
                self._out.immediate.append(A.DropNode(node.node_id, reason))
        keep = self.config.result_retention
        if keep > 0:
            waiting = {key[0] for key in self._orphans}  # clusters with jobs that still wait for their node
            away = [
                c for c in self.clusters.values()
                if c.client is None and not c.released and c.cluster_id not in waiting and self.now - c.left_at >= keep
            ]  # fmt: skip
            for cluster in away:
                self._release_cluster(cluster)

    def _release_cluster(self, cluster: ClusterRecord) -> None:
        """Closes a cluster whose program has been away for `result_retention` (dispy's zombie_interval).

        Its uncollected results are dropped, its queued jobs cancelled (a
        slice per call: see Cancelling) and its running ones stopped (their ends
        are dropped as they come); the record
        goes once nothing of it runs. A program that comes back is told why
        (`ErrorCode.RELEASED`), once, from a bounded list of released ids.
        """
        done = self._done_jobs(cluster)
        queued = cluster.queued
        running = self._running_ids(cluster)
        why = (
            f"cluster {cluster.name} ({cluster.cluster_id}) of user {cluster.user} was released: its program was away "
            f"for {self.config.result_retention:g} s or more (the scheduler's result retention); {len(done)} results "
            f"it had not collected were dropped, {queued} queued jobs cancelled and {len(running)} running jobs stopped"
        )
        self._out.immediate.append(A.ReleaseCluster(cluster.user, cluster.cluster_id, cluster.name, len(done), queued + len(running), why))
        self._released[cluster.cluster_id] = (cluster.user, why)
        while len(self._released) > MAX_RELEASED:
            del self._released[next(iter(self._released))]
        cluster.released = why
        self._start_closing(cluster)  # its queued jobs end in slices (see Cancelling), with `why`
        for job in done:
            self._forget(cluster, job)
        self._cancel(cluster, running, JobStatus.CANCELLED, why)
        self._maybe_finish_close(cluster)

    # ------------------------------------------------------- state changes

    def _admit(self, cluster: ClusterRecord, job: JobRecord, origin: str) -> None:
        """A job enters the core in its state (QUEUED when submitted; any, read back from the journal).

        With `_transition`, the one place where the counters of jobs change:
        `queued` (user and cluster) and `queued_bytes` here and there, `held_bytes`
        through `_hold`; `check_invariants` recounts them all.
        """
        cluster.jobs[job.job_id] = job
        user = self.users[cluster.user]
        if job.payload is not None:
            user.queued_bytes += job_cost(job.payload)
        if job.state is not JobState.DONE:
            cluster.unfinished += 1
        if job.state is JobState.QUEUED:
            cluster.push(job)
            cluster.queued += 1
            user.queued += 1
            if cluster.closing:  # read back from a journal written mid-close: the close goes on
                self._sweep_closing(cluster)
        elif job.state is JobState.ORPHANED:
            user.orphans += 1
        self._log(job, origin, job.state.value)

    def _transition(self, job: JobRecord, to: JobState, result: JobResult | None = None) -> None:
        """Moves a job along `JOB_TRANSITIONS`, with what the move changes in its cluster's and user's counts.

        Leaving QUEUED frees its place in the counts (its heap entry goes
        stale); entering it counts it again (the caller pushes it); DONE
        comes with the job's one terminal `result`, which replaces its
        arguments in `queued_bytes` by the result's size in `held_bytes`.
        """
        assert (job.state, to) in JOB_TRANSITIONS, f"bad transition {job.state} -> {to}"
        assert (to is JobState.DONE) == (result is not None), "DONE, and only DONE, comes with a result"
        cluster = self.clusters[job.cluster_id]
        user = self.users[cluster.user]
        if job.state is JobState.QUEUED:
            cluster.queued -= 1
            user.queued -= 1
        elif job.state is JobState.ORPHANED:  # reported, requeued or written off: no longer held against max_cpus
            user.orphans -= 1
            self.ready.update_user(user)
        if to is JobState.QUEUED:
            cluster.queued += 1
            user.queued += 1
            if cluster.closing:  # queued again (its node lost) in a closing cluster: it ends with the rest
                self._sweep_closing(cluster)
        elif to is JobState.ORPHANED:  # its node may still run it: held against max_cpus until it is settled
            user.orphans += 1
            self.ready.update_user(user)
        if result is not None:  # DONE: no transition leaves it
            cluster.unfinished -= 1
            assert job.payload is not None
            user.queued_bytes -= job_cost(job.payload)
            job.payload = None
            job.result, job.result_size, job.end_status = result, result_cost(result), result.status
            job.held += job.result_size
            self._hold(cluster, job.result_size)
            if self.config.persist:
                self._written.append(job)
        self._log(job, job.state._value_, to._value_)  # not `.value`: an Enum property, slow on a hot path
        job.state = to
        if self.config.persist:
            self._changes.job_changed(job)

    def _log(self, job: JobRecord, frm: str, to: str) -> None:
        self.log.append((self._stimulus, job.cluster_id, job.job_id, frm, to))

    def _schedule(self) -> None:
        """Fills free CPUs: the least loaded node's CPU goes to the policy's first usable cluster."""
        for stale_id in self._stale_free:
            stale = self.nodes.get(stale_id)
            if stale is not None:  # else lost since: out of the free ones already
                self._update_free(stale)
        self._stale_free.clear()
        skipped: list[NodeRecord] = []
        adaptive = self.config.prefetch_max > self.config.prefetch
        while self.ready:
            node_id = self._free_nodes.peek()
            if node_id is None:
                break
            node = self.nodes[node_id]
            cluster = self.ready.choose(
                lambda c: (not c.failed_on or node_id not in c.failed_on)
                and ((cap := c.cap_on(node_id, node.cpus)) is None or c.busy_on.get(node_id, 0) < cap)
                and (c.unpinned is None or c.runnable_on(node.name, *node.addresses))
                and (not c.resetting or node_id not in c.resetting)
            )
            if cluster is None:  # nothing this node may run; other nodes may still have work
                self._free_nodes.discard(node_id)
                skipped.append(node)
                continue
            if adaptive and node.busy >= node.cpus * (1 + self._depth(cluster.run_estimate)):
                # the pick's window is full there: its CPUs are all busy, and one of its jobs ends before the pick
                # fits, so it is left out until then rather than tried again at every call (1,000 nodes: 1,000 tries)
                self._free_nodes.discard(node_id)
                self._parked.add(node_id)
                continue
            self._dispatch(cluster, cluster.pop(node.name, *node.addresses), node)
        for node in skipped:
            self._update_free(node)

    def _dispatch(self, cluster: ClusterRecord, job: JobRecord, node: NodeRecord) -> None:
        user = self.users[cluster.user]
        if cluster.cluster_id not in node.loaded:
            node.loaded.add(cluster.cluster_id)
            cluster.loaded_on.add(node.node_id)
            computation = cluster.node_blobs.get(node.node_id, cluster.computation)
            self._out.immediate.append(
                A.LoadCluster(node.node_id, cluster.cluster_id, cluster.user, computation, cluster.options)
            )
        self._transition(job, JobState.RUNNING)
        job.start_time = self.now
        job.attempts += 1
        user.last_dispatch = cluster.last_dispatch = self.now
        if not node.queues:
            user.note_wait(0.0)  # it starts at once (re-keyed by `_occupy`)
        self._occupy(cluster, job, node)
        assert job.payload is not None
        self._out.dispatch[node.node_id].append(RunJob(cluster.cluster_id, job.job_id, job.payload, job.options))
        if not node.queues:  # a node that queues says when it starts it
            self._notify_started(cluster, job)

    def _occupy(self, cluster: ClusterRecord, job: JobRecord, node: NodeRecord) -> None:
        """Gives a job that just became RUNNING a CPU of `node` (undone by `_release`)."""
        job.node = node.node_id
        job.last_node = node.name
        job.node_run = node.node_run
        user = self.users[cluster.user]
        node.busy += 1
        node.jobs.add(job.key)
        user.busy += 1
        cluster.busy += 1
        if not job.started:  # until `_notify_started`
            node.waiting += 1
            user.waiting += 1
            cluster.waiting += 1
        cluster.busy_on[node.node_id] = cluster.busy_on.get(node.node_id, 0) + 1
        self._update_free(node)
        self.ready.update(cluster)

    def _notify_started(self, cluster: ClusterRecord, job: JobRecord) -> None:
        """The job runs on its node: its client hears of it (now, or as it re-attaches)."""
        if not job.started and job.node is not None:
            self.nodes[job.node].waiting -= 1
            self.users[cluster.user].waiting -= 1
            cluster.waiting -= 1
        job.started = True
        if cluster.client is None or job.node is None:
            return
        node = self.nodes[job.node]
        start = JobStart(job.job_id, node.name, node.ip_addr, job.start_time)
        self._out.started[(cluster.client, cluster.cluster_id)].append(start)

    def _release(self, job: JobRecord, node: NodeRecord, cluster: ClusterRecord) -> None:
        """Frees the CPU a RUNNING job held."""
        user = self.users[cluster.user]
        node.busy -= 1
        node.jobs.discard(job.key)
        user.busy -= 1
        cluster.busy -= 1
        if not job.started:
            node.waiting -= 1
            user.waiting -= 1
            cluster.waiting -= 1
        left = cluster.busy_on[node.node_id] - 1
        if left:
            cluster.busy_on[node.node_id] = left
        else:
            del cluster.busy_on[node.node_id]
            if cluster.resetting:
                self._reload_when_idle(cluster, node)
        job.node = None
        job.started = False
        self._stale_free[node.node_id] = None  # `_update_free` before the scheduling pass
        self.ready.touch(cluster)  # re-keyed once at the next look, however many of its jobs end before

    def _displace(self, cluster: ClusterRecord, job: JobRecord, node: NodeRecord, rerun: bool, why: str) -> None:
        """A RUNNING job lost its node: it runs again, or ends (Cancelled if a kill was asked)."""
        self._release(job, node, cluster)
        if job.cancel_requested:
            self._finish(cluster, job, _synthetic(job, JobStatus.CANCELLED, "cancelled", self.now))
        elif rerun:
            self._requeue(cluster, job)
        else:
            self._finish(cluster, job, _synthetic(job, JobStatus.ABANDONED, why, self.now))

    def _orphan(self, cluster: ClusterRecord, job: JobRecord, node: NodeRecord, why: str) -> None:
        """A RUNNING job whose node was lost, but which that node keeps running for its grace period.

        Until then the job waits for the node to come back and report it
        (`_adopt`): it is not run anywhere else, so a node back in time
        delivers its one result. After it, `_write_off_orphans` reruns it
        (reentrant) or ends it Abandoned with `why`.
        """
        self._release(job, node, cluster)
        self._transition(job, JobState.ORPHANED)
        why += f"; it did not come back within its grace of {node.grace:g} s, and the job is not reentrant"
        self._orphans[job.key] = Orphan(job, self.now + node.grace, why)

    def _requeue(self, cluster: ClusterRecord, job: JobRecord) -> None:
        self._transition(job, JobState.QUEUED)
        cluster.push(job)  # keeps its original seq: it does not lose its place
        self.ready.update(cluster)

    def _finish(self, cluster: ClusterRecord, job: JobRecord, result: JobResult) -> None:
        """Moves a job to DONE with its one terminal result and delivers it."""
        self._transition(job, JobState.DONE, result)
        cluster.last_end = self.now
        self.users[cluster.user].finished += 1
        if self.config.accounting:
            self._out.ended.append(_job_end(cluster, job, result))
        if cluster.released:  # nobody will collect it
            self._forget(cluster, job)
        elif cluster.client is not None:
            self._out.results[(cluster.client, cluster.cluster_id)].append(result)
            if cluster.closing:
                self._forget(cluster, job)
        self._maybe_finish_close(cluster)

    def _forget(self, cluster: ClusterRecord, job: JobRecord) -> None:
        """Drops a DONE job whose result its client has (or will never need): what it held is freed."""
        assert job.state is JobState.DONE
        del cluster.jobs[job.job_id]
        self._hold(cluster, -job.held)
        if self.config.persist:
            self._changes.job_gone(job)

    def _hold(self, cluster: ClusterRecord, size: int) -> None:
        """Counts `size` more bytes of results (and files) held for the cluster's user.

        Crossing `max_held_bytes` pauses (or resumes) the user's dispatching:
        its jobs stay queued, none is lost, until its clients collect their
        results. Its attached clients are told once when the pause begins.
        """
        user = self.users[cluster.user]
        was = user.holding_too_much
        user.held_bytes += size
        if user.holding_too_much == was:
            return
        self.ready.update_user(user)
        if was:
            return
        why = (
            f"user {user.name} holds {_size(user.held_bytes)} of results not yet acknowledged by its clients "
            f"(max_held_bytes = {_size(user.limits.max_held_bytes or 0)}): no new job of this user starts until they are collected"
        )
        clients = {c.client: c.cluster_id for cid in user.clusters if (c := self.clusters[cid]).client is not None}
        for client, cluster_id in clients.items():
            self._reject(client, ErrorCode.LIMIT, why, cluster_id)

    def _cancel(
        self, cluster: ClusterRecord, job_ids: Iterable[int],
        status: JobStatus = JobStatus.CANCELLED, why: str = "cancelled before it started",
    ) -> None:  # fmt: skip
        """Ends queued jobs (with `status` and `why`; a slice per call: see Cancelling) and asks nodes to kill running ones."""
        kills: dict[str, list[JobRef]] = defaultdict(list)
        queued: list[int] = []
        for job_id in job_ids:
            job = cluster.jobs.get(job_id)
            if job is None:
                continue
            if job.state is JobState.QUEUED:
                queued.append(job_id)
            elif job.state is JobState.RUNNING and job.node is not None and not job.cancel_requested:
                # the node answers with the job's terminal result once the tree is gone
                job.cancel_requested = True
                kills[job.node].append(JobRef(cluster.cluster_id, job_id))
                self._note_job(job)
            elif job.state is JobState.ORPHANED and not job.cancel_requested:
                job.cancel_requested = True  # killed if a node reports it, else ends Cancelled
                self._note_job(job)
        if len(queued) <= self._budget:  # a small cancel ends in the call that accepted it, whatever sweeps wait
            self._budget -= len(queued)
            why = cluster.released or why  # as in `Sweep.step`
            for job_id in queued:
                job = cluster.jobs.get(job_id)
                if job is not None and job.state is JobState.QUEUED:  # an id listed twice ends once
                    self._end_queued(cluster, job, status, why)
            if queued and self.clusters.get(cluster.cluster_id) is cluster:
                self.ready.update(cluster)
        else:
            self._sweep_of(cluster).add(queued, status, why, self._seq)
        self._out.immediate += [A.KillJobs(node, refs) for node, refs in kills.items()]

    def _lose_node(self, node_id: str, reason: str) -> None:
        node = self.nodes.pop(node_id, None)
        if node is None:
            return
        self._free_nodes.discard(node_id)
        self._parked.discard(node_id)
        self._announce(node, "left")
        for key in [k for k in self._puts if k[0] == node_id]:
            why = f"node {node.name} was lost before it confirmed the file: {reason}"
            self._out.immediate.append(A.ReportFilePut(self._puts.pop(key), key[1], False, why))
        why = f"node {node.name} ({node.ip_addr}) was lost while running this job: {reason}"
        # the node left this session for a newer one, which listed all it holds: the rest never arrived
        heir = bool(node.jobs) and any(self._same_run(n, node) for n in self.nodes.values())
        for cluster_id, job_id in sorted(node.jobs):
            cluster = self.clusters[cluster_id]
            job = cluster.jobs[job_id]
            if heir:
                self._displace(cluster, job, node, rerun=True, why="")
            elif node.grace > 0 and not job.cancel_requested:
                self._orphan(cluster, job, node, why)
            else:
                self._displace(cluster, job, node, rerun=cluster.reentrant, why=why)
        for cluster_id in node.loaded:
            loaded = self.clusters.get(cluster_id)
            if loaded is not None:
                loaded.loaded_on.discard(node_id)
        for cluster in self.clusters.values():
            cluster.failed_on.pop(node_id, None)
            cluster.node_cpus.pop(node_id, None)
            blob = cluster.node_blobs.pop(node_id, None)
            if blob is not None:
                self.users[cluster.user].queued_bytes -= len(blob)
            cluster.resetting.discard(node_id)
        for cluster in list(self.clusters.values()):  # ending jobs may end (and drop) a closing cluster
            self._end_if_nowhere(cluster)  # the nodes left all refused it

    def _refuse(
        self, cluster: ClusterRecord, jobs: list[JobSpec], submitted: int, limit: str, code: ErrorCode = ErrorCode.LIMIT
    ) -> None:
        """Ends jobs a submit brought beyond a limit (or with bad options: `code`): one error, and a Cancelled result each.

        The result (not only the error) matters: the client holds each job
        until its terminal result, so a refused job ends there as Cancelled,
        with the reason as its exception, like any other job (principle 4).
        The scheduler keeps no record of it: it was never accepted, and a
        client that resubmits it (it missed the result) is judged anew.
        """
        why = f"{limit}: {len(jobs)} of the {submitted} jobs submitted to cluster {cluster.name} were refused"
        assert cluster.client is not None
        self._reject(cluster.client, code, why, cluster.cluster_id)
        results = self._out.results[(cluster.client, cluster.cluster_id)]
        for spec in jobs:
            self.log.append((self._stimulus, cluster.cluster_id, spec.job_id, "new", "refused"))
            results.append(_terminal(cluster.cluster_id, spec.job_id, JobStatus.CANCELLED, why, 0.0, self.now))

    def _over_submit_limits(self, user: UserRecord, spec: JobSpec) -> str:
        """Why a new job of `user` is refused ('' if it is not): the limit, its value and the count."""
        limits = user.limits
        if limits.max_queued_jobs is not None and user.queued >= limits.max_queued_jobs:
            return f"user {user.name} may have at most max_queued_jobs = {limits.max_queued_jobs} jobs queued"
        cost = job_cost(spec.payload)
        if limits.max_queued_bytes is not None and user.queued_bytes + cost > limits.max_queued_bytes:
            return (
                f"user {user.name} may keep at most max_queued_bytes = {_size(limits.max_queued_bytes)} of job arguments "
                f"and computations in the scheduler; it keeps {_size(user.queued_bytes)} and a job of "
                f"{_size(len(spec.payload))} of arguments would take it beyond"
            )
        return ""

    def _over_open_limits(self, user: UserRecord, code: int, opening: bool = True) -> str:
        """Why a cluster (or a computation of `code` bytes) of `user` is refused ('' if it is not)."""
        limits = user.limits
        if opening and limits.max_clusters is not None and len(user.clusters) >= limits.max_clusters:
            return (
                f"user {user.name} may have at most max_clusters = {limits.max_clusters} clusters open and has "
                f"{len(user.clusters)} (a cluster whose program left without closing it counts until it returns)"
            )
        if limits.max_queued_bytes is not None and user.queued_bytes + code > limits.max_queued_bytes:
            return (
                f"user {user.name} may keep at most max_queued_bytes = {_size(limits.max_queued_bytes)} of job arguments "
                f"and computations in the scheduler; it keeps {_size(user.queued_bytes)} and the computation "
                f"takes {_size(code)}"
            )
        return ""

    def _note_job(self, job: JobRecord) -> None:
        if self.config.persist:
            self._changes.job_changed(job)

    def _note_cluster(self, cluster: ClusterRecord) -> None:
        if self.config.persist:
            self._changes.cluster(cluster)

    def _note_user(self, user: UserRecord) -> None:
        if self.config.persist:
            self._changes.user(user)

    def _note_settings(self) -> None:
        if self.config.persist:
            self._changes.settings = True

    def settings_rows(self) -> list[SettingRow]:
        """The operator's drains, CPU caps and shares, as the store keeps them."""
        return sorted(
            [SettingRow(DRAIN, name, 1.0) for name in self.drained]
            + [SettingRow(CPUS, name, float(cpus)) for name, cpus in self.cpu_caps.items()]
            + [SettingRow(SHARE, name, share) for name, share in self.share_overrides.items()]
            + [
                SettingRow(CANCEL, cid, float(s.upto)) for cid, s in self._sweeps.items()
                if s.lasting and 0 <= s.upto < EVERY_JOB and self.clusters.get(cid) is s.cluster  # a close: its row says so
            ],
            key=lambda r: (r.kind, r.name),
        )

    def _persist_action(self) -> A.Persist:
        changes, self._changes = self._changes, Changes()
        return A.Persist(
            [cluster_row(c) for c in changes.clusters.values()],
            [job_row(j) for j in changes.new_jobs.values()],
            [job_row(j) for j in changes.changed_jobs.values()],
            sorted(changes.gone_jobs),
            sorted(changes.gone_clusters),
            [UsageRow(u.name, u.usage, u.usage_time) for u in changes.users.values()],
            self.settings_rows() if changes.settings else None,
        )

    def _maybe_finish_close(self, cluster: ClusterRecord) -> None:
        if self.clusters.get(cluster.cluster_id) is not cluster or not cluster.closing:
            return
        if cluster.unfinished:
            return
        if cluster.jobs and not cluster.released:
            if cluster.client is None:
                return  # results nobody has received yet: kept until the client re-attaches
            if any(j.result is None for j in cluster.jobs.values()):
                return  # sent from the store (read as the client takes them): kept until it acknowledges them
        del self.clusters[cluster.cluster_id]
        if self.config.persist:
            self._changes.cluster_gone(cluster.cluster_id)
        self._watchers.discard(cluster.cluster_id)
        user = self.users[cluster.user]
        user.clusters.discard(cluster.cluster_id)
        user.queued_bytes -= cluster.code_bytes()
        for job in list(cluster.jobs.values()):  # delivered, not yet acknowledged: nobody will
            self._forget(cluster, job)
        for node_id in cluster.loaded_on:
            node = self.nodes.get(node_id)
            if node is not None:
                node.loaded.discard(cluster.cluster_id)
                self._out.immediate.append(A.UnloadCluster(node_id, cluster.cluster_id))
        if cluster.client is not None:
            self._out.closed.append(A.ConfirmClosed(cluster.client, cluster.cluster_id))

    # -------------------------------------------------------------- helpers

    def _user(self, name: str) -> UserRecord:
        user = self.users.get(name)
        if user is None:
            share = self.shares.get(name, self.config.default_share)
            limits = self.limits.get(name, self.default_limits)
            user = UserRecord(name, float(share), limits, usage_time=self.now)
            self.users[name] = user
        return user

    def _owned(self, client: str, cluster_id: str) -> ClusterRecord | None:
        cluster = self.clusters.get(cluster_id)
        if cluster is None or cluster.client != client:
            self._reject(client, ErrorCode.UNKNOWN_CLUSTER, f"no open cluster {cluster_id} on this connection", cluster_id)
            return None
        return cluster

    def _reject(self, client: str, code: ErrorCode, message: str, ref: str) -> None:
        self._out.immediate.append(A.Reject(client, str(code), message, ref))

    def _place(self, cluster: ClusterRecord, node: NodeRecord) -> None:
        """Caches how many of `node`'s CPUs a restricted cluster may use."""
        if not cluster.restricted:
            return
        cpus = next((cluster.overrides[k] for k in (node.name, *node.addresses) if k in cluster.overrides), None)
        if cpus is not None:
            cluster.node_cpus[node.node_id] = min(cpus, node.cpus)
        elif cluster.ask_client:
            cluster.node_cpus[node.node_id] = 0  # until the client's NodeAllocate answers
        elif cluster.placement is not None:
            cluster.node_cpus[node.node_id] = allowed_cpus(cluster.placement, node.name, node.addresses, node.cpus)
        else:
            cluster.node_cpus[node.node_id] = node.cpus

    def _introduce_nodes(self, cluster: ClusterRecord) -> None:
        """Tells a watching cluster's client about every node there is."""
        if cluster.cluster_id in self._watchers and cluster.client is not None and self.nodes:
            self._out.nodes[(cluster.client, cluster.cluster_id)] += [_node_info("joined", n) for n in self.nodes.values()]

    def _announce(self, node: NodeRecord, event: str) -> None:
        """Tells the clients of watching clusters that a node joined, reported or left."""
        info = _node_info(event, node)
        for cluster_id in self._watchers:
            client = self.clusters[cluster_id].client
            if client is not None:
                self._out.nodes[(client, cluster_id)].append(info)

    def _update_free(self, node: NodeRecord) -> None:
        self._parked.discard(node.node_id)
        if node.free > 0 and not node.drained and node.node_id in self.nodes:
            self._free_nodes.set(node.node_id, (node.load, node.name))
        else:
            self._free_nodes.discard(node.node_id)

    # --------------------------------------------------------------- status

    def usage_snapshot(self) -> dict[str, tuple[float, float]]:
        """Each user's decayed usage as (CPU-seconds, as of), for the shell to persist."""
        return {u.name: (u.usage, u.usage_time) for u in self.users.values() if u.usage > 0}

    def status(self, viewer: str | None = None) -> dict[str, Any]:
        """A snapshot for people: users, nodes, totals (plain msgpack types).

        Per user: `share` (weight), `target` (its fraction of the CPUs while
        every active user is backlogged: share over the active users' total),
        `busy` CPUs, `load` (the CPUs fair share counts for it, `UserRecord.load`),
        `queued` jobs, decayed `usage` (CPU-seconds), open
        `clusters`, `queued_bytes` and `held_bytes` (see `Limits`), `paused`
        (its results held reach `max_held_bytes`) and `limits` (only those set).

        Args:
            viewer: a user name: `users` holds that user alone, and everyone
                else is summed up in `others` (active users, busy CPUs, queued
                jobs), with no names; None: every user, by name.
        """
        total_share = sum(u.share for u in self.users.values() if u.busy or u.queued) or 1.0
        users = {
            u.name: {
                "share": u.share,
                "target": (u.share / total_share) if (u.busy or u.queued) else 0.0,
                "busy": u.busy - u.waiting,  # CPUs running its jobs (not those sent ahead, waiting for one)
                "load": round(u.load, 2),  # the CPUs fair share counts it for (`UserRecord.load`)
                "queued": u.queued + u.waiting,  # in the queue, or waiting on a node for a CPU
                "finished": u.finished,
                "usage": round(u.decayed_usage(self.now, self.usage_half_life), 3),
                "clusters": len(u.clusters),
                "queued_bytes": u.queued_bytes,
                "held_bytes": u.held_bytes,
                "paused": u.holding_too_much,
                "limits": {k: v for k, v in asdict(u.limits).items() if v is not None},
            }
            for u in self.users.values()
            if viewer is None or u.name == viewer
        }
        # jobs sent ahead to a node wait there for a CPU: `waiting`, not busy CPUs
        nodes = {
            n.name: {"ip_addr": n.ip_addr, "cpus": n.cpus, "busy": n.busy - n.waiting, "waiting": n.waiting, "avail": n.avail}
            for n in self.nodes.values()
        }
        others = [u for u in self.users.values() if viewer is not None and u.name != viewer]
        return {
            "policy": getattr(self.policy, "name", type(self.policy).__name__),
            "users": users,
            **({"others": {
                "users": sum(1 for u in others if u.busy or u.queued),
                "busy": sum(u.busy - u.waiting for u in others),
                "queued": sum(u.queued + u.waiting for u in others),
            }} if viewer is not None else {}),
            "nodes": nodes,
            "cpus": sum(n.cpus for n in self.nodes.values()),
            "busy": sum(n.busy - n.waiting for n in self.nodes.values()),
            "queued": sum(u.queued + u.waiting for u in self.users.values()),
        }


#: the accounting record's status names, by `JobStatus` number (an Enum lookup per job end costs more)
_STATUS_NAMES = {int(s): s.name.title() for s in JobStatus}


def _job_end(cluster: ClusterRecord, job: JobRecord, result: JobResult) -> A.JobEnd:
    status = _STATUS_NAMES.get(result.status) or str(result.status)
    reason = ""
    if result.status != JobStatus.FINISHED:  # a traceback's last line says what was raised
        lines = [line for line in result.exception.splitlines() if line.strip()]
        reason = (lines[-1].strip() if lines else result.exception_type)[:REASON_LIMIT]
    # as the node measured them; a figure no job reaches (a bad node's) is recorded as not measured
    cpu = float(result.cpu_time) if 0 <= result.cpu_time < 1e9 else 0.0
    rss = int(result.max_rss) if 0 <= result.max_rss < 1 << 50 else 0
    return A.JobEnd(
        cluster.user, cluster.cluster_id, cluster.name, job.job_id, job.last_node, status, job.submit_time,
        result.start_time, result.end_time, cpu, rss, reason,
    )  # fmt: skip


def _synthetic(job: JobRecord, status: JobStatus, why: str, now: float) -> JobResult:
    """A terminal result the scheduler writes itself (cancelled, abandoned)."""
    start = job.start_time if job.state is JobState.RUNNING else 0.0
    return _terminal(job.cluster_id, job.job_id, status, why, start, now)


def _terminal(cluster_id: str, job_id: int, status: JobStatus, why: str, start: float, now: float) -> JobResult:
    return JobResult(cluster_id, job_id, int(status), None, b"", b"", why, "", start, now)


def _size(size: int) -> str:
    """Bytes for people: exact below 10 KiB, else in the largest binary unit, to one decimal."""
    if size < 10 << 10:
        return f"{size} bytes"
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def _node_info(event: str, node: NodeRecord) -> NodeInfo:
    return NodeInfo(event, node.name, node.ip_addr, node.cpus, node.busy, node.avail)
