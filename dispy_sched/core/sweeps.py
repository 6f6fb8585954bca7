"""Bulk cancels of queued jobs, ended a slice per call (the scheduler core's Cancelling).

Theory of operation
-------------------
Ending a queued job costs 15 to 40 us (its result, journal row and
accounting record), so a cancel of a million would hold the shell's loop for
tens of seconds. The core therefore ends at most `CoreConfig.close_slice`
queued jobs a call: a cancel of named jobs that fits in that ends them at
once; any bigger cancel records what is to end in the cluster's `Sweep`, and
at the end of every call the rest of the call's allowance is spent on them
(`Sweep.step`), asking to be called again while some remain.

A sweep covers two kinds of jobs:
- every queued job accepted up to a point (`upto`, a submit sequence
  number): a close (every job, `math.inf`), an operator's cancel of a whole
  cluster, a cluster no node can run. They are taken from the queue's head,
  so a job queued again (its node lost) is taken too; a job accepted after
  the cancel, found at the head because of its higher priority, is set aside
  (`kept`) and goes back to the queue when the sweep is done. Nothing is
  scanned: each step costs O(log n) per job ended.
- the queued jobs of explicit lists (a client's or operator's cancel of
  named jobs), read in order.

While a cluster has a sweep it is out of the ready index (its
`ClusterRecord.cancelling`), so none of the jobs to end can start
meanwhile; jobs submitted after the cancel wait for the sweep's end.

This module knows the records, not the core: the core passes what ends a job.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dispy_wire.status import JobStatus

from .state import ClusterRecord, JobRecord, JobState

#: ends one queued job with a status and a reason (the core's `_finish` with a made-up result)
End = Callable[[ClusterRecord, JobRecord, JobStatus, str], None]

#: a sweep's `upto` that covers every queued job, whenever accepted or queued again (a close)
EVERY_JOB = math.inf


@dataclass(slots=True)
class IdList:
    """Named jobs to end, read from `at` on; only those accepted up to `upto` (an id used again later is another job)."""

    ids: list[int]
    status: JobStatus
    why: str
    upto: int
    at: int = 0
    #: ids before this one have been marked `cancel_requested` for the journal (`Sweep.mark`)
    marked: int = 0


@dataclass(slots=True)
class Sweep:
    """What is still to end of one cluster's queued jobs."""

    cluster: ClusterRecord
    #: queued jobs of a submit sequence number up to this end; math.inf: all (a close); -1: none (only `lists`)
    upto: float = -1
    status: JobStatus = JobStatus.CANCELLED
    why: str = ""
    #: an operator's cancel of the whole cluster: the store keeps `upto` (persist.CANCEL), so a restart resumes it
    lasting: bool = False
    #: `upto` is that of a cluster no node could run (the core's `_end_if_nowhere`): it stops once one may
    nowhere: bool = False
    lists: deque[IdList] = field(default_factory=deque)
    #: heap entries of queued jobs accepted after `upto`, taken off the queue's head to reach older ones
    kept: list[tuple[int, int, int]] = field(default_factory=list)
    #: how many of `kept` (its first ones) were set aside while the cluster had no pinned job, so no `unpinned`
    #: heap: one made since (`ClusterRecord.push`) lacks them
    unsplit: int = 0

    def cover(self, upto: float, status: JobStatus, why: str) -> bool:
        """Ends every queued job accepted up to `upto` too: a cancel that covers more jobs gives all its status and
        reason; one that covers none more (a cluster no node can run, found so again) leaves the first cancel's.
        Returns whether this cancel's were taken."""
        self.nowhere = False  # a cancel stands behind `upto` now: it goes on when a node that may run them comes
        if upto <= self.upto:
            return False
        self.upto, self.status, self.why = upto, status, why
        self.restore_kept()
        return True

    def uncover(self) -> None:
        """Ends no more queued jobs through `upto` (the jobs of `lists` still end)."""
        self.upto, self.nowhere = -1, False
        self.restore_kept()

    def restore_kept(self) -> None:
        """Puts the jobs set aside back in the queue (stale entries are skipped there as anywhere), and in `unpinned`
        those it lacks: `pop` and `runnable_on` read that heap once the cluster has a pinned job."""
        queue, unpinned = self.cluster.queue, self.cluster.unpinned
        for i, entry in enumerate(self.kept):
            heapq.heappush(queue, entry)
            if unpinned is not None and i < self.unsplit:
                heapq.heappush(unpinned, entry)
        self.kept.clear()
        self.unsplit = 0

    def add(self, ids: list[int], status: JobStatus, why: str, upto: int) -> None:
        last = self.lists[-1] if self.lists else None
        if last is not None and (last.status, last.why, last.upto) == (status, why, upto):
            last.ids += ids  # a restart's jobs one by one, or several cancels in one call: one list
        else:
            self.lists.append(IdList(ids, status, why, upto))

    def step(self, budget: int, end: End) -> tuple[int, bool]:
        """Ends up to `budget` jobs; returns the budget left and whether the sweep is done."""
        cluster = self.cluster
        why = cluster.released  # a released cluster's jobs end for that reason, whoever cancelled them
        while self.lists:
            todo = self.lists[0]
            ids = todo.ids
            while todo.at < len(ids):
                if budget <= 0:
                    return 0, False
                job = cluster.jobs.get(ids[todo.at])
                todo.at += 1
                if job is not None and job.state is JobState.QUEUED and job.seq <= todo.upto:
                    end(cluster, job, todo.status, why or todo.why)
                    budget -= 1
            self.lists.popleft()
        while self.upto >= 0:
            job = cluster.head()
            if job is None:
                break
            if budget <= 0:
                return 0, False
            budget -= 1
            if job.seq > self.upto:
                self.kept.append(heapq.heappop(cluster.queue))  # `head` made it the top entry
                if cluster.unpinned is None:  # never None again once set: these are the first of `kept`
                    self.unsplit += 1
            else:
                end(cluster, job, self.status, why or self.why)
        self.restore_kept()
        return budget, True

    def mark(self, note: Callable[[JobRecord], None]) -> None:
        """Marks the listed jobs still to end `cancel_requested` and notes them for the journal, once each.

        A restart reads a queued job so marked back into a sweep: the cancel
        outlives it, as a whole-cluster one does through `upto`.
        """
        jobs = self.cluster.jobs
        for todo in self.lists:
            for job_id in todo.ids[max(todo.at, todo.marked):]:
                job = jobs.get(job_id)
                if job is not None and job.state is JobState.QUEUED and job.seq <= todo.upto and not job.cancel_requested:
                    job.cancel_requested = True
                    note(job)
            todo.marked = len(todo.ids)

