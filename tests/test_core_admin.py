"""The operator's requests to the core (the HTTP API's management): events in, actions out, no sockets."""

from __future__ import annotations

from dispy_sched.core import CoreConfig, JobState, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.state import Limits
from dispy_sched.policies import load_policy
from dispy_wire.errors import ErrorCode
from dispy_wire.status import JobStatus

from test_core import arrived, delivered, dispatched_jobs, joined, of, opened, result, step, submitted


def make(**config: object) -> SchedulerCore:
    config.setdefault("accounting", True)  # job ends are recorded, as the scheduler does
    return SchedulerCore(load_policy("fair"), CoreConfig(**config))  # type: ignore[arg-type]


def answer(actions: list[A.Action], ref: str = "r") -> A.AnswerAdmin:
    (a,) = [a for a in of(actions, A.AnswerAdmin) if a.ref == ref]
    return a


def test_admin_cancels_one_queued_and_one_running_job() -> None:
    core = make()
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2, 3), now=0)
    actions = step(core, E.CancelRequested("r", None, "K", (1, 2)), now=1)
    assert answer(actions).error == ""
    assert [k.jobs[0].job_id for k in of(actions, A.KillJobs)] == [1]  # job 1 runs: its node kills it
    (res,) = delivered(actions)[("c1", "K")]
    assert (res.job_id, res.status, res.exception) == (2, JobStatus.CANCELLED, "cancelled by an administrator")
    assert core.clusters["K"].jobs[3].state is JobState.QUEUED


def test_cancelling_a_whole_cluster_ends_every_unfinished_job_and_records_their_ends() -> None:
    core = make()
    step(core, opened("c1", "K"), submitted("c1", "K", 1, 2), now=0)
    actions = step(core, E.CancelRequested("r", None, "K", None), now=1)
    assert answer(actions).message.startswith("2 jobs of cluster")
    (ends,) = of(actions, A.RecordJobEnds)
    assert [(e.user, e.job_id, e.status) for e in ends.ends] == [("alice", 1, "Cancelled"), ("alice", 2, "Cancelled")]


def test_a_user_cannot_cancel_another_users_cluster_and_learns_nothing_of_it() -> None:
    core = make()
    step(core, opened("c1", "K", "alice"), submitted("c1", "K", 1), now=0)
    actions = step(core, E.CancelRequested("r", "bob", "K", None), now=1)
    assert answer(actions) == A.AnswerAdmin("r", str(ErrorCode.UNKNOWN_CLUSTER), "no cluster K")
    assert core.clusters["K"].jobs[1].state is JobState.QUEUED
    assert answer(step(core, E.CancelRequested("r", "alice", "K", (1,)), now=2)).error == ""


def test_cancelling_an_ended_job_is_a_bad_request() -> None:
    core = make()
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    step(core, arrived("n1", result("K", 1)), now=1)
    actions = step(core, E.CancelRequested("r", None, "K", (1,)), now=2)
    assert answer(actions).error == str(ErrorCode.BAD_REQUEST)


def test_a_drained_node_gets_no_new_jobs_its_running_ones_finish_and_undrain_resumes() -> None:
    core = make()
    step(core, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1, 2), now=0)
    assert answer(step(core, E.NodeDrainSet("r", "host-n1", True), now=1)).error == ""
    actions = step(core, arrived("n1", result("K", 1)), now=2)
    assert [r.job_id for r in delivered(actions)[("c1", "K")]] == [1]  # the running job finished
    assert not dispatched_jobs(actions)  # and nothing new started there
    # a reconnect does not undrain it
    step(core, E.NodeLeft("n1", "gone"), joined("n1b", 2), now=3)
    assert core.nodes["n1b"].drained is False  # another name
    step(core, E.NodeLeft("n1b", "gone"), now=4)
    assert not dispatched_jobs(step(core, E.NodeJoined("n1c", "host-n1", "10.0.0.9", 2, 5.0), now=5))
    assert dispatched_jobs(step(core, E.NodeDrainSet("r", "host-n1", False), now=6)) == [2]


def test_draining_an_unknown_node_is_refused_but_undraining_a_drained_absent_one_is_not() -> None:
    core = make()
    assert answer(step(core, E.NodeDrainSet("r", "nowhere", False), now=0)).error == str(ErrorCode.BAD_REQUEST)
    assert "not connected" in answer(step(core, E.NodeDrainSet("r", "nowhere", True), now=1)).message
    assert answer(step(core, E.NodeDrainSet("r", "nowhere", False), now=2)).error == ""


def test_capping_a_nodes_cpus_limits_dispatch_and_lifting_it_restores_what_it_offers() -> None:
    core = make()
    step(core, opened("c1", "K"), joined("n1", 4), now=0)
    actions = step(core, E.NodeCpusCapped("r", "host-n1", 1), now=1)
    assert answer(actions).message == "node host-n1 is given 1 of its 4 CPUs"
    assert dispatched_jobs(step(core, submitted("c1", "K", 1, 2, 3), now=2)) == [1]
    # the node's own report does not undo the cap
    step(core, E.NodeReported("n1", {"cpus": 4}), now=3)
    assert core.nodes["n1"].cpus == 1
    assert sorted(dispatched_jobs(step(core, E.NodeCpusCapped("r", "host-n1", -1), now=4))) == [2, 3]


def test_a_share_set_by_the_operator_changes_the_target_and_a_reload_replaces_it() -> None:
    core = make(shares={"alice": 1.0, "bob": 1.0})
    step(core, opened("c1", "A", "alice"), opened("c2", "B", "bob"), submitted("c1", "A", 1), submitted("c2", "B", 1), now=0)
    assert answer(step(core, E.UserShareSet("r", "alice", 3.0), now=1)).error == ""
    assert core.status()["users"]["alice"]["target"] == 0.75
    assert answer(step(core, E.UserShareSet("r", "alice", 0.0), now=2)).error == str(ErrorCode.BAD_REQUEST)
    assert answer(step(core, E.UserShareSet("r", "carol", 1.0), now=2)).message == "no user carol in the users file or connected"
    reload = E.UsersReloaded("r", {"alice": 2.0, "bob": 2.0}, {"bob": Limits(max_cpus=0)}, Limits())
    assert answer(step(core, reload, now=3)).error == ""
    assert core.status()["users"]["alice"]["target"] == 0.5
    assert core.users["bob"].limits.max_cpus == 0
    # bob's new limit holds his job back; alice's runs
    assert dispatched_jobs(step(core, joined("n1", 2), now=4)) == [1]
    assert core.users["alice"].busy == 1 and core.users["bob"].busy == 0
