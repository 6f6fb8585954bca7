"""The core when a dispatch is lost on the wire: the node never got the job.

A node names the run of its job runner (`NodeJoined.node_run`): a random id,
new whenever the node starts holding nothing (daemon start, or its jobs
given up after its grace). A runner keeps every job it is sent until the
scheduler has recorded its result, and lists them all when it joins. So a
node back as the same run that does not list a job sent to that run never
got it (the scheduler, a takeover's old leader or the connection died as it
was sent): the job is queued again and runs once, reentrant or not. A node
of another run restarted: its unlisted jobs rerun if reentrant, else end
Abandoned, as before. A node that does not name its run (an older one) gets
the old treatment too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.core.state import JobState
from dispy_sched.policies import load_policy
from dispy_wire.messages import JobRef
from dispy_wire.status import JobStatus

from test_core import arrived, delivered, dispatched, joined, of, opened, result, step, submitted
from test_core_journal import MakeCore, MemoryJournal, NewJournal, new_journal, run  # noqa: F401  (new_journal: a fixture)


@pytest.fixture
def core() -> Iterator[SchedulerCore]:
    made = SchedulerCore(load_policy("fair"), CoreConfig(prefetch=1))
    yield made
    check_invariants(made)


def node(session: str, cpus: int, run: str, *, name: str = "host-n1", grace: float = 0.0,
         jobs: tuple[JobRef, ...] = ()) -> E.NodeJoined:  # fmt: skip
    """A queueing node called `name` on session `session`, of runner run `run`, listing `jobs`."""
    return dataclasses.replace(
        joined(session, cpus), name=name, node_run=run, grace=grace, jobs=jobs, clusters=("K",) if jobs else (),
        queues=True,
    )  # fmt: skip


def test_after_a_restart_a_job_the_same_run_does_not_list_never_arrived_and_runs_once_though_not_reentrant(
    make_core: MakeCore, new_journal: NewJournal  # noqa: F811
) -> None:
    core, journal = make_core(persist=True, prefetch=1), new_journal()
    run(core, journal, opened("c1", "K", reentrant=False), node("n1", 1, "run-a"), now=0)
    assert dispatched(run(core, journal, submitted("c1", "K", 1, 2), now=1)) == {"n1": [("K", 1), ("K", 2)]}
    assert journal.jobs[("K", 2)].node_run == "run-a"
    # kill -9 as the dispatch left: job 2 never reached the node, which runs job 1 and comes back as the same run
    core = make_core(persist=True, prefetch=1)
    run(core, journal, journal.restored(adopt_within=600), opened("c2", "K"), now=10)
    actions = run(core, journal, node("n2", 1, "run-a", jobs=(JobRef("K", 1),)), now=11)
    assert dispatched(actions) == {"n2": [("K", 2)]}  # at once, not after the 600 s, and not Abandoned
    assert not delivered(actions) and core.clusters["K"].jobs[2].state is JobState.RUNNING
    actions = run(core, journal, arrived("n2", result("K", 1), result("K", 2)), now=12)
    assert sorted((r.job_id, r.status) for r in delivered(actions)[("c2", "K")]) == [
        (1, JobStatus.FINISHED), (2, JobStatus.FINISHED),
    ]  # fmt: skip


def test_after_a_restart_a_node_of_another_run_has_its_unlisted_jobs_rerun_if_reentrant_else_abandoned(
    make_core: MakeCore, new_journal: NewJournal  # noqa: F811
) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "R", reentrant=True), opened("c2", "N", reentrant=False), now=0)
    run(core, journal, node("n1", 2, "run-a"), submitted("c1", "R", 1), submitted("c2", "N", 1), now=1)
    core = make_core(persist=True)
    run(core, journal, journal.restored(adopt_within=600), opened("c3", "R"), opened("c4", "N"), now=10)
    actions = run(core, journal, node("n2", 2, "run-b"), now=11)  # the node restarted: whatever ran there is lost
    assert dispatched(actions) == {"n2": [("R", 1)]}
    (abandoned,) = delivered(actions)[("c4", "N")]
    assert abandoned.status == JobStatus.ABANDONED and "not run again" in abandoned.exception


def test_after_a_restart_a_node_that_names_no_run_is_treated_as_before(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True), MemoryJournal()
    run(core, journal, opened("c1", "N", reentrant=False), node("n1", 1, ""), submitted("c1", "N", 1), now=0)
    core = make_core(persist=True)
    run(core, journal, journal.restored(adopt_within=600), opened("c2", "N"), now=10)
    actions = run(core, journal, node("n2", 1, ""), now=11)  # an older node: what it does not list may have run
    assert [r.status for r in delivered(actions)[("c2", "N")]] == [JobStatus.ABANDONED]


def test_a_node_back_from_a_lost_connection_as_the_same_run_gets_what_it_never_received_again(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=False), node("n1", 1, "run-a", grace=600.0), now=0)
    assert dispatched(step(core, submitted("c1", "K", 1, 2), now=1)) == {"n1": [("K", 1), ("K", 2)]}
    step(core, E.NodeLeft("n1", "connection reset"), now=2)  # the frame with job 2 went down with the connection
    actions = step(core, node("n2", 1, "run-a", grace=600.0, jobs=(JobRef("K", 1),)), now=3)
    assert dispatched(actions) == {"n2": [("K", 2)]} and not delivered(actions)
    actions = step(core, arrived("n2", result("K", 1), result("K", 2)), now=4)
    assert sorted(r.job_id for r in delivered(actions)[("c1", "K")]) == [1, 2]
    assert core.clusters["K"].jobs[2].attempts == 2


def test_a_node_back_before_its_old_session_is_noticed_gets_again_what_that_session_was_sent_in_vain(
    core: SchedulerCore,
) -> None:
    step(core, opened("c1", "K", reentrant=False), node("n1", 1, "run-a"), now=0)
    step(core, submitted("c1", "K", 1, 2), now=1)
    # the node left session n1 for n2 (n1's end not seen yet): job 1 it holds; job 2 was lost in the old socket
    actions = step(core, node("n2", 1, "run-a", jobs=(JobRef("K", 1),)), now=2)
    assert core.clusters["K"].jobs[1].node == "n2"
    assert dispatched(actions) == {"n2": [("K", 2)]}
    assert A.DropNode("n1", "node host-n1 logged in again on another connection") in actions  # nothing more goes there
    assert "n1" not in core.nodes and not of(step(core, E.NodeLeft("n1", "connection reset"), now=3), A.DeliverResults)
    actions = step(core, arrived("n2", result("K", 1), result("K", 2)), now=4)
    assert sorted((r.job_id, r.status) for r in delivered(actions)[("c1", "K")]) == [
        (1, JobStatus.FINISHED), (2, JobStatus.FINISHED),
    ]  # fmt: skip


def test_a_node_back_before_its_old_session_is_noticed_as_another_run_keeps_the_old_treatment(
    core: SchedulerCore,
) -> None:
    step(core, opened("c1", "K", reentrant=False), node("n1", 1, "run-a"), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    actions = step(core, node("n2", 1, "run-b"), now=2)  # restarted: job 1 may have run there
    assert not of(actions, A.DropNode) and core.clusters["K"].jobs[1].node == "n1"
    actions = step(core, E.NodeLeft("n1", "connection reset"), now=3)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.ABANDONED]


def test_a_cancelled_job_that_never_arrived_ends_cancelled(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(prefetch=1)
    step(core, opened("c1", "K", reentrant=False), node("n1", 1, "run-a", grace=600.0), now=0)
    step(core, submitted("c1", "K", 1, 2), now=1)
    step(core, E.NodeLeft("n1", "connection reset"), E.JobsCancelled("c1", "K", [2]), now=2)
    actions = step(core, node("n2", 1, "run-a", grace=600.0, jobs=(JobRef("K", 1),)), now=3)
    assert [(r.job_id, r.status) for r in delivered(actions)[("c1", "K")]] == [(2, JobStatus.CANCELLED)]
    assert not of(actions, A.Dispatch)
