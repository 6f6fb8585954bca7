"""Job accounting: one record per job end, kept in the state database and logged as a key=value line.

The core emits `RecordJobEnds` (with `CoreConfig.accounting`) in the call in
which jobs end; the shell hands the records to an `AccountingStore` (part of
every `StateStore`) and logs them (`log_lines`: a line per job, or one for several that ended
alike in one turn: a busy node's results, a closed cluster's queue).
`SqliteAccounting` keeps them in the `job_ends` table of the scheduler's
state database (`journal.sqlite3`, whether or not the journal is on) through
a connection of its own with `synchronous=NORMAL`, costing the hot path no
fsync of its own. With the journal, a turn's records are in its commit and
survive a killed scheduler; without it, the shell writes them once a tick
(`server.RECORD_BATCH` at most between two) and as it stops, so a SIGKILL
loses up to a second of records (a power cut may lose the last ones either
way; the log lines name them too). With `--state postgresql://...`
the `PgStore` keeps the same table in PostgreSQL, so the records of a leader
and of the standby that takes over are in one place. Records older than
`--accounting-retention` are deleted at start and hourly. `dispyadmin
history` sums the table (`history`, the same query on either database)
while the scheduler runs.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .core.actions import JobEnd

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_ends (
    end_time REAL NOT NULL,      -- Unix time
    user TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    cluster_name TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    node TEXT NOT NULL,          -- '' if it never ran
    status TEXT NOT NULL,        -- Finished, Terminated, Cancelled, Abandoned
    submit_time REAL NOT NULL,
    start_time REAL NOT NULL,
    cpu_time REAL NOT NULL,      -- CPU seconds, as the node measured them
    max_rss INTEGER NOT NULL,    -- bytes
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_ends_by_time ON job_ends (end_time);
"""
#: the table's columns in `JobEnd`'s field order, so a record is its own row ("user" quoted: a reserved word in
#: PostgreSQL, a plain name to SQLite)
COLUMNS = (
    '"user", cluster_id, cluster_name, job_id, node, status, submit_time, start_time, end_time, cpu_time, max_rss, '
    "reason"
)


#: one record, as `rows` gives it (SQLite's parameter marks)
INSERT_ENDS = f"INSERT INTO job_ends ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class AccountingStore(Protocol):
    """Where job-end records go: the SQLite state database, or the PostgreSQL store (`PgStore`)."""

    def record(self, ends: list[JobEnd]) -> None:
        """Raises sqlite3.Error or journal.StoreFailed (the store's own error): nothing was written."""

    def prune(self, before: float) -> int:
        """Deletes the records of jobs that ended before `before` (Unix time); returns how many."""

    def close(self) -> None: ...


class SqliteAccounting:
    """The `job_ends` table of the SQLite state database at `path`.

    Raises:
        sqlite3.Error: the file cannot be opened or written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def record(self, ends: list[JobEnd]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(INSERT_ENDS, ends)  # a record is its row

    def prune(self, before: float) -> int:
        with self._db:
            self._db.execute("BEGIN")
            return self._db.execute("DELETE FROM job_ends WHERE end_time < ?", (before,)).rowcount

    def close(self) -> None:
        self._db.close()


#: jobs of one turn that ended alike (user, cluster, node, status, reason), from this many on, share one log line
SUMMARY_FROM = 4
#: contiguous runs of job ids a `job_ends` line names (the first ones and the last); `count` says how many jobs
MAX_RANGES = 16


def log_lines(ends: list[JobEnd]) -> Iterator[str]:
    """The log lines of one turn's job ends: a line per job (`log_line`), except that `SUMMARY_FROM` or more
    that ended alike (user, cluster, node, status, reason) share one `job_ends` line (`summary_line`): a busy
    node's results of a turn log a line, not one per job, and closing a cluster of 100,000 queued jobs a line
    per slice. Their records in the state database stay one per job."""
    alike: dict[tuple[str, str, str, str, str], list[JobEnd]] = {}
    for end in ends:
        key = (end.user, end.cluster_id, end.node, end.status, end.reason)
        group = alike.get(key)
        if group is None:
            alike[key] = [end]
        else:
            group.append(end)
    for group in alike.values():
        if len(group) < SUMMARY_FROM:
            yield from map(log_line, group)
        else:
            yield summary_line(group)


def id_ranges(ids: list[int]) -> str:
    """Job ids as their contiguous runs, "1-5,9,12-14": the first `MAX_RANGES` - 1 runs and the last,
    with "..." between when there are more."""
    runs: list[str] = []
    ordered = sorted(set(ids))
    first = prev = ordered[0]
    for job_id in ordered[1:]:
        if job_id != prev + 1:
            runs.append(f"{first}-{prev}" if prev > first else str(first))
            first = job_id
        prev = job_id
    runs.append(f"{first}-{prev}" if prev > first else str(first))
    if len(runs) > MAX_RANGES:
        runs = [*runs[: MAX_RANGES - 1], "...", runs[-1]]
    return ",".join(runs)


def summary_line(ends: list[JobEnd]) -> str:
    """Jobs that ended alike, as one line of key=value pairs: `log_line`'s keys where they apply, `jobs` the
    runs of their ids (`id_ranges`); for jobs that ran, `started` the earliest start, `wait_max` and `run_max`
    the longest wait and run, `cpu_sum` their CPU seconds and `max_rss` the largest of their peaks."""
    first = ends[0]
    fields: dict[str, object] = {
        "user": first.user, "cluster": first.cluster_id, "name": first.cluster_name,
        **({"node": first.node} if first.node else {}), "count": len(ends),
        "jobs": id_ranges([e.job_id for e in ends]), "status": first.status,
        "queued": round(min(e.submit_time for e in ends), 3),
    }  # fmt: skip
    if first.node:
        fields["started"] = round(min(e.start_time for e in ends), 3)
    fields["ended"] = round(max(e.end_time for e in ends), 3)
    if first.node:
        fields["wait_max"] = round(max(max(0.0, e.start_time - e.submit_time) for e in ends), 3)
        fields["run_max"] = round(max(max(0.0, e.end_time - e.start_time) for e in ends), 3)
        fields["cpu_sum"] = round(sum(e.cpu_time for e in ends), 3)
        fields["max_rss"] = max(e.max_rss for e in ends)
    fields["reason"] = first.reason
    return "job_ends " + " ".join(f"{k}={_quoted(v) if isinstance(v, str) else v}" for k, v in fields.items())


def log_line(end: JobEnd) -> str:
    """The record as one line of key=value pairs; strings JSON-quoted (users name their clusters)."""
    fields: dict[str, object] = {
        "user": end.user, "cluster": end.cluster_id, "name": end.cluster_name, "job": end.job_id, "node": end.node,
        "status": end.status, "queued": round(end.submit_time, 3), "started": round(end.start_time, 3),
        "ended": round(end.end_time, 3), "wait": round(max(0.0, end.start_time - end.submit_time), 3),
        "run": round(max(0.0, end.end_time - end.start_time), 3), "cpu": round(end.cpu_time, 3),
        "max_rss": end.max_rss, "reason": end.reason,
    }  # fmt: skip
    return "job_end " + " ".join(f"{k}={_quoted(v) if isinstance(v, str) else v}" for k, v in fields.items())


def _quoted(text: str) -> str:
    """`text` JSON-quoted; most names need no escape, and this runs for every job end: skips json for them."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


@dataclass(frozen=True, slots=True)
class UserTotal:
    """One user's jobs that ended in a period, summed as sacct would."""

    user: str
    jobs: int
    finished: int
    failed: int  # Terminated or Abandoned
    cancelled: int
    cpu_hours: float
    wall_hours: float  # hours its jobs ran, as measured by the nodes' clocks
    max_rss: int  # bytes: the largest of any of its jobs


class Database(Protocol):
    """A DB-API connection with `execute` (sqlite3's, or psycopg's)."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...


def history(db: Database, since: float, user: str | None = None, mark: str = "?") -> list[UserTotal]:
    """Each user's totals over the jobs that ended at or after `since` (Unix time), by user name.

    `mark` is the driver's parameter mark: "?" for sqlite3, "%s" for psycopg (SQL both databases read).
    """
    args: list[object]
    where, args = f"end_time >= {mark}", [since]
    if user is not None:
        where, args = where + f' AND "user" = {mark}', [since, user]
    found = db.execute(
        "SELECT \"user\", COUNT(*), SUM(CASE WHEN status = 'Finished' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status IN ('Terminated', 'Abandoned') THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN status = 'Cancelled' THEN 1 ELSE 0 END), SUM(cpu_time), "
        "SUM(CASE WHEN end_time > start_time THEN end_time - start_time ELSE 0 END), MAX(max_rss) "
        f'FROM job_ends WHERE {where} GROUP BY "user" ORDER BY "user"',
        args,
    )
    return [
        UserTotal(name, int(jobs), int(finished), int(failed), int(cancelled), float(cpu) / 3600, float(wall) / 3600,
                  int(rss))
        for name, jobs, finished, failed, cancelled, cpu, wall, rss in found
    ]  # fmt: skip
