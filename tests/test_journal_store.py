"""The SQLite journal as a store of held results: on disk until read, sized without being read."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.persist import job_row
from dispy_sched.core.state import JobState, result_cost
from dispy_sched.journal import FILENAME, SCHEMA_VERSION, SqliteJournal, StateStore
from dispy_sched.policies import load_policy
from dispy_wire import messages as M
from dispy_wire.messages import JobSpec
from dispy_wire.framing import FrameDecoder
from test_core import arrived, joined, opened, result, step, submitted


def run(core: SchedulerCore, journal: SqliteJournal, *events: E.Event, now: float) -> list[A.Action]:
    actions = step(core, *events, now=now)
    for action in actions:
        if isinstance(action, A.Persist):
            journal.write(action)
    return actions


def test_held_results_are_read_back_on_demand_and_a_restart_loads_only_their_sizes(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "K", 1, 2), E.ClientLeft("c1"), now=1)
    run(core, journal, arrived("n1", result("K", 1), result("K", 2)), now=2)
    assert journal.read_results("K", [2, 1, 99]) == [result("K", 2), result("K", 1)]  # in the order asked
    journal.close()
    snap = SqliteJournal(str(tmp_path)).load()
    assert [(j.job_id, j.state, j.result, j.result_size) for j in snap.jobs] == [
        (1, "done", None, result_cost(result("K", 1))),
        (2, "done", None, result_cost(result("K", 2))),
    ]


def test_a_job_dispatched_then_asked_to_cancel_is_stored_as_the_core_holds_it(tmp_path: Path) -> None:
    """Changes that leave a job not done (written by a narrower UPDATE than a result's) keep every column right."""
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))

    def stored_as_held() -> None:
        held = {job.key: job_row(job) for cluster in core.clusters.values() for job in cluster.jobs.values()}
        assert {(j.cluster_id, j.job_id): j for j in journal.load().jobs} == held

    run(core, journal, opened("c1", "K"), now=0)
    run(core, journal, submitted("c1", "K", 1, 2), now=1)  # queued: no node yet
    stored_as_held()
    run(core, journal, E.NodeJoined("n1", "host-n1", "10.0.0.1", 1, 5.0, node_run="run-1"), now=2)
    assert core.clusters["K"].jobs[1].state is JobState.RUNNING  # dispatched in a turn of its own: an UPDATE
    stored_as_held()
    run(core, journal, E.JobsCancelled("c1", "K", [1]), now=3)
    assert core.clusters["K"].jobs[1].cancel_requested  # running still, until its node says
    stored_as_held()
    journal.close()


def test_delivered_results_are_the_bytes_the_journal_stored_packed_once(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "K", 1, 2), now=1)
    actions = run(core, journal, arrived("n1", result("K", 1), result("K", 2)), now=2)
    (deliver,) = [a for a in actions if isinstance(a, A.DeliverResults)]
    packed = [journal.packed.get(r) for r in deliver.results]
    assert all(journal.packed.get(r) is p for r, p in zip(deliver.results, packed))  # the write's, not packed again
    assert packed == [blob for _, blob in journal.read_packed("K", [1, 2])]  # as stored
    assert M.encode_results("K", packed) == M.encode(M.JobResults("K", deliver.results))
    equal = M.JobResult(*deliver.results[0])  # not the object written: packed anew, to the same bytes
    assert journal.packed.get(equal) is not packed[0] and journal.packed.get(equal) == packed[0]
    run(core, journal, E.ResultsAcked("c1", "K", [1, 2]), now=3)
    assert journal.packed.get(deliver.results[0]) is not packed[0]  # a later write forgets this turn's
    assert journal.read_packed("K", [1, 2]) == []


def test_a_result_an_earlier_version_held_reaches_the_client_in_todays_fields(tmp_path: Path) -> None:
    # results journaled before JobResult gained cpu_time and max_rss (the schema kept) are arrays of 11: sent as
    # stored, clients refused the frame (and every result with it) at each re-attach, for ever
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "K", 1, 2), now=1)
    run(core, journal, arrived("n1", result("K", 1), result("K", 2)), now=2)
    earlier = msgpack.packb(list(result("K", 1))[:11], use_bin_type=True)
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("UPDATE jobs SET result = ? WHERE cluster_id = 'K' AND job_id = 1", (earlier,))
    db.commit()
    db.close()
    packed = [blob for _, blob in journal.read_packed("K", [1, 2])]
    decoder = FrameDecoder(expect_preamble=False)
    decoder.feed(M.encode_results("K", packed))
    message = M.next_message(decoder)  # the client's check: raises on an array of another length
    assert isinstance(message, M.JobResults)
    assert [(r.job_id, r.cpu_time, r.max_rss) for r in message.results] == [(1, 0.0, 0), (2, 0.0, 0)]
    assert packed[1] == M.pack_result(result("K", 2))  # today's bytes go as stored


#: the tables of a version-1 journal
VERSION_1 = """
CREATE TABLE clusters (cluster_id TEXT PRIMARY KEY, user TEXT NOT NULL, name TEXT NOT NULL,
    computation BLOB NOT NULL, reentrant INTEGER NOT NULL, options BLOB, seq INTEGER NOT NULL,
    closing INTEGER NOT NULL, overrides BLOB);
CREATE TABLE jobs (cluster_id TEXT NOT NULL, job_id INTEGER NOT NULL, priority INTEGER NOT NULL,
    seq INTEGER NOT NULL, payload BLOB, options BLOB, submit_time REAL NOT NULL, state TEXT NOT NULL,
    node TEXT NOT NULL, attempts INTEGER NOT NULL, cancel_requested INTEGER NOT NULL, result BLOB,
    PRIMARY KEY (cluster_id, job_id));
"""


def test_a_version_1_journal_gets_its_held_results_sized_and_the_operator_settings_table(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.executescript(VERSION_1 + "PRAGMA user_version = 1;")
    held = result("K", 7)
    db.execute("INSERT INTO clusters VALUES ('K', 'alice', 'name-K', x'00', 0, NULL, 1, 0, NULL)")
    blob = msgpack.packb(list(held), use_bin_type=True)
    db.execute("INSERT INTO jobs VALUES ('K', 7, 0, 2, NULL, NULL, 0.0, 'done', 'host', 1, 0, ?)", (blob,))
    db.commit()
    db.close()
    journal = SqliteJournal(str(tmp_path))
    (job,) = journal.load().jobs
    assert (job.result, job.result_size, job.node_run) == (None, result_cost(held), "")
    assert journal.read_results("K", [7]) == [held]
    assert journal.load().settings == []  # the table a version-3 file has, empty
    assert sqlite3.connect(tmp_path / FILENAME).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_2_postgresql_state_is_migrated_and_keeps_its_rows(pg_dsn: str) -> None:
    import psycopg

    from dispy_sched import pg_store
    from dispy_sched.core.actions import JobEnd
    from dispy_sched.pg_store import PgStore, create_schema
    from test_core_journal import take_epoch

    create_schema(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as db:  # back to what version 2 made
        db.execute("DROP TABLE operator_settings")
        db.execute("DROP TABLE job_ends")
        db.execute("ALTER TABLE clusters DROP COLUMN opened")
        db.execute("ALTER TABLE jobs DROP COLUMN node_run")
        db.execute("UPDATE schema_version SET version = 2")
        db.execute("INSERT INTO jobs VALUES ('K', 3, 0, 2, NULL, NULL, 0.0, 'running', 'host', 1, false, NULL, 0)")
        db.execute("INSERT INTO clusters VALUES ('K', 'alice', 'name-K', '\\x00', false, NULL, 1, false, NULL)")
    store = PgStore(pg_dsn, take_epoch(pg_dsn))
    try:
        snap = store.load()
        assert [(c.cluster_id, c.opened) for c in snap.clusters] == [("K", 0.0)] and snap.settings == []
        assert [(j.job_id, j.node, j.node_run) for j in snap.jobs] == [(3, "host", "")]  # sent to a run unknown
        store.record([JobEnd("alice", "K", "name-K", 1, "n1", "Finished", 1.0, 2.0, 3.0, 0.5, 1 << 20, "")])
        assert store.prune(2.5) == 0 and store.prune(3.5) == 1
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (pg_store.SCHEMA_VERSION,)


def test_a_turn_that_only_forgets_jobs_is_written_without_an_fsync_of_its_own_and_kept(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2), now=0)
    run(core, journal, arrived("n1", result("K", 1), result("K", 2)), now=1)
    syncs: list[int] = []
    # SQLite fsyncs in C: what the connection is set to for each statement shows which commits skip it
    journal._db.set_trace_callback(lambda sql: syncs.append(journal._db.execute("PRAGMA synchronous").fetchone()[0])
                                   if sql == "COMMIT" else None)  # fmt: skip
    (ack,) = [a for a in run(core, journal, E.ResultsAcked("c1", "K", [1]), now=2) if isinstance(a, A.Persist)]
    assert ack.gone_jobs == [("K", 1)] and not ack.changed_jobs
    run(core, journal, submitted("c1", "K", 3), now=3)  # a turn that acknowledges something: fsynced
    journal._db.set_trace_callback(None)
    assert syncs == [1, 2]  # NORMAL for the forgetting turn (a checkpoint it sets off syncs), FULL again for the next
    journal.close()
    assert [j.job_id for j in SqliteJournal(str(tmp_path)).load().jobs] == [2, 3]


def test_a_turns_accounting_records_are_written_in_its_journal_commit(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True, accounting=True))
    run(core, journal, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2), now=0)
    actions = step(core, arrived("n1", result("K", 1), result("K", 2)), now=1)
    persist, ends = actions[0], actions[1]  # the order the shell relies on to write both in one commit
    assert isinstance(persist, A.Persist) and isinstance(ends, A.RecordJobEnds)
    journal.write(persist, ends.ends)
    journal.close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT job_id, node, status FROM job_ends ORDER BY job_id").fetchall() == [
            (1, "host-n1", "Finished"), (2, "host-n1", "Finished"),
        ]
        assert db.execute("SELECT state FROM jobs ORDER BY job_id").fetchall() == [("done",), ("done",)]


def test_a_version_4_journal_keeps_the_arguments_of_its_jobs_not_done(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), submitted("c1", "K", 1, 2), now=0)
    journal.close()
    with sqlite3.connect(tmp_path / FILENAME) as db:  # back to what version 4 wrote: the arguments in the row
        db.execute("UPDATE jobs SET payload = (SELECT payload FROM payloads p WHERE p.job_id = jobs.job_id)")
        db.execute("DROP TABLE payloads")
        db.execute("PRAGMA user_version = 4")
    assert [(j.job_id, j.payload) for j in SqliteJournal(str(tmp_path)).load().jobs] == [(1, b"args-1"), (2, b"args-2")]
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE payload IS NOT NULL").fetchone() == (0,)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_dispatch_rewrites_its_jobs_row_but_not_its_arguments_and_an_end_lets_them_go(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    big = bytes(range(256)) * 4096  # 1 MiB of arguments
    run(core, journal, opened("c1", "K"), E.JobsSubmitted("c1", "K", [JobSpec(1, 0, big, {})]), now=0)
    wal = Path(f"{tmp_path / FILENAME}-wal")
    before = wal.stat().st_size
    run(core, journal, joined("n1", 2), now=1)  # the job goes to n1: its row changes
    assert wal.stat().st_size - before < 64 << 10  # a few pages, not the megabyte again
    snap = SqliteJournal(str(tmp_path)).load()
    assert [(j.state, j.node, j.payload == big) for j in snap.jobs] == [("running", "host-n1", True)]
    before = wal.stat().st_size
    run(core, journal, arrived("n1", result("K", 1)), now=2)
    assert wal.stat().st_size - before < 64 << 10  # nor when they go (their freed pages are not zeroed)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT count(*) FROM payloads").fetchone() == (0,)


def test_an_upgrade_cut_short_leaves_the_journal_as_it_was_and_the_next_start_upgrades_it(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.executescript(
        VERSION_1
        + """
        CREATE TABLE payloads (cluster_id TEXT NOT NULL, job_id INTEGER NOT NULL, payload BLOB NOT NULL,
            PRIMARY KEY (cluster_id, job_id));
        CREATE TRIGGER cut BEFORE INSERT ON payloads BEGIN SELECT RAISE(ABORT, 'cut short'); END;
        INSERT INTO clusters VALUES ('K', 'alice', 'name-K', x'00', 0, NULL, 1, 0, NULL);
        INSERT INTO jobs VALUES ('K', 7, 0, 2, x'0102', NULL, 0.0, 'queued', '', 0, 0, NULL);
        PRAGMA user_version = 1;
        """
    )
    db.close()
    with pytest.raises(sqlite3.IntegrityError, match="cut short"):  # (as a kill -9 in the move would leave it)
        SqliteJournal(str(tmp_path))
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert "result_size" not in [row[1] for row in db.execute("PRAGMA table_info(jobs)")]  # no ALTER kept
        db.execute("DROP TRIGGER cut")
    assert [(j.job_id, j.payload) for j in SqliteJournal(str(tmp_path)).load().jobs] == [(7, b"\x01\x02")]


def test_a_job_id_acknowledged_and_submitted_again_in_one_turn_is_kept(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    run(core, journal, opened("c1", "K"), joined("n1", 1), submitted("c1", "K", 1), now=0)
    run(core, journal, arrived("n1", result("K", 1)), now=1)
    run(core, journal, E.ResultsAcked("c1", "K", [1]), submitted("c1", "K", 1), now=2)  # its id comes again
    journal.close()
    assert [(j.job_id, j.state, j.payload) for j in SqliteJournal(str(tmp_path)).load().jobs] == [(1, "running", b"args-1")]


def _before_commit_is_called_staged_not_yet_durable(store: StateStore, committed_states: Callable[[], list[str]]) -> None:
    """A turn's results, written by `store`: its `before_commit` sees them staged (their bytes packed) and not
    yet committed (`committed_states`: the jobs' states, as another connection reads them); they are once
    `write` returns."""
    core = SchedulerCore(load_policy("fair"), CoreConfig(persist=True))
    for events in ((opened("c1", "K"), joined("n1", 2)), (submitted("c1", "K", 1, 2),)):
        for action in step(core, *events, now=0):
            if isinstance(action, A.Persist):
                store.write(action)
    actions = step(core, arrived("n1", result("K", 1), result("K", 2)), now=1)
    (deliver,) = [a for a in actions if isinstance(a, A.DeliverResults)]
    seen: list[tuple[list[str], bool]] = []

    def before_commit() -> None:
        packed = [store.packed.get(r) for r in deliver.results]
        seen.append((committed_states(), all(store.packed.get(r) is p for r, p in zip(deliver.results, packed))))

    assert isinstance(actions[0], A.Persist)
    store.write(actions[0], None, before_commit)
    assert seen == [(["running", "running"], True)]  # once; the results' bytes ready, the rows not durable yet
    assert committed_states() == ["done", "done"]


def test_a_journal_write_calls_before_commit_with_the_turn_staged_and_not_yet_durable(tmp_path: Path) -> None:
    journal = SqliteJournal(str(tmp_path))
    other = sqlite3.connect(tmp_path / FILENAME)
    try:
        _before_commit_is_called_staged_not_yet_durable(
            journal, lambda: [s for (s,) in other.execute("SELECT state FROM jobs ORDER BY job_id")]
        )
    finally:
        other.close()
        journal.close()


def test_a_postgresql_write_calls_before_commit_with_the_turn_staged_and_not_yet_durable(pg_dsn: str) -> None:
    import psycopg

    from dispy_sched.pg_store import PgStore, create_schema
    from test_core_journal import take_epoch

    create_schema(pg_dsn)
    store = PgStore(pg_dsn, take_epoch(pg_dsn))
    other = psycopg.connect(pg_dsn, autocommit=True)
    try:
        _before_commit_is_called_staged_not_yet_durable(
            store, lambda: [s for (s,) in other.execute("SELECT state FROM jobs ORDER BY job_id")]
        )
    finally:
        other.close()
        store.close()
