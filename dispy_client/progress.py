"""A tqdm progress bar over a cluster's jobs: done of total, with running and failed counts.

The bar is redrawn when the `JobTracker` reports a change (its Condition),
never on a timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .job import DispyJob
from .tracker import Counts, JobTracker


def count(jobs: Sequence[DispyJob]) -> Counts:
    """The counts of one group of jobs (e.g. those of one `map`)."""
    running = done = failed = 0
    for job in jobs:
        if job.done:
            done += 1
            failed += job.status != DispyJob.Finished
        elif job.status == DispyJob.Running:
            running += 1
    return Counts(len(jobs), running, done, failed)


def follow(tracker: JobTracker, counts: Callable[[], Counts], timeout: float | None = None) -> bool:
    """Shows a bar of `counts()` until every job counted has ended.

    Args:
        tracker: whose changes wake the bar up.
        counts: what to show, re-read after each change.
        timeout: seconds to follow (None: until done).

    Returns:
        False if jobs were unfinished after `timeout`.
    """
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=counts().submitted, unit="job", desc="jobs", dynamic_ncols=True) as bar:
        while True:
            seen = tracker.version
            now = counts()
            bar.total = now.submitted
            bar.set_postfix(running=now.running, failed=now.failed, refresh=False)
            bar.update(now.done - bar.n)
            if now.done >= now.submitted:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            tracker.wait_change(seen, remaining)
