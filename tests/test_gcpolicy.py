"""The scheduler's collector settings: a sweep frees garbage cycles and freezes what survives (a later sweep does
not walk it again); a cycle that becomes garbage once frozen is freed at the next thaw, not lost for good."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from dispy_sched import gcpolicy


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
