"""Per-user limits and what the core keeps, built directly: events in, actions out, invariants after every step.

Each limit refuses (or pauses) one user with a typed error naming the limit
and the numbers, and leaves every other user alone; nothing the core no
longer needs stays in memory (refused jobs, closed clusters, acknowledged
results).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

from dispy_sched.core import JobState, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.state import RECORD_OVERHEAD, Limits, job_cost, result_cost
from dispy_wire.errors import ErrorCode
from dispy_wire.messages import JobFile, JobResult, JobSpec
from dispy_wire.status import JobStatus

from test_core import arrived, core, delivered, dispatched_jobs, joined, of, opened, result, step, submitted

__all__ = ["core"]  # a fixture, used by name

MiB = 1 << 20


def big_submit(client: str, cluster_id: str, job_id: int, size: int) -> E.JobsSubmitted:
    return E.JobsSubmitted(client, cluster_id, [JobSpec(job_id, 0, b"x" * size, {})])


def big_result(cluster_id: str, job_id: int, size: int) -> JobResult:
    return JobResult(cluster_id, job_id, int(JobStatus.FINISHED), b"r" * size, b"", b"", "", "", 0.0, 1.0)


def opened_with(client: str, cluster_id: str, user: str, computation: bytes) -> E.ClusterOpened:
    return E.ClusterOpened(client, user, cluster_id, f"name-{cluster_id}", computation, False, {})


# --------------------------------------------------------------------------
# max_clusters


def test_open_beyond_max_clusters_is_refused_naming_the_limit_and_a_close_frees_a_slot(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(default_limits=Limits(max_clusters=2))
    step(core, opened("ca", "A1", "alice"), opened("ca2", "A2", "alice"), now=0)
    actions = step(core, opened("ca3", "A3", "alice"), opened("cb", "B1", "bob"), now=1)
    (reject,) = of(actions, A.Reject)
    assert (reject.client, reject.code, reject.ref) == ("ca3", ErrorCode.LIMIT, "A3")
    assert "max_clusters = 2" in reject.message and "has 2" in reject.message and "alice" in reject.message
    assert "A3" not in core.clusters and "B1" in core.clusters  # bob is not alice
    # a cluster whose program left still counts: it may come back for its results
    step(core, E.ClientLeft("ca2"), now=2)
    assert of(step(core, opened("ca3", "A3", "alice"), now=3), A.Reject)
    step(core, E.ClusterClosed("ca", "A1", False), now=4)
    actions = step(core, opened("ca3", "A3", "alice"), now=5)
    assert not of(actions, A.Reject) and of(actions, A.ConfirmOpened)


def test_reattaching_a_cluster_is_not_a_new_one(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(default_limits=Limits(max_clusters=1))
    step(core, opened("ca", "A", "alice"), now=0)
    step(core, E.ClientLeft("ca"), now=1)
    actions = step(core, opened("ca-again", "A", "alice"), now=2)
    assert [a.resumed for a in of(actions, A.ConfirmOpened)] == [True] and not of(actions, A.Reject)


# --------------------------------------------------------------------------
# max_queued_bytes


def test_a_submit_beyond_max_queued_bytes_is_refused_with_the_numbers_and_leaves_no_record(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(limits={"alice": Limits(max_queued_bytes=3 * MiB)})
    step(core, opened_with("ca", "A", "alice", b"c" * 1000), opened("cb", "B", "bob"), now=0)
    step(core, big_submit("ca", "A", 1, MiB), now=1)
    assert core.users["alice"].queued_bytes == 1000 + job_cost(b"x" * MiB)
    actions = step(core, big_submit("ca", "A", 2, 2 * MiB), big_submit("cb", "B", 1, 2 * MiB), now=2)
    (reject,) = of(actions, A.Reject)
    assert (reject.client, reject.code, reject.ref) == ("ca", ErrorCode.LIMIT, "A")
    assert "max_queued_bytes = 3.0 MiB" in reject.message and "it keeps 1.0 MiB" in reject.message
    assert "a job of 2.0 MiB of arguments" in reject.message and "1 of the 1 jobs" in reject.message
    (refused,) = delivered(actions)[("ca", "A")]
    assert (refused.job_id, refused.status) == (2, JobStatus.CANCELLED) and "max_queued_bytes" in refused.exception
    assert sorted(core.clusters["A"].jobs) == [1]  # the refused job's 2 MiB are not kept
    assert sorted(core.clusters["B"].jobs) == [1]  # bob has no such limit
    # a job that ends gives its bytes back
    step(core, joined("n1", 2), now=3)
    step(core, arrived("n1", result("A", 1)), now=4)
    step(core, E.ResultsAcked("ca", "A", [1]), now=5)
    assert core.users["alice"].queued_bytes == 1000
    assert not of(step(core, big_submit("ca", "A", 3, 2 * MiB), now=6), A.Reject)


def test_an_open_or_resetup_beyond_max_queued_bytes_is_refused_and_a_close_gives_the_bytes_back(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(limits={"alice": Limits(max_queued_bytes=5 * MiB)})
    step(core, joined("n1", 1), opened_with("ca", "A", "alice", b"c" * (3 * MiB)), now=0)
    actions = step(core, opened_with("ca2", "A2", "alice", b"c" * (3 * MiB)), now=1)
    (reject,) = of(actions, A.Reject)
    assert (reject.client, reject.code, reject.ref) == ("ca2", ErrorCode.LIMIT, "A2")
    assert "cluster name-A2 refused" in reject.message and "the computation takes 3.0 MiB" in reject.message
    actions = step(core, E.ResetupRequested("ca", "A", "host-n1", b"d" * (3 * MiB)), now=2)
    assert [r.code for r in of(actions, A.Reject)] == [ErrorCode.LIMIT] and not core.clusters["A"].node_blobs
    step(core, E.ResetupRequested("ca", "A", "host-n1", b"d" * MiB), now=3)
    assert core.users["alice"].queued_bytes == 4 * MiB
    step(core, E.NodeLeft("n1", "gone"), now=4)  # its copy of the computation goes with it
    assert core.users["alice"].queued_bytes == 3 * MiB
    step(core, E.ClusterClosed("ca", "A", False), now=5)
    assert core.users["alice"].queued_bytes == 0
    assert not of(step(core, opened_with("ca2", "A2", "alice", b"c" * (3 * MiB)), now=6), A.Reject)


# --------------------------------------------------------------------------
# max_held_bytes


def test_results_held_at_max_held_bytes_pause_that_users_jobs_until_collected(make_core: Callable[..., SchedulerCore]) -> None:
    two_results = 2 * result_cost(big_result("A", 0, MiB))
    core = make_core(limits={"alice": Limits(max_held_bytes=two_results)})
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), joined("n1", 2), now=0)
    step(core, submitted("ca", "A", *range(6)), now=1)
    step(core, E.ClientLeft("ca"), now=2)  # alice's program is gone; her jobs run on
    step(core, arrived("n1", big_result("A", 0, MiB)), now=3)  # job 2 takes its CPU: one result held is fine
    actions = step(core, arrived("n1", big_result("A", 1, MiB)), submitted("cb", "B", *range(4)), now=4)
    alice = core.users["alice"]
    assert alice.held_bytes == two_results and alice.holding_too_much
    assert core.status()["users"]["alice"]["paused"] is True
    assert dispatched_jobs(actions) == [0]  # the free CPU goes to bob
    # from now on every CPU goes to bob; alice's jobs stay queued, none lost
    for t in range(5, 10):
        running = sorted(core.nodes["n1"].jobs)
        actions = step(core, arrived("n1", *(big_result(c, j, MiB) for c, j in running)), now=t)
        assert all(c == "B" for d in of(actions, A.Dispatch) for c in (r.cluster_id for r in d.jobs))
    assert core.users["bob"].finished == 4 and core.clusters["A"].queued == 3 and alice.busy == 0
    # alice comes back: her results are resent; once acknowledged, her jobs start again
    actions = step(core, opened("ca-again", "A", "alice"), now=10)
    assert sorted(r.job_id for r in delivered(actions)[("ca-again", "A")]) == [0, 1, 2]
    actions = step(core, E.ResultsAcked("ca-again", "A", [0, 1, 2]), now=11)
    assert alice.held_bytes == 0 and len(dispatched_jobs(actions)) == 2


def test_an_attached_client_is_told_once_when_its_user_is_paused(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(limits={"alice": Limits(max_held_bytes=result_cost(big_result("A", 0, 10)))})
    step(core, opened("ca", "A", "alice"), opened("ca2", "A2", "alice"), joined("n1", 2), now=0)
    step(core, submitted("ca", "A", 1, 2), now=1)
    actions = step(core, arrived("n1", big_result("A", 1, 10), big_result("A", 2, 10)), now=2)
    rejects = of(actions, A.Reject)
    assert sorted(r.client for r in rejects) == ["ca", "ca2"] and all(r.code == ErrorCode.LIMIT for r in rejects)
    assert "max_held_bytes" in rejects[0].message and "no new job of this user starts" in rejects[0].message
    step(core, E.ResultsAcked("ca", "A", [1, 2]), now=3)
    assert not core.users["alice"].holding_too_much


def test_files_kept_for_an_absent_client_count_as_held(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(limits={"alice": Limits(max_held_bytes=MiB)})
    step(core, opened("ca", "A", "alice"), joined("n1", 1), now=0)
    step(core, submitted("ca", "A", 1, 2), now=1)
    step(core, E.ClientLeft("ca"), now=2)
    step(core, E.FilesArrived("n1", [JobFile("A", 1, "out.bin", b"f" * MiB, 0o600)]), now=3)
    assert core.users["alice"].holding_too_much
    actions = step(core, arrived("n1", result("A", 1)), now=4)
    assert not dispatched_jobs(actions)  # job 2 waits
    actions = step(core, opened("ca", "A", "alice"), now=5)  # the file goes out with the re-attach
    assert [f.name for d in of(actions, A.DeliverFiles) for f in d.files] == ["out.bin"]
    assert dispatched_jobs(actions) == [2]


# --------------------------------------------------------------------------
# Nothing kept beyond need


def test_a_client_that_never_acknowledges_cannot_grow_the_core_with_refused_jobs(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(limits={"mallory": Limits(max_queued_jobs=10)})
    step(core, opened("cm", "M", "mallory"), now=0)
    for batch in range(20):
        ids = range(batch * 1000, (batch + 1) * 1000)
        step(core, submitted("cm", "M", *ids), now=batch + 1)
    assert len(core.clusters["M"].jobs) == 10  # 19,990 refused, none kept, none acknowledged


def test_closing_and_acknowledging_leave_nothing_behind(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core()
    step(core, opened("ca", "A", "alice"), joined("n1", 2), now=0)
    step(core, submitted("ca", "A", *range(4)), now=1)
    step(core, arrived("n1", result("A", 0), result("A", 1)), now=2)
    step(core, E.ResultsAcked("ca", "A", [0, 1]), now=3)
    assert sorted(core.clusters["A"].jobs) == [2, 3]
    step(core, E.ClusterClosed("ca", "A", True), now=4)  # 2 and 3 are killed
    step(core, arrived("n1", result("A", 2, JobStatus.TERMINATED), result("A", 3, JobStatus.TERMINATED)), now=5)
    assert not core.clusters and not core.nodes["n1"].loaded
    alice = core.users["alice"]
    assert (alice.queued_bytes, alice.held_bytes, alice.clusters) == (0, 0, set())


def test_a_cluster_whose_program_stays_away_for_the_retention_is_released_with_all_it_holds(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(result_retention=100.0, default_limits=Limits(max_clusters=1))
    step(core, opened("ca", "A", "alice"), joined("n1", 1, heartbeat=1000), now=0)
    step(core, submitted("ca", "A", 1, 2, 3), now=1)  # 1 runs, 2 and 3 queued
    step(core, arrived("n1", result("A", 1)), now=2)  # 2 runs; 1's result is delivered, not yet acknowledged
    step(core, E.ClientLeft("ca"), now=3)
    assert not of(step(core, E.Tick(), now=102), A.ReleaseCluster)  # away 99 s: kept
    actions = step(core, E.Tick(), now=103)
    (released,) = of(actions, A.ReleaseCluster)
    assert (released.user, released.cluster_id, released.results, released.jobs) == ("alice", "A", 1, 2)
    assert "away for 100 s or more" in released.why and "1 results" in released.why
    assert [(r.cluster_id, r.job_id) for k in of(actions, A.KillJobs) for r in k.jobs] == [("A", 2)]
    alice = core.users["alice"]
    assert (alice.queued, alice.held_bytes) == (0, 0)  # job 3 cancelled, job 1's result dropped, nothing delivered
    assert not of(actions, A.DeliverResults)
    # the stopped job's end is dropped too, and then the cluster is gone
    actions = step(core, arrived("n1", result("A", 2, JobStatus.TERMINATED)), now=104)
    assert "A" not in core.clusters and not of(actions, A.DeliverResults)
    assert [a.cluster_id for a in of(actions, A.UnloadCluster)] == ["A"]
    assert (alice.clusters, alice.held_bytes, alice.queued_bytes) == (set(), 0, 0)
    # the program comes back: told why, once, and goes on with a new cluster of that id
    actions = step(core, opened("ca2", "A", "alice"), now=200)
    (why,) = of(actions, A.Reject)
    assert (why.code, why.ref) == (ErrorCode.RELEASED, "A") and why.message == released.why
    assert of(actions, A.ConfirmOpened) == [A.ConfirmOpened("ca2", "A", False)]
    step(core, E.ClientLeft("ca2"), now=201)
    assert not of(step(core, opened("ca3", "A", "alice"), now=202), A.Reject)


def test_a_program_back_while_its_released_jobs_are_being_stopped_is_told_to_open_again(
    make_core: Callable[..., SchedulerCore],
) -> None:
    core = make_core(result_retention=10.0)
    step(core, opened("ca", "A", "alice"), joined("n1", 1, heartbeat=1000), now=0)
    step(core, submitted("ca", "A", 1), E.ClientLeft("ca"), now=1)
    step(core, E.Tick(), now=20)
    actions = step(core, opened("ca2", "A", "alice"), now=21)
    (why,) = of(actions, A.Reject)
    assert why.code == ErrorCode.RELEASED and "open it again" in why.message and not of(actions, A.ConfirmOpened)


def test_an_attached_or_returning_cluster_is_never_released(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(result_retention=10.0)
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), now=0)
    step(core, E.ClientLeft("ca"), now=1)
    step(core, opened("ca2", "A", "alice"), now=5)  # back before the deadline
    assert not of(step(core, E.Tick(), now=1000), A.ReleaseCluster)
    assert set(core.clusters) == {"A", "B"}


def test_record_overhead_is_what_the_limits_count(core: SchedulerCore) -> None:
    """`RECORD_OVERHEAD` covers what a queued job costs the core beyond its payload's bytes (measured)."""
    step(core, opened("ca", "A", "alice"), now=0)
    specs = [JobSpec(j, 0, b"p" * 100, {}) for j in range(5000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    core.handle(E.JobsSubmitted("ca", "A", specs), now=1)
    del specs  # the payloads now live in the records alone
    per_job = (tracemalloc.get_traced_memory()[0] - before) / 5000 - 100
    tracemalloc.stop()
    print(f"a queued job costs the core {per_job:.0f} bytes beyond its arguments; counted as {RECORD_OVERHEAD}")
    assert per_job <= RECORD_OVERHEAD
    assert all(j.state is JobState.QUEUED for j in core.clusters["A"].jobs.values())


# --------------------------------------------------------------------------
# Privacy


def test_a_client_sees_other_users_only_as_totals(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core()
    step(core, opened("ca", "SECRET-CLUSTER", "alice"), opened("cb", "B", "bob"), joined("n1", 2), now=0)
    step(core, submitted("ca", "SECRET-CLUSTER", 101, 102, 103), submitted("cb", "B", 7), now=1)
    (report,) = of(step(core, E.StatusRequested("cb", "r", "bob"), now=2), A.ReportStatus)
    status = report.status
    assert set(status["users"]) == {"bob"}
    assert "alice" not in repr(status) and "SECRET" not in repr(status)
    assert status["others"] == {"users": 1, "busy": core.users["alice"].busy, "queued": core.users["alice"].queued}
    assert (status["busy"], status["queued"]) == (2, 2) and status["nodes"]["host-n1"]["busy"] == 2  # totals remain


def test_with_private_data_off_a_client_sees_every_user(make_core: Callable[..., SchedulerCore]) -> None:
    core = make_core(private_data=False)
    step(core, opened("ca", "A", "alice"), opened("cb", "B", "bob"), now=0)
    (report,) = of(step(core, E.StatusRequested("cb", "r", "bob"), now=1), A.ReportStatus)
    assert set(report.status["users"]) == {"alice", "bob"} and "others" not in report.status


def test_node_updates_carry_per_node_totals_and_no_other_users_jobs(core: SchedulerCore) -> None:
    watching = E.ClusterOpened("cb", "bob", "B", "b", b"c", False, {"node_updates": True})
    step(core, opened("ca", "SECRET-CLUSTER", "alice"), watching, joined("n1", 2), now=0)
    actions = step(core, submitted("ca", "SECRET-CLUSTER", 1, 2), now=1)
    actions += step(core, E.NodeReported("n1", {"cpus": 2}), now=2)
    updates = of(actions, A.NotifyNodes)
    assert updates and all(a.client == "cb" for a in updates)
    assert [n.busy for a in updates for n in a.nodes] == [2]  # alice's jobs, as a count
    to_bob = [a for a in actions if getattr(a, "client", "") == "cb"]
    assert to_bob and "SECRET" not in repr(to_bob) and "alice" not in repr(to_bob)
