"""The scheduling core, built directly: events in, actions out, invariants after every step.

No shell, no sockets, no clock: `now` is passed to every `handle` call.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dispy_sched.core import CoreConfig, JobState, SchedulerCore
from dispy_sched.core.keyed_heap import KeyedHeap
from dispy_sched.core.state import Limits, job_cost, result_cost
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.policies import load_policy
from dispy_wire.errors import ErrorCode
from dispy_wire.cluster_options import Runtime
from dispy_wire.messages import JobFile, JobRef, JobResult, JobSpec
from dispy_wire.status import JobStatus

ActionT = TypeVar("ActionT", bound=A.Action)

# --------------------------------------------------------------------------
# Helpers


def step(core: SchedulerCore, *events: E.Event, now: float) -> list[A.Action]:
    """One `handle` call, then the invariants."""
    actions = core.handle(*events, now=now)
    check_invariants(core)
    return actions


def opened(
    client: str, cluster_id: str, user: str = "alice", *, reentrant: bool = True, options: dict[str, Any] | None = None
) -> E.ClusterOpened:
    options = {"keep_files": True} if options is None else options
    return E.ClusterOpened(client, user, cluster_id, f"name-{cluster_id}", b"computation", reentrant, options)


def submitted(client: str, cluster_id: str, *job_ids: int, priority: int = 0) -> E.JobsSubmitted:
    return E.JobsSubmitted(client, cluster_id, [JobSpec(j, priority, b"args-%d" % j, {}) for j in job_ids])


def joined(node: str, cpus: int, *, heartbeat: float = 5.0) -> E.NodeJoined:
    return E.NodeJoined(node, f"host-{node}", f"10.0.0.{len(node)}", cpus, heartbeat)


def result(
    cluster_id: str, job_id: int, status: JobStatus = JobStatus.FINISHED, start: float = 0.0, end: float = 1.0
) -> JobResult:
    value = b"value-%d" % job_id if status is JobStatus.FINISHED else None
    return JobResult(cluster_id, job_id, int(status), value, b"", b"", "", "", start, end)


def arrived(node: str, *results: JobResult) -> E.ResultsArrived:
    return E.ResultsArrived(node, list(results))


def of(actions: list[A.Action], kind: type[ActionT]) -> list[ActionT]:
    return [a for a in actions if isinstance(a, kind)]


def dispatched(actions: list[A.Action]) -> dict[str, list[tuple[str, int]]]:
    """node -> [(cluster, job)] in the order sent."""
    return {d.node: [(r.cluster_id, r.job_id) for r in d.jobs] for d in of(actions, A.Dispatch)}


def dispatched_jobs(actions: list[A.Action]) -> list[int]:
    return [r.job_id for d in of(actions, A.Dispatch) for r in d.jobs]


def delivered(actions: list[A.Action]) -> dict[tuple[str, str], list[JobResult]]:
    out: dict[tuple[str, str], list[JobResult]] = defaultdict(list)
    for d in of(actions, A.DeliverResults):
        out[(d.client, d.cluster_id)] += d.results
    return dict(out)


def node_of(core: SchedulerCore, cluster_id: str, job_id: int) -> str:
    node = core.clusters[cluster_id].jobs[job_id].node
    assert node is not None
    return node


@pytest.fixture
def core(make_core: Callable[..., SchedulerCore]) -> SchedulerCore:
    return make_core()


@pytest.fixture
def fifo(make_core: Callable[..., SchedulerCore]) -> SchedulerCore:
    return make_core("fifo")


# --------------------------------------------------------------------------
# Dispatching


def test_cluster_open_is_confirmed(core: SchedulerCore) -> None:
    actions = step(core, opened("c1", "K"), now=0)
    assert actions == [A.ConfirmOpened("c1", "K", False)]


def test_jobs_wait_until_a_node_with_free_cpus_joins(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), now=0)
    actions = step(core, submitted("c1", "K", 1, 2, 3), now=1)
    assert of(actions, A.ConfirmAccepted) == [A.ConfirmAccepted("c1", "K", [1, 2, 3])]
    assert not of(actions, A.Dispatch)
    assert not of(step(core, joined("n0", 0), now=2), A.Dispatch)  # a node offering no CPU gets nothing
    actions = step(core, joined("n1", 2), now=3)
    assert dispatched(actions) == {"n1": [("K", 1), ("K", 2)]}
    assert core.nodes["n1"].busy == 2 and core.clusters["K"].queued == 1


def test_jobs_go_only_to_nodes_with_free_cpus(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n2", 2), now=0)
    actions = step(core, submitted("c1", "K", *range(1, 11)), now=1)
    sent = dispatched(actions)
    assert {n: len(j) for n, j in sent.items()} == {"n1": 1, "n2": 2}
    # a finished job frees exactly one CPU on exactly that node
    job_on_n1 = sent["n1"][0][1]
    actions = step(core, arrived("n1", result("K", job_on_n1)), now=2)
    assert dispatched(actions) == {"n1": [("K", 4)]}


def test_one_dispatch_per_node_per_handle_call(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), opened("c1", "L"), now=0)
    actions = step(
        core,
        submitted("c1", "K", 1, 2),
        submitted("c1", "L", 10),
        submitted("c1", "K", 3),
        joined("n1", 8),
        joined("n2", 8),
        now=1,
    )
    nodes = [d.node for d in of(actions, A.Dispatch)]
    assert sorted(nodes) == ["n1", "n2"]  # one Dispatch each, however many jobs
    assert sorted(dispatched_jobs(actions)) == [1, 2, 3, 10]
    # acceptances and starts are batched per client and cluster too
    assert sorted((a.cluster_id, a.job_ids) for a in of(actions, A.ConfirmAccepted)) == [("K", [1, 2, 3]), ("L", [10])]
    assert len(of(actions, A.NotifyStarted)) == 2


def test_load_cluster_comes_before_the_first_dispatch_and_only_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), now=0)
    actions = step(core, submitted("c1", "K", 1, 2), now=1)
    loads = of(actions, A.LoadCluster)
    assert loads == [A.LoadCluster("n1", "K", "alice", b"computation", {"keep_files": True})]
    assert actions.index(loads[0]) < actions.index(of(actions, A.Dispatch)[0])
    actions = step(core, arrived("n1", result("K", 1)), now=2)
    assert dispatched(actions) == {"n1": [("K", 2)]}
    assert not of(actions, A.LoadCluster)


def test_each_node_loads_a_cluster_before_its_own_first_job(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n2", 1), now=0)
    actions = step(core, submitted("c1", "K", 1, 2), now=1)
    for d in of(actions, A.Dispatch):
        (load,) = [a for a in of(actions, A.LoadCluster) if a.node == d.node]
        assert actions.index(load) < actions.index(d)


def test_least_loaded_node_gets_the_next_job(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("small", 4), now=0)
    step(core, submitted("c1", "K", 1, 2, 3), now=1)  # small: 3 of 4 busy (0.75)
    step(core, joined("big", 8), now=2)
    actions = step(core, submitted("c1", "K", 4, 5, 6, 7), now=3)
    assert dispatched(actions) == {"big": [("K", 4), ("K", 5), ("K", 6), ("K", 7)]}  # big: 4 of 8 (0.5)
    actions = step(core, submitted("c1", "K", 8), now=4)
    assert dispatched(actions) == {"big": [("K", 8)]}  # 0.5 < 0.75
    actions = step(core, submitted("c1", "K", 9), now=5)
    assert dispatched(actions) == {"big": [("K", 9)]}  # 0.625 < 0.75
    assert (core.nodes["big"].busy, core.nodes["small"].busy) == (6, 3)
    step(core, arrived("small", result("K", 1), result("K", 2)), now=6)  # small 0.25, big 0.75
    actions = step(core, submitted("c1", "K", 10), now=7)
    assert dispatched(actions) == {"small": [("K", 10)]}


def test_fresh_jobs_spread_over_idle_nodes(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), *(joined(f"n{i}", 4) for i in range(4)), now=0)
    actions = step(core, submitted("c1", "K", *range(8)), now=1)
    assert {n: len(j) for n, j in dispatched(actions).items()} == {f"n{i}": 2 for i in range(4)}


def test_node_report_of_more_cpus_is_used_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2, 3), now=0)
    actions = step(core, E.NodeReported("n1", {"cpus": 3, "cpu_percent": 5.0}), now=1)
    assert dispatched(actions) == {"n1": [("K", 2), ("K", 3)]}
    assert core.nodes["n1"].avail["cpu_percent"] == 5.0


def test_node_reporting_fewer_cpus_gets_no_more_jobs_until_below_them(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 3), submitted("c1", "K", 1, 2, 3, 4, 5), now=0)
    assert not of(step(core, E.NodeReported("n1", {"cpus": 1}), now=1), A.Dispatch)
    assert not of(step(core, arrived("n1", result("K", 1)), now=2), A.Dispatch)  # 2 busy of 1
    assert not of(step(core, arrived("n1", result("K", 2)), now=3), A.Dispatch)  # 1 busy of 1
    assert dispatched_jobs(step(core, arrived("n1", result("K", 3)), now=4)) == [4]


def test_node_report_with_an_ill_typed_cpu_count_keeps_the_old_one(core: SchedulerCore) -> None:
    step(core, joined("n1", 2), now=0)
    for bad in (True, -1, "4", 2.5, None):
        step(core, E.NodeReported("n1", {"cpus": bad}), now=1)
        assert core.nodes["n1"].cpus == 2


# --------------------------------------------------------------------------
# Results


def test_results_go_to_the_owning_client_only(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", "alice"), opened("c2", "L", "bob"), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", 1), submitted("c2", "L", 1), now=1)
    actions = step(core, arrived("n1", result("K", 1), result("L", 1, JobStatus.TERMINATED)), now=2)
    assert delivered(actions) == {
        ("c1", "K"): [result("K", 1)],
        ("c2", "L"): [result("L", 1, JobStatus.TERMINATED)],
    }
    assert core.clusters["K"].jobs[1].state is JobState.DONE


def test_result_from_a_node_not_running_the_job_is_ignored(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n2", 1), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    running_on = node_of(core, "K", 1)
    other = "n2" if running_on == "n1" else "n1"
    actions = step(core, arrived(other, result("K", 1)), now=2)
    assert not of(actions, A.DeliverResults)
    assert core.clusters["K"].jobs[1].state is JobState.RUNNING


def test_repeated_result_is_delivered_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    first = step(core, arrived("n1", result("K", 1, end=1.0)), now=1)
    assert delivered(first) == {("c1", "K"): [result("K", 1, end=1.0)]}
    again = step(core, arrived("n1", result("K", 1, end=9.0)), arrived("n1", result("K", 1)), now=2)
    assert not of(again, A.DeliverResults)
    assert core.clusters["K"].jobs[1].result == result("K", 1, end=1.0)


def test_results_for_unknown_jobs_clusters_or_nodes_are_ignored(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    actions = step(
        core,
        arrived("n1", result("K", 99), result("nope", 1)),
        arrived("ghost", result("K", 1)),
        now=1,
    )
    assert not of(actions, A.DeliverResults)
    assert core.clusters["K"].jobs[1].state is JobState.RUNNING


def test_duplicate_submit_of_a_job_id_is_idempotent(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 4), now=0)
    first = step(core, submitted("c1", "K", 1, 2), now=1)
    again = step(core, submitted("c1", "K", 2, 1), now=2)
    assert of(again, A.ConfirmAccepted) == [A.ConfirmAccepted("c1", "K", [2, 1])]  # re-acknowledged
    assert not of(again, A.Dispatch)
    assert sorted(dispatched_jobs(first)) == [1, 2]
    step(core, arrived("n1", result("K", 1)), now=3)
    after_done = step(core, submitted("c1", "K", 1), now=4)  # resent after its result: still no rerun
    assert not of(after_done, A.Dispatch) and not of(after_done, A.DeliverResults)
    assert len(core.clusters["K"].jobs) == 2


def test_duplicate_ids_within_one_submit_make_one_job(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 4), now=0)
    actions = step(core, submitted("c1", "K", 5, 5, 5), now=1)
    assert dispatched_jobs(actions) == [5]
    assert core.users["alice"].busy == 1


# --------------------------------------------------------------------------
# Cancelling


def test_cancel_of_a_queued_job_gives_a_cancelled_result_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), submitted("c1", "K", 1, 2), now=0)
    actions = step(core, E.JobsCancelled("c1", "K", [1]), now=5)
    (res,) = delivered(actions)[("c1", "K")]
    assert (res.job_id, res.status, res.result) == (1, JobStatus.CANCELLED, None)
    assert res.end_time == 5
    assert core.users["alice"].queued == 1
    actions = step(core, joined("n1", 4), now=6)
    assert dispatched_jobs(actions) == [2]  # the cancelled job never runs


def test_cancel_of_a_running_job_kills_it_and_waits_for_the_node(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    actions = step(core, E.JobsCancelled("c1", "K", [1]), now=1)
    assert of(actions, A.KillJobs) == [A.KillJobs("n1", [JobRef("K", 1)])]
    assert not of(actions, A.DeliverResults)
    assert core.clusters["K"].jobs[1].state is JobState.RUNNING
    killed = result("K", 1, JobStatus.TERMINATED)
    actions = step(core, arrived("n1", killed), now=2)
    assert delivered(actions) == {("c1", "K"): [killed]}
    assert dispatched_jobs(actions) == [2]


def test_cancel_of_unknown_or_finished_jobs_does_nothing(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, arrived("n1", result("K", 1)), now=1)
    actions = step(core, E.JobsCancelled("c1", "K", [1, 42]), now=2)
    assert actions == []


def test_cancelled_running_job_is_not_rerun_when_its_node_is_lost(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=True), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, E.JobsCancelled("c1", "K", [1]), now=1)
    actions = step(core, E.NodeLeft("n1", "connection lost"), joined("n2", 1), now=2)
    assert not of(actions, A.Dispatch)
    (res,) = delivered(actions)[("c1", "K")]
    assert res.status == JobStatus.CANCELLED


def test_terminated_cluster_jobs_are_not_rerun_after_set_up_failure(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n2", 0), submitted("c1", "K", 1), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=True), now=1)
    step(core, E.ClusterFailedOnNode("n1", "K", "zygote died"), now=2)
    actions = step(core, E.NodeReported("n2", {"cpus": 1}), now=3)
    assert not of(actions, A.Dispatch)


# --------------------------------------------------------------------------
# Node loss and set-up failure


def test_lost_node_requeues_a_reentrant_job_without_losing_its_place(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=True), joined("n1", 1), submitted("c1", "K", 1, 2, 3), now=0)
    assert node_of(core, "K", 1) == "n1"
    actions = step(core, E.NodeLeft("n1", "connection reset"), now=1)
    assert not of(actions, A.DeliverResults)
    assert core.clusters["K"].jobs[1].state is JobState.QUEUED
    actions = step(core, joined("n2", 1), now=2)
    assert dispatched(actions) == {"n2": [("K", 1)]}  # ahead of 2 and 3, submitted later
    assert of(actions, A.LoadCluster)[0].node == "n2"
    assert core.clusters["K"].jobs[1].attempts == 2
    actions = step(core, arrived("n2", result("K", 1)), now=3)
    assert [r.job_id for r in delivered(actions)[("c1", "K")]] == [1]


def test_lost_node_job_is_dispatched_elsewhere_in_the_same_step(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, joined("n2", 1), now=1)
    actions = step(core, E.NodeLeft("n1", "gone"), now=2)
    assert dispatched(actions) == {"n2": [("K", 1)]}


def test_lost_node_abandons_a_non_reentrant_job_naming_the_node(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=False), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    actions = step(core, E.NodeLeft("n1", "connection reset"), now=7)
    (res,) = delivered(actions)[("c1", "K")]
    assert res.status == JobStatus.ABANDONED and res.job_id == 1
    assert "host-n1" in res.exception and "connection reset" in res.exception
    assert res.end_time == 7
    actions = step(core, joined("n2", 1), now=8)
    assert dispatched_jobs(actions) == [2]  # only the one never started


def test_cluster_failed_on_node_requeues_its_jobs_and_avoids_that_node(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), opened("c1", "L"), joined("n1", 2), joined("n2", 0), now=0)
    step(core, submitted("c1", "K", 1, 2), now=1)
    actions = step(core, E.ClusterFailedOnNode("n1", "K", "ImportError: numpy"), now=2)
    (told,) = of(actions, A.NotifyUnusable)
    assert (told.client, told.cluster_id, told.node) == ("c1", "K", "host-n1")
    assert told.reason == "ImportError: numpy"
    assert not of(actions, A.Dispatch)  # n1 is free, but not for K
    assert core.clusters["K"].queued == 2  # n2 may still run them
    actions = step(core, submitted("c1", "L", 7), now=3)
    assert dispatched(actions) == {"n1": [("L", 7)]}  # other clusters still use n1
    actions = step(core, E.NodeReported("n2", {"cpus": 2}), now=4)
    assert dispatched(actions) == {"n2": [("K", 1), ("K", 2)]}
    step(core, arrived("n2", result("K", 1)), now=5)
    actions = step(core, submitted("c1", "K", 3), now=6)
    assert dispatched(actions) == {"n2": [("K", 3)]}  # never back to n1
    assert "n1" not in core.clusters["K"].loaded_on


def test_a_cluster_no_node_can_set_up_ends_its_queued_jobs_with_the_reasons(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", 1, 2), now=1)
    actions = step(core, E.ClusterFailedOnNode("n1", "K", "TypeError: setup() missing 1 argument"), now=2)
    assert len(of(actions, A.NotifyUnusable)) == 1
    ended = delivered(actions)[("c1", "K")]
    assert sorted(r.job_id for r in ended) == [1, 2]
    assert all(r.status == JobStatus.TERMINATED for r in ended)
    assert "cannot run on any node" in ended[0].exception and "missing 1 argument" in ended[0].exception
    actions = step(core, submitted("c1", "K", 3), now=3)  # one submitted now ends at once, not never
    assert [r.job_id for r in delivered(actions)[("c1", "K")]] == [3]
    actions = step(core, joined("n2", 1), submitted("c1", "K", 4), now=4)  # a node that can: it runs there
    assert dispatched(actions) == {"n2": [("K", 4)]}


def test_nodes_of_another_python_are_skipped_and_said_so(core: SchedulerCore) -> None:
    from dispy_wire.cluster_options import ClusterOptions, Runtime

    mine = Runtime("3.11", "3.1.3")
    options = ClusterOptions(runtime=mine).to_wire()
    old = E.NodeJoined("n1", "old", "10.0.0.1", 4, 5.0, runtime=Runtime("3.9", "3.1.3"))
    actions = step(core, old, E.ClusterOpened("c1", "alice", "K", "k", b"c", False, options), now=0)
    (told,) = of(actions, A.NotifyUnusable)
    assert told.node == "old" and "Python 3.9" in told.reason and "3.11" in told.reason
    actions = step(core, submitted("c1", "K", 1), now=1)
    (r,) = delivered(actions)[("c1", "K")]
    assert r.status == JobStatus.TERMINATED and "Python 3.9" in r.exception
    same = E.NodeJoined("n2", "same", "10.0.0.2", 4, 5.0, runtime=Runtime("3.11", "3.1.9"))  # a patch release apart
    other_cp = E.NodeJoined("n3", "cp2", "10.0.0.3", 4, 5.0, runtime=Runtime("3.11", "2.2.1"))
    actions = step(core, same, other_cp, submitted("c1", "K", 2), now=2)
    assert dispatched(actions) == {"n2": [("K", 2)]}
    assert [t.node for t in of(actions, A.NotifyUnusable)] == ["cp2"]


def test_tick_drops_a_silent_node_and_keeps_one_that_reported(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(heartbeat_misses=3.0)
    step(core, opened("c1", "K", reentrant=True), joined("quiet", 1, heartbeat=5), joined("chatty", 1, heartbeat=5), now=0)
    step(core, submitted("c1", "K", 1, 2), now=0)
    assert step(core, E.Tick(), now=15.0) == []  # exactly 3 heartbeats: not yet
    step(core, E.NodeReported("chatty", {}), now=15.0)
    actions = step(core, E.Tick(), now=15.5)
    (drop,) = of(actions, A.DropNode)
    assert drop.node == "quiet" and "15.5" in drop.reason
    assert set(core.nodes) == {"chatty"}
    assert step(core, E.Tick(), now=29.0) == []  # chatty reported at 15: 14 s ago


def test_results_count_as_a_sign_of_life(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1, heartbeat=1), submitted("c1", "K", 1, 2), now=0)
    step(core, arrived("n1", result("K", 1)), now=2.5)
    assert not of(step(core, E.Tick(), now=5.0), A.DropNode)
    assert of(step(core, E.Tick(), now=5.6), A.DropNode)


# --------------------------------------------------------------------------
# Clients leaving and coming back


def test_client_leaving_keeps_its_jobs_running_and_holds_results(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    assert step(core, E.ClientLeft("c1"), now=1) == []
    actions = step(core, arrived("n1", result("K", 1)), now=2)
    assert dispatched(actions) == {"n1": [("K", 2)]}  # work goes on
    assert not of(actions, A.DeliverResults) and not of(actions, A.NotifyStarted)
    assert core.clusters["K"].jobs[1].result == result("K", 1)  # held


def test_reopening_from_a_new_session_resends_held_results_and_starts(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2, 3), now=0)
    step(core, E.ClientLeft("c1"), now=1)
    step(core, arrived("n1", result("K", 1)), now=2)  # 2 starts on n1 at t=2
    actions = step(core, opened("c2", "K"), now=3)
    assert actions[0] == A.ConfirmOpened("c2", "K", True, [1, 2, 3])  # every job it knows, for the client to check
    assert delivered(actions) == {("c2", "K"): [result("K", 1)]}
    (started,) = of(actions, A.NotifyStarted)
    assert started.client == "c2" and [(s.job_id, s.node, s.time) for s in started.starts] == [(2, "host-n1", 2.0)]
    # the new session owns the cluster; the old one does not
    assert of(step(core, submitted("c1", "K", 9), now=4), A.Reject)
    actions = step(core, arrived("n1", result("K", 2)), now=5)
    assert delivered(actions) == {("c2", "K"): [result("K", 2)]}


def test_reopen_resends_unacknowledged_results_even_if_delivered_before(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, arrived("n1", result("K", 1)), now=1)  # delivered to c1, never acked
    step(core, E.ClientLeft("c1"), now=2)
    assert delivered(step(core, opened("c2", "K"), now=3)) == {("c2", "K"): [result("K", 1)]}


def test_acked_results_are_forgotten(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2), now=0)
    step(core, arrived("n1", result("K", 1), result("K", 2)), now=1)
    assert step(core, E.ResultsAcked("c1", "K", [1, 77]), now=2) == []
    assert set(core.clusters["K"].jobs) == {2}
    step(core, E.ClientLeft("c1"), now=3)
    actions = step(core, opened("c2", "K"), now=4)
    assert delivered(actions) == {("c2", "K"): [result("K", 2)]}


def test_acking_a_job_that_is_not_done_keeps_it(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    step(core, E.ResultsAcked("c1", "K", [1, 2]), now=1)
    assert set(core.clusters["K"].jobs) == {1, 2}


# --------------------------------------------------------------------------
# Closing


def test_close_cancels_queued_waits_for_running_then_unloads_and_confirms(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n2", 1), submitted("c1", "K", 1, 2, 3), now=0)
    actions = step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)
    assert not of(actions, A.KillJobs) and not of(actions, A.ConfirmClosed) and not of(actions, A.UnloadCluster)
    (res,) = delivered(actions)[("c1", "K")]
    assert (res.job_id, res.status) == (3, JobStatus.CANCELLED)
    actions = step(core, arrived("n1", result("K", 1)), now=2)
    assert not of(actions, A.ConfirmClosed) and not of(actions, A.Dispatch)
    actions = step(core, arrived("n2", result("K", 2)), now=3)
    assert [r.job_id for r in delivered(actions)[("c1", "K")]] == [2]
    assert sorted(a.node for a in of(actions, A.UnloadCluster)) == ["n1", "n2"]
    assert actions[-1] == A.ConfirmClosed("c1", "K")
    assert "K" not in core.clusters and "K" not in core.users["alice"].clusters


def test_close_with_terminate_kills_running_jobs(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2, 3), now=0)
    actions = step(core, E.ClusterClosed("c1", "K", terminate=True), now=1)
    (kill,) = of(actions, A.KillJobs)
    assert kill.node == "n1" and sorted(r.job_id for r in kill.jobs) == [1, 2]
    assert [r.job_id for r in delivered(actions)[("c1", "K")]] == [3]
    assert not of(actions, A.ConfirmClosed)
    actions = step(core, arrived("n1", result("K", 1, JobStatus.TERMINATED), result("K", 2, JobStatus.TERMINATED)), now=2)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.TERMINATED] * 2
    assert of(actions, A.UnloadCluster) == [A.UnloadCluster("n1", "K")]
    assert actions[-1] == A.ConfirmClosed("c1", "K")


def test_close_of_an_idle_cluster_is_confirmed_at_once(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, arrived("n1", result("K", 1)), now=1)
    actions = step(core, E.ClusterClosed("c1", "K", terminate=False), now=2)
    assert actions == [A.UnloadCluster("n1", "K"), A.ConfirmClosed("c1", "K")]
    assert "n1" in core.nodes and "K" not in core.nodes["n1"].loaded


def test_unload_goes_only_to_nodes_that_loaded_the_cluster(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), opened("c1", "L"), joined("n1", 1), joined("n2", 1), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    node = node_of(core, "K", 1)
    step(core, arrived(node, result("K", 1)), now=2)
    actions = step(core, E.ClusterClosed("c1", "K", terminate=False), now=3)
    assert of(actions, A.UnloadCluster) == [A.UnloadCluster(node, "K")]


def test_a_closed_cluster_id_opens_afresh_and_is_loaded_again(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, arrived("n1", result("K", 1)), E.ClusterClosed("c1", "K", terminate=False), now=1)
    actions = step(core, opened("c1", "K"), submitted("c1", "K", 1), now=2)
    assert A.ConfirmOpened("c1", "K", False) in actions
    assert of(actions, A.LoadCluster) and dispatched(actions) == {"n1": [("K", 1)]}


def test_submit_to_a_closing_cluster_is_rejected(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)
    actions = step(core, submitted("c1", "K", 2), now=2)
    assert [(r.code, r.ref) for r in of(actions, A.Reject)] == [(ErrorCode.BAD_REQUEST, "K")]
    assert not of(actions, A.ConfirmAccepted)


def test_closing_cluster_keeps_results_for_a_client_that_reconnects(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, E.ClusterClosed("c1", "K", terminate=False), now=1)  # waits for job 1
    step(core, E.ClientLeft("c1"), now=2)  # the connection drops before ConfirmClosed
    step(core, arrived("n1", result("K", 1)), now=3)
    actions = step(core, opened("c2", "K"), now=4)
    assert delivered(actions) == {("c2", "K"): [result("K", 1)]}


# --------------------------------------------------------------------------
# Ownership


def test_submit_to_another_clients_cluster_is_rejected(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", "alice"), opened("c2", "L", "bob"), joined("n1", 1), now=0)
    for client in ("c2", "c3"):
        actions = step(core, submitted(client, "K", 1), now=1)
        assert [(r.client, r.code, r.ref) for r in of(actions, A.Reject)] == [(client, ErrorCode.UNKNOWN_CLUSTER, "K")]
        assert not of(actions, A.Dispatch) and not of(actions, A.ConfirmAccepted)
    for ev in (E.JobsCancelled("c2", "K", [1]), E.ResultsAcked("c2", "K", [1]), E.ClusterClosed("c2", "K", True)):
        assert [r.code for r in of(step(core, ev, now=2), A.Reject)] == [ErrorCode.UNKNOWN_CLUSTER]
    assert not core.clusters["K"].closing


def test_another_user_cannot_open_an_existing_cluster_id(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", "alice"), now=0)
    actions = step(core, opened("c2", "K", "mallory"), now=1)
    assert [(r.client, r.code, r.ref) for r in of(actions, A.Reject)] == [("c2", ErrorCode.UNKNOWN_CLUSTER, "K")]
    assert not of(actions, A.ConfirmOpened)
    assert core.clusters["K"].client == "c1" and core.clusters["K"].user == "alice"


def test_detached_cluster_accepts_nothing_until_reopened(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), now=0)
    step(core, E.ClientLeft("c1"), now=1)
    assert of(step(core, submitted("c1", "K", 1), now=2), A.Reject)


# --------------------------------------------------------------------------
# Order


def test_fifo_is_strict_submit_order_across_users(fifo: SchedulerCore) -> None:
    step(fifo, opened("ca", "A", "alice"), opened("cb", "B", "bob"), opened("cc", "C", "carol"), now=0)
    step(fifo, submitted("ca", "A", 1, 2, 3), now=1)
    step(fifo, submitted("cb", "B", 10, 11), now=2)
    step(fifo, submitted("ca", "A", 4), submitted("cc", "C", 20), submitted("cb", "B", 12), now=3)
    order = run_one_cpu(fifo)
    assert order == [("A", 1), ("A", 2), ("A", 3), ("B", 10), ("B", 11), ("A", 4), ("C", 20), ("B", 12)]


def test_fair_interleaves_users_where_fifo_would_not(core: SchedulerCore) -> None:
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), now=0)
    step(core, submitted("ca", "A", 1, 2, 3), now=1)
    step(core, submitted("cb", "B", 10, 11), now=2)
    users = [cid for cid, _ in run_one_cpu(core)]
    assert users[:4] in (["A", "B", "A", "B"], ["B", "A", "B", "A"])


def run_one_cpu(core: SchedulerCore) -> list[tuple[str, int]]:
    """Joins a 1-CPU node and runs every queued job to the end; returns the dispatch order."""
    order: list[tuple[str, int]] = []
    now = 100.0
    actions = step(core, joined("solo", 1), now=now)
    while True:
        sent = dispatched(actions).get("solo", [])
        if not sent:
            return order
        order += sent
        now += 1
        actions = step(core, arrived("solo", *(result(c, j, start=now - 1, end=now) for c, j in sent)), now=now)


def test_priority_orders_jobs_within_a_cluster(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), now=0)
    step(
        core,
        submitted("c1", "K", 1, priority=0),
        submitted("c1", "K", 2, priority=5),
        submitted("c1", "K", 3, priority=1),
        submitted("c1", "K", 4, priority=5),
        submitted("c1", "K", 5, priority=-2),
        now=1,
    )
    assert [j for _, j in run_one_cpu(core)] == [2, 4, 3, 1, 5]


def test_fifo_priority_never_jumps_ahead_of_other_users_older_jobs(fifo: SchedulerCore) -> None:
    step(fifo, opened("ca", "A", "alice"), opened("cb", "B", "bob"), now=0)
    step(fifo, submitted("ca", "A", 1), submitted("cb", "B", 10), submitted("ca", "A", 2, priority=9), now=1)
    # A's urgent job 2 goes before A's own job 1, but not before bob's older job 10
    assert run_one_cpu(fifo) == [("B", 10), ("A", 2), ("A", 1)]


def test_a_users_clusters_take_turns(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), opened("c1", "L"), now=0)
    step(core, submitted("c1", "K", 1, 2, 3, 4), now=1)
    step(core, submitted("c1", "L", 1, 2, 3, 4), now=2)
    actions = step(core, joined("n1", 4), now=3)
    assert sorted(c for c, _ in dispatched(actions)["n1"]) == ["K", "K", "L", "L"]


# --------------------------------------------------------------------------
# Limits: enforced by the core, so by every policy

POLICIES = ["fair", "fifo", "fair_cluster", "fcfs_cluster"]


@pytest.mark.parametrize("policy", POLICIES)
def test_max_cpus_caps_a_user_and_its_idle_cpus_go_to_others(make_core: Callable[..., SchedulerCore], policy: str) -> None:
    core = make_core(policy, limits={"alice": Limits(max_cpus=2)})
    step(core, opened("ca", "A", "alice"), opened("ca", "A2", "alice"), joined("n1", 8), now=0)
    actions = step(core, submitted("ca", "A", *range(10)), submitted("ca", "A2", *range(10)), now=1)
    assert len(dispatched_jobs(actions)) == 2  # alone, and still only 2: the cap is hard
    step(core, opened("cb", "B", "bob"), now=2)
    actions = step(core, submitted("cb", "B", *range(10)), now=3)
    assert len(dispatched_jobs(actions)) == 6  # the 6 CPUs alice may not use
    done = sorted(k for k in core.nodes["n1"].jobs if k[0] != "B")[0]
    actions = step(core, arrived("n1", result(*done)), now=4)
    assert [c for c, _ in dispatched(actions)["n1"]] in (["A"], ["A2"])  # back to 2, no more
    assert core.users["alice"].busy == 2


def test_submit_beyond_max_queued_jobs_refuses_the_excess_naming_the_limit(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(limits={"alice": Limits(max_queued_jobs=3)})
    step(core, opened("ca", "A", "alice"), now=0)
    step(core, submitted("ca", "A", 1, 2), now=1)
    actions = step(core, submitted("ca", "A", 3, 4, 5), now=2)
    (reject,) = of(actions, A.Reject)
    assert (reject.client, reject.code, reject.ref) == ("ca", ErrorCode.LIMIT, "A")
    assert "max_queued_jobs = 3" in reject.message and "alice" in reject.message
    assert "2 of the 3 jobs" in reject.message
    # accepted like any job, and ended at once: a client waiting on them is not left hanging
    (accepted,) = of(actions, A.ConfirmAccepted)
    assert accepted.job_ids == [3, 4, 5]
    refused = delivered(actions)[("ca", "A")]
    assert [(r.job_id, r.status) for r in refused] == [(4, JobStatus.CANCELLED), (5, JobStatus.CANCELLED)]
    assert all("max_queued_jobs = 3" in r.exception for r in refused)
    assert core.users["alice"].queued == 3
    # no record is kept of a refused job: it was never accepted
    assert sorted(core.clusters["A"].jobs) == [1, 2, 3]
    assert [e[3:] for e in core.story("A", 4)] == [("new", "refused")]
    # so a resend of a refused id is judged anew (refused again while the queue is full);
    assert of(step(core, submitted("ca", "A", 4), now=3), A.Reject)
    # a running job frees a queue slot
    step(core, joined("n1", 1), now=4)
    actions = step(core, submitted("ca", "A", 6), now=5)
    assert not of(actions, A.Reject) and core.users["alice"].queued == 3


def test_priority_above_priority_max_is_lowered_to_it(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(limits={"alice": Limits(priority_max=1)})
    step(core, opened("c1", "K"), now=0)
    step(core, submitted("c1", "K", 1, priority=1), submitted("c1", "K", 2, priority=9), submitted("c1", "K", 3), now=1)
    assert core.clusters["K"].jobs[2].priority == 1
    assert [j for _, j in run_one_cpu(core)] == [1, 2, 3]  # 2 no longer jumps ahead of 1


# --------------------------------------------------------------------------
# The indexes behind O(log n) decisions


def test_keyed_heap_follows_changing_keys_and_walks_in_order() -> None:
    heap: KeyedHeap[str] = KeyedHeap()
    for i, item in enumerate("abcdef"):
        heap.set(item, (i % 3, item))
    heap.set("a", (5, "a"))
    heap.discard("b")
    heap.set("c", (2, "c"))  # unchanged key: no new entry
    heap.check()
    assert heap.peek() == "d" and len(heap) == 5 and "b" not in heap
    assert list(heap.ordered()) == ["d", "e", "c", "f", "a"]
    for _ in range(1000):  # stale entries are dropped, not hoarded
        heap.set("e", (7, "e"))
        heap.set("e", (8, "e"))
    assert len(heap._heap) < 200
    heap.check()


@pytest.mark.parametrize("policy", ["fifo", "fcfs_cluster"])
def test_a_node_a_cluster_failed_on_gets_the_next_usable_cluster_in_policy_order(
    make_core: Callable[..., SchedulerCore], policy: str
) -> None:
    core = make_core(policy)
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), opened("ca", "A2", "alice"), now=0)
    step(core, submitted("ca", "A", 1), submitted("cb", "B", 1), submitted("ca", "A2", 1), now=1)
    step(core, joined("n1", 1), now=1)
    step(core, E.ClusterFailedOnNode("n1", "A", "set-up failed"), now=2)  # A's job goes back to the queue
    # A is first in order but cannot use n1: the next in global order is bob's B, not alice's A2
    assert core.nodes["n1"].jobs == {("B", 1)}


def test_fair_leaves_a_node_idle_that_no_waiting_cluster_may_use(core: SchedulerCore) -> None:
    # n2 (no CPU yet) may still run A: its jobs wait
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), joined("n1", 1), joined("n2", 0), now=0)
    step(core, submitted("ca", "A", 1, 2), now=1)
    step(core, E.ClusterFailedOnNode("n1", "A", "set-up failed"), now=2)
    assert not core.nodes["n1"].jobs and core.clusters["A"].queued == 2
    actions = step(core, submitted("cb", "B", 7), now=3)
    assert dispatched(actions) == {"n1": [("B", 7)]}


def test_usage_restored_from_a_store_orders_users_and_round_trips(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(usage_half_life=100.0)
    step(core, E.UsageRestored({"adam": (800.0, 0.0), "bad": (float("nan"), 0.0)}), now=100.0)
    assert core.users["adam"].decayed_usage(100.0, 100.0) == pytest.approx(400.0)
    assert "bad" not in core.users
    assert core.usage_snapshot() == {"adam": (pytest.approx(400.0), 100.0)}
    step(core, opened("ca", "A", "adam"), opened("cz", "Z", "zoe"), now=101)
    step(core, submitted("ca", "A", 1), submitted("cz", "Z", 1), now=102)
    assert run_one_cpu(core)[0] == ("Z", 1)  # adam's restored history makes him yield


# --------------------------------------------------------------------------
# Status and story


def test_status_counts_users_nodes_and_cpus(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(shares={"alice": 3.0}, default_share=1.0, usage_half_life=100.0, private_data=False)
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), opened("cc", "C", "carol"), now=0)
    step(core, joined("n1", 4), joined("n2", 2), now=0)
    step(core, submitted("ca", "A", *range(6)), submitted("cb", "B", *range(4)), now=1)
    node = node_of(core, "A", 0)
    step(core, arrived(node, result("A", 0, start=1, end=11)), now=11)
    status = step(core, E.StatusRequested("cb", "r1", "bob"), now=11)
    (report,) = of(status, A.ReportStatus)
    assert (report.client, report.ref) == ("cb", "r1")
    st_ = report.status
    assert st_ == core.status()
    assert st_["policy"] == "fair"
    assert (st_["cpus"], st_["busy"], st_["queued"]) == (6, 6, 3)
    alice, bob, carol = st_["users"]["alice"], st_["users"]["bob"], st_["users"]["carol"]
    assert alice["busy"] + bob["busy"] == 6 and alice["queued"] + bob["queued"] == 3
    assert (alice["share"], alice["target"], bob["target"], carol["target"]) == (3.0, 0.75, 0.25, 0.0)
    assert (alice["finished"], alice["usage"], alice["clusters"], alice["limits"]) == (1, 10.0, 1, {})
    assert st_["nodes"]["host-n1"] == {"ip_addr": "10.0.0.2", "cpus": 4, "busy": 4, "waiting": 0, "avail": {}}


def test_story_lists_a_jobs_transitions(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=True), joined("n1", 1), now=0)
    step(core, submitted("c1", "K", 1, 2), now=1)
    step(core, E.NodeLeft("n1", "lost"), now=2)
    step(core, joined("n2", 1), now=3)
    step(core, arrived("n2", result("K", 1)), now=4)
    assert [(s, f, t) for s, _, _, f, t in core.story("K", 1)] == [
        ("JobsSubmitted", "new", "queued"),
        ("schedule", "queued", "running"),
        ("NodeLeft", "running", "queued"),
        ("schedule", "queued", "running"),
        ("ResultsArrived", "running", "done"),
    ]
    assert all(c == "K" and j == 1 for _, c, j, _, _ in core.story("K", 1))
    assert [t for *_, t in core.story("K", 2)] == ["queued", "running"]  # took the CPU job 1 freed


def test_core_log_is_bounded(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(log_size=10)
    step(core, opened("c1", "K"), submitted("c1", "K", *range(50)), now=0)
    assert len(core.log) == 10


# --------------------------------------------------------------------------
# Random interleavings: invariants, and exactly one terminal result per job


class CoreMachine(RuleBasedStateMachine):
    """Random clients, nodes and failures against one core.

    The machine plays every peer: clients open, submit (new and repeated ids),
    cancel, ack, close, leave and come back; nodes join, run what they were
    dispatched, answer kills, repeat and misdirect results, fail set-ups, go
    silent or leave. After every step the invariants hold and no job has two
    different terminal results; at teardown everything drains and every
    accepted job has exactly one.
    """

    USERS = ("alice", "bob", "carol", "dave")
    POLICY = "fair"
    #: every policy runs under limits too: the core enforces them for all
    LIMITS = {
        "bob": Limits(max_cpus=1),
        "carol": Limits(max_queued_jobs=3, priority_max=0),
        # about 6 jobs' arguments (or 3 clusters' computations), and 3 results
        "dave": Limits(max_clusters=3, max_queued_bytes=3 * 1000, max_held_bytes=3 * 540),
    }
    #: jobs per CPU sent ahead to nodes that queue them (and every node joining here does, if above 0)
    PREFETCH = 0
    #: the adaptive window: up to this many per CPU for jobs shorter than `PREFETCH_TARGET` seconds; 0: off
    PREFETCH_MAX = 0
    PREFETCH_TARGET = 0.005
    #: queued jobs of closing clusters cancelled per call: few, so that closes span calls and interleave with the rest
    CLOSE_SLICE = 1

    def __init__(self) -> None:
        super().__init__()
        config = CoreConfig(usage_half_life=50.0, limits=self.LIMITS, prefetch=self.PREFETCH, close_slice=self.CLOSE_SLICE,
                            prefetch_max=self.PREFETCH_MAX, prefetch_target=self.PREFETCH_TARGET)  # fmt: skip
        self.core = SchedulerCore(load_policy(self.POLICY), config)
        self.now = 0.0
        self.sessions = 0
        self.nodes_made = 0
        self.clusters: dict[str, str] = {}  # cluster -> user
        self.reentrant: dict[str, bool] = {}
        self.attached: dict[str, str] = {}  # cluster -> client session
        self.closing: set[str] = set()
        self.closed: set[str] = set()
        self.next_job: dict[str, int] = defaultdict(int)
        self.accepted: dict[str, set[int]] = defaultdict(set)
        self.acked: dict[str, set[int]] = defaultdict(set)
        self.results: dict[tuple[str, int], JobResult] = {}
        self.node_jobs: dict[str, list[tuple[str, int]]] = {}  # what each node was told to run
        self.killed: set[tuple[str, int]] = set()
        self.reported: list[tuple[str, JobResult]] = []  # (node, result) already sent once
        self.pinned: set[tuple[str, int]] = set()
        self.resume = False  # the last call asked to be called again (`ResumeCancelling`)
        #: jobs queued when a cancel of them was accepted: none may start after it (`cancel_queued`)
        self.cancelled: set[tuple[str, int]] = set()

    # -- plumbing

    def record(self, actions: list[A.Action]) -> None:
        """Where a store would write the call's `Persist` (before the rest is carried out)."""

    def read_stored(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        """Results the core left to the store: without one there are none."""
        raise AssertionError(f"results of {cluster_id} left to a store the core does not have")

    def apply(self, *events: E.Event, dt: float = 0.0) -> list[A.Action]:
        self.now += dt
        actions = step(self.core, *events, now=self.now)
        self.record(actions)
        self.resume = A.ResumeCancelling() in actions
        draining = [c.cluster_id for c in self.core.clusters.values() if c.closing and c.queued]
        assert self.resume or not draining, f"closing clusters {draining} keep queued jobs, yet no call is asked for"
        for a in actions:
            if isinstance(a, A.Dispatch):
                assert a.node in self.node_jobs, "dispatch to a node that left"
                assert not any(self.core.clusters[r.cluster_id].closing for r in a.jobs), "a closing cluster's job sent"
                assert not {(r.cluster_id, r.job_id) for r in a.jobs} & self.cancelled, "a cancelled job sent"
                self.node_jobs[a.node] += [(r.cluster_id, r.job_id) for r in a.jobs]
            elif isinstance(a, A.KillJobs):
                self.killed.update((r.cluster_id, r.job_id) for r in a.jobs)
            elif isinstance(a, A.DropNode):
                self.node_jobs.pop(a.node, None)
            elif isinstance(a, A.ConfirmAccepted):
                assert self.attached.get(a.cluster_id) == a.client
                self.accepted[a.cluster_id].update(a.job_ids)
            elif isinstance(a, A.DeliverResults | A.DeliverStored):
                assert self.attached.get(a.cluster_id) == a.client, "results sent to a client not attached"
                if isinstance(a, A.DeliverResults):
                    results = a.results
                else:
                    results = self.read_stored(a.cluster_id, [job_id for job_id, _ in a.jobs])
                for r in results:
                    assert r.job_id in self.accepted[a.cluster_id], "a result for a job never accepted"
                    assert JobStatus(r.status).is_terminal
                    known = self.results.setdefault((a.cluster_id, r.job_id), r)
                    assert known == r, f"two different terminal results for {(a.cluster_id, r.job_id)}"
            elif isinstance(a, A.ConfirmClosed):
                assert a.cluster_id in self.closing
                self.closing.discard(a.cluster_id)
                self.closed.add(a.cluster_id)
                del self.attached[a.cluster_id]
        return actions

    def cancel_queued(self, cid: str, ids: Iterable[int] | None) -> None:
        """Notes the jobs of `cid` queued now among `ids` (None: all) before a cancel of them: they must never start."""
        cluster = self.core.clusters.get(cid)
        if cluster is not None:
            jobs = cluster.jobs.values() if ids is None else [cluster.jobs[i] for i in ids if i in cluster.jobs]
            self.cancelled.update((cid, j.job_id) for j in jobs if j.state is JobState.QUEUED)

    def session(self) -> str:
        self.sessions += 1
        return f"s{self.sessions}"

    def open_clusters(self) -> list[str]:
        return sorted(c for c in self.clusters if c not in self.closed)

    def attached_clusters(self) -> list[str]:
        return sorted(c for c in self.attached if c not in self.closing)

    # -- clients

    def joined(self, node: str, cpus: int) -> E.NodeJoined:
        return dataclasses.replace(joined(node, cpus, heartbeat=10.0), queues=self.PREFETCH > 0 or self.PREFETCH_MAX > 0)

    @initialize()
    def start(self) -> None:
        self.apply(self.joined("n0", 2))
        self.node_jobs["n0"] = []

    @rule(user=st.sampled_from(USERS), reentrant=st.booleans(), states_runtime=st.booleans())
    def open_cluster(self, user: str, reentrant: bool, states_runtime: bool) -> None:
        cid = f"K{self.sessions}"
        client = self.session()
        self.attached[cid] = client
        self.clusters[cid], self.reentrant[cid] = user, reentrant
        options = {"runtime": {"python": "3.11", "cloudpickle": "3.1.3"}} if states_runtime else None
        actions = self.apply(opened(client, cid, user, reentrant=reentrant, options=options))
        if A.ConfirmOpened(client, cid, False) not in actions:  # beyond dave's max_clusters or bytes
            rejects = of(actions, A.Reject)
            assert user == "dave" and [r.code for r in rejects if r.ref == cid] == [ErrorCode.LIMIT]
            # and in the same call maybe dave's other clusters told of the pause at max_held_bytes (the results
            # of a cancel under way, a slice per call, crossing it)
            assert all(r.code == ErrorCode.LIMIT and self.clusters.get(r.ref) == "dave" for r in rejects)
            del self.attached[cid], self.clusters[cid], self.reentrant[cid]

    @precondition(lambda self: self.attached_clusters())
    @rule(data=st.data(), n=st.integers(1, 4), repeat=st.integers(0, 2), priority=st.integers(-1, 1))
    def submit(self, data: st.DataObject, n: int, repeat: int, priority: int) -> None:
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        first = self.next_job[cid]
        self.next_job[cid] += n
        # resend some ids not yet acknowledged: idempotent
        old = sorted(self.accepted[cid] - self.acked[cid])
        again = data.draw(st.lists(st.sampled_from(old), max_size=repeat)) if old and repeat else []
        ids = list(range(first, first + n)) + again
        actions = self.apply(submitted(self.attached[cid], cid, *ids, priority=priority), dt=0.1)
        self.forget_refused(cid, actions)

    def forget_refused(self, cid: str, actions: list[A.Action]) -> None:
        """A refused job leaves no record: a resend of it is judged anew, not a repeat."""
        # a slice of another cluster's bulk cancel, ended in this call, may pause its user: that one is told too
        rejects = [r for r in of(actions, A.Reject) if r.client == self.attached[cid]]
        assert all(r.code == ErrorCode.LIMIT and self.clusters[cid] in ("carol", "dave") for r in rejects)
        refused = {r.job_id for r in delivered(actions).get((self.attached[cid], cid), []) if "were refused" in r.exception}
        # jobs a submit ends at once (no node can run the cluster) are held: they may start a user's pause
        assert bool(refused) == bool([r for r in rejects if "were refused" in r.message])
        self.accepted[cid] -= refused
        for job_id in refused:
            del self.results[(cid, job_id)]

    @precondition(lambda self: self.attached_clusters())
    @rule(data=st.data())
    def submit_pinned(self, data: st.DataObject) -> None:
        """A job for one node (`submit_node`): a node that is there, or one that never comes."""
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        names = sorted(n.name for n in self.core.nodes.values()) + ["host-nowhere"]
        job_id = self.next_job[cid]
        self.next_job[cid] += 1
        spec = JobSpec(job_id, 0, b"", {"node": data.draw(st.sampled_from(names))})
        self.pinned.add((cid, job_id))
        self.forget_refused(cid, self.apply(E.JobsSubmitted(self.attached[cid], cid, [spec]), dt=0.1))

    @precondition(lambda self: self.attached_clusters() and self.core.nodes)
    @rule(data=st.data(), cpus=st.integers(-1, 3))
    def set_node_cpus(self, data: st.DataObject, cpus: int) -> None:
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        name = data.draw(st.sampled_from(sorted(n.name for n in self.core.nodes.values())))
        self.apply(E.NodeCpusSet(self.attached[cid], cid, name, cpus))

    @precondition(lambda self: self.attached_clusters() and self.core.nodes)
    @rule(data=st.data())
    def resetup(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        name = data.draw(st.sampled_from(sorted(n.name for n in self.core.nodes.values())))
        actions = self.apply(E.ResetupRequested(self.attached[cid], cid, name, b"again"))
        for unload in of(actions, A.UnloadCluster):  # only once none of its jobs runs there
            assert not any(c == cid for c, _ in self.node_jobs.get(unload.node, []))

    @precondition(lambda self: self.attached_clusters())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        ids = data.draw(st.lists(st.integers(0, max(0, self.next_job[cid] + 1)), max_size=3))
        self.cancel_queued(cid, ids)
        self.apply(E.JobsCancelled(self.attached[cid], cid, ids))

    @precondition(lambda self: self.attached)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.attached)))
        done = sorted(j for (c, j) in self.results if c == cid and j not in self.acked[cid])
        ids = data.draw(st.lists(st.sampled_from(done), max_size=3)) if done else []
        self.acked[cid].update(ids)
        self.apply(E.ResultsAcked(self.attached[cid], cid, ids))

    @precondition(lambda self: self.attached_clusters())
    @rule(data=st.data(), terminate=st.booleans())
    def close(self, data: st.DataObject, terminate: bool) -> None:
        cid = data.draw(st.sampled_from(self.attached_clusters()))
        self.closing.add(cid)
        self.apply(E.ClusterClosed(self.attached[cid], cid, terminate))

    @precondition(lambda self: self.resume)
    @rule()
    def shell_resumes_closing(self) -> None:
        """The shell's next loop turn after a `ResumeCancelling`: other rules may run first, as other peers' messages do."""
        self.apply(E.CancellingResumed())

    # -- the operator (the HTTP API)

    @precondition(lambda self: self.core.nodes)
    @rule(data=st.data(), drained=st.booleans())
    def operator_drains(self, data: st.DataObject, drained: bool) -> None:
        name = data.draw(st.sampled_from(sorted(n.name for n in self.core.nodes.values())))
        actions = self.apply(E.NodeDrainSet("op", name, drained))
        if drained:
            assert not any(d.node in {n.node_id for n in self.core.nodes.values() if n.name == name} for d in of(actions, A.Dispatch))

    @precondition(lambda self: self.core.nodes)
    @rule(data=st.data(), cpus=st.integers(-1, 3))
    def operator_caps_cpus(self, data: st.DataObject, cpus: int) -> None:
        name = data.draw(st.sampled_from(sorted(n.name for n in self.core.nodes.values())))
        self.apply(E.NodeCpusCapped("op", name, cpus))

    @precondition(lambda self: self.open_clusters())
    @rule(data=st.data(), whole=st.booleans(), by_owner=st.booleans())
    def operator_cancels(self, data: st.DataObject, whole: bool, by_owner: bool) -> None:
        cid = data.draw(st.sampled_from(self.open_clusters()))
        cluster = self.core.clusters.get(cid)
        live = sorted(j for j, job in cluster.jobs.items() if job.state is not JobState.DONE) if cluster else []
        ids = None if whole or not live else tuple(data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=2)))
        by = self.clusters[cid] if by_owner else "mallory"
        if by_owner:
            self.cancel_queued(cid, ids)
        (answer,) = of(self.apply(E.CancelRequested("op", by, cid, ids)), A.AnswerAdmin)
        assert (answer.error == "") == (by_owner and cluster is not None), answer

    @rule(user=st.sampled_from(USERS), share=st.sampled_from([0.5, 1.0, 3.0]))
    def operator_sets_share(self, user: str, share: float) -> None:
        self.apply(E.UserShareSet("op", user, share))

    def may_leave(self) -> list[str]:
        return sorted(self.attached)

    @precondition(lambda self: self.may_leave())
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        client = self.attached[data.draw(st.sampled_from(self.may_leave()))]
        for cid in [c for c, s in self.attached.items() if s == client]:
            del self.attached[cid]
        self.apply(E.ClientLeft(client))

    @precondition(lambda self: [c for c in self.open_clusters() if c not in self.attached])
    @rule(data=st.data())
    def client_reopens(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from([c for c in self.open_clusters() if c not in self.attached]))
        self.reopen(cid)

    def reopen(self, cid: str) -> None:
        client = self.session()
        self.attached[cid] = client
        cluster = self.core.clusters[cid]
        held = {j for j, job in cluster.jobs.items() if job.state is JobState.DONE}
        # a closing cluster's queued jobs, or those of another bulk cancel, may end in this very call (a slice of
        # them is cancelled in every call)
        swept = cluster.closing or cluster.cancelling
        draining = {j for j, job in cluster.jobs.items() if job.state is JobState.QUEUED} if swept else set()
        known = list(cluster.jobs)
        actions = self.apply(opened(client, cid, self.clusters[cid], reentrant=self.reentrant[cid]))
        assert A.ConfirmOpened(client, cid, True, known) in actions
        # everything done and not acknowledged comes back (a pending close may then complete)
        resent = {r.job_id for r in delivered(actions).get((client, cid), [])}
        resent |= {job_id for d in of(actions, A.DeliverStored) if d.client == client for job_id, _ in d.jobs}
        assert held <= resent <= held | draining

    # -- nodes

    @rule(cpus=st.integers(0, 3))
    def node_joins(self, cpus: int) -> None:
        self.nodes_made += 1
        node = f"n{self.nodes_made}"
        self.node_jobs[node] = []
        self.apply(self.joined(node, cpus))

    @rule(cpus=st.integers(0, 3))
    def node_of_another_python_joins(self, cpus: int) -> None:
        """Clusters that state their runtime skip it; their queued jobs may end for want of a node."""
        self.nodes_made += 1
        node = f"n{self.nodes_made}"
        self.node_jobs[node] = []
        old = E.NodeJoined(node, f"host-{node}", "10.0.9.9", cpus, 10.0, runtime=Runtime("3.9", "3.1.3"))
        self.apply(old)

    @precondition(lambda self: any(self.node_jobs.values()))
    @rule(data=st.data(), dt=st.floats(0.0, 5.0))
    def node_finishes_jobs(self, data: st.DataObject, dt: float) -> None:
        node = data.draw(st.sampled_from(sorted(n for n, jobs in self.node_jobs.items() if jobs)))
        jobs = self.node_jobs[node]
        k = data.draw(st.integers(1, len(jobs)))
        done, self.node_jobs[node] = jobs[:k], jobs[k:]
        results = []
        for cid, jid in done:
            status = JobStatus.TERMINATED if (cid, jid) in self.killed else JobStatus.FINISHED
            r = result(cid, jid, status, start=self.now, end=self.now + dt)
            results.append(r)
            self.reported.append((node, r))
        self.apply(arrived(node, *results), dt=dt)

    @precondition(lambda self: self.reported and self.node_jobs)
    @rule(data=st.data())
    def node_repeats_or_misdirects_a_result(self, data: st.DataObject) -> None:
        node, r = data.draw(st.sampled_from(self.reported))
        sender = data.draw(st.sampled_from(sorted(self.node_jobs) + [node]))
        changed = r._replace(end_time=r.end_time + 1000, stdout=b"impostor")
        actions = self.apply(arrived(sender, changed))
        # nothing of it is delivered; the call may end a slice of a bulk cancel's queued jobs, as every call does
        delivered = [x for d in of(actions, A.DeliverResults) for x in d.results]
        ended = (JobStatus.CANCELLED, JobStatus.TERMINATED)  # cancelled, or of a cluster no node can run
        assert all(x.status in ended and x.stdout == b"" for x in delivered), delivered

    @precondition(lambda self: self.node_jobs)
    @rule(data=st.data())
    def cluster_fails_on_node(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.node_jobs)))
        loaded = sorted(self.core.nodes[node].loaded)
        if not loaded:
            return
        cid = data.draw(st.sampled_from(loaded))
        self.node_jobs[node] = [k for k in self.node_jobs[node] if k[0] != cid]
        self.apply(E.ClusterFailedOnNode(node, cid, "set-up failed"))

    @precondition(lambda self: self.node_jobs)
    @rule(data=st.data())
    def node_leaves(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.node_jobs)))
        del self.node_jobs[node]
        self.apply(E.NodeLeft(node, "connection reset"))

    @rule(dt=st.sampled_from([1.0, 10.0, 31.0]), report=st.booleans())
    def time_passes(self, dt: float, report: bool) -> None:
        # heartbeat 10 s, 3 misses: a 31 s silence drops every node that did not report
        reports = [E.NodeReported(n, {}) for n in sorted(self.node_jobs)] if report else []
        self.apply(*reports, dt=dt)
        self.apply(E.Tick())
        assert set(self.node_jobs) == set(self.core.nodes)

    # -- checks

    @invariant()
    def nodes_agree(self) -> None:
        assert set(self.node_jobs) == set(self.core.nodes)
        for node, jobs in self.node_jobs.items():
            # the node holds what the core thinks runs there (kills not yet answered included)
            assert set(jobs) == self.core.nodes[node].jobs

    def teardown(self) -> None:
        """Drains everything: every accepted job ends with exactly one result."""
        for cid in self.open_clusters():
            if cid not in self.attached and cid not in self.closed:  # a close may end in an earlier reopen's call
                self.reopen(cid)
        for cid in self.open_clusters():  # lift the caps; a job pinned to a node never coming is cancelled
            cluster = self.core.clusters.get(cid)
            if cluster is not None:
                for name in list(cluster.overrides):
                    if cid in self.attached:  # a close under way may end in any call, these too
                        self.apply(E.NodeCpusSet(self.attached[cid], cid, name, -1))
                waiting = [j for c, j in self.pinned if c == cid and j in cluster.jobs]
                if cid in self.attached:
                    self.apply(E.JobsCancelled(self.attached[cid], cid, waiting))
        for name in sorted(self.core.drained | set(self.core.cpu_caps)):  # the operator lets every node work again
            self.apply(E.NodeDrainSet("op", name, False), E.NodeCpusCapped("op", name, -1))
        self.node_joins(4)
        for _ in range(200):
            if self.resume:
                self.shell_resumes_closing()
            for cid, client in list(self.attached.items()):  # collected results let a paused user go on
                done = sorted(j for (c, j) in self.results if c == cid and j not in self.acked[cid])
                self.acked[cid].update(done)
                self.apply(E.ResultsAcked(client, cid, done))
            busy = [n for n, jobs in self.node_jobs.items() if jobs]
            if not busy and not self.resume:
                break
            for node in busy:
                done, self.node_jobs[node] = self.node_jobs[node], []
                self.apply(arrived(node, *(result(c, j, start=self.now, end=self.now + 1) for c, j in done)), dt=1)
        assert not any(c.queued or c.busy for c in self.core.clusters.values()), "jobs left undone"
        for cid, ids in self.accepted.items():
            missing = sorted(j for j in ids if (cid, j) not in self.results)
            assert not missing, f"{cid}: accepted jobs {missing} never got a result"
        assert not self.closing, "a close was never confirmed"


class FifoCoreMachine(CoreMachine):
    POLICY = "fifo"


class FairClusterCoreMachine(CoreMachine):
    POLICY = "fair_cluster"


class FcfsClusterCoreMachine(CoreMachine):
    POLICY = "fcfs_cluster"


MACHINE_SETTINGS = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
CoreMachine.TestCase.settings = MACHINE_SETTINGS
FifoCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=75)
FairClusterCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=50)
FcfsClusterCoreMachine.TestCase.settings = settings(MACHINE_SETTINGS, max_examples=50)
test_random_interleavings_keep_invariants_and_one_result_per_job = CoreMachine.TestCase
test_random_interleavings_under_fifo = FifoCoreMachine.TestCase
test_random_interleavings_under_fair_cluster = FairClusterCoreMachine.TestCase
test_random_interleavings_under_fcfs_cluster = FcfsClusterCoreMachine.TestCase


def test_files_from_a_running_job_reach_its_client_before_its_result_and_wait_for_an_absent_one(
    core: SchedulerCore,
) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), joined("n22", 1), submitted("c1", "K", 1, 2), now=0)
    node = node_of(core, "K", 1)
    other = "n22" if node == "n1" else "n1"
    f = JobFile("K", 1, "out.txt", b"data", 0o600)
    assert not of(step(core, E.FilesArrived(other, [f]), now=1), A.DeliverFiles)  # not that job's node
    actions = step(core, E.FilesArrived(node, [f]), arrived(node, result("K", 1)), now=2)
    files = of(actions, A.DeliverFiles)
    assert files == [A.DeliverFiles("c1", [f])]
    assert actions.index(files[0]) < actions.index(of(actions, A.DeliverResults)[0])
    step(core, E.ResultsAcked("c1", "K", [1]), E.ClientLeft("c1"), now=3)
    g = JobFile("K", 2, "later.txt", b"more", 0o600)
    assert not of(step(core, E.FilesArrived(node_of(core, "K", 2), [g]), now=4), A.DeliverFiles)  # nobody to take it
    actions = step(core, opened("c2", "K"), now=5)
    assert of(actions, A.DeliverFiles) == [A.DeliverFiles("c2", [g])]  # kept for the client, sent once
    assert not of(step(core, opened("c3", "K"), now=6), A.DeliverFiles)


def test_a_job_its_node_gives_up_on_runs_again_if_reentrant_else_ends_abandoned(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=True), opened("c1", "L", reentrant=False), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", 1), submitted("c1", "L", 1), now=1)
    gave_up = [result("K", 1, JobStatus.ABANDONED), result("L", 1, JobStatus.ABANDONED)]
    actions = step(core, arrived("n1", *gave_up), now=2)
    assert [r.cluster_id for r in delivered(actions).get(("c1", "L"), [])] == ["L"]  # ended, with the node's text
    assert ("c1", "K") not in delivered(actions)
    assert [(a.node, [r.job_id for r in a.jobs]) for a in of(actions, A.Dispatch)] == [("n1", [1])]  # K's job again


def test_a_file_for_a_node_goes_where_the_cluster_is_loaded_and_its_answer_comes_back(core: SchedulerCore) -> None:
    from dispy_wire.messages import PutFile

    step(core, opened("c1", "K"), joined("n1", 1), joined("n22", 1), submitted("c1", "K", 1), now=0)
    loaded = node_of(core, "K", 1)
    other = "n22" if loaded == "n1" else "n1"
    name_of = {n: core.nodes[n].name for n in ("n1", "n22")}
    refused = step(core, E.FilePutRequested("c1", PutFile("K", "r1", name_of[other], "f", b"x", 0o600)), now=1)
    assert [(a.ref, a.ok) for a in of(refused, A.ReportFilePut)] == [("r1", False)]  # not loaded there
    put = PutFile("K", "r2", name_of[loaded], "f", b"x", 0o600)
    assert of(step(core, E.FilePutRequested("c1", put), now=2), A.ForwardFile) == [A.ForwardFile(loaded, put)]
    done = step(core, E.FilePutDone(loaded, "r2", True, ""), now=3)
    assert of(done, A.ReportFilePut) == [A.ReportFilePut("c1", "r2", True, "")]
    step(core, E.FilePutRequested("c1", PutFile("K", "r3", name_of[loaded], "g", b"", 0o600)), now=4)
    lost = step(core, E.NodeLeft(loaded, "gone"), now=5)
    assert [(a.ref, a.ok) for a in of(lost, A.ReportFilePut)] == [("r3", False)]


def test_resetup_drains_the_node_then_loads_the_new_computation_there(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    name = core.nodes["n1"].name
    actions = step(core, E.ResetupRequested("c1", "K", name, b"new computation"), now=1)
    assert not of(actions, A.UnloadCluster)  # job 1 still runs there
    actions = step(core, arrived("n1", result("K", 1)), now=2)
    kinds = [type(a).__name__ for a in actions if isinstance(a, (A.UnloadCluster, A.LoadCluster, A.Dispatch))]
    assert kinds == ["UnloadCluster", "LoadCluster", "Dispatch"]
    assert of(actions, A.LoadCluster)[0].computation == b"new computation"


def test_a_job_with_malformed_options_is_refused_and_ends_saying_why(core: SchedulerCore) -> None:
    step(core, opened("c1", "K"), joined("n1", 1), now=0)
    jobs = [JobSpec(1, 0, b"", {"node": 5}), JobSpec(2, 0, b"", {"timeout": 1.5})]
    actions = step(core, E.JobsSubmitted("c1", "K", jobs), now=1)
    (reject,) = of(actions, A.Reject)
    assert reject.code == ErrorCode.BAD_REQUEST and "node=5" in reject.message
    (r,) = delivered(actions)[("c1", "K")]
    assert (r.job_id, r.status) == (1, JobStatus.CANCELLED) and "node=5" in r.exception
    assert dispatched(actions) == {"n1": [("K", 2)]}


@pytest.mark.parametrize("options", [[1, 2], {1: 2}, {b"node": "host-n1"}, None], ids=["list", "int key", "bytes key", "nil"])
def test_job_options_that_are_not_a_map_of_names_are_refused_with_a_typed_error(core: SchedulerCore, options: Any) -> None:
    # the wire lets any options through (dispy_wire.messages.JobSpec): the core is what checks them
    step(core, opened("c1", "K"), joined("n1", 1), now=0)
    actions = step(core, E.JobsSubmitted("c1", "K", [JobSpec(1, 0, b"", options), JobSpec(2, 0, b"", {})]), now=1)
    (reject,) = of(actions, A.Reject)
    assert reject.code == ErrorCode.BAD_REQUEST and "option" in reject.message, reject.message
    (r,) = delivered(actions)[("c1", "K")]
    assert (r.job_id, r.status) == (1, JobStatus.CANCELLED)
    assert dispatched(actions) == {"n1": [("K", 2)]}


def test_queued_counts_move_only_with_the_transitions_that_cause_them(core: SchedulerCore) -> None:
    """STYLE.md (d): `queued` and `queued_bytes` change in `_admit`/`_transition` alone, on every path."""
    step(core, opened("c1", "K", reentrant=True), joined("n1", 1), now=0)
    user, cluster = core.users["alice"], core.clusters["K"]

    def counts() -> tuple[int, int, int]:
        return user.queued, cluster.queued, user.queued_bytes - len(b"computation")

    step(core, submitted("c1", "K", 1, 2, 3), now=1)  # 1 dispatched, 2 and 3 queued
    assert counts() == (2, 2, 3 * job_cost(b"args-1"))
    step(core, E.NodeLeft("n1", "gone"), now=2)  # reentrant: 1 queued again, keeping its place
    assert counts() == (3, 3, 3 * job_cost(b"args-1"))
    step(core, E.JobsCancelled("c1", "K", [2]), now=3)  # queued -> done: its arguments freed
    assert counts() == (2, 2, 2 * job_cost(b"args-1"))
    step(core, joined("n2", 1), now=4)
    step(core, arrived("n2", result("K", 1)), now=5)  # running -> done
    assert counts() == (0, 0, job_cost(b"args-1"))  # 3 runs now
    assert user.held_bytes == result_cost(result("K", 1)) + cluster.jobs[2].result_size
