"""What closing a cluster of many queued jobs costs the scheduler's loop, in one process.

    .venv/bin/python benchmarks/close.py [--jobs 100000]

A core with the journal (SQLite, sync full) and accounting on queues
`--jobs` jobs in one cluster (no node), then its client closes it with
`terminate=True`. Printed, in seconds of the one loop turn that does it: the
core's `handle` (every job cancelled, its result and accounting record
made), then the shell's part as `SchedulerServer` does it: the journal's
commit, the accounting records (`AccountingStore.record`) and their log
lines (`accounting.log_lines`, to a file). A peer hears nothing from the
scheduler while this turn lasts: nodes and clients write a link off after
8 s of silence.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dispy_sched.accounting import log_lines  # noqa: E402  (run as a script from a checkout)
from dispy_sched.core import CoreConfig, SchedulerCore  # noqa: E402
from dispy_sched.core import actions as A  # noqa: E402
from dispy_sched.core import events as E  # noqa: E402
from dispy_sched.journal import SqliteJournal  # noqa: E402
from dispy_sched.policies import load_policy  # noqa: E402
from dispy_wire.messages import JobSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dispy-bench-close-")
    logging.basicConfig(filename=os.path.join(tmp, "scheduler.log"), level=logging.INFO)
    accounting_log = logging.getLogger("dispy_sched.accounting")
    store = SqliteJournal(tmp)
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True, accounting=True))

    def commit(actions: list[A.Action]) -> list[A.Action]:
        if actions and isinstance(actions[0], A.Persist):
            store.write(actions[0])
        return actions

    commit(core.handle(E.ClusterOpened("c", "bench", "K", "bench", b"x" * 2000, False, {}), now=time.time()))
    for start in range(0, args.jobs, 5000):
        specs = [JobSpec(j, 0, b"p" * 8, {}) for j in range(start, min(args.jobs, start + 5000))]
        commit(core.handle(E.JobsSubmitted("c", "K", specs), now=time.time()))
    t0 = time.perf_counter()
    actions = core.handle(E.ClusterClosed("c", "K", True), now=time.time())
    t1 = time.perf_counter()
    commit(actions)
    t2 = time.perf_counter()
    lines = 0
    for action in actions:
        if isinstance(action, A.RecordJobEnds):
            store.record(action.ends)
            for line in log_lines(action.ends):
                accounting_log.info("%s", line)
                lines += 1
    t3 = time.perf_counter()
    store.close()
    print(f"close(terminate=True) of {args.jobs:,} queued jobs: core {t1 - t0:.2f} s, journal commit {t2 - t1:.2f} s, "
          f"accounting records and {lines} log lines {t3 - t2:.2f} s; {t3 - t0:.2f} s in all")  # fmt: skip


if __name__ == "__main__":
    main()
