"""Leadership and fencing on a real PostgreSQL, without schedulers: `Leadership` and `PgStore` driven directly."""

from __future__ import annotations

import threading

import pytest

from dispy_sched.core.actions import Persist
from dispy_sched.core.persist import ClusterRow, UsageRow
from dispy_sched.journal import NotLeader
from dispy_sched.leadership import Leadership
from dispy_sched.pg_store import PgStore
from waiting import wait_until


def cluster_row(cluster_id: str) -> Persist:
    row = ClusterRow(cluster_id, "alice", "f", b"code", False, {}, 1, False, {})
    return Persist([row], [], [], [], [], [UsageRow("alice", 1.0, 2.0)])


def campaign_in_thread(leadership: Leadership) -> tuple[threading.Thread, threading.Event, list[bool]]:
    stop, won = threading.Event(), []
    thread = threading.Thread(target=lambda: won.append(leadership.campaign(stop)), daemon=True)
    thread.start()
    return thread, stop, won


def test_a_write_of_a_replaced_leader_is_refused_and_changes_nothing(pg_dsn: str) -> None:
    first = Leadership(pg_dsn, "a:1", lease=1.0)
    assert first.campaign(threading.Event())
    old = PgStore(pg_dsn, first.epoch)
    old.write(cluster_row("K1"))
    second = Leadership(pg_dsn, "b:2", lease=1.0)
    thread, stop, won = campaign_in_thread(second)
    first.resign()  # as a leader that was paused and lost its lease: a standby takes over
    thread.join(30)
    assert won == [True] and second.epoch == first.epoch + 1
    with pytest.raises(NotLeader):
        old.write(cluster_row("K2"))
    assert [c.cluster_id for c in PgStore(pg_dsn, second.epoch).load().clusters] == ["K1"]
    second.resign()
    old.close()


def test_a_standby_takes_over_a_leader_whose_beat_stops_and_the_old_one_is_told(pg_dsn: str) -> None:
    leader = Leadership(pg_dsn, "a:1", lease=1.0)
    assert leader.campaign(threading.Event())
    lost: list[str] = []
    leader.keep(lost.append)
    standby = Leadership(pg_dsn, "b:2", lease=1.0)
    thread, stop, won = campaign_in_thread(standby)
    wait_until(lambda: standby.seen.address == "a:1", what="the standby to read who leads")
    # beating: the standby stands by for several leases
    wait_until(lambda: leader._db is not None and _beats(pg_dsn) >= 6, what="six beats")
    assert not won
    # the leader pauses (its beats stop; its lock connection stays): after a lease the standby takes over
    leader._stop.set()
    thread.join(30)
    assert won == [True] and standby.epoch == leader.epoch + 1
    leader._stop.clear()
    leader.keep(lost.append)
    wait_until(lambda: lost, what="the old leader to learn it was replaced")
    assert "another scheduler took over" in lost[0]
    standby.resign()


def test_a_standby_stopped_before_it_leads_closes_its_connection(pg_dsn: str) -> None:
    leader = Leadership(pg_dsn, "a:1", lease=1.0)
    assert leader.campaign(threading.Event())
    alone = _connections(pg_dsn)  # the leader's
    standby = Leadership(pg_dsn, "b:2", lease=1.0)
    thread, stop, won = campaign_in_thread(standby)
    wait_until(lambda: standby.seen.address == "a:1", what="the standby to read who leads")
    assert _connections(pg_dsn) == alone + 1
    stop.set()
    thread.join(30)
    assert won == [False]
    assert _connections(pg_dsn) == alone
    leader.resign()


def _connections(dsn: str) -> int:
    """Connections to the test's database, other than the one asking."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])


def _beats(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT beat FROM leader").fetchone()
        assert row is not None
        return int(row[0])


def test_a_leader_stopped_in_the_middle_of_a_write_does_not_hold_up_the_takeover(pg_dsn: str) -> None:
    leader = Leadership(pg_dsn, "a:1", lease=1.0)
    assert leader.campaign(threading.Event())
    import psycopg

    # its write's fence (PgStore.write), in a transaction that never ends: as if stopped (SIGSTOP) right there
    stuck = psycopg.connect(pg_dsn)
    stuck.execute("SELECT epoch FROM leader WHERE id = 1 FOR SHARE")
    standby = Leadership(pg_dsn, "b:2", lease=1.0)
    thread, stop, won = campaign_in_thread(standby)
    thread.join(60)  # its beat never started: a lease after the standby first looks, it takes over
    stop.set()
    assert won == [True] and standby.epoch == leader.epoch + 1
    with pytest.raises(psycopg.OperationalError):  # the stopped write's connection was ended: it commits nothing
        stuck.execute("SELECT 1")
    standby.resign()
    leader.resign()
