"""`JobKeeper`: a node's results outlive a lost scheduler connection until the scheduler has them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dispy_node.keeper import JobKeeper, Output
from dispy_node.runner import RunnerConfig
from dispy_wire.messages import JobRef, JobResult
from dispy_wire.status import JobStatus

from waiting import async_wait_until


def result(job_id: int, status: JobStatus = JobStatus.FINISHED) -> JobResult:
    return JobResult("K", job_id, int(status), b"v", b"", b"", "", "", 0.0, 1.0)


def test_a_result_sent_but_not_confirmed_is_sent_again_to_the_next_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        keeper = JobKeeper(grace=60)
        runner = keeper.runner(RunnerConfig(tmp_path))
        first: list[Output] = []
        keeper.attach(first.append)
        runner.report(result(1))
        runner.report(result(2))
        runner.report(result(3, JobStatus.PROVISIONAL_RESULT))  # the job goes on: nothing to keep
        keeper.recorded([JobRef("K", 1)])
        assert first == [result(1), result(2), result(3, JobStatus.PROVISIONAL_RESULT)]
        keeper.detach()  # the connection broke: result 2 may never have arrived
        runner.report(result(4))  # a job that ends while the scheduler is away
        jobs, _ = keeper.held()
        assert jobs == [JobRef("K", 2), JobRef("K", 4)]  # reported in the next Hello
        second: list[Output] = []
        run = keeper.node_run
        assert keeper.runner(RunnerConfig(tmp_path)) is runner  # the same jobs, not a new runner
        assert keeper.node_run == run  # the same run: what the next Hello does not list never arrived
        keeper.attach(second.append)
        assert second == [result(2), result(4)]
        await keeper.close()

    asyncio.run(scenario())


def test_no_session_within_the_grace_period_ends_the_runner_and_forgets_its_results(tmp_path: Path) -> None:
    async def scenario() -> None:
        keeper = JobKeeper(grace=0.05)
        runner = keeper.runner(RunnerConfig(tmp_path))
        keeper.attach(lambda _: None)
        runner.report(result(1))
        keeper.detach()
        assert keeper.held()[0] == [JobRef("K", 1)]
        run = keeper.node_run
        await async_wait_until(lambda: keeper.held() == ([], []), what="the keeper to give up")
        assert keeper.runner(RunnerConfig(tmp_path)) is not runner
        assert keeper.node_run != run  # a result was dropped unreported: the scheduler must not infer from its absence
        await keeper.close()

    asyncio.run(scenario())


def test_an_empty_runner_given_up_with_its_connection_keeps_the_run(tmp_path: Path) -> None:
    """Nothing was dropped: a job sent as the connection broke, and never received, is still known never to
    have arrived when the next Hello of the same run does not list it."""

    async def scenario() -> None:
        keeper = JobKeeper(grace=0)
        runner = keeper.runner(RunnerConfig(tmp_path))
        run = keeper.node_run
        keeper.attach(lambda _: None)
        keeper.detach()  # grace 0: the runner goes with the connection
        assert keeper.runner(RunnerConfig(tmp_path)) is not runner and keeper.node_run == run
        await keeper.close()

    asyncio.run(scenario())


def test_the_grace_does_not_end_under_a_session_logging_in_and_a_failed_login_does_not_restart_it(
    tmp_path: Path,
) -> None:
    """A login's Hello lists what the runner holds: closing the runner meanwhile would leave the scheduler
    waiting for results that never come. A login that fails resumes the grace where it was."""

    async def scenario() -> None:
        keeper = JobKeeper(grace=0.3)
        runner = keeper.runner(RunnerConfig(tmp_path))
        keeper.attach(lambda _: None)
        runner.report(result(1))
        keeper.detach()  # the connection ended: 0.3 s from now
        assert keeper.runner(RunnerConfig(tmp_path)) is runner  # a session logs in ...
        await asyncio.sleep(0.5)  # ... past the grace: the runner is not closed under it
        assert keeper.held()[0] == [JobRef("K", 1)]
        keeper.detach()  # its login failed: the grace was over, so it ends now, not 0.3 s later
        await asyncio.sleep(0.01)  # the loop runs a timer that is due before this one
        assert keeper.held() == ([], [])
        await keeper.close()

    asyncio.run(scenario())
