"""Job accounting through the real processes: one record per job end, in the state database and the log.

The node measures each job's CPU time and peak memory (the job process's
rusage); the scheduler writes a record per job end (`job_ends`) and one
`job_end key=value` log line; `dispyadmin history` sums them per user;
records past `--accounting-retention` are deleted.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from dispy_sched.accounting import MAX_RANGES, SUMMARY_FROM, UserTotal, history, id_ranges, log_lines
from dispy_sched.core.actions import JobEnd
from dispy_sched.admin_history import since_time, table
from procs import Cluster
from waiting import wait_until

PROGRAM = """
import sys
from dispy_client import SharedJobCluster

def compute(kind):
    import time
    if kind == "cpu":                      # half a CPU-second, whatever the machine's load
        start = time.process_time()
        while time.process_time() - start < 0.5:
            pass
    elif kind == "memory":                 # 64 MiB resident
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
    elif kind == "fail":
        raise KeyError("no such thing")
    return kind

with SharedJobCluster(compute, user=sys.argv[1]) as cluster:
    jobs = [cluster.submit(kind) for kind in sys.argv[2:]]
    cluster.wait()
    print(" ".join(str(job.status) for job in jobs))
"""


def run_program(cluster: Cluster, user: str, *kinds: str) -> None:
    proc = cluster.client(PROGRAM, user, args=[user, *kinds])
    assert proc.wait(120) == 0, cluster.describe()


def records(state: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM job_ends ORDER BY job_id")]
    finally:
        db.close()


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dispy_sched.admin", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_each_job_end_is_recorded_with_its_node_times_cpu_and_memory_and_logged(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    cluster.node(name="n1")
    state = cluster.workdir / "scheduler-state"
    run_program(cluster, "alice", "cpu", "memory", "fail")
    run_program(cluster, "bob", "plain")
    wait_until(lambda: len(records(state)) == 4, what="four accounting records")
    by_kind = {r["user"] + ":" + str(r["job_id"]): r for r in records(state)}
    alice = sorted((r for r in by_kind.values() if r["user"] == "alice"), key=lambda r: r["job_id"])
    cpu, memory, fail = alice
    for record in records(state):
        assert record["node"] == "n1" and record["cluster_name"] == "compute"
        assert record["submit_time"] <= record["start_time"] <= record["end_time"] <= time.time()
    assert cpu["status"] == "Finished" and cpu["reason"] == ""
    assert 0.45 <= cpu["cpu_time"] < 30, cpu
    assert memory["max_rss"] >= 64 << 20, memory
    assert fail["status"] == "Terminated" and "KeyError" in fail["reason"], fail
    # one structured line per job end
    wait_until(lambda: scheduler.stderr.count("job_end ") == 4, what="four job_end log lines")
    line = next(line for line in scheduler.stderr.splitlines() if "job_end " in line and "KeyError" in line)
    assert re.search(r'user="alice" cluster="[^"]+" name="compute" job=\d+ node="n1" status="Terminated"', line), line
    for key in ("queued=", "started=", "ended=", "wait=", "run=", "cpu=", "max_rss=", 'reason="KeyError'):
        assert key in line, line
    # the cluster's opening and closing, with its user
    assert re.search(r"cluster compute \(\S+\) of user alice opened", scheduler.stderr)
    assert re.search(r"cluster \S+ of user alice closed", scheduler.stderr)

    # dispyadmin history sums per user, as sacct does, from the database of the running scheduler
    done = admin("history", "--state-dir", str(state), "--json")
    assert done.returncode == 0, done.stderr
    totals = {t["user"]: t for t in json.loads(done.stdout)}
    assert set(totals) == {"alice", "bob"}
    assert totals["alice"]["jobs"] == 3 and totals["alice"]["finished"] == 2 and totals["alice"]["failed"] == 1
    assert totals["alice"]["cpu_hours"] >= 0.45 / 3600 and totals["alice"]["max_rss"] >= 64 << 20
    assert totals["bob"]["jobs"] == 1 and totals["bob"]["finished"] == 1
    only = admin("history", "--state-dir", str(state), "--user", "bob", "--since", "1h")
    assert only.returncode == 0 and "bob" in only.stdout and "alice" not in only.stdout, only.stdout
    future = admin("history", "--state-dir", str(state), "--since", "2999-01-01", "--json")
    assert future.returncode == 0 and json.loads(future.stdout) == []
    bad = admin("history", "--state-dir", str(state), "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr


def test_many_jobs_ending_alike_without_running_share_one_log_line_and_a_few_keep_theirs() -> None:
    def end(job_id: int, node: str = "", status: str = "Cancelled", cluster: str = "K") -> JobEnd:
        return JobEnd("alice", cluster, "compute", job_id, node, status, 10.0 + job_id, 20.0, 20.0 + job_id, 0.0, 0,
                      "" if node else "cancelled before it started")  # fmt: skip

    ran = [end(i, node="n1", status="Finished") for i in range(3)]
    cancelled = [end(i) for i in range(100, 100 + 5 * SUMMARY_FROM)]
    few = [end(i, cluster="L") for i in range(SUMMARY_FROM - 1)]  # too few to summarize: a line each
    lines = list(log_lines([*ran, *cancelled, *few]))
    assert len(lines) == len(ran) + 1 + len(few), lines
    assert sum(line.startswith("job_end ") for line in lines) == len(ran) + len(few)
    (summary,) = [line for line in lines if line.startswith("job_ends ")]
    assert re.search(
        rf'user="alice" cluster="K" name="compute" count={5 * SUMMARY_FROM} jobs="100-{99 + 5 * SUMMARY_FROM}" '
        r'status="Cancelled" queued=110.0 ended=\d+\.?\d* reason="cancelled before it started"', summary
    ), summary


def test_jobs_of_a_turn_that_ran_and_ended_alike_share_a_line_naming_exactly_their_ids() -> None:
    def ran(job_id: int, node: str = "n1", status: str = "Finished", reason: str = "") -> JobEnd:
        return JobEnd("alice", "K", "compute", job_id, node, status, 10.0, 11.0 + job_id, 12.0 + 2 * job_id,
                      0.5, 1000 * job_id, reason)  # fmt: skip

    finished = [ran(i) for i in (1, 2, 3, 4, 5, 9, 12, 13, 14)]
    elsewhere = [ran(i, node="n2") for i in (6, 7)]  # too few alike: a line each
    failed = [ran(8, status="Terminated", reason="KeyError: 'x'")]
    lines = list(log_lines([*finished, *elsewhere, *failed]))
    assert len(lines) == 1 + len(elsewhere) + len(failed), lines
    (summary,) = [line for line in lines if line.startswith("job_ends ")]
    assert summary == (
        'job_ends user="alice" cluster="K" name="compute" node="n1" count=9 jobs="1-5,9,12-14" status="Finished" '
        'queued=10.0 started=12.0 ended=40.0 wait_max=15.0 run_max=15.0 cpu_sum=4.5 max_rss=14000 reason=""'
    )
    assert sum(line.startswith("job_end ") for line in lines) == 3


def test_a_job_ends_line_names_a_bounded_number_of_id_ranges() -> None:
    assert id_ranges([7]) == "7" and id_ranges([3, 1, 2, 2]) == "1-3"
    spread = list(range(0, 4 * MAX_RANGES, 2))  # every other id: each a range of its own
    named = id_ranges(spread).split(",")
    assert len(named) == MAX_RANGES + 1 and named[-2] == "..." and named[-1] == str(spread[-1])
    assert named[: MAX_RANGES - 1] == [str(i) for i in spread[: MAX_RANGES - 1]]


def test_records_past_their_retention_are_deleted(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(name="n1")
    state = cluster.workdir / "scheduler-state"
    run_program(cluster, "alice", "plain", "plain")
    wait_until(lambda: len(records(state)) == 2, what="two accounting records")
    cluster.procs[0].stop()
    wait_until(lambda: time.time() - max(r["end_time"] for r in records(state)) > 1.5, what="the records to age")
    again = cluster.scheduler("--accounting-retention", "1s", name="scheduler")
    again.wait_for_line(r"accounting: deleted 2 records older than 1 s", stream="stderr")
    assert records(state) == []


def test_history_sums_and_prints_a_table(tmp_path: Path) -> None:
    from dispy_sched.accounting import SqliteAccounting
    from dispy_sched.core.actions import JobEnd

    store = SqliteAccounting(str(tmp_path / "journal.sqlite3"))
    now = time.time()
    store.record([
        JobEnd("alice", "K", "k", 1, "n1", "Finished", now - 100, now - 90, now - 18, 3600.0, 1 << 20, ""),
        JobEnd("alice", "K", "k", 2, "n1", "Abandoned", now - 100, now - 90, now - 50, 0.0, 0, "node lost"),
        JobEnd("bob", "L", "l", 1, "", "Cancelled", now - 100, now - 80, now - 80, 0.0, 0, "cancelled"),
        JobEnd("carol", "M", "m", 1, "n2", "Finished", now - 9000, now - 8000, now - 7200, 7200.0, 5 << 20, ""),
    ])  # fmt: skip
    db = sqlite3.connect(str(tmp_path / "journal.sqlite3"))
    totals = history(db, now - 3600)
    assert totals == [
        UserTotal("alice", 2, 1, 1, 0, 1.0, (72 + 40) / 3600, 1 << 20),
        UserTotal("bob", 1, 0, 0, 1, 0.0, 0.0, 0),
    ]
    assert [t.user for t in history(db, now - 86400, "carol")] == ["carol"]
    assert store.prune(now - 3600) == 1
    text = table(totals, now - 3600)
    assert re.search(r"alice\s+2\s+1\s+1\s+0\s+1\.000", text) and re.search(r"total\s+3\s+1\s+1\s+1\s+1\.000", text)
    assert since_time("1d", now) == now - 86400
    store.close()


def test_with_postgresql_state_the_records_are_in_postgresql_and_history_reads_them_there(
    cluster: Cluster, pg_dsn: str
) -> None:
    cluster.scheduler("--state", pg_dsn, "--lease", "2")
    cluster.node(name="n1")
    run_program(cluster, "alice", "cpu", "fail")
    run_program(cluster, "bob", "plain")

    def in_postgresql() -> list[tuple[str, str, str]]:
        with psycopg.connect(pg_dsn, autocommit=True) as db:
            return db.execute('SELECT "user", node, status FROM job_ends ORDER BY "user", job_id').fetchall()

    wait_until(lambda: len(in_postgresql()) == 3, what="three accounting records in PostgreSQL")
    assert in_postgresql() == [("alice", "n1", "Finished"), ("alice", "n1", "Terminated"), ("bob", "n1", "Finished")]
    local = cluster.workdir / "scheduler-state" / "journal.sqlite3"
    assert not local.exists() or records(local.parent) == []  # not split between two places
    done = admin("history", "--state", pg_dsn, "--json")
    assert done.returncode == 0, done.stderr
    totals = {t["user"]: t for t in json.loads(done.stdout)}
    assert (totals["alice"]["jobs"], totals["alice"]["finished"], totals["alice"]["failed"]) == (2, 1, 1)
    assert totals["alice"]["cpu_hours"] >= 0.45 / 3600 and totals["bob"]["jobs"] == 1
    only = admin("history", "--state", pg_dsn, "--user", "bob")
    assert only.returncode == 0 and "bob" in only.stdout and "alice" not in only.stdout, only.stdout


def test_each_store_keeps_a_record_field_for_field(tmp_path: Path) -> None:
    from dispy_sched.accounting import SqliteAccounting
    from dispy_sched.core.actions import Persist
    from dispy_sched.journal import SqliteJournal

    # every field a value of its own, so a record written in another order than `COLUMNS` reads back wrong
    end = JobEnd("alice", "K-1", "compute", 7, "n1", "Terminated", 11.25, 12.5, 13.75, 0.125, 3 << 20, "KeyError: 'x'")
    (tmp_path / "journal").mkdir()
    journal = SqliteJournal(str(tmp_path / "journal"))
    journal.write(Persist([], [], [], [], [], []), [end])  # the journal's path: the records in the turn's commit
    journal.close()
    (tmp_path / "alone").mkdir()
    alone = SqliteAccounting(str(tmp_path / "alone" / "journal.sqlite3"))  # the path without a journal
    alone.record([end])
    alone.close()
    for state in (tmp_path / "journal", tmp_path / "alone"):
        assert [JobEnd(**row) for row in records(state)] == [end], state


def test_without_a_journal_the_records_are_written_by_the_stop_at_the_latest(cluster: Cluster) -> None:
    scheduler = cluster.scheduler("--no-journal")
    cluster.node(name="n1")
    state = cluster.workdir / "scheduler-state"
    run_program(cluster, "alice", "plain", "fail")
    scheduler.stop()  # records that wait for the next tick are written as it stops
    assert scheduler.popen.returncode == 0, scheduler.stderr
    assert [(r["user"], r["node"], r["status"]) for r in records(state)] == [
        ("alice", "n1", "Finished"), ("alice", "n1", "Terminated"),
    ]
