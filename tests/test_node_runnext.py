"""Worker isolation's jobs sent on to the zygote while every CPU is busy (`zp.RunNext`), driven through the
runner directly (the harness of test_node_runner): they start only in the place of a job that ends, or once a
CPU frees; the offer shrinking or a recall takes back those not started."""

from __future__ import annotations

import sys

import cloudpickle
from test_node_runner import Harness, run, value

from dispy_wire.messages import JobRef
from dispy_wire.status import JobStatus

cloudpickle.register_pickle_by_value(sys.modules[__name__])

WORKER = {"isolation": "worker"}


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def ids_started(h: Harness) -> list[int]:
    return [ref.job_id for ref, _ in h.started]


async def ready_with_one_cpu(h: Harness) -> None:
    h.load("c1", options=WORKER, func=nap)
    await h.call("c1", 0)
    h.started.clear()
    h.runner.set_slots(1)


def test_a_job_sent_on_and_then_recalled_is_given_back_and_never_runs() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0,))  # the second goes on to the zygote, behind the first
        assert ids_started(h) == [long]
        assert h.runner.recall([JobRef("c1", waiting)]) == []  # not here to give back at once: asked back
        await h.until(lambda: h.returned == [JobRef("c1", waiting)])
        h.runner.kill([JobRef("c1", long)])
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert value(await h.call("c1", 0)) == 0  # the CPU went on to the next job, not to the one given back
        assert waiting not in ids_started(h) and all(r.job_id != waiting for r in h.results)
        assert h.runner.busy == 0

    run(body)


def test_a_job_sent_on_goes_back_to_the_queue_when_the_offer_shrinks() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0,))
        h.runner.set_slots(0)  # drained: no job may start in the long one's place
        h.runner.kill([JobRef("c1", long)])
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert ids_started(h) == [long] and h.runner.running == 0 and h.runner.busy == 1  # waiting, not started
        h.runner.set_slots(1)
        assert value(await h.result(waiting)) == 0
        assert ids_started(h) == [long, waiting]

    run(body)


def test_a_job_sent_on_and_cancelled_while_the_offer_shrinks_ends_cancelled_and_never_runs() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0,))
        h.runner.set_slots(0)  # asked back from the zygote...
        h.runner.kill([JobRef("c1", waiting)])  # ...and cancelled before it is back
        assert (await h.result(waiting)).status == JobStatus.CANCELLED
        h.runner.set_slots(1)
        h.runner.kill([JobRef("c1", long)])
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert value(await h.call("c1", 0)) == 0
        assert waiting not in ids_started(h) and [r.job_id for r in h.results].count(waiting) == 1

    run(body)


def test_a_job_sent_on_starts_at_once_when_a_cpu_frees_before_any_job_ends() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0,))
        h.runner.set_slots(2)  # a second CPU: the job waiting in the zygote starts now (zp.StartNext)
        assert value(await h.result(waiting)) == 0
        assert h.runner.running == 1  # the long one still runs beside it
        h.runner.kill([JobRef("c1", long)])
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert ids_started(h) == [long, waiting]

    run(body)
