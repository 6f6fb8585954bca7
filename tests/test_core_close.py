"""Closing a cluster with more queued jobs than one call cancels (`CoreConfig.close_slice`).

Each call ends at most a slice of the closing cluster's queued jobs and asks
to be called again (`ResumeCancelling`); meanwhile other peers are served, none
of the closing cluster's jobs starts, and a restart from the journal resumes
the close. Every job still ends exactly once, and the cluster goes with its
last job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dispy_sched.core import SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_wire.messages import JobResult
from dispy_wire.status import JobStatus

from test_core import arrived, delivered, dispatched, joined, node_of, of, opened, result, step, submitted
from test_core_journal import MemoryJournal, run

MakeCore = Callable[..., SchedulerCore]
SLICE = 10


def ended(actions: list[A.Action], journal: MemoryJournal | None = None) -> list[JobResult]:
    """Every terminal result a call hands to clients, read back from the store where the core left it there."""
    out = [r for d in of(actions, A.DeliverResults) for r in d.results]
    for d in of(actions, A.DeliverStored):
        assert journal is not None
        out += journal.read_results(d.cluster_id, [job_id for job_id, _ in d.jobs])
    return out


def test_a_close_of_more_queued_jobs_than_a_slice_ends_them_a_slice_per_call(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(35)), now=0)
    step(core, submitted("c1", "K", 99, priority=1), now=0)  # the queue's order: priority first
    calls = [step(core, E.ClusterClosed("c1", "K", terminate=True), now=1)]
    while A.ResumeCancelling() in calls[-1]:
        assert not of(calls[-1], A.ConfirmClosed), "confirmed while jobs are still queued"
        calls.append(step(core, E.CancellingResumed(), now=2))
    results = [r for actions in calls for r in ended(actions)]
    assert [len(ended(actions)) for actions in calls] == [10, 10, 10, 6]
    assert [r.job_id for r in results] == [99, *range(35)]  # each once, from the head of the queue
    assert {(r.status, r.exception) for r in results} == {(JobStatus.CANCELLED, "cancelled before it started")}
    assert calls[-1][-1] == A.ConfirmClosed("c1", "K") and "K" not in core.clusters
    assert core.users["alice"].queued == 0 and core.users["alice"].queued_bytes == 0


def test_other_peers_are_served_between_slices_and_the_closing_cluster_starts_nothing(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", *range(30)), now=0)
    assert dispatched(step(core, opened("c2", "L", "bob"), now=0)) == {}  # K's job 0 holds the one CPU
    actions = step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)
    assert [r.job_id for r in ended(actions)] == list(range(1, 11)) and A.ResumeCancelling() in actions
    assert core.users["alice"].queued == 19 and not core.ready.user_clusters.get("alice")  # out of fair share
    # before the shell's next call for the close: K's running job ends, bob submits; the freed CPU is bob's
    actions = step(core, arrived("n1", result("K", 0)), submitted("c2", "L", 1, 2), now=2)
    assert delivered(actions)[("c1", "K")][0] == result("K", 0)
    assert of(actions, A.ConfirmAccepted) == [A.ConfirmAccepted("c2", "L", [1, 2])]
    assert dispatched(actions) == {"n1": [("L", 1)]}
    assert len(ended(actions)) == 1 + SLICE  # that call cancelled a slice too
    calls = [actions]
    while A.ResumeCancelling() in calls[-1]:
        calls.append(step(core, E.CancellingResumed(), now=3))
        assert not {c for c, _ in dispatched(calls[-1]).get("n1", [])} - {"L"}
    assert of(calls[-1], A.UnloadCluster) == [A.UnloadCluster("n1", "K")] and calls[-1][-1] == A.ConfirmClosed("c1", "K")
    ends = Counter(r.job_id for actions in calls for r in ended(actions) if r.cluster_id == "K")
    assert sorted(ends) == [0, *range(11, 30)] and set(ends.values()) == {1}


def test_a_job_queued_again_in_a_closing_cluster_ends_cancelled_and_never_runs_again(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K", reentrant=True), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)  # job 1 runs on
    actions = step(core, E.NodeLeft(node_of(core, "K", 1), "gone"), joined("n2", 2), now=2)
    assert not dispatched(actions)
    ((r,),) = [ended(actions)]
    assert (r.job_id, r.status) == (1, JobStatus.CANCELLED) and actions[-1] == A.ConfirmClosed("c1", "K")


def test_a_released_cluster_drains_in_slices_saying_why(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE, result_retention=100.0)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(25)), E.ClientLeft("c1"), now=0)
    actions = step(core, E.Tick(), now=200)
    (release,) = of(actions, A.ReleaseCluster)
    assert release.jobs == 25 and A.ResumeCancelling() in actions and core.clusters["K"].queued == 15
    while A.ResumeCancelling() in actions:
        actions = step(core, E.CancellingResumed(), now=201)
    assert "K" not in core.clusters and core.users["alice"].queued_bytes == 0
    assert [e for e in core.log if e[2] == 24][-1] == ("cancel", "K", 24, "queued", "done")


def test_a_restart_mid_close_resumes_it_and_every_job_still_ends_once(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True, close_slice=SLICE), MemoryJournal()
    run(core, journal, opened("c1", "K"), submitted("c1", "K", *range(25)), now=0)
    before = ended(run(core, journal, E.ClusterClosed("c1", "K", terminate=True), now=1), journal)
    assert len(before) == SLICE and journal.clusters["K"].closing and len(journal.jobs) == 15
    # kill -9 before the shell's next call; the new run reads the journal and drains on before the client is back
    core = make_core(persist=True, close_slice=SLICE)
    actions = run(core, journal, journal.restored(), now=10)
    assert A.ResumeCancelling() in actions and core.clusters["K"].closing and core.clusters["K"].queued == 5
    actions = run(core, journal, opened("c2", "K"), now=11)  # the program re-attaches: the ended ones, from the store
    after = ended(actions, journal)
    while A.ResumeCancelling() in actions:
        actions = run(core, journal, E.CancellingResumed(), now=12)
        after += ended(actions, journal)
    assert not of(actions, A.ConfirmClosed)  # results sent from the store wait for the client's acknowledgement
    actions = run(core, journal, E.ResultsAcked("c2", "K", sorted(r.job_id for r in after)), now=13)
    assert actions[-1] == A.ConfirmClosed("c2", "K")
    ends = Counter(r.job_id for r in before + after)
    assert sorted(ends) == list(range(25)) and set(ends.values()) == {1}
    assert {r.status for r in before + after} == {JobStatus.CANCELLED}
    assert not journal.clusters and not journal.jobs
