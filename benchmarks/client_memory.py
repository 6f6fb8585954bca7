"""The client's memory per submitted-but-unfinished job (issue 11, item 4: aim ≤ 600 bytes).

    .venv/bin/python benchmarks/client_memory.py [--jobs 100000] [--recover-file]

Starts a real `dispyscheduler` on 127.0.0.1 with no node, so every job stays
queued, then in this process opens a `SharedJobCluster`, submits `--jobs`
small jobs (`submit(i)`), waits until the scheduler has accepted them all,
and prints the Python heap growth per job (tracemalloc: what the client's
own objects cost, the `DispyJob`s the program holds included) and the
resident-set growth per job (RSS: what the operating system sees).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.procs import Cluster  # noqa: E402  (the tests' process harness: port 0, logs to files, cleanup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--recover-file", action="store_true", help="with a recover file, as a careful program runs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="client-memory-"))
    cluster = Cluster(workdir)
    try:
        recover = str(workdir / "recover.jsonl") if args.recover_file else None
        print(f"jobs queued: {args.jobs} per cluster (recover file: {'yes' if recover else 'no'})")
        # first without tracemalloc, whose own bookkeeping would swell the RSS, then with it
        rss = _per_job(cluster, args.jobs, recover, traced=False)
        print(f"client RSS per queued job: {rss:.0f} bytes (resident-set growth)")
        heap = _per_job(cluster, args.jobs, recover and recover + ".2", traced=True)
        print(f"client Python heap per queued job: {heap:.0f} bytes (tracemalloc; the program's own list and "
              "arguments, about 150 bytes, included)")
    finally:
        cluster.stop_all()


def _per_job(cluster: Cluster, n: int, recover: str | None, traced: bool) -> float:
    """Bytes per job that submitting `n` jobs to a new cluster (of a new scheduler) added, by RSS or tracemalloc."""
    from dispy_client import SharedJobCluster

    cluster.scheduler(name=f"scheduler-{len(cluster.procs)}")  # each phase its own: nothing left over to clean up
    os.environ["DISPY_SCHEDULER"] = cluster.address
    c = SharedJobCluster(len, recover_file=recover)
    c.submit(b"warm-up")  # the first submit's one-off costs (loop, codecs) are not per job
    _wait_accepted(c, 1)
    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    if traced:
        tracemalloc.start()
    heap_before = tracemalloc.get_traced_memory()[0]
    jobs = [c.submit(i) for i in range(n)]
    _wait_accepted(c, n + 1)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - heap_before if traced else process.memory_info().rss - rss_before
    tracemalloc.stop()
    del jobs
    c.close(terminate=True)  # no node will ever run them: an open cluster would wait for them at exit
    return grown / n


def _wait_accepted(c: object, n: int) -> None:
    """Until the session has no spec left waiting for the scheduler's acceptance (a journal drops them then)."""
    session = c._session  # type: ignore[attr-defined]
    deadline = time.monotonic() + 600
    while session._specs or len(session._accepted) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the scheduler did not accept {n} jobs within 600 s")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
