"""`JobTracker`: what one loop turn delivers reaches the dispatcher together, and results are acknowledged
in batches, all of them before `wait` returns; callbacks still run per job, in order, once per status."""

from __future__ import annotations

import asyncio
import time

from dispy_client.job import DispyJob
from dispy_client.node import DispyNode
from dispy_client.tracker import FORGED_TEXT, JobTracker, merged
from dispy_client.updates import Created, Files, Nodes, Provisional, Results, Started
from dispy_wire import messages as M
from dispy_wire import result_mac
from dispy_wire.payload import dumps
from dispy_wire.status import JobStatus
from waiting import async_wait_until, wait_until


def _failed(job_id: int) -> M.JobResult:
    """A terminal result that carries nothing to unpickle (it needs no MAC)."""
    return M.JobResult("c1", job_id, int(JobStatus.TERMINATED), None, b"", b"", "boom", "RuntimeError", 0.0, 1.0)


def test_one_turns_results_are_acknowledged_together_before_wait_returns() -> None:
    acked: list[list[int]] = []
    tracker = JobTracker("t", "c1", b"k" * 32, on_settled=acked.append)
    jobs = [DispyJob((i,), {}, i, time.time()) for i in range(1, 101)]
    for job in jobs:
        tracker.add(job)
    assert not tracker.wait(0.05)

    async def one_turn() -> None:
        for job in jobs:
            tracker.deliver(Results([_failed(job._uid)]))

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(one_turn())
        loop.run_until_complete(asyncio.sleep(0))  # the turn's end, where the items go to the dispatcher
    finally:
        loop.close()
    assert tracker.wait(60)
    assert acked == [list(range(1, 101))]  # one acknowledgement, made before wait returned
    assert all(job.status == DispyJob.Terminated and job.exception == "boom" for job in jobs)
    tracker.close()


def test_results_are_acknowledged_within_the_delay_while_jobs_remain() -> None:
    acked: list[list[int]] = []
    tracker = JobTracker("t", "c1", b"k" * 32, on_settled=acked.append)
    jobs = [DispyJob((i,), {}, i, time.time()) for i in range(1, 4)]
    for job in jobs:
        tracker.add(job)
    tracker.deliver(Results([_failed(1)]))  # from no loop: queued at once
    wait_until(lambda: acked, 60, "the first result acknowledged")
    assert acked == [[1]]  # job 2 and 3 still run: the ack did not wait for them
    assert not tracker.wait(0.05)
    tracker.close()


def _finished(key: bytes, job_id: int, value: object) -> M.JobResult:
    """A Finished result MAC'd under `key`, as a job process makes it."""
    payload = dumps(value)
    mac = result_mac.sign(key, result_mac.Kind.RESULT, "c1", job_id, int(JobStatus.FINISHED), payload)
    return M.JobResult("c1", job_id, int(JobStatus.FINISHED), payload, b"", b"", "", "", 0.5, 1.0, mac)


def test_a_turns_starts_and_results_reach_callbacks_per_job_in_order_each_job_ending_once() -> None:
    key = b"k" * 32
    seen: list[tuple[int, int]] = []  # (status, job uid) as cluster_status saw them
    ended: list[int] = []

    def job_status(job: DispyJob) -> None:
        ended.append(job._uid)
        if job._uid == 2:
            raise RuntimeError("a user's callback that fails")  # logged; the jobs after it are still handled

    def cluster_status(status: int, node: object, job: DispyJob | None) -> None:
        if job is not None:
            seen.append((status, job._uid))

    acked: list[list[int]] = []
    tracker = JobTracker("t", "c1", key, job_status=job_status, cluster_status=cluster_status,
                         on_settled=acked.append)  # fmt: skip
    jobs = [DispyJob((i,), {}, i, time.time()) for i in range(1, 6)]
    for job in jobs:
        tracker.add(job)
    forged = _finished(b"x" * 32, 4, "not ours")

    async def one_turn() -> None:
        tracker.deliver(Started([M.JobStart(job._uid, "n1", "127.0.0.1", 0.5) for job in jobs]))
        tracker.deliver(Results([_finished(key, 3, 30), _finished(key, 1, 10), forged, _finished(key, 2, 20)]))
        tracker.deliver(Results([_finished(key, 1, 11), _finished(key, 5, 50)]))  # job 1's second result: ignored

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(one_turn())
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert tracker.wait(60)
    created = [(DispyJob.Created, uid) for uid in range(1, 6)]
    running = [(DispyJob.Running, uid) for uid in range(1, 6)]
    ends = [(DispyJob.Finished, 3), (DispyJob.Finished, 1), (DispyJob.Terminated, 4), (DispyJob.Finished, 2),
            (DispyJob.Finished, 5)]  # fmt: skip
    assert seen == created + running + ends
    assert ended == [3, 1, 4, 2, 5]  # once each, in the order the results came
    assert [job.result for job in jobs] == [10, 20, 30, None, 50]
    assert jobs[3].exception == FORGED_TEXT
    assert all(job.finish.is_set() for job in jobs) and tracker.counts().running == 0
    assert sorted(i for batch in acked for i in batch) == [1, 1, 2, 3, 4, 5]  # the copy of 1 too: nothing held back
    tracker.close()


def test_starts_without_a_result_to_go_with_still_reach_the_job_and_callbacks() -> None:
    seen: list[int] = []
    tracker = JobTracker("t", "c1", b"k" * 32, cluster_status=lambda status, node, job: seen.append(status))
    job = DispyJob((1,), {}, 1, time.time())
    tracker.add(job)

    async def starts_only() -> None:
        tracker.deliver(Started([M.JobStart(1, "n1", "127.0.0.1", 0.5)]))
        await async_wait_until(lambda: job.status == DispyJob.Running, 60, "the start handed over alone")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(starts_only())
    finally:
        loop.close()
    wait_until(lambda: seen == [DispyJob.Created, DispyNode.Initialized, DispyJob.Running], 60, "its callbacks")
    assert job.node == "n1" and tracker.counts().running == 1
    tracker.close()


def test_news_queued_together_fold_into_one_list_per_kind_keeping_each_jobs_order() -> None:
    def start(job_id: int, node: str = "n1") -> M.JobStart:
        return M.JobStart(job_id, node, "127.0.0.1", 0.5)

    job = DispyJob((1,), {}, 9, time.time())
    info = M.NodeInfo("joined", "n2", "127.0.0.2", 2, 0, {})
    provisional = M.JobResult("c1", 2, int(JobStatus.PROVISIONAL_RESULT), b"p", b"", b"", "", "", 0.5, 0.0)
    updates = [
        Started([start(1)]), Results([_failed(1)]), Started([start(2)]), Provisional([provisional]),
        Started([start(3)]), Results([_failed(3)]),
        Started([start(2, "n2")]),  # job 2 again (rerun elsewhere) after its provisional result: a new run
        Results([_failed(2)]),
        Created(job), Nodes([info]),  # keep their place: the run before them is closed
        Started([start(4)]), Results([_failed(4)]),
    ]  # fmt: skip
    assert merged(updates) == [
        Started([start(1), start(2), start(3)]), Provisional([provisional]), Results([_failed(1), _failed(3)]),
        Started([start(2, "n2")]), Results([_failed(2)]),
        Created(job), Nodes([info]),
        Started([start(4)]), Results([_failed(4)]),
    ]  # fmt: skip


def test_a_jobs_file_then_provisional_result_reach_it_in_that_order_across_a_merged_run() -> None:
    def provisional(job_id: int, value: bytes) -> M.JobResult:
        return M.JobResult("c1", job_id, int(JobStatus.PROVISIONAL_RESULT), value, b"", b"", "", "", 0.5, 0.0)

    sent = M.JobFile("c1", 1, "out.csv", b"a,b\n", 0o644)
    other = M.JobFile("c1", 2, "log.txt", b"x", 0o644)
    # job 1: dispy_send_file(f) then dispy_provisional_result("ready"); job 2's file then job 3's result fold in
    updates = [Files([other]), Files([sent]), Provisional([provisional(1, b"ready")]), Provisional([provisional(3, b"p")])]
    out = merged(updates)
    order: list[tuple[str, int]] = []  # each job's news in the order they are handed to the dispatcher
    for update in out:
        if isinstance(update, Files):
            order += [("Files", f.job_id) for f in update.files]
        elif isinstance(update, Provisional):
            order += [("Provisional", r.job_id) for r in update.results]
    assert order.index(("Files", 1)) < order.index(("Provisional", 1))
    assert sorted(order) == sorted([("Files", 2), ("Files", 1), ("Provisional", 1), ("Provisional", 3)])
