"""Worker isolation's jobs sent on to the zygote while every CPU is busy (`zp.RunNext`), driven through the
runner directly (the harness of test_node_runner): they start only in the place of a job that ends, or once a
CPU frees; the offer shrinking or a recall takes back those not started."""

from __future__ import annotations

import asyncio
import random
import sys

import cloudpickle
import psutil
from test_node_runner import Harness, run, value
from waiting import async_wait_until

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


def loud(x: int) -> int:
    import os
    import sys

    sys.stdout.write(f"out {x}\n" * (x % 4 * 500))  # none, or kilobytes: across the zygote's reads
    sys.stdout.flush()
    os.write(2, b"err %d\n" % x)  # past Python's buffers: straight into the pipe
    return x


def test_jobs_handed_ahead_to_workers_each_keep_their_own_output() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", options=WORKER, func=loud)
        await h.call("c1", 0)
        h.runner.set_slots(2)  # every CPU busy: the rest are sent on, and handed ahead to the two workers
        ids = h.run("c1", *[(i,) for i in range(300)])
        for i, job_id in enumerate(ids):
            result = await h.result(job_id)
            assert (value(result), result.stdout, result.stderr) == (i, b"out %d\n" % i * (i % 4 * 500), b"err %d\n" % i)

    run(body)


def test_a_job_handed_ahead_and_cancelled_ends_at_once_and_the_job_before_it_runs_on() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0,))  # the second is handed to the first one's worker, to follow it
        assert ids_started(h) == [long]
        h.runner.kill([JobRef("c1", waiting)])
        assert (await h.result(waiting)).status == JobStatus.CANCELLED  # not after the long one: now
        assert all(r.job_id != long for r in h.results)  # which runs on
        h.runner.kill([JobRef("c1", long)])
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert value(await h.call("c1", 0)) == 0
        assert waiting not in ids_started(h) and [r.job_id for r in h.results].count(waiting) == 1

    run(body)


def test_a_job_handed_ahead_runs_when_the_job_before_it_is_cancelled() -> None:
    async def body(h: Harness) -> None:
        await ready_with_one_cpu(h)
        long, waiting = h.run("c1", (60,), (0.5,))
        h.runner.kill([JobRef("c1", long)])  # its worker goes with it: the one to follow it runs elsewhere
        assert (await h.result(long)).status == JobStatus.CANCELLED
        assert value(await h.result(waiting)) == 0.5
        assert ids_started(h) == [long, waiting] and h.runner.busy == 0

    run(body)


def double_or_nap(x: int) -> int:
    import time

    if x % 50 == 0:  # a few run long enough to be cancelled while they run
        time.sleep(0.05)
    print("o", x)
    return 2 * x


def test_cancels_and_a_shrinking_offer_under_load_end_every_job_once_with_its_own_result_and_output() -> None:
    async def body(h: Harness) -> None:
        h.load("c1", options=WORKER, func=double_or_nap)
        h.runner.set_slots(2)
        rng = random.Random(14)
        ids: list[int] = []
        cancelled: set[int] = set()
        for wave in range(20):
            batch = h.run("c1", *[(i,) for i in range(len(ids), len(ids) + 100)])
            ids += batch
            for job_id in rng.sample(batch, 10):  # queued here, sent on, or handed ahead to a worker
                h.runner.kill([JobRef("c1", job_id)])
                cancelled.add(job_id)
            if wave % 5 == 0:  # taken back from the zygote and its workers, then sent again
                h.runner.set_slots(1)
                await asyncio.sleep(0.01)  # (paces the load: nothing is asserted after it)
                h.runner.set_slots(2)
            await asyncio.sleep(0.02)
            ended = {r.job_id for r in h.results}
            running = [ref.job_id for ref, _ in h.started if ref.job_id not in ended]
            for job_id in rng.sample(running, min(5, len(running))):  # cancelled as they run (or just ended)
                h.runner.kill([JobRef("c1", job_id)])
                cancelled.add(job_id)
        await h.until(lambda: len(h.results) >= len(ids))
        assert sorted(r.job_id for r in h.results) == ids  # each exactly once
        for r in h.results:
            if r.job_id in cancelled and r.status == JobStatus.CANCELLED:
                continue
            assert r.status == JobStatus.FINISHED and value(r) == 2 * r.job_id, (r.job_id, r.exception)
            assert r.stdout == b"o %d\n" % r.job_id
        assert h.runner.busy == 0

    run(body)


def pid_and_loud(x: int) -> tuple[int, int]:
    import os

    print("out", x)
    os.write(2, b"err %d\n" % x)
    return os.getpid(), x


def test_clusters_of_short_jobs_interleaved_keep_their_own_workers_and_send_their_jobs_on() -> None:
    async def body(h: Harness) -> None:
        clusters = ["c1", "c2", "c3", "c4"]  # as four users' jobs, interleaved by fair share, on a 2-CPU node
        for cluster in clusters:
            h.load(cluster, options=WORKER, func=pid_and_loud)
            await h.call(cluster, -1)  # ready, with one short job's run time known
        h.started.clear()
        h.runner.set_slots(2)
        ids = {cluster: [] for cluster in clusters}
        for i in range(400):
            cluster = clusters[i % len(clusters)]
            ids[cluster] += h.run(cluster, (i,))
        await h.until(lambda: len(h.results) >= 4 + 400)
        pids: dict[str, set[int]] = {}
        for cluster, job_ids in ids.items():
            for job_id in job_ids:
                result = await h.result(job_id)
                pid, x = value(result)
                assert (result.stdout, result.stderr) == (b"out %d\n" % x, b"err %d\n" % x)
                pids.setdefault(cluster, set()).add(pid)
        assert sorted(r.job_id for r in h.results) == list(range(4 + 400))  # each exactly once
        for cluster in clusters:  # its workers stay while the CPUs serve other clusters: no fork per job
            assert len(pids[cluster]) <= 2, (cluster, pids[cluster])
            assert all(not pids[cluster] & pids[other] for other in clusters if other != cluster)  # never shared
        # jobs started in the place of one of their cluster's ending (its Done after their Started), not only
        # each after a round trip through the daemon
        assert max(running for _, running in h.started) > 2
        assert h.runner.busy == 0

    run(body)


def test_jobs_of_a_cluster_of_longer_jobs_are_not_sent_on_past_another_clusters_older_job() -> None:
    async def body(h: Harness) -> None:
        for cluster in ("c1", "c2"):
            h.load(cluster, options=WORKER, func=nap)
        await h.call("c1", 0.2)  # its jobs are not short: none goes on while another cluster waits
        await h.call("c2", 0)
        h.started.clear()
        h.runner.set_slots(1)
        (first,) = h.run("c1", (0.3,))
        (other,) = h.run("c2", (0,))
        (later,) = h.run("c1", (0,))  # after c2's job: it must not take the first one's place before it
        for job_id in (first, other, later):
            await h.result(job_id)
        assert ids_started(h) == [first, other, later]

    run(body)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_idle_workers_of_a_cluster_that_closes_end_while_another_cluster_runs_on() -> None:
    async def body(h: Harness) -> None:
        for cluster in ("c1", "c2"):
            h.load(cluster, options=WORKER, func=pid_and_loud)
        h.runner.set_slots(2)
        firsts = [h.run(cluster, (i,))[0] for i in range(20) for cluster in ("c1", "c2")]
        for job_id in firsts:
            await h.result(job_id)
        ids = {r.job_id: value(r)[0] for r in h.results}
        gone = {ids[job_id] for job_id in firsts[::2]}  # c1's workers, idle now
        await h.runner.unload("c1")

        await async_wait_until(lambda: not any(map(alive, gone)), what="the closed cluster's idle workers gone")
        for i in range(4):  # c2 runs on, in its own workers
            pid, x = value(await h.call("c2", i))
            assert x == i and pid not in gone

    run(body)


def test_a_cluster_waiting_behind_another_clusters_short_jobs_sent_on_starts_while_they_keep_coming() -> None:
    async def body(h: Harness) -> None:
        for cluster in ("c1", "c2"):
            h.load(cluster, options=WORKER, func=nap)
            await h.call(cluster, 0)  # both short: both may send jobs on
        h.runner.set_slots(1)
        fed = h.run("c1", *[(0.002,)] * 100)  # short, yet long enough that its worker never runs out
        (waiting,) = h.run("c2", (0,))
        while all(r.job_id != waiting for r in h.results):  # c1's jobs keep coming, as a scheduler's window sends
            assert len(fed) < 1500, "c2's job never started while c1's kept coming"
            ended = {r.job_id for r in h.results}
            fed += h.run("c1", *[(0.002,)] * (100 - sum(job_id not in ended for job_id in fed[-100:])))
            count = len(h.results)
            await h.until(lambda: len(h.results) > count)

    run(body)
