"""The core's prefetch window: jobs sent to a node beyond its CPUs, to start there as CPUs free.

A node that queues jobs (`NodeJoined.queues`) is sent `CoreConfig.prefetch`
jobs per CPU more than it has CPUs; it reports each start (`StartsReported`),
and only then is the job Running for its client. A prefetched job counts as
a running one for every limit, for fair share by the part of their stay on
nodes its user's jobs run (`UserRecord.load`), and, since the node may start
it at any moment, is treated as a running one when the node is lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from dispy_sched.core import JobState, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.state import Limits
from dispy_wire.messages import JobRef, JobResult
from dispy_wire.status import JobStatus

from test_core_journal import JournaledCoreMachine
from test_core import MACHINE_SETTINGS, CoreMachine, arrived, delivered, dispatched, dispatched_jobs, joined, of, opened, result, step, submitted


@pytest.fixture
def core(make_core: Callable[..., SchedulerCore]) -> SchedulerCore:
    return make_core(prefetch=1)


def queueing(node: str, cpus: int, **more: Any) -> E.NodeJoined:
    return dataclasses.replace(joined(node, cpus), queues=True, **more)


def started(node: str, *refs: tuple[str, int]) -> E.StartsReported:
    return E.StartsReported(node, [JobRef(c, j) for c, j in refs])


def told_started(actions: list[A.Action]) -> list[int]:
    return [s.job_id for n in of(actions, A.NotifyStarted) for s in n.starts]


def test_a_queueing_node_gets_its_window_and_a_result_brings_the_next_job_in_the_same_turn(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", *range(1, 11)), now=0)
    assert dispatched(step(core, queueing("n1", 2), now=1)) == {"n1": [("K", j) for j in (1, 2, 3, 4)]}
    assert core.nodes["n1"].busy == 4 and core.nodes["n1"].window == 2
    actions = step(core, arrived("n1", result("K", 1), result("K", 2)), now=2)
    assert dispatched(actions) == {"n1": [("K", 5), ("K", 6)]}  # with the confirmations of those results


def test_a_node_that_does_not_queue_gets_only_its_cpus(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", *range(1, 11)), now=0)
    actions = step(core, joined("n1", 2), now=1)
    assert dispatched_jobs(actions) == [1, 2] and told_started(actions) == [1, 2]  # Running at once, as before
    assert core.nodes["n1"].window == 0


def test_without_prefetch_a_queueing_node_gets_only_its_cpus(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(prefetch=0)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(1, 11)), now=0)
    assert dispatched_jobs(step(core, queueing("n1", 2), now=1)) == [1, 2]


def test_a_prefetched_job_runs_for_its_client_once_its_node_reports_the_start(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", 1, 2, 3), now=0)
    actions = step(core, queueing("n1", 1), now=1)
    assert dispatched_jobs(actions) == [1, 2] and told_started(actions) == []
    actions = step(core, started("n1", ("K", 1)), now=2)
    assert told_started(actions) == [1]
    starts = [s for n in of(actions, A.NotifyStarted) for s in n.starts]
    assert starts[0].time == 2  # when it started, not when it was sent
    assert told_started(step(core, started("n1", ("K", 1)), now=3)) == []  # a repeated report: told once
    # job 2 starts and ends in one turn of the node, its start reported with its result: the result wins
    actions = step(core, arrived("n1", result("K", 1), result("K", 2)), started("n1", ("K", 2)), now=4)
    assert told_started(actions) == [] and [r.job_id for r in delivered(actions)[("c1", "K")]] == [1, 2]
    assert core.clusters["K"].jobs[3].state is JobState.RUNNING and not core.clusters["K"].jobs[3].started


def test_a_returning_client_hears_only_of_the_jobs_that_started(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", 1, 2), queueing("n1", 1), now=0)
    step(core, started("n1", ("K", 1)), E.ClientLeft("c1"), now=1)
    actions = step(core, opened("c2", "K"), now=2)
    assert told_started(actions) == [1]


def test_prefetched_jobs_count_in_fair_share(core: SchedulerCore) -> None:
    step(core, opened("a", "A", user="alice"), submitted("a", "A", *range(1, 11)), now=0)
    step(core, opened("b", "B", user="bob"), submitted("b", "B", *range(101, 111)), now=0)
    actions = step(core, queueing("n1", 2), now=1)
    sent = dispatched(actions)["n1"]
    assert sorted(c for c, _ in sent) == ["A", "A", "B", "B"]  # the window is shared like the CPUs
    assert core.users["alice"].busy == core.users["bob"].busy == 2


def test_max_cpus_holds_prefetched_jobs(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(prefetch=1, limits={"alice": Limits(max_cpus=2)})
    step(core, opened("a", "A", user="alice"), submitted("a", "A", *range(1, 11)), now=0)
    assert dispatched_jobs(step(core, queueing("n1", 4), now=1)) == [1, 2]  # never more than 2 at once on the node


def test_a_clusters_cpu_allowance_on_a_node_holds_prefetched_jobs(core: SchedulerCore) -> None:
    step(core, opened("a", "A"), submitted("a", "A", *range(1, 11)), queueing("n1", 4), now=0)
    step(core, E.NodeCpusSet("a", "A", "host-n1", 1), now=1)
    core.handle(arrived("n1", *(result("A", j) for j in range(1, 9))), now=2)
    assert core.clusters["A"].busy_on == {"n1": 1}  # at its allowance: nothing sent ahead of it


def test_a_clusters_allowance_of_all_a_nodes_cpus_keeps_the_window(core: SchedulerCore) -> None:
    step(core, opened("a", "A"), submitted("a", "A", *range(1, 11)), queueing("n1", 2), now=0)
    step(core, E.NodeCpusSet("a", "A", "host-n1", 2), now=1)  # a JobCluster's own node: restricted, all of it
    core.handle(arrived("n1", *(result("A", j) for j in range(1, 5))), now=2)
    assert core.clusters["A"].busy_on == {"n1": 4}  # its 2 CPUs and a window of 2 sent ahead, as unrestricted


def test_cutting_an_allowance_of_all_a_nodes_cpus_asks_back_what_was_sent_ahead(core: SchedulerCore) -> None:
    step(core, opened("a", "A"), opened("b", "B"), submitted("a", "A", *range(1, 11)), queueing("n1", 2), now=0)
    step(core, E.NodeCpusSet("a", "A", "host-n1", 2), started("n1", ("A", 1), ("A", 2)), now=1)
    assert core.clusters["A"].busy_on == {"n1": 4}  # its 2 CPUs and the window
    actions = step(core, E.NodeCpusSet("a", "A", "host-n1", 1), now=2)
    [recall] = of(actions, A.RecallJobs)
    assert recall.node == "n1" and recall.jobs == [JobRef("A", 3), JobRef("A", 4)]  # not the running ones
    step(core, E.JobsReturned("n1", [JobRef("A", 3), JobRef("A", 4)]), now=3)
    assert core.clusters["A"].busy_on == {"n1": 2}  # what runs; no more sent while it holds its allowance


def test_a_node_offering_fewer_cpus_asks_back_what_is_beyond_an_all_but_n_allowance(core: SchedulerCore) -> None:
    nodes = [{"host": "host-n1", "ip_addr": "host-n1", "port": 0, "cpus": -2}]  # all of its CPUs but 2
    step(core, opened("a", "A", options={"nodes": nodes}), submitted("a", "A", *range(1, 21)), queueing("n1", 8), now=0)
    step(core, started("n1", ("A", 1), ("A", 2)), now=1)
    assert core.clusters["A"].busy_on == {"n1": 6}
    [recall] = of(step(core, E.NodeReported("n1", {"cpus": 4}), now=2), A.RecallJobs)  # 2 allowed now
    assert recall.node == "n1" and recall.jobs == [JobRef("A", j) for j in (3, 4, 5, 6)]


def test_an_operator_cap_closes_the_window_and_lifting_it_opens_it_again(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", *range(1, 21)), queueing("n1", 2), now=0)
    step(core, E.NodeCpusCapped("r1", "host-n1", 1), now=1)
    assert core.nodes["n1"].window == 0  # the node would start the window on the CPU the cap withholds
    actions = step(core, arrived("n1", *(result("K", j) for j in (1, 2, 3, 4))), now=2)
    assert dispatched_jobs(actions) == [5]
    step(core, E.NodeCpusCapped("r2", "host-n1", -1), now=3)
    assert core.nodes["n1"].window == 2 and core.nodes["n1"].busy == 4


def test_a_drained_node_is_asked_back_what_it_has_not_started_and_what_it_returns_runs_elsewhere(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(prefetch=1)
    step(core, opened("c1", "K", reentrant=False), submitted("c1", "K", *range(1, 11)), queueing("n1", 2), now=0)
    step(core, started("n1", ("K", 1), ("K", 2)), now=1)
    actions = step(core, E.NodeDrainSet("r1", "host-n1", True), now=1)
    assert of(actions, A.RecallJobs) == [A.RecallJobs("n1", [JobRef("K", 3), JobRef("K", 4)])]
    # job 3 started before the recall reached the node: only 4 comes back, and 3 goes on there
    actions = step(core, started("n1", ("K", 3)), E.JobsReturned("n1", [JobRef("K", 4), JobRef("K", 3)]), now=2)
    assert core.clusters["K"].jobs[4].state is JobState.QUEUED and core.clusters["K"].jobs[3].state is JobState.RUNNING
    assert not dispatched_jobs(step(core, arrived("n1", result("K", 1), result("K", 2)), now=3))  # drained: none starts
    actions = step(core, queueing("n2", 1), now=4)
    assert dispatched_jobs(actions) == [4, 5]  # not reentrant, yet it runs: it never started anywhere
    assert core.clusters["K"].jobs[4].attempts == 2


def test_a_node_capped_below_what_it_holds_is_asked_back_what_it_has_not_started(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", *range(1, 11)), queueing("n1", 2), now=0)
    step(core, started("n1", ("K", 1), ("K", 2)), now=1)
    actions = step(core, E.NodeCpusCapped("r1", "host-n1", 1), now=1)
    assert of(actions, A.RecallJobs) == [A.RecallJobs("n1", [JobRef("K", 3), JobRef("K", 4)])]
    step(core, E.JobsReturned("n1", [JobRef("K", 3), JobRef("K", 4)]), now=2)
    assert core.nodes["n1"].busy == 2 and core.nodes["n1"].waiting == 0  # the two running go on (never stopped)
    status = core.status()
    assert status["nodes"]["host-n1"]["busy"] == 2 and status["users"]["alice"]["busy"] == 2 and status["queued"] == 8


def test_a_cancelled_prefetched_job_ends_once_with_the_nodes_answer(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", 1, 2, 3), queueing("n1", 1), now=0)
    step(core, started("n1", ("K", 1)), now=0)
    actions = step(core, E.JobsCancelled("c1", "K", [2]), now=1)
    assert of(actions, A.KillJobs) == [A.KillJobs("n1", [JobRef("K", 2)])]
    assert not delivered(actions)  # its end is the node's to say: it drops the job, and answers
    actions = step(core, arrived("n1", result("K", 2, JobStatus.CANCELLED)), now=2)
    assert [(r.job_id, r.status) for r in delivered(actions)[("c1", "K")]] == [(2, JobStatus.CANCELLED)]
    assert dispatched_jobs(actions) == [3]  # its place in the window goes to the next job
    assert not delivered(step(core, arrived("n1", result("K", 2, JobStatus.CANCELLED)), now=3))  # once


def test_a_lost_nodes_prefetched_jobs_are_treated_as_its_running_ones(make_core: Callable[..., SchedulerCore]) -> None:
    """The node may have started a job an instant before it died, its report lost with it: a job that
    is not reentrant is never run again on the chance that it did not start."""
    core = make_core(prefetch=1)
    step(core, opened("r", "R", reentrant=True), submitted("r", "R", 1, 2), now=0)
    step(core, opened("s", "S", reentrant=False, user="bob"), submitted("s", "S", 11, 12), now=0)
    step(core, queueing("n1", 2), now=1)
    step(core, started("n1", ("R", 1), ("S", 11)), now=1)
    assert core.nodes["n1"].busy == 4
    actions = step(core, E.NodeLeft("n1", "connection lost"), joined("n2", 4), now=2)
    assert sorted(dispatched_jobs(actions)) == [1, 2]  # reentrant: run again, started or not
    ended = {r.job_id: r.status for r in delivered(actions)[("s", "S")]}
    assert ended == {11: JobStatus.ABANDONED, 12: JobStatus.ABANDONED}


def test_a_lost_node_with_a_grace_orphans_its_prefetched_jobs_and_its_return_adopts_them(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(prefetch=1)
    step(core, opened("s", "S", reentrant=False), submitted("s", "S", 1, 2, 3), queueing("n1", 1, grace=30.0), now=0)
    step(core, started("n1", ("S", 1)), E.NodeLeft("n1", "connection lost"), now=1)
    assert {j: core.clusters["S"].jobs[j].state for j in (1, 2)} == {1: JobState.ORPHANED, 2: JobState.ORPHANED}
    back = queueing("n9", 1, name="host-n1", jobs=(JobRef("S", 1), JobRef("S", 2)), clusters=("S",))
    actions = step(core, back, now=5)
    assert core.clusters["S"].jobs[2].state is JobState.RUNNING and not of(actions, A.KillJobs)
    assert not dispatched_jobs(actions)  # job 2 waits on the node again, in its window: 3 waits here


class PrefetchCoreMachine(CoreMachine):
    """`CoreMachine`'s random clients, nodes, operators and failures, every node queueing a window of jobs
    and reporting some of their starts: the invariants hold after each step and every job ends once."""

    PREFETCH = 1

    def __init__(self) -> None:
        super().__init__()
        self.started: set[tuple[str, int]] = set()  # what nodes reported started
        self.recalled: dict[str, set[tuple[str, int]]] = {}  # node -> jobs it was asked to give back

    def apply(self, *events: E.Event, dt: float = 0.0) -> list[A.Action]:
        actions = super().apply(*events, dt=dt)
        for recall in of(actions, A.RecallJobs):
            self.recalled.setdefault(recall.node, set()).update((r.cluster_id, r.job_id) for r in recall.jobs)
        return actions

    @precondition(lambda self: any(self.node_jobs.values()))
    @rule(data=st.data())
    def node_reports_starts(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(n for n, jobs in self.node_jobs.items() if jobs)))
        jobs = self.node_jobs[node]
        some = jobs[: data.draw(st.integers(1, len(jobs)))]
        self.started.update(some)
        self.apply(started(node, *some))

    @precondition(lambda self: any(set(self.node_jobs.get(n, ())) & r for n, r in self.recalled.items()))
    @rule(data=st.data())
    def node_returns_what_it_did_not_start(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(n for n, r in self.recalled.items() if set(self.node_jobs.get(n, ())) & r)))
        back = [k for k in self.node_jobs[node] if k in self.recalled[node] and k not in self.started]
        self.recalled[node].clear()
        self.node_jobs[node] = [k for k in self.node_jobs[node] if k not in back]
        self.apply(E.JobsReturned(node, [JobRef(c, j) for c, j in back]))


PrefetchCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=75)
test_random_interleavings_with_prefetch_keep_invariants_and_one_result_per_job = PrefetchCoreMachine.TestCase


class JournaledPrefetchCoreMachine(PrefetchCoreMachine, JournaledCoreMachine):
    """The same with a journal and restarts: a job sent ahead is journaled as running, and after a
    restart its node reports it among those it holds (started or not) or it is written off as they are."""


JournaledPrefetchCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=50)
test_random_interleavings_with_prefetch_and_restarts_lose_nothing = JournaledPrefetchCoreMachine.TestCase


# ------------------------------------------------------------------ the adaptive window (core/window.py)


@pytest.fixture
def adaptive(make_core: Callable[..., SchedulerCore]) -> SchedulerCore:
    """A base window of 1 per CPU, up to 8 for jobs short enough that 8 make 5 ms of work."""
    return make_core(prefetch=1, prefetch_max=8, prefetch_target=0.005)


def ran(cluster_id: str, job_id: int, seconds: float, at: float = 10.0) -> JobResult:
    """A finished job's result whose node measured it running `seconds`."""
    return result(cluster_id, job_id, start=at, end=at + seconds)


def test_short_jobs_deepen_the_window_to_the_target_of_queued_work(adaptive: SchedulerCore) -> None:
    step(adaptive, opened("c1", "K"), submitted("c1", "K", *range(1, 101)), now=0)
    assert dispatched_jobs(step(adaptive, queueing("n1", 2), now=1)) == [1, 2, 3, 4]  # nothing measured: the base
    actions = step(adaptive, arrived("n1", ran("K", 1, 0.001), ran("K", 2, 0.001)), now=2)
    # 1 ms jobs: 5 per CPU make 5 ms of queued work; 2 CPUs running and 10 sent ahead
    assert adaptive.nodes["n1"].window == 10 and dispatched_jobs(actions) == list(range(5, 15))
    actions = step(adaptive, arrived("n1", *(ran("K", j, 0.00001) for j in (3, 4, 5, 6))), now=3)
    assert adaptive.nodes["n1"].window == 16 and adaptive.nodes["n1"].busy == 18  # never beyond the max per CPU


def test_long_jobs_keep_the_base_window(adaptive: SchedulerCore) -> None:
    step(adaptive, opened("c1", "K"), submitted("c1", "K", *range(1, 101)), queueing("n1", 2), now=0)
    actions = step(adaptive, arrived("n1", ran("K", 1, 2.0), ran("K", 2, 2.0)), now=3)
    assert dispatched_jobs(actions) == [5, 6] and adaptive.nodes["n1"].window == 2


def test_one_long_job_closes_a_deep_window_at_once_and_short_ones_open_it_slowly(adaptive: SchedulerCore) -> None:
    step(adaptive, opened("c1", "K"), submitted("c1", "K", *range(1, 101)), queueing("n1", 1), now=0)
    step(adaptive, arrived("n1", ran("K", 1, 0.0001)), now=1)
    assert adaptive.nodes["n1"].busy == 9  # 1 running, 8 ahead
    actions = step(adaptive, arrived("n1", ran("K", 2, 1.0)), now=2)
    assert adaptive.nodes["n1"].window == 1 and not dispatched_jobs(actions)  # 7 held: none more until 1 is left
    step(adaptive, arrived("n1", *(ran("K", j, 0.0001) for j in range(3, 9))), now=3)
    assert adaptive.nodes["n1"].window < 8  # six short ones after a long one: still not the deepest
    assert adaptive.clusters["K"].run_estimate > 0.0001


def test_a_clusters_own_window_bounds_what_a_deep_node_is_sent_of_it(adaptive: SchedulerCore) -> None:
    """A node made deep by one cluster's short jobs takes a cluster with long (or not yet measured) jobs
    only within that cluster's window, and, while the policy picks that cluster, waits for it: the short
    cluster does not take its turn, however fast its jobs come back."""
    step(adaptive, opened("a", "A", user="alice"), submitted("a", "A", *range(1, 101)), queueing("n1", 1), now=0)
    step(adaptive, arrived("n1", ran("A", 1, 0.0001)), now=1)
    assert adaptive.nodes["n1"].busy == 9
    step(adaptive, opened("b", "B", user="bob"), submitted("b", "B", *range(1, 11)), now=2)
    assert adaptive.users["bob"].busy == 0  # bob is fair share's pick, but 9 held is beyond his window of 1 + 1
    assert "n1" not in adaptive._free_nodes  # nor is the node tried again at every call until one of its jobs ends
    actions = step(adaptive, arrived("n1", *(ran("A", j, 0.0001) for j in range(2, 9))), now=3)
    assert not dispatched(actions)  # 2 held, still beyond bob's window: none of alice's takes his turn
    actions = step(adaptive, arrived("n1", ran("A", 9, 0.0001)), now=4)
    assert dispatched(actions)["n1"][0] == ("B", 1)


def test_a_node_that_does_not_queue_gets_no_adaptive_window(adaptive: SchedulerCore) -> None:
    step(adaptive, opened("c1", "K"), submitted("c1", "K", *range(1, 11)), joined("n1", 2), now=0)
    actions = step(adaptive, arrived("n1", ran("K", 1, 0.0001), ran("K", 2, 0.0001)), now=1)
    assert dispatched_jobs(actions) == [3, 4] and adaptive.nodes["n1"].window == 0


class AdaptivePrefetchCoreMachine(PrefetchCoreMachine):
    """`PrefetchCoreMachine` with the adaptive window: results of random run times (0 to 5 s, against a
    target of 2 s of queued work per CPU) widen and narrow each node's and cluster's window as they come.
    No base window: a cluster not measured yet fits only on a node with a free CPU. (Nodes parked while the
    policy's pick waits are exercised by tests/test_fairness_sim.py, hundreds of times a run.)"""

    PREFETCH = 0
    PREFETCH_MAX = 4
    PREFETCH_TARGET = 2.0


AdaptivePrefetchCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=75)
test_random_interleavings_with_an_adaptive_window_keep_invariants_and_one_result_per_job = AdaptivePrefetchCoreMachine.TestCase


class JournaledAdaptivePrefetchCoreMachine(AdaptivePrefetchCoreMachine, JournaledCoreMachine):
    """The same, over a base window of 1, with a journal and restarts (run times are not journaled: a
    restarted core measures anew)."""

    PREFETCH = 1


JournaledAdaptivePrefetchCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=50)
test_random_interleavings_with_an_adaptive_window_and_restarts_lose_nothing = JournaledAdaptivePrefetchCoreMachine.TestCase


def test_fair_share_counts_jobs_on_nodes_by_the_part_of_their_stay_they_run(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), queueing("n1", 1), submitted("c1", "K", 1, 2, 3, 4), now=0)  # 1 runs, 2 waits
    alice = core.users["alice"]
    assert alice.busy == 2 and alice.load == 2  # nothing measured yet: every job held counts
    step(core, E.StartsReported("n1", [JobRef("K", 1)]), now=0)  # it waited 0 s
    # job 1 ran 1 s; job 2, sent at 0, starts at 3; job 3 is sent in its place
    step(core, arrived("n1", result("K", 1, start=0.0, end=1.0)), E.StartsReported("n1", [JobRef("K", 2)]), now=3)
    assert (alice.wait_mean, alice.run_mean) == (1.5, 1.0)
    assert alice.busy == 2 and alice.load == pytest.approx(2 * 1.0 / (1.0 + 1.5))  # CPUs it runs on, on average
    assert core.ready.ready_users.key("alice")[0] == pytest.approx(alice.load)  # what fair share ranks by
    assert core.status("alice")["users"]["alice"]["load"] == round(alice.load, 2)  # what a client's status shows
    step(core, arrived("n1", result("K", 2, start=5.0, end=4.0)), now=4)  # a clock that went back: no figure
    assert alice.run_mean == 1.0 and alice.runs == 1


def test_without_jobs_sent_ahead_fair_share_counts_every_busy_cpu(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(prefetch=1)
    step(core, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2, 3), now=0)  # a node that does not queue
    step(core, arrived("n1", result("K", 1, start=0.0, end=1.0)), now=1)
    alice = core.users["alice"]
    assert alice.wait_mean == 0 and alice.run_mean == 1.0
    assert alice.busy == 2 and alice.load == 2
