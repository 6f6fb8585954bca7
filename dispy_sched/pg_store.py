"""The scheduler's state in PostgreSQL: what `SqliteJournal` keeps, on a server several schedulers share.

Theory of operation
-------------------
`PgStore` is a `StateStore` (journal.py) with the same tables and the
same meaning per row, so `load` after any sequence of `write`s returns what
`SqliteJournal.load` would. Group commit is the same too: one transaction
per `write`, one `write` per loop turn, durable (the server's
`synchronous_commit`) before the turn's acknowledgements leave.

Several schedulers may point at one database; one leads (leadership.py).
Each write is fenced by the leader's epoch: the transaction first reads
`leader.epoch` FOR SHARE and refuses to go on (`NotLeader`) if it is not the
epoch this store was opened with. A takeover updates that row, so it waits
for a write in flight to end, and every write after it by the old leader is
refused: a leader that was paused and comes back writes nothing.

A lost connection (the database restarting) pauses the writer: `write`
reconnects and retries the whole transaction until `pause_limit` seconds
have passed, then raises. Retrying is safe because the transaction either
committed nothing or everything, and rows are written as values ("insert or
replace", "set state = ..."), not increments.

The accounting records (`job_ends`, accounting.py) are written the same way,
fenced and retried, in a transaction of their own after the turn's state
(one PostgreSQL refuses, as text it cannot hold, must not cost the state);
`dispyadmin history --state postgresql://...` reads them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from dispy_wire.messages import JobResult

from .accounting import COLUMNS
from .core.actions import JobEnd, Persist
from .core.persist import ClusterRow, JobRow, SettingRow
from .core.state import result_cost
from .journal import (
    SELECT_SETTINGS, AccountingFailed, NotLeader, PackedResults, Snapshot, StoreFailed, _pack_options, _unpack_options, _unpack_result, as_sent, changed_job_values, new_job_values,
)

log = logging.getLogger(__name__)

#: 2: jobs.result_size, so results stay in the database until a client takes them; 3: operator_settings,
#: job_ends (the accounting records), clusters.opened; 4: jobs.node_run (journal.py)
SCHEMA_VERSION = 4

# the tables of journal.py, in PostgreSQL's types ("user" is a reserved word there: quoted)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    cluster_id TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    name TEXT NOT NULL,
    computation BYTEA NOT NULL,
    reentrant BOOLEAN NOT NULL,
    options BYTEA,
    seq BIGINT NOT NULL,
    closing BOOLEAN NOT NULL,
    overrides BYTEA,
    opened DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    cluster_id TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    payload BYTEA,
    options BYTEA,
    submit_time DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    node TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    result BYTEA,                -- msgpack JobResult, until the client acknowledges it
    result_size BIGINT NOT NULL DEFAULT 0,  -- what the result counts in held_bytes (result_cost)
    node_run TEXT NOT NULL DEFAULT '',  -- the run of the node's job runner it was sent to; '': unknown
    PRIMARY KEY (cluster_id, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS user_usage (
    "user" TEXT PRIMARY KEY,
    cpu_seconds DOUBLE PRECISION NOT NULL,
    as_of DOUBLE PRECISION NOT NULL
);
-- one row: who leads. epoch grows by one at each takeover; beat by one at each renewal of the lease
CREATE TABLE IF NOT EXISTS leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    address TEXT NOT NULL,
    backend_pid INTEGER NOT NULL,
    beat BIGINT NOT NULL,
    since TIMESTAMPTZ NOT NULL,
    http TEXT NOT NULL DEFAULT ''  -- the leader's dashboard URL ('' if none): a standby's page links to it
);
INSERT INTO leader VALUES (1, 0, '', 0, 0, now()) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS operator_settings (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS job_ends (  -- accounting.py's table
    end_time DOUBLE PRECISION NOT NULL,
    "user" TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    cluster_name TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_time DOUBLE PRECISION NOT NULL,
    start_time DOUBLE PRECISION NOT NULL,
    cpu_time DOUBLE PRECISION NOT NULL,
    max_rss BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_ends_by_time ON job_ends (end_time);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""

_MARKS = ", ".join(["%s"] * len(COLUMNS.split(",")))

#: an advisory lock key for creating the schema (two schedulers starting at once)
_SCHEMA_LOCK = 0x64697370_7973


def describe(exc: BaseException) -> str:
    """libpq's message on one line (it spans several)."""
    return " ".join(str(exc).split())


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection that gives up after 5 s (a scheduler must notice an unreachable database, not hang on it).

    Raises:
        psycopg.Error: the server cannot be reached or refuses us.
    """
    return psycopg.connect(dsn, connect_timeout=5, **kwargs)


def create_schema(dsn: str) -> None:
    """Creates the tables if they are not there (idempotent; safe from two schedulers at once).

    Raises:
        psycopg.Error: the server cannot be reached, or holds a schema of another version.
    """
    with connect(dsn, autocommit=True) as db:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            db.execute(_SCHEMA)
            if not _has_column(db, "leader", "http"):  # made before it had one (ALTER locks the table: only then)
                db.execute("ALTER TABLE leader ADD COLUMN http TEXT NOT NULL DEFAULT ''")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] in (1, 2, 3):  # 2 -> 3: new tables, made above
                # version 1's held results get their size when first loaded (`load`)
                db.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS result_size BIGINT NOT NULL DEFAULT 0")
                db.execute("ALTER TABLE clusters ADD COLUMN IF NOT EXISTS opened DOUBLE PRECISION NOT NULL DEFAULT 0")
                db.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS node_run TEXT NOT NULL DEFAULT ''")
                db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise psycopg.DatabaseError(f"the database has schema version {row[0]}; this scheduler reads {SCHEMA_VERSION}")


def _has_column(db: psycopg.Connection[Any], table: str, column: str) -> bool:
    found = db.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s", (table, column)
    ).fetchone()
    return found is not None


class PgStore:
    """The state of the schedulers sharing the database at `dsn`, written by the leader of `epoch`.

    Args:
        dsn: a libpq connection string or `postgresql://` URI.
        epoch: the leadership epoch this scheduler took over with (leadership.py).
        pause_limit: seconds a write keeps retrying while the database is unreachable.

    Raises:
        psycopg.Error: the database cannot be reached or is not ours.
    """

    def __init__(self, dsn: str, epoch: int, pause_limit: float = 60.0) -> None:
        self.dsn = dsn
        self.epoch = epoch
        self.pause_limit = pause_limit
        create_schema(dsn)
        self._db: psycopg.Connection[Any] | None = connect(dsn, autocommit=True)
        self.packed = PackedResults()

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            self._db = connect(self.dsn, autocommit=True)
        return self._db

    def load(self) -> Snapshot:
        db = self._conn()
        clusters = [
            ClusterRow(
                cid, user, name, bytes(comp), reentrant, _unpack_options(opts), seq, closing, _unpack_options(overrides),
                opened,
            )  # fmt: skip
            for cid, user, name, comp, reentrant, opts, seq, closing, overrides, opened in db.execute(
                'SELECT cluster_id, "user", name, computation, reentrant, options, seq, closing, overrides, opened '
                "FROM clusters"
            )
        ]
        # a result's bytes stay in the database; only a version-1 row (no size yet) is read, to size it
        jobs = [
            JobRow(
                cid, jid, prio, seq, None if payload is None else bytes(payload), _unpack_options(opts), submit,
                state, node, attempts, cancel, None, size or (result_cost(_unpack_result(old)) if old is not None else 0),
                run,
            )  # fmt: skip
            for cid, jid, prio, seq, payload, opts, submit, state, node, attempts, cancel, size, old, run in db.execute(
                "SELECT cluster_id, job_id, priority, seq, payload, options, submit_time, state, node, attempts, "
                "cancel_requested, result_size, CASE WHEN result_size = 0 THEN result END, node_run FROM jobs ORDER BY seq"
            )
        ]
        usage = {u: (float(c), float(t)) for u, c, t in db.execute('SELECT "user", cpu_seconds, as_of FROM user_usage')}
        settings = [SettingRow(*row) for row in db.execute(SELECT_SETTINGS)]
        return Snapshot(clusters, jobs, usage, settings)

    def read_packed(self, cluster_id: str, job_ids: list[int]) -> list[tuple[int, bytes]]:
        found = {
            job_id: as_sent(bytes(blob))
            for job_id, blob in self._conn().execute(
                "SELECT job_id, result FROM jobs WHERE cluster_id = %s AND job_id = ANY(%s) AND result IS NOT NULL",
                (cluster_id, job_ids),
            )
        }
        return [(j, found[j]) for j in job_ids if j in found]

    def read_results(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        return [_unpack_result(blob) for _, blob in self.read_packed(cluster_id, job_ids)]

    def write(
        self, changes: Persist, ends: list[JobEnd] | None = None, before_commit: Callable[[], None] | None = None
    ) -> None:
        """Applies one call's changes in one transaction, fenced by our epoch; then adds `ends`, the call's
        accounting records, in a transaction of their own: a record PostgreSQL refuses (text it cannot
        hold) costs that record (logged), never the state. `before_commit` is called once, in the first
        try that got past the fence, before its commit (a retry stages the same rows again).

        Raises:
            NotLeader: another scheduler took over; nothing was written.
            StoreFailed: the database stayed unreachable for `pause_limit` seconds, or refused the rows.
        """
        hook = [before_commit] if before_commit is not None else []

        def apply(cur: psycopg.Cursor[Any]) -> None:
            self._apply(cur, changes)
            if hook:
                hook.pop()()

        self._fenced(apply)
        if ends:
            try:
                self.record(ends)
            except NotLeader:
                raise
            except StoreFailed as exc:
                raise AccountingFailed(str(exc)) from exc

    def record(self, ends: list[JobEnd]) -> None:
        """Adds accounting records, fenced and retried as `write` is (same errors)."""
        self._fenced(lambda cur: cur.executemany(f"INSERT INTO job_ends ({COLUMNS}) VALUES ({_MARKS})", ends))

    def prune(self, before: float) -> int:
        gone: list[int] = []
        self._fenced(lambda cur: gone.append(cur.execute("DELETE FROM job_ends WHERE end_time < %s", (before,)).rowcount))
        return gone[-1]

    def _fenced(self, apply: Callable[[psycopg.Cursor[Any]], object]) -> None:
        """Runs `apply` in one transaction fenced by our epoch, retried while the database is unreachable."""
        started = time.monotonic()
        delay = 0.0
        while True:
            try:
                self._write(self._conn(), apply)
                if delay:
                    log.warning("state database back after %.1f s: writes resume", time.monotonic() - started)
                return
            except psycopg.OperationalError as exc:
                if self._db is not None and not self._db.closed and not self._db.broken:
                    raise StoreFailed(describe(exc)) from exc  # the connection is fine: the statement failed
                if time.monotonic() - started + delay > self.pause_limit:
                    raise StoreFailed(f"state database unreachable for {self.pause_limit:g} s: {describe(exc)}") from exc
                if not delay:
                    log.warning("state database unreachable (%s): writes pause until it is back", describe(exc))
                delay = min(delay * 2, 1.0) or 0.05
                time.sleep(delay)  # the loop waits with us: nothing is acknowledged that is not written
                self._db = None
            except psycopg.Error as exc:
                raise StoreFailed(describe(exc)) from exc

    def _write(self, db: psycopg.Connection[Any], apply: Callable[[psycopg.Cursor[Any]], object]) -> None:
        with db.transaction():
            row = db.execute("SELECT epoch FROM leader WHERE id = 1 FOR SHARE").fetchone()
            current = -1 if row is None else int(row[0])
            if current != self.epoch:
                raise NotLeader(self.epoch, current)
            with db.cursor() as cur:
                apply(cur)

    def _apply(self, cur: psycopg.Cursor[Any], changes: Persist) -> None:
        pack = self.packed.start()  # again at each try
        if changes.clusters:
            cur.executemany(
                "INSERT INTO clusters VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (cluster_id) DO UPDATE SET "
                "closing = excluded.closing, overrides = excluded.overrides",
                [
                    (
                        c.cluster_id, c.user, c.name, c.computation, c.reentrant, _pack_options(c.options), c.seq,
                        c.closing, _pack_options(c.overrides), c.opened,
                    )  # fmt: skip
                    for c in changes.clusters
                ],
            )
        if changes.new_jobs:
            cur.executemany(
                "INSERT INTO jobs VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (cluster_id, job_id) DO UPDATE SET priority = excluded.priority, seq = excluded.seq, "
                "payload = excluded.payload, options = excluded.options, submit_time = excluded.submit_time, "
                "state = excluded.state, node = excluded.node, attempts = excluded.attempts, "
                "cancel_requested = excluded.cancel_requested, result = excluded.result, result_size = excluded.result_size, "
                "node_run = excluded.node_run",
                [new_job_values(j, pack) for j in changes.new_jobs],
            )
        if changes.changed_jobs:
            cur.executemany(
                # a row without its result (the core let go of it) keeps the one stored
                "UPDATE jobs SET state = %s, node = %s, node_run = %s, attempts = %s, cancel_requested = %s, "
                "result = COALESCE(%s, result), result_size = %s, "
                "payload = CASE WHEN %s THEN NULL ELSE payload END WHERE cluster_id = %s AND job_id = %s",
                [changed_job_values(j, pack) for j in changes.changed_jobs],
            )
        if changes.gone_jobs:
            cur.executemany("DELETE FROM jobs WHERE cluster_id = %s AND job_id = %s", list(changes.gone_jobs))
        for cluster_id in changes.gone_clusters:
            cur.execute("DELETE FROM jobs WHERE cluster_id = %s", (cluster_id,))
            cur.execute("DELETE FROM clusters WHERE cluster_id = %s", (cluster_id,))
        if changes.usage:
            cur.executemany(
                'INSERT INTO user_usage VALUES (%s, %s, %s) ON CONFLICT ("user") DO UPDATE SET '
                "cpu_seconds = excluded.cpu_seconds, as_of = excluded.as_of",
                [(u.user, u.cpu_seconds, u.as_of) for u in changes.usage],
            )
        if changes.settings is not None:
            cur.execute("DELETE FROM operator_settings")
            cur.executemany(
                "INSERT INTO operator_settings VALUES (%s, %s, %s)", [(r.kind, r.name, r.value) for r in changes.settings]
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
