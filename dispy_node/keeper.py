"""`JobKeeper`: the node's jobs outlive a lost scheduler connection, for a grace period.

Theory of operation. The scheduler keeps a journal, so when it restarts (or
the link to it breaks for a moment) the jobs it dispatched are still its
jobs: killing them would throw their work away, and a non-reentrant job
could then never end Finished. So the node's `Runner` belongs to the keeper,
not to one connection. While a session is attached, what the runner
produces (results, files, set-up failures) goes straight to it; while none
is, it is kept here, in order. A terminal result is kept even once sent,
until the scheduler says it has recorded it (`recorded`): one written just
before the connection broke may never have reached it. The next session
reports what the runner still holds, results included, in its Hello
(`held`): the scheduler adopts the jobs it still wants and kills the others;
then the kept output is sent again (`attach`), and the scheduler ignores a
result it already has.

A node nobody reconnects to for `grace` seconds gives up: its runner is
closed (every job tree and zygote killed) and what it kept is dropped, as
when the daemon stops. `grace` 0 is the old behaviour: a lost connection
kills everything at once.

The node's run: a random `node_run` id, given in every Hello. A runner
drops a job only with a result, or when the scheduler takes it back (a
recall, a cluster that failed here), and the keeper drops a result only
once the scheduler has recorded it; so while the id stays the same, the
Hello lists every job sent to this run that the scheduler has no result of:
one it does not list never arrived, and the scheduler may run it elsewhere
even if it is not reentrant. Giving up a runner that held anything (jobs,
clusters, results) starts a new run; an empty one loses nothing, so a job
sent to it as the connection broke is still known never to have arrived.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from dispy_wire.messages import JobFile, JobRef, JobResult
from dispy_wire.status import JobStatus

from .runner import Runner, RunnerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClusterFailure:
    cluster_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Returned:
    """Jobs a recall could not give back at once (sent on to take a running job's place), given back now."""

    jobs: list[JobRef]


#: what a runner produces, in the order the scheduler must hear it (a JobRef: that job started)
Output = JobResult | JobFile | ClusterFailure | JobRef | Returned


class JobKeeper:
    """Args:
    grace: seconds the runner outlives a lost connection without a new one.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._runner: Runner | None = None
        #: the run: new whenever what the node held (jobs, results) is dropped unreported
        self.node_run = secrets.token_hex(8)
        self._sink: Callable[[Output], None] | None = None
        self._kept: list[Output] = []
        #: terminal results sent and not yet confirmed by the scheduler
        self._sent: dict[tuple[str, int], JobResult] = {}
        self._expiry: asyncio.TimerHandle | None = None
        #: the loop time the grace ends at, from the first detach until a session attaches
        self._deadline: float | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def runner(self, config: RunnerConfig) -> Runner:
        """The runner (a new one with `config` if none is left from before), for a session logging in.

        The grace does not end while it logs in: its Hello lists what the
        runner holds, so the runner must not be closed under it. A login that
        fails detaches again, and the grace resumes where it was (`detach`).
        """
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._runner is None:
            self._runner = Runner(config, self._put, self._failed, self._put, self._started, self._returned)
        return self._runner

    def held(self) -> tuple[list[JobRef], list[str]]:
        """Jobs the runner runs or has a result kept for, and the clusters it has loaded."""
        if self._runner is None:
            return [], []
        jobs, clusters = self._runner.held()
        jobs += [JobRef(o.cluster_id, o.job_id) for o in self._kept if isinstance(o, JobResult)]
        return jobs, clusters

    def attach(self, sink: Callable[[Output], None]) -> None:
        """A session took over: it gets what was kept, then everything as it comes."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._deadline = None
        kept, self._kept = self._kept, []
        if kept:
            logger.info("sending %d results and files kept while the scheduler was away", len(kept))
        self._sink = sink
        for output in kept:
            sink(output)

    def detach(self, unsent: list[JobResult | JobFile] | None = None) -> None:
        """The session ended: keep the jobs for `grace` seconds, then kill them.

        Args:
            unsent: output the session took but did not write; kept first.
        """
        self._sink = None
        self._kept[:0] = [*self._sent.values(), *(unsent or [])]
        self._sent.clear()
        if self._runner is None:
            return
        jobs, clusters = self._runner.held()
        if self.grace <= 0 or not (jobs or clusters or self._kept):
            self._close_runner("the scheduler connection ended")
            return
        loop = asyncio.get_running_loop()
        if self._deadline is None:  # the connection ended; a failed login since does not restart the grace
            self._deadline = loop.time() + self.grace
        logger.info(
            "scheduler connection lost: %d jobs of %d clusters keep running for up to %.0f s while we reconnect",
            len(jobs), len(clusters), max(0.0, self._deadline - loop.time()),
        )  # fmt: skip
        if self._expiry is None:
            self._expiry = loop.call_at(self._deadline, self._expired)

    async def close(self) -> None:
        """Kills whatever the runner still runs (the daemon is stopping)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._close_runner("the node is stopping")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _expired(self) -> None:
        self._expiry = None
        self._close_runner(f"no scheduler connection for {self.grace:g} s")

    def _close_runner(self, why: str) -> None:
        runner, self._runner = self._runner, None
        self._deadline = None
        if self._kept or self._sent or (runner is not None and not runner.empty):
            self.node_run = secrets.token_hex(8)  # jobs and results dropped unreported: another run from now on
        self._kept = []
        self._sent.clear()
        if runner is None:
            return
        if runner.busy:
            logger.warning("%s: killing %d jobs", why, runner.busy)
        task = asyncio.ensure_future(runner.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def recorded(self, jobs: list[JobRef]) -> None:
        """The scheduler has these results: they need not be sent again."""
        for ref in jobs:
            self._sent.pop((ref.cluster_id, ref.job_id), None)

    def _put(self, output: Output) -> None:
        if self._sink is not None:
            if isinstance(output, JobResult) and output.status != JobStatus.PROVISIONAL_RESULT:
                self._sent[(output.cluster_id, output.job_id)] = output
            self._sink(output)
        else:
            self._kept.append(output)

    def _started(self, ref: JobRef) -> None:
        """A queued job started: told to an attached scheduler; else not kept (the next Hello says it holds the job)."""
        if self._sink is not None:
            self._sink(ref)

    def _returned(self, jobs: list[JobRef]) -> None:
        """Recalled jobs given back late: told to an attached scheduler; else not kept (the next Hello
        does not list them as held, and the scheduler treats them as it treats jobs a node lost)."""
        if self._sink is not None:
            self._sink(Returned(jobs))

    def _failed(self, cluster_id: str, message: str) -> None:
        self._put(ClusterFailure(cluster_id, message))
