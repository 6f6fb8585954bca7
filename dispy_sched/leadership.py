"""Which of the schedulers sharing one PostgreSQL database leads, and until when.

Theory of operation
-------------------
The `leader` row (pg_store.py) names the leader: its `epoch` (one more at
each takeover), the `address` peers should dial, the `backend_pid` of the
connection that holds the leadership advisory lock, and `beat`, which the
leader adds one to every `lease / 3` seconds on that connection.

A standby polls the row every `lease / 6` seconds and takes over when the
leader is gone, judged by its own clock only (no clocks are compared across
hosts):

- the leader resigned (`address` empty), or
- the leader's lock connection, which this standby saw alive in its current
  session, is gone (the leader's process died: its lock went with it), or
- the beat has not moved for `lease` seconds of this standby's watching
  (the leader is paused, hung or cut off); its lock connection is then
  terminated so the lock is free.

After a database restart a standby watches afresh (its session is new), so a
leader that reconnects within a lease keeps leading. Taking over is: the
advisory lock (one standby at a time), then `epoch = epoch + 1` if the epoch
is still the one judged gone, in one statement. Every state write checks the
epoch (pg_store.py), so the old leader, if it comes back, writes nothing and
dispatches nothing: its next write, or its next beat, tells it to step down.

The leader keeps the lease from a thread of its own (beats must go on while
the event loop waits on a slow write); losing it is fatal: `on_lost` is
called and the process exits (a supervisor restarts it as a standby).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg

from .pg_store import connect, create_schema, describe
from .standby import LeaderInfo

log = logging.getLogger(__name__)

#: the advisory lock the leader holds (any constant; "dispyld")
LOCK_KEY = 0x64697370_796C64
DEFAULT_LEASE = 3.0


class Leadership:
    """Campaigns for, and then keeps, the leadership of the schedulers on the database at `dsn`.

    Args:
        dsn: the state store's connection string.
        address: host:port peers should dial while this scheduler leads.
        lease: seconds without a beat after which a standby takes over.
        http: the URL of this scheduler's dashboard while it leads ('' if it serves none).
    """

    def __init__(self, dsn: str, address: str, lease: float = DEFAULT_LEASE, http: str = "") -> None:
        self.dsn = dsn
        self.address = address
        self.lease = lease
        self.http = http
        self.epoch = 0
        #: the leader as last read (while standing by: what peers, /metrics and the page are told), or ours
        self.seen = LeaderInfo("", 0, 0.0)
        self._db: psycopg.Connection[Any] | None = None
        self._db_new = False  # `_db` is a new connection: the leader must take its lock again on it
        #: set once `campaign` has looked at the leader row (or failed to): it did not take over at once
        self.polled = threading.Event()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # ------------------------------------------------------------ standing by

    def campaign(self, stop: threading.Event) -> bool:
        """Stands by until this scheduler leads (True) or `stop` is set (False). Blocking: run in a thread.

        Stopped first, it closes its connection to the database: a standby that stops leaves nothing open there."""
        watch = _Watch()
        leads = False
        try:
            leads = self._campaign(stop, watch)
            return leads
        finally:
            if not leads:
                self._drop()
            self.polled.set()

    def _campaign(self, stop: threading.Event, watch: _Watch) -> bool:
        while not stop.is_set():
            try:
                db = self._connection()
                row = self._read(db)
                self.seen = LeaderInfo(row.address, row.epoch, row.since, row.http)
                if self._gone(db, row, watch) and self._take_over(db, row.epoch):
                    return True
            except psycopg.Error as exc:
                if watch.beat is not None or self._db is not None:  # once per outage
                    log.warning("standby: state database: %s; watching afresh once it is back", describe(exc))
                self._drop()
                watch = _Watch()
            self.polled.set()
            stop.wait(self.lease / 6)
        return False

    def _gone(self, db: psycopg.Connection[Any], row: _Row, watch: _Watch) -> bool:
        """Whether the leader in `row` is gone, as this standby has watched it (see the module's docstring)."""
        epoch, address, pid, beat, alive = row.epoch, row.address, row.pid, row.beat, row.alive
        now = time.monotonic()
        if (epoch, beat) != watch.beat:
            watch.beat, watch.since = (epoch, beat), now
        if not address:
            return True  # resigned, or never led
        if not alive and watch.alive == (epoch, pid):
            log.warning("standby: the leader %s is gone: its lock connection closed (epoch %d)", address, epoch)
            return True
        if alive:
            watch.alive = (epoch, pid)
        if now - watch.since >= self.lease:
            log.warning("standby: no beat from the leader %s for %.1f s (epoch %d)", address, now - watch.since, epoch)
            if alive:  # paused or cut off: free its lock (its writes are fenced by the epoch anyway)
                db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return True
        return False

    def _read(self, db: psycopg.Connection[Any]) -> _Row:
        row = db.execute(
            "SELECT epoch, address, backend_pid, beat, EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid), "
            "extract(epoch FROM since), http FROM leader l WHERE id = 1"
        ).fetchone()
        assert row is not None  # the schema inserts it
        return _Row(int(row[0]), str(row[1]), int(row[2]), int(row[3]), bool(row[4]), float(row[5]), str(row[6]))

    def _take_over(self, db: psycopg.Connection[Any], judged: int) -> bool:
        got = db.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not got or not got[0]:
            return False  # another standby is taking over, or the old lock is not yet released
        row = self._claim(db, judged)
        if row is None:
            db.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            return False  # someone else took over meanwhile
        self.epoch = int(row[0])
        self.seen = LeaderInfo(self.address, self.epoch, float(row[1]), self.http)
        self._db_new = False  # this connection holds the lock
        log.warning("leading now (epoch %d) as %s", self.epoch, self.address)
        return True

    def _claim(self, db: psycopg.Connection[Any], judged: int) -> tuple[Any, ...] | None:
        """Adds one to the epoch judged gone, naming this scheduler: (epoch, since), or None if it moved on.

        A leader stopped in the middle of a write holds the leader row (its
        fence, FOR SHARE) in a transaction that never ends, and the UPDATE
        would wait for it forever: its connections that hold the row are
        ended first, and the UPDATE waits a second at most before trying again.
        """
        while True:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE relation = 'leader'::regclass AND mode = 'RowShareLock' AND pid <> pg_backend_pid()"
            )
            try:
                with db.transaction():
                    db.execute("SET LOCAL lock_timeout = '1s'")
                    return db.execute(
                        "UPDATE leader SET epoch = epoch + 1, address = %s, backend_pid = pg_backend_pid(), beat = 0, "
                        "since = now(), http = %s WHERE id = 1 AND epoch = %s RETURNING epoch, extract(epoch FROM since)",
                        (self.address, self.http, judged),
                    ).fetchone()
            except psycopg.errors.LockNotAvailable:
                log.warning("standby: the old leader's write holds the leader row; ending it again")

    # ---------------------------------------------------------------- leading

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Beats from a thread until `resign`; calls `on_lost(reason)` (from that thread) if another took over."""
        self._keeper = threading.Thread(target=self._beat, args=(on_lost,), name="dispy-leadership", daemon=True)
        self._keeper.start()

    def _beat(self, on_lost: Callable[[str], None]) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                db = self._connection()
                if self._db_new:
                    self._relock(db)
                    if self._stop.is_set():
                        return  # resigned while the database was away
                row = db.execute(
                    "UPDATE leader SET beat = beat + 1 WHERE id = 1 AND epoch = %s AND backend_pid = pg_backend_pid() "
                    "RETURNING beat",
                    (self.epoch,),
                ).fetchone()
                if row is None:
                    current = self._read(db)
                    on_lost(f"another scheduler took over (epoch {current.epoch}, {current.address or 'no address'}; ours was {self.epoch})")
                    return
            except _Lost as exc:
                on_lost(str(exc))
                return
            except psycopg.Error as exc:
                if self._db is not None:  # once per outage
                    log.warning("leader: state database: %s; reconnecting", describe(exc))
                self._drop()

    def _relock(self, db: psycopg.Connection[Any]) -> None:
        """Takes the lock again on a new connection (the database restarted), if our epoch still leads."""
        while True:
            epoch = self._read(db).epoch
            if epoch != self.epoch:
                raise _Lost(f"another scheduler took over while the state database was away (epoch {epoch}; ours was {self.epoch})")
            got = db.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if got and got[0]:
                break
            if self._stop.wait(self.lease / 12):  # a standby holds it for a moment while it looks
                return
        db.execute("UPDATE leader SET backend_pid = pg_backend_pid() WHERE id = 1 AND epoch = %s", (self.epoch,))
        self._db_new = False
        log.warning("leader: state database back; still leading (epoch %d)", self.epoch)

    def resign(self) -> None:
        """Stops beating and hands over at once (a clean stop): standbys need not wait out the lease."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=self.lease)
        try:
            if self._db is not None and self.epoch:
                self._db.execute("UPDATE leader SET address = '' WHERE id = 1 AND epoch = %s", (self.epoch,))
        except psycopg.Error as exc:
            log.warning("could not resign the leadership: %s (standbys take over after the lease)", exc)
        self._drop()

    # ------------------------------------------------------------- connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._drop()
            create_schema(self.dsn)
            self._db = connect(self.dsn, autocommit=True)
            self._db_new = True
        return self._db

    def _drop(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except psycopg.Error:
                pass
            self._db = None


def describe_leader(dsn: str) -> str:
    """One line for an operator: which scheduler leads the state at `dsn`, since when, in which epoch.

    Raises:
        psycopg.Error: the database cannot be reached, or holds no scheduler state.
    """
    with connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT epoch, address, since, beat, EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid) "
            "FROM leader l WHERE id = 1"
        ).fetchone()
    if row is None:
        raise psycopg.DatabaseError("no leader row: no scheduler has used this database")
    epoch, address, since, beat, alive = row
    if not address:
        return f"no scheduler leads (epoch {epoch}: {'the last leader resigned' if epoch else 'none has led yet'})"
    lock = "holds its lock" if alive else "its lock connection is gone: a standby takes over"
    return f"leader {address}, epoch {epoch}, since {since:%Y-%m-%d %H:%M:%S %Z} ({beat} beats; {lock})"


class _Row(NamedTuple):
    """The `leader` row as a standby reads it; `alive`: the connection `pid` is still open."""

    epoch: int
    address: str
    pid: int
    beat: int
    alive: bool
    since: float  # Unix time the leader took over (the database's clock)
    http: str


class _Watch:
    """What a standby has seen of the leader in its current database session."""

    __slots__ = ("beat", "since", "alive")

    def __init__(self) -> None:
        self.beat: tuple[int, int] | None = None  # (epoch, beat) last seen ...
        self.since = time.monotonic()  # ... unchanged since then
        self.alive: tuple[int, int] | None = None  # (epoch, lock backend pid) seen alive


class _Lost(Exception):
    """The leadership is gone for good."""
