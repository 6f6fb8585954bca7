"""`JobTracker`: what one loop turn delivers reaches the dispatcher together, and results are acknowledged
in batches, all of them before `wait` returns."""

from __future__ import annotations

import asyncio
import time

from dispy_client.job import DispyJob
from dispy_client.tracker import JobTracker
from dispy_wire import messages as M
from dispy_wire.status import JobStatus
from waiting import wait_until


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
            tracker.deliver("result", [_failed(job._uid)])

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
    tracker.deliver("result", [_failed(1)])  # from no loop: queued at once
    wait_until(lambda: acked, 60, "the first result acknowledged")
    assert acked == [[1]]  # job 2 and 3 still run: the ack did not wait for them
    assert not tracker.wait(0.05)
    tracker.close()
