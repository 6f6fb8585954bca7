"""How many jobs per CPU a node is sent ahead of its free CPUs: the adaptive prefetch window.

Theory of operation
-------------------
A node that queues jobs is sent some beyond its CPUs, so that it never idles
for a round trip to the scheduler between two jobs and each turn carries
several jobs (`scheduler.py`, Prefetch). How deep that window should be
depends on how long the jobs run. For jobs of 50 us, one job per CPU ahead
covers 50 us of a round trip that costs a millisecond or more: the node
idles, and every hop pays its fixed cost per job. For jobs of a minute, one
ahead already covers the round trip many times over, and every further job
sent ahead is a job that waits on that node (not on a free node elsewhere)
and a decision of fair share taken a minute before it takes effect.

So the window is sized in time, as Dask's worker saturation and Ray's tasks
in flight per worker reason about the same trade: a node is sent enough jobs
to hold about `target` seconds of queued work per CPU, never fewer than the
operator's `base` window (today's `--prefetch`), never more than `most` per
CPU. What a job costs is estimated per cluster (the jobs of one computation
run alike) and per node (which also sees every cluster it runs), from the
run times the node measures (its result's start and end, on one clock, not
the dispatch-to-result time, which grows with the window itself).

The estimate rises at once and falls slowly (`estimate`): one long job is
enough to stop deep windows of a cluster (or on a node), so a cluster whose
jobs turn long keeps today's window from its first long result, and a few
short jobs among long ones do not open it. A cluster or node with no
measured job yet gets the base window, as does every one while the adaptive
window is off (`most` not above `base`).
"""

from __future__ import annotations

import math

#: shortest run time taken as measured: a node's clock may say 0 for a trivial job
MIN_SAMPLE = 1e-6
#: a figure no job reaches (a bad node's): ignored
MAX_SAMPLE = 1e7
#: weight of a new sample below the estimate: it falls over about this many jobs' worth of samples
FALL = 1 / 8


def estimate(old: float, start: float, end: float) -> float:
    """The run-time estimate after a job that ran from `start` to `end` (0.0: none yet).

    Rises to a longer sample at once, moves an eighth of the way to a
    shorter one; a sample no clock gives (negative, not finite, absurd) is
    ignored.
    """
    sample = end - start
    if not (math.isfinite(sample) and 0 <= sample < MAX_SAMPLE):
        return old
    sample = max(sample, MIN_SAMPLE)
    if old <= 0 or sample >= old:
        return sample
    return old + (sample - old) * FALL


def depth(run_estimate: float, base: int, most: int, target: float) -> int:
    """Jobs per CPU to send ahead for jobs estimated to run `run_estimate` seconds (0.0: not measured).

    Args:
        run_estimate: seconds (0.0: no job measured yet).
        base: the window per CPU that always holds (the operator's `--prefetch`).
        most: the most per CPU (`--prefetch-max`); not above `base`: the window is `base`.
        target: seconds of queued work per CPU to aim at (`--prefetch-target`).
    """
    if most <= base or run_estimate <= 0 or target <= 0:
        return base
    return max(base, min(most, int(target / run_estimate)))
