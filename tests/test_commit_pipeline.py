"""CommitPipeline: turns that come during a commit go together into the next one, each turn's actions run in
order and only after the commit that holds its changes, and a commit that fails runs none of them."""

from __future__ import annotations

import asyncio
import threading
from typing import NoReturn

from dispy_sched import commit_pipeline
from dispy_sched.commit_pipeline import CommitPipeline
from dispy_sched.core import actions as A
from waiting import async_wait_until


def _persist(tag: str) -> A.Persist:
    return A.Persist([], [], [], [(tag, 1)], [], [])


class GatedStore:
    """Each write waits until the test lets it finish; what was written, commit by commit."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.gate = threading.Semaphore(0)
        self.fail = False

    def write_many(self, turns: list[tuple[A.Persist, list[A.JobEnd] | None]]) -> None:
        self.gate.acquire()
        if self.fail:
            raise OSError("disk gone")
        self.commits.append([changes.gone_jobs[0][0] if changes.gone_jobs else "-" for changes, _ in turns])


def _never_fails(exc: BaseException) -> NoReturn:
    raise AssertionError(exc)


def test_turns_during_a_commit_share_the_next_one_and_their_actions_wait_for_it_in_order() -> None:
    async def scenario() -> None:
        store = GatedStore()
        ran: list[str] = []
        pipeline = CommitPipeline(store, _never_fails)
        pipeline.add(_persist("t1"), None, lambda: ran.append("a"))
        pipeline.add(_persist("t2"), None, lambda: ran.append("b"))
        pipeline.add(A.Persist([], [], [], [], [], []), None, lambda: ran.append("c"))  # no changes: waits its turn
        await asyncio.sleep(0.05)
        assert ran == [] and store.commits == []  # nothing leaves before its commit
        store.gate.release()
        await async_wait_until(lambda: ran, 30, "the first commit's actions")
        assert store.commits == [["t1"]] and ran == ["a"]
        store.gate.release()
        await pipeline.flush()
        assert store.commits == [["t1"], ["t2", "-"]]  # group commit, in turn order
        assert ran == ["a", "b", "c"]
        pipeline.add(A.Persist([], [], [], [], [], []), None, lambda: ran.append("d"))  # nothing to wait for
        assert ran[-1] == "d"
        pipeline.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_too_many_waiting_turns_make_the_loop_wait_for_the_commit_in_flight() -> None:
    async def scenario() -> None:
        store = GatedStore()
        ran: list[int] = []
        pipeline = CommitPipeline(store, _never_fails)
        pipeline.add(_persist("first"), None, lambda: ran.append(0))
        for i in range(1, commit_pipeline.MAX_WAITING + 1):
            pipeline.add(_persist(f"t{i}"), None, lambda i=i: ran.append(i))  # type: ignore[misc]
        assert ran == []
        store.gate.release()  # the next add blocks until the first commit is done, then runs its actions
        pipeline.add(_persist("over"), None, lambda: ran.append(-1))
        assert ran == [0]
        for _ in range(2):
            store.gate.release()
        await pipeline.flush()
        assert ran == [0, *range(1, commit_pipeline.MAX_WAITING + 1), -1]
        assert len(store.commits) == 3 and store.commits[2] == ["over"]
        pipeline.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_failed_commit_runs_none_of_its_actions() -> None:
    class Failed(Exception):
        pass

    async def scenario() -> None:
        store = GatedStore()
        store.fail = True
        ran: list[str] = []
        seen: list[BaseException] = []
        done = asyncio.get_running_loop().create_future()

        def failed(exc: BaseException) -> NoReturn:  # the scheduler exits here (status 3)
            seen.append(exc)
            done.set_result(None)
            raise Failed

        pipeline = CommitPipeline(store, failed)
        pipeline.add(_persist("t1"), None, lambda: ran.append("a"))
        store.gate.release()
        await done
        assert isinstance(seen[0], OSError) and ran == []
        pipeline.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
