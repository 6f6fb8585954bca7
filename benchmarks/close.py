"""What cancelling a cluster's many queued jobs costs the scheduler's loop, in one process.

    .venv/bin/python benchmarks/close.py [--jobs 100000] [--case close|cancel-all|nowhere] [--slice N]

A core with the journal (SQLite, sync full) and accounting on queues
`--jobs` jobs in one cluster (no node), then cancels them all, as `--case`
says: its client closes it with `terminate=True` (close), an operator
cancels the whole cluster (cancel-all: `dispyadmin cancel --cluster`, the
dashboard), or the one node joins and fails to set it up, so that no node
can run it (nowhere). The core cancels a slice of the queued jobs per call
and asks to be called again (`ResumeCancelling`) while some remain; each call is
one loop turn of `SchedulerServer`: the core's `handle`, the journal's
commit, the accounting records (`AccountingStore.record`) and their log
lines (`accounting.log_lines`, to a file). Printed: the seconds of each part
over the whole close, the number of calls, and the longest single core call
and loop turn. A peer hears nothing from the scheduler while one turn lasts:
nodes and clients write a link off after 8 s of silence. (Run from an older
checkout, where one call does it all, it prints that one call.)
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
    ap.add_argument("--case", choices=["close", "cancel-all", "nowhere"], default="close")
    ap.add_argument("--slice", type=int, default=None, help="CoreConfig.close_slice (default: the core's)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dispy-bench-close-")
    logging.basicConfig(filename=os.path.join(tmp, "scheduler.log"), level=logging.INFO)
    accounting_log = logging.getLogger("dispy_sched.accounting")
    store = SqliteJournal(tmp)
    sliced = {} if args.slice is None else {"close_slice": args.slice}
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True, accounting=True, **sliced))

    def commit(actions: list[A.Action]) -> list[A.Action]:
        if actions and isinstance(actions[0], A.Persist):
            store.write(actions[0])
        return actions

    commit(core.handle(E.ClusterOpened("c", "bench", "K", "bench", b"x" * 2000, False, {}), now=time.time()))
    for start in range(0, args.jobs, 5000):
        specs = [JobSpec(j, 0, b"p" * 8, {}) for j in range(start, min(args.jobs, start + 5000))]
        commit(core.handle(E.JobsSubmitted("c", "K", specs), now=time.time()))
    # named so since bulk cancels other than a close are sliced too; absent in a checkout that closes in one call
    resume = getattr(A, "ResumeCancelling", None) or getattr(A, "ResumeClosing", None)
    resumed = getattr(E, "CancellingResumed", None) or getattr(E, "ClosingResumed", None)
    if args.case == "nowhere":
        commit(core.handle(E.NodeJoined("n", "host-n", "10.0.0.1", 2, 5.0), now=time.time()))  # K's load: no job yet
    core_s = commit_s = record_s = 0.0
    longest_core = longest_turn = 0.0
    calls = lines = 0
    events: dict[str, E.Event] = {
        "close": E.ClusterClosed("c", "K", True),
        "cancel-all": E.CancelRequested("op", None, "K", None),
        "nowhere": E.ClusterFailedOnNode("n", "K", "ImportError: no module named numpy"),
    }
    event = events[args.case]
    while True:
        t0 = time.perf_counter()
        actions = core.handle(event, now=time.time())
        t1 = time.perf_counter()
        commit(actions)
        t2 = time.perf_counter()
        for action in actions:
            if isinstance(action, A.RecordJobEnds):
                store.record(action.ends)
                for line in log_lines(action.ends):
                    accounting_log.info("%s", line)
                    lines += 1
        t3 = time.perf_counter()
        calls += 1
        core_s, commit_s, record_s = core_s + t1 - t0, commit_s + t2 - t1, record_s + t3 - t2
        longest_core, longest_turn = max(longest_core, t1 - t0), max(longest_turn, t3 - t0)
        if resume is None or resume() not in actions:
            break
        assert resumed is not None
        event = resumed()
    assert "K" not in core.clusters or not core.clusters["K"].queued, "the cancel did not finish"
    store.close()
    what = {"close": "close(terminate=True)", "cancel-all": "an operator's cancel of the whole cluster",
            "nowhere": "a cluster no node can run"}[args.case]  # fmt: skip
    print(f"{what} of {args.jobs:,} queued jobs in {calls} calls: core {core_s:.2f} s, journal commit "
          f"{commit_s:.2f} s, accounting records and {lines} log lines {record_s:.2f} s; "
          f"{core_s + commit_s + record_s:.2f} s in all; longest core call {longest_core:.3f} s, "
          f"longest loop turn {longest_turn:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
