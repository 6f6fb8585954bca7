"""The cyclic garbage collector, kept off the scheduler's long-lived records.

With a million queued jobs, each of Python's full collections walks every
job record and stops the loop for one to two seconds (benchmarks/gc_pause.py),
and one comes each time the heap has grown by a quarter: about twenty of
them while a million jobs are submitted. None of those records is garbage,
and a record that goes away is freed by its reference count, not by the
collector. So the scheduler (`tune`, at start) turns Python's own full
collections off, and once a second (`sweep`, from the server's tick)
collects everything not yet frozen, then freezes what survived
(`gc.freeze`): survivors of a full collection are long-lived, and no later
collection looks at them again. A sweep walks only what a second's turns
left alive, however long the queue. Young collections are made rarer too
(`YOUNG`): a busy turn makes many short-lived objects per job.

The price: a reference cycle among frozen objects that becomes garbage (a
closed connection's objects, an exception and its traceback) is not
collected until the next thaw: every `THAW_INTERVAL` seconds everything is
unfrozen and collected once, a pause as long as one of Python's own full
collections, once an hour instead of at every quarter of growth. The server
times each sweep and does not count it as a stall of the scheduler.
"""

from __future__ import annotations

import gc

#: allocations (less deallocations) that trigger a young collection (Python's default: 700)
YOUNG = 10_000
#: Python's own full collections: never (young collections of the middle generation only)
NEVER = 1 << 30
#: seconds between two collections of everything, frozen objects included
THAW_INTERVAL = 3600.0

_tuned = False
_last_thaw = 0.0


def tune(now: float) -> None:
    """Young collections rarer, full ones left to `sweep`."""
    global _tuned, _last_thaw
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, NEVER)
    _tuned, _last_thaw = True, now


def sweep(now: float) -> bool:
    """Collects all that is not frozen and freezes the survivors; every `THAW_INTERVAL`, all (see the module's doc):
    True then. Does nothing unless `tune` was called (a scheduler core in a test, a benchmark's process).

    The server's ticker times it: its pause is the scheduler's own, not a stall (see `SchedulerServer._collect`)."""
    global _last_thaw
    if not _tuned:
        return False
    thaw = now - _last_thaw >= THAW_INTERVAL
    if thaw:
        _last_thaw = now
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    return thaw


def settled() -> None:
    """After the restore: the records just read back are long-lived; frozen without a collection's walk."""
    if _tuned:
        gc.freeze()
