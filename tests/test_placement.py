"""dispy's `nodes` in the core: which nodes a cluster may use, and how many of their CPUs."""

from __future__ import annotations

from collections import Counter

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.core.placement import BadNodes, allowed_cpus, parse_nodes
from dispy_sched.policies import load_policy
from dispy_wire.errors import ErrorCode
from dispy_wire.messages import JobResult, JobSpec
from dispy_wire.status import JobStatus


def step(core: SchedulerCore, *events: E.Event, now: float = 0.0) -> list[A.Action]:
    actions = core.handle(*events, now=now)
    check_invariants(core)
    return actions


def open_with(nodes: object, cluster_id: str = "K") -> E.ClusterOpened:
    return E.ClusterOpened("c1", "alice", cluster_id, "name", b"computation", False, {"nodes": nodes})


def submit(cluster_id: str, n: int) -> E.JobsSubmitted:
    return E.JobsSubmitted("c1", cluster_id, [JobSpec(j, 0, b"", {}) for j in range(n)])


def dispatched(actions: list[A.Action]) -> Counter[str]:
    return Counter(a.node for a in actions if isinstance(a, A.Dispatch) for _ in a.jobs)


@pytest.fixture
def core() -> SchedulerCore:
    return SchedulerCore(load_policy("fair"), CoreConfig())


def test_entries_follow_dispys_rule_first_match_decides() -> None:
    entries = parse_nodes([{"host": "gpu1", "cpus": 2}, {"host": "10.1.*", "ip_addr": "10.1.*", "cpus": -1}])
    assert entries is not None
    assert allowed_cpus(entries, "gpu1", ["10.1.0.5"], 8) == 2  # by name, capped
    assert allowed_cpus(entries, "other", ["10.1.7.7"], 8) == 7  # by address pattern: all but one
    assert allowed_cpus(entries, "other", ["10.2.0.1"], 8) == 0  # no entry: not this node
    assert allowed_cpus(parse_nodes([{"host": "h", "cpus": 0}]) or [], "h", [], 4) == 4  # 0: all
    assert parse_nodes(None) is None and parse_nodes([]) is None


@pytest.mark.parametrize("bad", ["host", [3], [{"cpus": 1}], [{"host": "h", "cpus": "2"}], [{"host": "h", "cpus": True}]])
def test_malformed_entries_are_refused(bad: object) -> None:
    with pytest.raises(BadNodes):
        parse_nodes(bad)


def test_cluster_runs_only_on_matching_nodes_and_within_their_cpus(core: SchedulerCore) -> None:
    step(
        core,
        E.NodeJoined("n1", "alpha", "10.0.0.1", 4, 5.0),
        E.NodeJoined("n2", "beta", "192.168.0.2", 4, 5.0),
        open_with([{"host": "10.0.0.*", "ip_addr": "10.0.0.*", "cpus": 2}]),
    )
    actions = step(core, submit("K", 6), now=1)
    assert dispatched(actions) == {"n1": 2}  # two CPUs of alpha, none of beta
    done = [JobResult("K", j, int(JobStatus.FINISHED), b"", b"", b"", "", "", 1, 2) for j in (0, 1)]
    actions = step(core, E.ResultsArrived("n1", done), now=2)
    assert dispatched(actions) == {"n1": 2}


def test_a_node_matching_by_a_reported_address_or_joining_later_is_used(core: SchedulerCore) -> None:
    step(core, open_with([{"host": "192.168.7.9", "ip_addr": "192.168.7.9", "cpus": 0}]), submit("K", 3))
    actions = step(core, E.NodeJoined("n1", "laptop", "127.0.0.1", 2, 5.0, ("127.0.0.1", "192.168.7.9")), now=1)
    assert dispatched(actions) == {"n1": 2}


def test_other_clusters_use_the_cpus_a_placement_leaves(core: SchedulerCore) -> None:
    step(
        core,
        E.NodeJoined("n1", "alpha", "10.0.0.1", 4, 5.0),
        open_with([{"host": "alpha", "cpus": 1}], "K"),
        E.ClusterOpened("c1", "alice", "L", "free", b"computation", False, {}),
    )
    actions = step(core, submit("K", 4), submit("L", 4), now=1)
    per_cluster = Counter(r.cluster_id for a in actions if isinstance(a, A.Dispatch) for r in a.jobs)
    assert per_cluster == {"K": 1, "L": 3}


def test_bad_nodes_option_is_rejected_with_a_clear_error(core: SchedulerCore) -> None:
    actions = step(core, open_with([{"cpus": 1}]))
    [reject] = [a for a in actions if isinstance(a, A.Reject)]
    assert reject.code == ErrorCode.BAD_REQUEST and "host" in reject.message
    assert "K" not in core.clusters


def test_watching_clients_hear_of_nodes_joining_reporting_and_leaving(core: SchedulerCore) -> None:
    step(core, E.NodeJoined("n1", "alpha", "10.0.0.1", 2, 5.0))
    opened = E.ClusterOpened("c1", "alice", "K", "name", b"computation", False, {"node_updates": True})
    actions = step(core, opened, E.ClusterOpened("c1", "alice", "L", "quiet", b"computation", False, {}))
    events = lambda acts: [(a.cluster_id, n.event, n.name) for a in acts if isinstance(a, A.NotifyNodes) for n in a.nodes]  # noqa: E731
    assert events(actions) == [("K", "joined", "alpha")]
    actions = step(core, E.NodeJoined("n2", "beta", "10.0.0.2", 2, 5.0), E.NodeReported("n1", {"cpus": 2}), now=1)
    assert events(actions) == [("K", "joined", "beta"), ("K", "report", "alpha")]
    assert events(step(core, E.NodeLeft("n2", "gone"), now=2)) == [("K", "left", "beta")]


def test_client_decided_allocation_waits_for_the_client_then_follows_it(core: SchedulerCore) -> None:
    step(
        core,
        E.NodeJoined("n1", "alpha", "10.0.0.1", 4, 5.0),
        E.NodeJoined("n2", "beta", "10.0.0.2", 4, 5.0),
        E.ClusterOpened("c1", "alice", "K", "name", b"computation", False, {"allocate": "client", "node_updates": True}),
    )
    assert not dispatched(step(core, submit("K", 6), now=1))  # no node until the client's NodeAllocate says
    actions = step(core, E.NodeCpusSet("c1", "K", "beta", 3), E.NodeCpusSet("c1", "K", "alpha", 0), now=2)
    assert dispatched(actions) == {"n2": 3}


def test_set_node_cpus_caps_an_unrestricted_cluster_and_lifting_it_restores_all(core: SchedulerCore) -> None:
    step(core, E.NodeJoined("n1", "alpha", "10.0.0.1", 4, 5.0), E.ClusterOpened("c1", "alice", "K", "n", b"c", False, {}))
    step(core, E.NodeCpusSet("c1", "K", "alpha", 1), now=1)
    assert dispatched(step(core, submit("K", 4), now=2)) == {"n1": 1}
    assert dispatched(step(core, E.NodeCpusSet("c1", "K", "alpha", -1), now=3)) == {"n1": 3}
    assert not core.clusters["K"].restricted


def test_pinned_jobs_wait_for_their_node_and_the_others_run_anywhere(core: SchedulerCore) -> None:
    beta = E.NodeJoined("n2", "beta", "10.0.0.2", 0, 5.0)  # no CPU yet: the unpinned jobs wait for it
    step(core, E.NodeJoined("n1", "alpha", "10.0.0.1", 1, 5.0), beta, E.ClusterOpened("c1", "alice", "K", "n", b"c", False, {}))
    jobs = [JobSpec(0, 0, b"", {"node": "beta"}), JobSpec(1, 0, b"", {}), JobSpec(2, 0, b"", {"node": "10.0.0.2"})]
    actions = step(core, E.JobsSubmitted("c1", "K", jobs), now=1)
    assert [(a.node, [r.job_id for r in a.jobs]) for a in actions if isinstance(a, A.Dispatch)] == [("n1", [1])]
    actions = step(core, E.NodeJoined("n2", "beta", "10.0.0.2", 2, 5.0), now=2)  # by name and by address
    assert [(a.node, sorted(r.job_id for r in a.jobs)) for a in actions if isinstance(a, A.Dispatch)] == [("n2", [0, 2])]


def test_jobs_pinned_to_a_node_where_setup_failed_end_with_the_reason(core: SchedulerCore) -> None:
    beta = E.NodeJoined("n2", "beta", "10.0.0.2", 0, 5.0)  # no CPU yet: the unpinned jobs wait for it
    step(core, E.NodeJoined("n1", "alpha", "10.0.0.1", 1, 5.0), beta, E.ClusterOpened("c1", "alice", "K", "n", b"c", False, {}))
    jobs = [JobSpec(0, 0, b"", {}), JobSpec(1, 0, b"", {"node": "alpha"}), JobSpec(2, 0, b"", {})]
    step(core, E.JobsSubmitted("c1", "K", jobs), now=1)  # job 0 runs on alpha; 1 waits for it
    actions = step(core, E.ClusterFailedOnNode("n1", "K", "ImportError: numpy"), now=2)
    [results] = [a.results for a in actions if isinstance(a, A.DeliverResults)]
    assert [(r.job_id, r.status) for r in results] == [(1, JobStatus.TERMINATED)]
    assert "pinned" in results[0].exception and "numpy" in results[0].exception
    assert core.clusters["K"].queued == 2  # job 0 back in the queue, job 2 still there
