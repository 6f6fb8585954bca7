"""The core when a node is lost without a restart, and when the scheduler itself stalled.

A node announces how long it keeps its jobs running without a scheduler
(`NodeJoined.grace`, its --scheduler-grace). Its loss (connection closed,
silence) then orphans its running jobs until that deadline: a node back in
time reports them and its results count (no rerun, no duplicate); after it,
reentrant jobs run again and the others end Abandoned, saying why. A tick
that says the scheduler did not run for a while (`Tick.stalled`) blames no
node for that silence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.core.state import JobState
from dispy_sched.policies import load_policy
from dispy_wire.messages import JobRef
from dispy_wire.status import JobStatus

from test_core import arrived, delivered, dispatched, dispatched_jobs, joined, of, opened, result, step, submitted


@pytest.fixture
def core() -> Iterator[SchedulerCore]:
    """A core checked for invariants after every step (`step`) and at teardown."""
    made = SchedulerCore(load_policy("fair"), CoreConfig())
    yield made
    check_invariants(made)


def graced(node: str, cpus: int, grace: float, *, name: str = "", jobs: tuple[JobRef, ...] = ()) -> E.NodeJoined:
    ev = joined(node, cpus)
    return dataclasses.replace(ev, name=name or ev.name, grace=grace, jobs=jobs, clusters=("K",) if jobs else ())


def test_a_node_back_within_its_grace_delivers_its_jobs_results_without_a_rerun(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=True), graced("n1", 1, 30.0), now=0)
    assert dispatched(step(core, submitted("c1", "K", 1), now=1)) == {"n1": [("K", 1)]}
    step(core, E.NodeLeft("n1", "connection lost"), now=2)
    assert core.clusters["K"].jobs[1].state is JobState.ORPHANED
    # another node has room, but the job is not run twice while its node may still come back
    actions = step(core, joined("n2", 1), E.Tick(), now=20)
    assert not dispatched_jobs(actions) and not delivered(actions)
    back = graced("n3", 1, 30.0, name="host-n1", jobs=(JobRef("K", 1),))
    actions = step(core, back, now=25)
    assert not of(actions, A.KillJobs) and core.clusters["K"].jobs[1].state is JobState.RUNNING
    actions = step(core, arrived("n3", result("K", 1)), E.Tick(), now=40)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.FINISHED]
    assert core.clusters["K"].jobs[1].attempts == 1


def test_after_the_grace_a_reentrant_orphan_runs_again_and_another_ends_abandoned_saying_why(core: SchedulerCore) -> None:
    step(core, opened("c1", "R", reentrant=True), opened("c2", "N", reentrant=False), graced("n1", 2, 30.0), now=0)
    step(core, submitted("c1", "R", 1), submitted("c2", "N", 1), now=1)
    step(core, E.NodeLeft("n1", "silent"), joined("n2", 2, heartbeat=100.0), now=2)
    actions = step(core, E.Tick(), now=31)
    assert not dispatched_jobs(actions) and not delivered(actions)  # not yet: the deadline is 32
    actions = step(core, E.Tick(), now=33)
    assert dispatched(actions) == {"n2": [("R", 1)]}
    (abandoned,) = delivered(actions)[("c2", "N")]
    assert abandoned.status == JobStatus.ABANDONED
    assert "host-n1" in abandoned.exception and "grace of 30 s" in abandoned.exception
    assert "not reentrant" in abandoned.exception
    # the node, back too late, is told to kill what it still runs: both jobs have moved on
    actions = step(core, graced("n3", 2, 30.0, name="host-n1", jobs=(JobRef("R", 1), JobRef("N", 1))), now=40)
    (kill,) = of(actions, A.KillJobs)
    assert sorted(kill.jobs) == [JobRef("N", 1), JobRef("R", 1)]


def test_a_node_without_a_grace_has_its_jobs_written_off_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "R", reentrant=True), opened("c2", "N", reentrant=False), joined("n1", 2), now=0)
    step(core, submitted("c1", "R", 1), submitted("c2", "N", 1), now=1)
    actions = step(core, E.NodeLeft("n1", "connection lost"), joined("n2", 2), now=2)
    assert dispatched(actions) == {"n2": [("R", 1)]}
    assert [r.status for r in delivered(actions)[("c2", "N")]] == [JobStatus.ABANDONED]


def test_a_cancelled_job_of_a_lost_node_ends_cancelled_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), graced("n1", 1, 30.0), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    step(core, E.JobsCancelled("c1", "K", [1]), now=2)
    actions = step(core, E.NodeLeft("n1", "connection lost"), now=3)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.CANCELLED]


def test_a_scheduler_that_stalled_blames_no_node_for_the_silence(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1, heartbeat=5.0), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    # stopped for 100 s: the node's reports of that time are still unread
    actions = step(core, E.Tick(stalled=100.0), now=101)
    assert not of(actions, A.DropNode) and core.clusters["K"].jobs[1].state is JobState.RUNNING
    # but a node that stays silent for three of its heartbeats after that is lost as ever
    actions = step(core, E.Tick(), now=117)
    assert [d.node for d in of(actions, A.DropNode)] == ["n1"]


def test_without_a_stall_the_same_silence_loses_the_node(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1, heartbeat=5.0), now=0)
    actions = step(core, E.Tick(), now=101)
    assert [d.node for d in of(actions, A.DropNode)] == ["n1"]


def test_a_stall_moves_the_orphans_deadline(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=False), graced("n1", 1, 30.0), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    step(core, E.NodeLeft("n1", "connection lost"), now=2)
    actions = step(core, E.Tick(stalled=60.0), now=62)  # the node had no chance to come back meanwhile
    assert not delivered(actions) and core.clusters["K"].jobs[1].state is JobState.ORPHANED
    actions = step(core, E.Tick(), now=93)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.ABANDONED]


def test_a_node_back_without_its_orphans_has_them_written_off_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "R", reentrant=True), opened("c2", "N", reentrant=False), graced("n1", 2, 600.0), now=0)
    step(core, submitted("c1", "R", 1), submitted("c2", "N", 1), now=1)
    step(core, E.NodeLeft("n1", "connection lost"), now=2)
    # the same node, restarted (kill -9): it holds nothing, so nothing is worth its 600 s grace
    actions = step(core, graced("n2", 2, 600.0, name="host-n1"), now=3)
    assert dispatched(actions) == {"n2": [("R", 1)]}
    (abandoned,) = delivered(actions)[("c2", "N")]
    assert abandoned.status == JobStatus.ABANDONED and "not reentrant" in abandoned.exception


def test_a_detached_cluster_is_not_released_while_a_job_waits_for_its_node() -> None:
    core = SchedulerCore(load_policy("fair"), CoreConfig(result_retention=5.0))
    step(core, opened("c1", "K", reentrant=False), graced("n1", 1, 60.0), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    step(core, E.ClientLeft("c1"), E.NodeLeft("n1", "connection lost"), now=2)
    actions = step(core, E.Tick(), now=30)  # away 28 s, past the retention: only the orphan keeps it from release
    assert not of(actions, A.ReleaseCluster)
    assert "K" in core.clusters and core.clusters["K"].jobs[1].state is JobState.ORPHANED
    actions = step(core, E.Tick(), now=63)  # the grace is over: the job ends, and only then is the cluster released
    (released,) = of(actions, A.ReleaseCluster)
    assert released.cluster_id == "K" and released.results == 1


def test_a_node_that_stops_for_good_says_so_and_its_jobs_are_not_waited_for(core: SchedulerCore) -> None:
    step(core, opened("c1", "R", reentrant=True), graced("n1", 1, 60.0), now=0)
    step(core, submitted("c1", "R", 1), now=1)
    step(core, E.NodeReported("n1", {"cpus": 1, "scheduler_grace": 0}), joined("n2", 1), now=2)  # SIGTERM
    assert dispatched(step(core, E.NodeLeft("n1", "connection closed"), now=3)) == {"n2": [("R", 1)]}
