"""The scheduler's journal: what it has accepted, on disk, so a restart loses nothing.

Theory of operation
-------------------
The core says what changed in each `handle` call as one `Persist` action
(`core/persist.py`); the shell hands it to a `StateStore` and sends that
call's acknowledgements (JobsAccepted, dispatches, ResultsRecorded, ...)
only once `write` has returned: group commit, one transaction per loop turn,
however many events the turn had. What acknowledges nothing (results to
clients: ahead.py) leaves while the commit writes and syncs. At start `load`
gives back every row, which the core turns into its records again
(`StateRestored`).

`SqliteJournal` is the store of a single scheduler: one SQLite file in the
state directory, WAL mode, this process its only writer (the state
directory's lock sees to that). A cluster's computation and depends are
stored once, in its row; each job keeps its arguments until it ends (in a
table of their own: a dispatch rewrites the job's row, not them; freed pages
are not zeroed, so they cost no write when they go either) and its
result until the client acknowledges it; usage is written with each result
that changes it, so fair-share history is exact after a kill -9. With
`synchronous=FULL` (the default) a commit is on disk before the
acknowledgements leave (results, which acknowledge nothing, leave while it
syncs: ahead.py); `NORMAL` survives a killed scheduler but not a
machine that loses power. A commit that only forgets jobs (their results
collected, or dropped) acknowledges nothing to anyone: it skips its own
fsync (`NORMAL` for that commit) and is made durable by the next commit
that has one (in WAL mode that fsync covers every earlier frame). Not
`OFF`: a checkpoint such a commit sets off would then copy the WAL into the
database file without syncing it, and the WAL, begun anew by the next
commit, would no longer hold what a power loss took from that file. Lost to
a power failure, it would leave results held that were collected already:
after the restart they are sent again, as a result whose acknowledgement
was lost on the wire is, and the client keeps the first. One fsync fewer
per acknowledged batch.

Held results live here, not in the scheduler's memory: `load` gives back
each done job's result size, not its bytes, and the shell reads a result
(`read_results`) only when it sends it to a client, a slice at a time, so a
client that is away or slow costs disk, not memory.

A result is packed once: the bytes a write stores are the ones the JobResults
frame to its client carries (`PackedResults`, `dispy_wire.messages.encode_results`),
whether it goes out in the same turn or is read back later (`read_packed`).

Another store (`PgStore`, pg_store.py: PostgreSQL, shared by a leader and
its standby schedulers) implements the same methods.

A store keeps the accounting records too (`AccountingStore`: the
`job_ends` table). Here the same file holds them, written through a
connection of their own by `accounting.SqliteAccounting`, which the
scheduler also uses alone when the journal is off; or, for the job ends of
a turn whose changes `write` commits, in that same transaction: one commit
(and one fsync) a turn, not two.
"""

from __future__ import annotations

import logging
import operator
import os
import sqlite3
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from dispy_wire.messages import JobResult, pack_result

from .accounting import INSERT_ENDS, AccountingStore, SqliteAccounting
from .core.actions import JobEnd, Persist
from .core.persist import ClusterRow, JobRow, SettingRow
from .core.state import result_cost

log = logging.getLogger(__name__)

FILENAME = "journal.sqlite3"
#: the usage-only store of earlier versions, imported once
OLD_USAGE_FILE = "usage.sqlite3"
#: 2: jobs.result_size, so results stay on disk until a client takes them; 3: operator_settings, clusters.opened;
#: 4: jobs.node_run, the run of the node's runner a job was sent to (a node of that run that does not report it never got it);
#: 5: a job's arguments in a table of their own (`payloads`; jobs.payload stays NULL)
SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    cluster_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    computation BLOB NOT NULL,
    reentrant INTEGER NOT NULL,
    options BLOB,                -- msgpack; NULL: none
    seq INTEGER NOT NULL,
    closing INTEGER NOT NULL,
    overrides BLOB,              -- msgpack {node name: CPUs}; NULL: none
    opened REAL NOT NULL DEFAULT 0  -- Unix time; 0: opened under schema 2 or earlier
);
CREATE TABLE IF NOT EXISTS jobs (
    cluster_id TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB,                -- NULL (schema 4 and earlier: the pickled arguments, now in payloads)
    options BLOB,                -- msgpack; NULL: none
    submit_time REAL NOT NULL,
    state TEXT NOT NULL,         -- queued | running | done
    node TEXT NOT NULL,          -- the node it runs (ran) on, by name
    attempts INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    result BLOB,                 -- msgpack JobResult, until the client acknowledges it
    result_size INTEGER NOT NULL DEFAULT 0,  -- what the result counts in held_bytes (result_cost)
    node_run TEXT NOT NULL DEFAULT '',  -- the run of the node's job runner it was sent to; '': unknown
    PRIMARY KEY (cluster_id, job_id)
);
CREATE TABLE IF NOT EXISTS payloads (  -- a job's pickled arguments until it is done, apart from its row:
    cluster_id TEXT NOT NULL,          -- SQLite writes a row whole at each UPDATE, and a job's row changes at
    job_id INTEGER NOT NULL,           -- every dispatch, its arguments (megabytes, maybe) never
    payload BLOB NOT NULL,
    PRIMARY KEY (cluster_id, job_id)
);
CREATE TABLE IF NOT EXISTS user_usage (
    user TEXT PRIMARY KEY,
    cpu_seconds REAL NOT NULL,   -- decayed CPU-seconds ...
    as_of REAL NOT NULL          -- ... as of this Unix time
);
CREATE TABLE IF NOT EXISTS operator_settings (  -- drains, CPU caps and shares set through the admin API
    kind TEXT NOT NULL,          -- drain | cpus | share
    name TEXT NOT NULL,          -- the node's or user's name
    value REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a store holds, as the core reads it back."""

    clusters: list[ClusterRow]
    jobs: list[JobRow]  # in submission order
    usage: dict[str, tuple[float, float]]  # user -> (CPU-seconds, as of)
    settings: list[SettingRow] = field(default_factory=list)  # the operator's drains, CPU caps and shares


class StoreFailed(Exception):
    """A store other than SQLite could not write (its own error is the cause): nothing was written."""


class AccountingFailed(StoreFailed):
    """`StateStore.write` wrote the changes, but not the accounting records given with them."""


class NotLeader(StoreFailed):
    """Another scheduler leads the shared store now (a newer epoch): this one must not write or dispatch."""

    def __init__(self, ours: int, current: int) -> None:
        super().__init__(f"another scheduler took over (epoch {current}; ours was {ours})")
        self.ours = ours
        self.current = current


class StateStore(AccountingStore, Protocol):
    """Where the scheduler keeps what it accepted, and its accounting records."""

    def load(self) -> Snapshot:
        """Every cluster, job and usage row; done jobs come with `result_size` and no `result` (left on disk)."""
        ...

    #: the results its last `write` packed, for that turn's deliveries
    packed: PackedResults

    def read_packed(self, cluster_id: str, job_ids: list[int]) -> list[tuple[int, bytes]]:
        """The held results of these jobs of one cluster, as stored (`pack_result`), by job id, in the order asked.

        A job the store does not hold, or holds without a result (acknowledged,
        released, not done), is left out: the caller sends what there is.

        Raises:
            sqlite3.Error (or the store's own error).
        """
        ...

    def read_results(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        """As `read_packed`, unpacked."""
        ...

    def write(
        self, changes: Persist, ends: list[JobEnd] | None = None, before_commit: Callable[[], None] | None = None
    ) -> None:
        """Applies one call's changes atomically; durable when it returns (one that only forgets jobs
        may wait for the next write to be: see journal.py). `ends`, that call's accounting records, are
        kept with them (in the same transaction where the store can: one commit a turn, not two).
        `before_commit` is called once the changes are staged, before the commit that makes them durable
        (once at most, and not if staging failed): the caller sends what need not wait (`ahead.py`); its
        `packed` holds the changes' results by then.

        Raises:
            sqlite3.Error or StoreFailed: nothing was written.
            AccountingFailed: the changes were written, `ends` were not.
            NotLeader: a shared store that another scheduler leads now; nothing was written.
        """

    def close(self) -> None: ...


class SqliteJournal:
    """`<state_dir>/journal.sqlite3`.

    Args:
        state_dir: the scheduler's state directory (locked by the caller).
        synchronous: SQLite's `synchronous` for commits: "FULL" or "NORMAL".

    Raises:
        sqlite3.Error: the file cannot be opened or is not a journal.
    """

    def __init__(self, state_dir: str, synchronous: str = "FULL") -> None:
        self.path = os.path.join(state_dir, FILENAME)
        _bind_as_is()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync = "NORMAL" if synchronous.upper() == "NORMAL" else "FULL"
        self._db.execute(f"PRAGMA synchronous={self._sync}")
        # freed pages are not zeroed (some builds do by default): a job's megabyte of arguments, or of result,
        # would be written again as zeros when it goes; the file is the scheduler's alone
        self._db.execute("PRAGMA secure_delete=FAST")
        #: every write's statements go through this one: a connection's execute makes a cursor each call
        self._writer = self._db.cursor()
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, 2, 3, 4, SCHEMA_VERSION):  # 2 -> 3, 4 -> 5: new tables, made by _SCHEMA
            raise sqlite3.DatabaseError(f"{self.path} has schema version {version}; this scheduler reads {SCHEMA_VERSION}")
        self._db.executescript(_SCHEMA)
        if version != SCHEMA_VERSION:
            self._upgrade(version)
        self._import_old_usage(os.path.join(state_dir, OLD_USAGE_FILE))
        self._accounting = SqliteAccounting(self.path)
        self.packed = PackedResults()

    def _upgrade(self, version: int) -> None:
        """Brings a file of an earlier schema (0: a new one) to this one, in one transaction: a scheduler killed
        meanwhile finds it as it was (an ALTER TABLE done twice fails)."""
        db = self._db
        db.execute("BEGIN")
        try:
            if version == 1:  # results held by version 1 get their size when first loaded (`load`)
                db.execute("ALTER TABLE jobs ADD COLUMN result_size INTEGER NOT NULL DEFAULT 0")
            if version in (1, 2):
                db.execute("ALTER TABLE clusters ADD COLUMN opened REAL NOT NULL DEFAULT 0")
            if version in (1, 2, 3):  # jobs sent before: their node's run unknown, so nothing is inferred of them
                db.execute("ALTER TABLE jobs ADD COLUMN node_run TEXT NOT NULL DEFAULT ''")
            moved = 0
            if version in (1, 2, 3, 4):  # the arguments of the jobs not done go to their own table
                moved = db.execute(
                    "INSERT OR REPLACE INTO payloads SELECT cluster_id, job_id, payload FROM jobs WHERE payload IS NOT NULL"
                ).rowcount
                db.execute("UPDATE jobs SET payload = NULL WHERE payload IS NOT NULL")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if moved:  # the log holds them all again: into the file now, the log emptied
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("journal: schema %d -> %d, the arguments of %d jobs moved to their own table", version, SCHEMA_VERSION, moved)

    def _import_old_usage(self, path: str) -> None:
        """Takes the usage an earlier version saved in its own file, once (the file is then renamed)."""
        if not os.path.exists(path):
            return
        old = sqlite3.connect(path)
        try:
            rows = old.execute("SELECT user, cpu_seconds, as_of FROM user_usage").fetchall()
        except sqlite3.Error as exc:
            log.warning("cannot import usage from %s: %s", path, exc)
            return
        finally:
            old.close()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO user_usage VALUES (?, ?, ?)", rows)
        os.replace(path, path + ".imported")
        log.info("imported the usage of %d users from %s", len(rows), path)

    def load(self) -> Snapshot:
        clusters = [
            ClusterRow(
                cid, user, name, bytes(comp), bool(reentrant), _unpack_options(opts), seq, bool(closing),
                _unpack_options(overrides), opened,
            )  # fmt: skip
            for cid, user, name, comp, reentrant, opts, seq, closing, overrides, opened in self._db.execute(
                "SELECT cluster_id, user, name, computation, reentrant, options, seq, closing, overrides, opened "
                "FROM clusters"
            )
        ]
        # a result's bytes stay on disk; only a version-1 row (no size yet) is read, to size it
        jobs = [
            JobRow(
                cid, jid, prio, seq, None if payload is None else bytes(payload), _unpack_options(opts), submit,
                state, node, attempts, bool(cancel), None,
                size or (result_cost(_unpack_result(old)) if old is not None else 0), run,
            )  # fmt: skip
            for cid, jid, prio, seq, payload, opts, submit, state, node, attempts, cancel, size, old, run in self._db.execute(
                "SELECT cluster_id, job_id, priority, seq, p.payload, options, submit_time, state, node, attempts, "
                "cancel_requested, result_size, CASE WHEN result_size = 0 THEN result END, node_run "
                "FROM jobs LEFT JOIN payloads p USING (cluster_id, job_id) ORDER BY seq"
            )
        ]
        usage = {u: (float(c), float(t)) for u, c, t in self._db.execute("SELECT user, cpu_seconds, as_of FROM user_usage")}
        settings = [SettingRow(*row) for row in self._db.execute(SELECT_SETTINGS)]
        return Snapshot(clusters, jobs, usage, settings)

    def read_packed(self, cluster_id: str, job_ids: list[int]) -> list[tuple[int, bytes]]:
        found: dict[int, bytes] = {}
        for start in range(0, len(job_ids), 500):  # SQLite's bound parameters are limited
            some = job_ids[start : start + 500]
            marks = ",".join("?" * len(some))
            for job_id, blob in self._db.execute(
                f"SELECT job_id, result FROM jobs WHERE cluster_id = ? AND job_id IN ({marks}) AND result IS NOT NULL",
                (cluster_id, *some),
            ):
                found[job_id] = as_sent(blob)
        return [(j, found[j]) for j in job_ids if j in found]

    def read_results(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        return [_unpack_result(blob) for _, blob in self.read_packed(cluster_id, job_ids)]

    def write(
        self, changes: Persist, ends: list[JobEnd] | None = None, before_commit: Callable[[], None] | None = None
    ) -> None:
        lazy = self._sync == "FULL" and not ends and _only_forgets(changes)
        if lazy:  # see the module's docstring; NORMAL, not OFF: a checkpoint this commit sets off still syncs
            self._writer.execute("PRAGMA synchronous=NORMAL")
        try:
            self._write(changes, ends, before_commit)
        finally:
            if lazy:
                self._writer.execute("PRAGMA synchronous=FULL")

    def _write(self, changes: Persist, ends: list[JobEnd] | None, before_commit: Callable[[], None] | None) -> None:
        db = self._writer
        pack = self.packed.start()
        db.execute("BEGIN")
        try:
            if ends:  # the accounting records of the turn, in its commit (the table is `SqliteAccounting`'s)
                db.executemany(INSERT_ENDS, ends)
            if changes.clusters:
                db.executemany(
                    "INSERT INTO clusters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(cluster_id) DO UPDATE SET "
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
                db.executemany(
                    "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [new_job_values(j, pack, with_payload=False) for j in changes.new_jobs],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO payloads VALUES (?, ?, ?)",
                    [(j.cluster_id, j.job_id, j.payload) for j in changes.new_jobs if j.payload is not None],
                )
            if changes.changed_jobs:
                self._update(changes.changed_jobs, pack)
            if changes.gone_jobs:  # (its end's changes may not have been written: it ended in this turn)
                db.executemany("DELETE FROM jobs WHERE cluster_id = ? AND job_id = ?", changes.gone_jobs)
                db.executemany(DELETE_PAYLOADS, changes.gone_jobs)
            for cluster_id in changes.gone_clusters:
                db.execute("DELETE FROM jobs WHERE cluster_id = ?", (cluster_id,))
                db.execute("DELETE FROM payloads WHERE cluster_id = ?", (cluster_id,))
                db.execute("DELETE FROM clusters WHERE cluster_id = ?", (cluster_id,))
            if changes.usage:
                db.executemany(
                    "INSERT INTO user_usage VALUES (?, ?, ?) ON CONFLICT(user) DO UPDATE SET "
                    "cpu_seconds = excluded.cpu_seconds, as_of = excluded.as_of",
                    [(u.user, u.cpu_seconds, u.as_of) for u in changes.usage],
                )
            if changes.settings is not None:  # few rows: all of them anew
                db.execute("DELETE FROM operator_settings")
                db.executemany(
                    "INSERT INTO operator_settings VALUES (?, ?, ?)", [(r.kind, r.name, r.value) for r in changes.settings]
                )
            if before_commit is not None:  # staged: the commit writes (the rest of) the log and syncs it
                before_commit()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _update(self, changed: list[JobRow], pack: Callable[[JobResult | None], bytes | None]) -> None:
        """Most changes are dispatches (a job moved, nothing else): their rows get the narrow UPDATE_MOVED."""
        moved = [_moved_values(j) for j in changed if j.state != "done"]
        if moved:
            self._writer.executemany(UPDATE_MOVED, moved)
        if len(moved) < len(changed):
            ended = [j for j in changed if j.state == "done"]
            self._writer.executemany(UPDATE_ENDED, [_ended_values(j, pack) for j in ended])
            self._writer.executemany(DELETE_PAYLOADS, [(j.cluster_id, j.job_id) for j in ended])

    def record(self, ends: list[JobEnd]) -> None:
        self._accounting.record(ends)

    def prune(self, before: float) -> int:
        return self._accounting.prune(before)

    def size(self) -> int:
        """Bytes on disk (database and write-ahead log)."""
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def close(self) -> None:
        self._accounting.close()
        self._db.close()


def _bind_as_is() -> None:
    """Registers, for the parameter types of a job's rows that are not int, float or str (bool, bytes, None), the
    adapter that gives the value back as it is: the same value bound, found in sqlite3's adapter table at once,
    where without one each such parameter is looked for an `__adapt__` and a `__conform__` method, an
    AttributeError made and dropped each time (several a job). One registered already (the process's own) stays."""
    for kind, same in ((bool, int), (bytes, bytes), (type(None), _null)):
        sqlite3.adapters.setdefault((kind, sqlite3.PrepareProtocol), same)


def _null(value: None) -> None:
    return value


def _only_forgets(changes: Persist) -> bool:
    """Whether a turn's changes only delete jobs (their results acknowledged, or dropped)."""
    return bool(changes.gone_jobs) and not (
        changes.clusters or changes.new_jobs or changes.changed_jobs or changes.gone_clusters or changes.usage
        or changes.settings is not None
    )


SELECT_SETTINGS = "SELECT kind, name, value FROM operator_settings ORDER BY kind, name"

#: a job that changed and is not done (dispatched, queued again, its cancel asked) has no result yet and keeps
#: its arguments: only these columns can have changed, and fewer columns set is less work a row
UPDATE_MOVED = (
    "UPDATE jobs SET state = ?, node = ?, node_run = ?, attempts = ?, cancel_requested = ? WHERE cluster_id = ? AND job_id = ?"
)
#: UPDATE_MOVED's parameters from a `JobRow`, picked in C: no Python call a row
_moved_values = operator.itemgetter(
    *(JobRow._fields.index(f) for f in ("state", "node", "node_run", "attempts", "cancel_requested", "cluster_id", "job_id"))
)
#: the arguments of jobs that ended or went (key parameters)
DELETE_PAYLOADS = "DELETE FROM payloads WHERE cluster_id = ? AND job_id = ?"
#: a job that ended: its result (a row without one, the core having let go of it, keeps the one on disk); its
#: arguments go (from `payloads`)
UPDATE_ENDED = (
    "UPDATE jobs SET state = ?, node = ?, node_run = ?, attempts = ?, cancel_requested = ?, result = COALESCE(?, result), "
    "result_size = ? WHERE cluster_id = ? AND job_id = ?"
)


def _ended_values(j: JobRow, pack: Callable[[JobResult | None], bytes | None]) -> tuple[Any, ...]:
    return (
        j.state, j.node, j.node_run, j.attempts, j.cancel_requested, pack(j.result), j.result_size, j.cluster_id, j.job_id,
    )  # fmt: skip


def _pack_options(options: dict[str, Any]) -> bytes | None:
    return msgpack.packb(options, use_bin_type=True) if options else None


def _unpack_options(blob: bytes | None) -> dict[str, Any]:
    if blob is None:
        return {}
    value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    return value if isinstance(value, dict) else {}


def new_job_values(
    j: JobRow, pack: Callable[[JobResult | None], bytes | None], with_payload: bool = True
) -> tuple[Any, ...]:
    """A new job's row, in the jobs table's column order (both stores); `pack` packs its result. Its arguments
    too `with_payload` (PostgreSQL; SQLite keeps them in a table of their own)."""
    return (
        j.cluster_id, j.job_id, j.priority, j.seq, j.payload if with_payload else None, _pack_options(j.options), j.submit_time,
        j.state, j.node, j.attempts, j.cancel_requested, pack(j.result), j.result_size, j.node_run,
    )  # fmt: skip


def changed_job_values(j: JobRow, pack: Callable[[JobResult | None], bytes | None]) -> tuple[Any, ...]:
    """A changed job's parameters for the stores' UPDATE: state, node, node run, attempts, cancel, result (None
    keeps the stored one; `pack` packs it), result size, whether its arguments are dropped, then its key."""
    return (
        j.state, j.node, j.node_run, j.attempts, j.cancel_requested, pack(j.result), j.result_size,
        j.payload is None, j.cluster_id, j.job_id,
    )  # fmt: skip


class PackedResults:
    """The results a store's last write packed, so the same turn's deliveries send those bytes
    (`encode_results`) instead of packing each result again.

    Found by identity, the result kept with its bytes so its id cannot be reused meanwhile: a result
    that is not the very object written (or was written a turn before) is packed anew, never mistaken.
    Holds one turn's results, until the shell has executed that turn (`clear`) or the next write.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[JobResult, bytes]] = {}

    def start(self) -> Callable[[JobResult | None], bytes | None]:
        """Forgets the last write's results; returns the packer of this write's."""
        self.clear()
        return self._pack

    def clear(self) -> None:
        """Lets go of the results: a client that is away costs disk, not memory."""
        if self._last:
            self._last = {}

    def _pack(self, result: JobResult | None) -> bytes | None:
        if result is None:
            return None
        packed = pack_result(result)
        self._last[id(result)] = (result, packed)
        return packed

    def get(self, result: JobResult) -> bytes:
        """The result's bytes as the last write stored them, or packed now."""
        hit = self._last.get(id(result))
        return hit[1] if hit is not None and hit[0] is result else pack_result(result)


def _unpack_result(blob: bytes) -> JobResult:
    return JobResult(*msgpack.unpackb(blob))


#: the first byte of a stored result of today's fields: a msgpack fixarray of that many
_CURRENT_RESULT = 0x90 | len(JobResult._fields)


def as_sent(blob: bytes) -> bytes:
    """A stored result's bytes as clients take them today: a result an earlier version stored, before fields
    were added to `JobResult` (the journal's schema kept), is unpacked with the new fields' defaults and packed
    again; clients refuse an array of another length."""
    return blob if blob[:1] == bytes((_CURRENT_RESULT,)) else pack_result(_unpack_result(blob))
