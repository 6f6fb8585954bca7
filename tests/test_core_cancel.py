"""Bulk cancels other than a close end a slice of queued jobs per call too (the core's Cancelling, `sweeps.py`).

An operator's cancel of a whole cluster, a cluster no node can run and a
cancel of many named jobs end at most `CoreConfig.close_slice` queued jobs
per call and ask to be called again (`ResumeCancelling`). Meanwhile none of
the jobs cancelled starts, jobs submitted after the cancel wait and then run,
a restart resumes the cancel, and every job ends exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dispy_sched.core import SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_wire.messages import JobRef, JobResult, JobSpec
from dispy_wire.status import JobStatus

from test_core import arrived, dispatched, joined, of, opened, result, step, submitted
from test_core_close import ended
from test_core_journal import MemoryJournal, run

MakeCore = Callable[..., SchedulerCore]
SLICE = 10


def resume(core: SchedulerCore, actions: list[A.Action], now: float) -> list[list[A.Action]]:
    """The shell's calls while the core asks for them, the first call's actions included."""
    calls = [actions]
    while A.ResumeCancelling() in calls[-1]:
        calls.append(step(core, E.CancellingResumed(), now=now))
    return calls


def ends(calls: list[list[A.Action]]) -> list[JobResult]:
    return [r for actions in calls for r in ended(actions)]


def test_an_operators_cancel_of_a_whole_cluster_ends_a_slice_per_call(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", *range(35)), now=0)  # job 0 runs
    actions = step(core, E.CancelRequested("op", None, "K", None), now=1)
    assert of(actions, A.AnswerAdmin) == [A.AnswerAdmin("op", "", "35 jobs of cluster name-K (K) cancelled")]
    assert of(actions, A.KillJobs) == [A.KillJobs("n1", [JobRef("K", 0)])]  # the running one: at once
    assert [r.job_id for r in ended(actions)] == list(range(1, 11)) and A.ResumeCancelling() in actions
    calls = resume(core, actions, now=2)
    assert [len(ended(c)) for c in calls] == [10, 10, 10, 4]
    assert {(r.status, r.exception) for r in ends(calls)} == {(JobStatus.CANCELLED, "cancelled by an administrator")}
    assert not any(dispatched(c) for c in calls)
    assert core.clusters["K"].queued == 0 and not core.clusters["K"].cancelling


def test_jobs_submitted_after_a_cancel_wait_for_it_and_then_run_even_ahead_in_priority(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(45)), now=0)
    actions = step(core, E.CancelRequested("op", "alice", "K", None), now=1)
    assert [r.job_id for r in ended(actions)] == list(range(10))
    # submitted after the cancel was accepted, one ahead of every cancelled job: kept, never cancelled
    calls = [step(core, submitted("c1", "K", 100), submitted("c1", "K", 101, priority=5), now=2)]
    calls.append(step(core, joined("n1", 2), now=3))  # a CPU is free, yet nothing of K starts while the cancel is on
    assert dispatched(calls[-1]) == {} and A.ResumeCancelling() in calls[-1]
    calls += resume(core, calls.pop(), now=4)
    assert sorted(r.job_id for r in ends(calls)) == list(range(10, 45))
    assert {r.exception for r in ends(calls)} == {"cancelled by user alice"}
    assert dispatched(calls[-1]) == {"n1": [("K", 101), ("K", 100)]}  # once it is done, in their order


def test_a_cluster_no_node_can_run_ends_its_queue_a_slice_per_call(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", *range(25)), now=1)
    actions = step(core, E.ClusterFailedOnNode("n1", "K", "TypeError: setup() missing 1 argument"), now=2)
    calls = resume(core, actions, now=3)
    assert [len(ended(c)) for c in calls] == [10, 10, 5]
    results = ends(calls)
    assert Counter(r.job_id for r in results) == Counter(range(25))
    assert {r.status for r in results} == {JobStatus.TERMINATED}
    assert all("cannot run on any node" in r.exception and "missing 1 argument" in r.exception for r in results)


def test_a_cancel_of_many_named_jobs_ends_a_slice_per_call_and_kills_the_running_ones_at_once(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", *range(30)), now=0)  # job 0 runs
    actions = step(core, E.JobsCancelled("c1", "K", list(range(0, 30, 2)) + [999]), now=1)  # 999: never submitted
    assert [len(k.jobs) for k in of(actions, A.KillJobs)] == [1]
    calls = resume(core, actions, now=2)
    assert [len(ended(c)) for c in calls] == [10, 4]
    assert sorted(r.job_id for r in ends(calls)) == list(range(2, 30, 2))
    actions = step(core, arrived("n1", result("K", 0, status=JobStatus.CANCELLED)), now=3)
    assert dispatched(actions) == {"n1": [("K", 1)]}  # the odd ones were never cancelled


def test_a_restart_mid_cancel_of_a_whole_cluster_resumes_it(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True, close_slice=SLICE), MemoryJournal()
    run(core, journal, opened("c1", "K"), submitted("c1", "K", *range(45)), now=0)
    before = ended(run(core, journal, E.CancelRequested("op", None, "K", None), now=1), journal)
    assert len(before) == SLICE and [s.kind for s in journal.settings] == ["cancel"]
    before += ended(run(core, journal, submitted("c1", "K", 50), now=2), journal)  # it must survive the restart
    # kill -9 before the shell's next call; nodes are back before the client
    core = make_core(persist=True, close_slice=SLICE)
    actions = run(core, journal, journal.restored(), joined("n1", 4), now=10)
    assert dispatched(actions) == {} and core.clusters["K"].cancelling
    actions = run(core, journal, opened("c2", "K"), now=11)  # the program re-attaches
    after = ended(actions, journal)
    while A.ResumeCancelling() in actions:
        actions = run(core, journal, E.CancellingResumed(), now=12)
        after += ended(actions, journal)
    assert dispatched(actions) == {"n1": [("K", 50)]} and not journal.settings
    counts = Counter(r.job_id for r in before + after)  # the ended ones again as the client re-attaches
    assert sorted(counts) == list(range(45)) and len(after) == 45
    assert {r.status for r in before + after} == {JobStatus.CANCELLED}


def test_a_restart_mid_cancel_of_named_jobs_resumes_it(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True, close_slice=SLICE), MemoryJournal()
    run(core, journal, opened("c1", "K"), submitted("c1", "K", *range(30)), now=0)
    before = ended(run(core, journal, E.JobsCancelled("c1", "K", list(range(25))), now=1), journal)
    assert len(before) == SLICE and sum(r.cancel_requested for r in journal.jobs.values()) == 15
    core = make_core(persist=True, close_slice=SLICE)
    actions = run(core, journal, journal.restored(), joined("n1", 8), now=10)
    assert dispatched(actions) == {}
    actions = run(core, journal, opened("c2", "K"), now=11)
    after = ended(actions, journal)
    while A.ResumeCancelling() in actions:
        actions = run(core, journal, E.CancellingResumed(), now=12)
        after += ended(actions, journal)
    # the first slice's results again (the client had not acknowledged them), the rest once each
    assert {r.job_id for r in before + after} == set(range(25)) and len(after) == 25
    assert {(r.status, r.exception) for r in before + after} == {(JobStatus.CANCELLED, "cancelled before it started")}
    assert sorted(j for _, j in dispatched(actions)["n1"]) == list(range(25, 30))


def test_a_close_during_a_cancel_ends_the_jobs_it_had_set_aside_too(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(30)), now=0)
    step(core, E.CancelRequested("op", None, "K", None), now=1)
    # newer and ahead of the rest: the next slice sets them aside to reach the older jobs
    actions = step(core, submitted("c1", "K", 100, 101, priority=5), now=2)
    assert {r.job_id for r in ended(actions)} <= set(range(30)) and core.clusters["K"].cancelling
    assert sorted(e[2] for e in core._sweeps["K"].kept) == [100, 101]
    calls = resume(core, step(core, E.ClusterClosed("c1", "K", terminate=True), now=3), now=4)
    results = ends(calls)
    assert {100, 101} <= {r.job_id for r in results} and calls[-1][-1] == A.ConfirmClosed("c1", "K")
    assert "K" not in core.clusters


def test_jobs_set_aside_while_the_first_pinned_job_arrives_run_once_the_cancel_is_done(make_core: MakeCore) -> None:
    core = make_core(close_slice=2)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(6)), now=0)
    calls = [step(core, E.CancelRequested("op", None, "K", None), now=1)]
    # newer and ahead of the rest: the next slice sets it aside (`kept`) to reach the older jobs
    calls.append(step(core, submitted("c1", "K", 100, priority=5), now=2))
    assert [e[2] for e in core._sweeps["K"].kept] == [100]
    # the cluster's first pinned job: the queue splits into pinned and unpinned heaps while 100 is set aside
    pinned = E.JobsSubmitted("c1", "K", [JobSpec(200, 0, b"args-200", {"node": "host-n1"})])
    calls += resume(core, step(core, pinned, now=3), now=4)
    assert sorted(r.job_id for r in ends(calls)) == list(range(6)) and not core.clusters["K"].cancelling
    actions = step(core, joined("n1", 4), joined("n2", 4), now=5)
    assert sorted(j for jobs in dispatched(actions).values() for _, j in jobs) == [100, 200]


def test_a_job_submitted_after_a_restart_is_not_taken_by_an_operators_cancel_resumed(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True, close_slice=SLICE), MemoryJournal()
    run(core, journal, opened("c1", "K"), submitted("c1", "K", *range(45)), now=0)
    for i in range(20):  # clusters opened and closed: they count in the submit sequence, and are forgotten
        run(core, journal, opened("c1", f"X{i}"), E.ClusterClosed("c1", f"X{i}", terminate=False), now=1)
    assert set(core.clusters) == {"K"}
    run(core, journal, E.CancelRequested("op", None, "K", None), now=2)
    core = make_core(persist=True, close_slice=SLICE)
    run(core, journal, journal.restored(), now=10)
    actions = run(core, journal, opened("c2", "K"), submitted("c2", "K", 100), now=11)
    after = ended(actions, journal)
    while A.ResumeCancelling() in actions:
        actions = run(core, journal, E.CancellingResumed(), now=12)
        after += ended(actions, journal)
    assert 100 not in {r.job_id for r in after}
    actions = run(core, journal, joined("n1", 2), now=13)
    assert dispatched(actions) == {"n1": [("K", 100)]}


def test_a_small_named_cancel_ends_in_its_call_while_an_older_bulk_cancel_goes_on(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(100)), opened("c2", "L", "bob"), now=0)
    step(core, submitted("c2", "L", 1, 2, 3), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)  # another user's close of many jobs: slices
    actions = step(core, E.JobsCancelled("c2", "L", [2]), now=2)
    assert [(r.cluster_id, r.job_id) for r in ended(actions) if r.cluster_id == "L"] == [("L", 2)]
    assert not core.clusters["L"].cancelling  # its other jobs are not held back behind K's close
    actions = step(core, joined("n1", 2), now=3)
    assert dispatched(actions) == {"n1": [("L", 1), ("L", 3)]} and A.ResumeCancelling() in actions


def test_a_cancel_of_jobs_pinned_to_a_node_that_cannot_run_them_ends_in_its_call(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(100)), opened("c2", "L", "bob"), now=0)
    pinned = [JobSpec(7, 0, b"args-7", {"node": "host-n1"})]
    step(core, joined("n1", 0), joined("n2", 0), submitted("c2", "L", 1), E.JobsSubmitted("c2", "L", pinned), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)
    actions = step(core, E.ClusterFailedOnNode("n1", "L", "ImportError: no module named numpy"), now=2)
    assert [(r.job_id, r.status) for r in ended(actions) if r.cluster_id == "L"] == [(7, JobStatus.TERMINATED)]
    assert not core.clusters["L"].cancelling  # job 1 may still run on n2


def test_a_restart_reads_the_jobs_a_named_cancel_left_back_as_one_list(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True, close_slice=SLICE), MemoryJournal()
    run(core, journal, opened("c1", "K"), submitted("c1", "K", *range(60)), now=0)
    run(core, journal, E.JobsCancelled("c1", "K", list(range(0, 60, 2))), now=1)  # a slice ends, the rest is marked
    run(core, journal, E.CancellingResumed(), now=2)  # the next slice: 10 are left
    core = make_core(persist=True, close_slice=SLICE // 2)
    actions = run(core, journal, journal.restored(), now=10)
    # one list (not one a job: 94,000 lists for 100,000 jobs), read on where this call's slice stopped
    assert [(len(todo.ids), todo.at) for todo in core._sweeps["K"].lists] == [(10, 5)]
    actions = run(core, journal, opened("c2", "K"), E.CancellingResumed(), now=11)
    assert sorted(r.job_id for r in ended(actions, journal)) == list(range(0, 60, 2))  # the client's, all at once
    assert not core.clusters["K"].cancelling


def test_jobs_of_a_cluster_no_node_could_run_stop_ending_once_a_node_that_can_joins(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", *range(25)), now=1)
    actions = step(core, E.ClusterFailedOnNode("n1", "K", "ImportError: no module named numpy"), now=2)
    assert len(ended(actions)) == SLICE
    actions = step(core, joined("n2", 2), now=3)  # its set-up may work there: the rest wait for it
    assert not ended(actions) and len(dispatched(actions)["n2"]) == 2 and not core.clusters["K"].cancelling


def test_an_operators_cancel_of_a_cluster_goes_on_when_a_node_comes_after_none_could_run_it(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)
    step(core, opened("c1", "K"), joined("n1", 0), submitted("c1", "K", *range(60)), now=0)
    calls = [step(core, E.CancelRequested("op", None, "K", None), now=1)]
    calls.append(step(core, submitted("c1", "K", 100), now=2))
    calls.append(step(core, E.ClusterFailedOnNode("n1", "K", "ImportError: no module named numpy"), now=3))
    calls += resume(core, step(core, joined("n2", 2), now=4), now=5)  # n2 may run K, not the jobs cancelled
    assert {r.job_id for r in ends(calls)} >= set(range(60))
    assert not any(j < 60 for c in calls for jobs in dispatched(c).values() for _, j in jobs)


def test_an_operators_cancel_after_none_could_run_a_cluster_goes_on_when_a_node_comes(make_core: MakeCore) -> None:
    core = make_core(close_slice=SLICE)  # found by the random machine: the operator's cancel came second, same jobs
    step(core, opened("c1", "K"), joined("n1", 0), submitted("c1", "K", *range(60)), now=0)
    calls = [step(core, E.ClusterFailedOnNode("n1", "K", "ImportError: no module named numpy"), now=1)]
    calls.append(step(core, E.CancelRequested("op", None, "K", None), now=2))
    calls += resume(core, step(core, joined("n2", 2), now=3), now=4)  # n2 may run K, not the jobs cancelled
    assert {r.job_id for r in ends(calls)} == set(range(60))
    assert not any(jobs for c in calls for jobs in dispatched(c).values())
