"""Which of a turn's actions leave while its journal commit is made durable (dispy_sched/ahead.py)."""

from __future__ import annotations

from dispy_sched import ahead
from dispy_sched.core import actions as A
from dispy_wire.messages import JobRef, JobStart, RunJob
from dispy_wire.status import JobStatus
from test_core import result


def everyone_sends_now(client: str) -> bool:
    return True


def from_nodes(*actions: A.Action) -> set[int]:
    """The results of these actions, as if their nodes had sent them this turn."""
    return {id(r) for a in actions if isinstance(a, A.DeliverResults) for r in a.results}


def test_results_and_notices_go_ahead_and_acknowledgements_wait_for_the_commit() -> None:
    started = A.NotifyStarted("c1", "K", [JobStart(3, "n", "10.0.0.1", 1.0)])
    results = A.DeliverResults("c1", "K", [result("K", 1)])
    actions: list[A.Action] = [
        A.Dispatch("n1", [RunJob("K", 4, b"", {})]),  # a node's: not before its jobs are journaled
        started,
        results,
        A.ConfirmResults("n1", [JobRef("K", 1)]),  # lets the node drop its copy of the result: waits
    ]
    assert ahead.split(actions, everyone_sends_now, from_nodes(results)) == ([started, results], [actions[0], actions[3]])


def test_a_clients_frames_keep_their_order_what_follows_an_action_that_waits_waits_too() -> None:
    accepted = A.ConfirmAccepted("c1", "K", [4])
    c1_results = A.DeliverResults("c1", "K", [result("K", 1)])
    c2_results = A.DeliverResults("c2", "L", [result("L", 1)])
    early, late = ahead.split([accepted, c1_results, c2_results], everyone_sends_now, from_nodes(c1_results, c2_results))
    assert (early, late) == ([c2_results], [accepted, c1_results])  # another client's are not held by c1's


def test_results_a_connection_would_keep_waiting_wait_for_the_commit_with_what_follows() -> None:
    first = A.DeliverResults("slow", "K", [result("K", 1)])
    nodes = A.NotifyNodes("slow", "K", [])
    other = A.DeliverResults("c2", "L", [result("L", 1)])
    early, late = ahead.split([first, nodes, other], lambda client: client != "slow", from_nodes(first, other))
    assert (early, late) == ([other], [first, nodes])


def test_a_result_the_core_made_waits_for_the_commit_with_what_follows_for_its_client() -> None:
    """A cancel's result exists nowhere but in this turn's commit: sent ahead and lost to a crash, the next run
    (without the cancel) would run the job the user was told is cancelled."""
    node_result = A.DeliverResults("c1", "K", [result("K", 1)])
    mixed = A.DeliverResults("c2", "L", [result("L", 1), result("L", 2, JobStatus.CANCELLED)])
    started = A.NotifyStarted("c2", "L", [JobStart(3, "n", "10.0.0.1", 1.0)])
    arrived = {id(node_result.results[0]), id(mixed.results[0])}
    early, late = ahead.split([mixed, started, node_result], everyone_sends_now, arrived)
    assert (early, late) == ([node_result], [mixed, started])


def test_a_start_notice_of_a_job_dispatched_in_the_turn_waits_for_its_commit() -> None:
    """A node that does not queue starts what it is sent: its jobs are told started as they are dispatched, which
    a lost commit would undo. A start the node reported goes ahead."""
    dispatched = A.NotifyStarted("c1", "K", [JobStart(3, "n", "10.0.0.1", 1.0)])
    reported = A.NotifyStarted("c2", "K2", [JobStart(3, "n", "10.0.0.1", 1.0)])  # same id, another cluster
    results = A.DeliverResults("c1", "K", [result("K", 1)])
    actions: list[A.Action] = [A.Dispatch("n1", [RunJob("K", 3, b"", {})]), dispatched, reported, results]
    early, late = ahead.split(actions, everyone_sends_now, from_nodes(results))
    assert (early, late) == ([reported], [actions[0], dispatched, results])
