"""The scheduler's collector settings: a sweep frees garbage cycles and freezes what survives (a later sweep does
not walk it again); a cycle that becomes garbage once frozen is freed at the next thaw, not lost for good.
The server's ticker runs the sweep: its pause (the hourly thaw: 1-2 s with a million jobs queued) is the
scheduler's own, so no stall, while a loop that really did not run is still one."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from dispy_sched import gcpolicy
from dispy_sched.config import SchedConfig
from dispy_sched.core import SchedulerCore
from dispy_sched.core import events as E
from dispy_sched.server import SchedulerServer

from waiting import async_wait_until


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture
def tuned() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.collect()
    gcpolicy.tune(now=0.0)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gcpolicy._tuned = False  # noqa: SLF001 - the next test (and pytest) get Python's collector back
        gc.unfreeze()
        gc.collect()


def test_a_sweep_frees_garbage_cycles_and_freezes_survivors(tuned: None) -> None:
    garbage, kept = Node(), Node()
    gone = weakref.ref(garbage)
    del garbage
    before = gc.get_freeze_count()
    gcpolicy.sweep(now=1.0)
    assert gone() is None
    assert gc.get_freeze_count() > before  # `kept` among them: later sweeps do not walk it
    assert gc.get_threshold()[2] == gcpolicy.NEVER  # Python's own full collections are off
    assert kept.me is kept


def test_a_cycle_that_dies_frozen_is_freed_at_the_next_thaw(tuned: None) -> None:
    cycle = Node()
    gone = weakref.ref(cycle)
    gcpolicy.sweep(now=1.0)  # alive: frozen
    del cycle
    gcpolicy.sweep(now=2.0)
    assert gone() is not None  # the price of freezing, until the thaw
    gcpolicy.sweep(now=1.0 + gcpolicy.THAW_INTERVAL)
    assert gone() is None


def test_nothing_changes_without_tune() -> None:
    threshold = gc.get_threshold()
    before = gc.get_freeze_count()
    gcpolicy.sweep(now=1e9)
    gcpolicy.settled()
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == before


def ticks_of(make_core: Callable[..., SchedulerCore], monkeypatch: pytest.MonkeyPatch, after_tick: Callable[[int], None]) -> list[E.Tick]:
    """The first three ticks of a scheduler's ticker (the server not started: its core gets nothing else);
    `after_tick(n)` runs on the loop once the core is handed tick n (1, 2, 3)."""
    server = SchedulerServer(SchedConfig(), make_core())
    ticks: list[E.Tick] = []

    def submit(event: E.Event) -> None:
        assert isinstance(event, E.Tick)
        ticks.append(event)
        asyncio.get_running_loop().call_soon(after_tick, len(ticks))

    monkeypatch.setattr(server, "submit", submit)

    async def run() -> None:
        ticker = asyncio.create_task(server._ticker())  # noqa: SLF001 - the ticker alone, on a loop of its own
        try:
            await async_wait_until(lambda: len(ticks) >= 3, what="three ticks")
        finally:
            ticker.cancel()

    asyncio.run(run())
    return ticks[:3]


def test_the_schedulers_own_collection_is_no_stall(
    make_core: Callable[..., SchedulerCore], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sweeps: list[float] = []

    def thaw(now: float) -> bool:  # as long as the hourly thaw's collection with a million jobs queued
        sweeps.append(now)
        if len(sweeps) == 1:
            time.sleep(1.5)
        return True

    monkeypatch.setattr(gcpolicy, "sweep", thaw)
    with caplog.at_level(logging.INFO, logger="dispy_sched.server"):
        ticks = ticks_of(make_core, monkeypatch, lambda n: None)
    assert len(sweeps) >= 2 and [t.stalled for t in ticks] == [0.0, 0.0, 0.0]  # the nodes' windows stand
    assert "did not run" not in caplog.text
    assert "garbage collection (all objects, the hourly thaw) took 1.5 s" in caplog.text


def test_a_loop_that_did_not_run_is_still_a_stall(
    make_core: Callable[..., SchedulerCore], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def starve(n: int) -> None:
        if n == 1:
            time.sleep(2.5)  # a callback that holds the loop (or a SIGSTOP): the scheduler did not run

    with caplog.at_level(logging.INFO, logger="dispy_sched.server"):
        ticks = ticks_of(make_core, monkeypatch, starve)
    assert ticks[0].stalled == 0 and ticks[1].stalled >= 1.4 and ticks[2].stalled == 0
    assert "the scheduler did not run for" in caplog.text
