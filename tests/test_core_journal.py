"""The core's side of the journal: `Persist` actions out, `StateRestored` in.

A dict-backed store (`MemoryJournal`) applies `Persist` actions the way the
SQLite journal does, and a restart is a new core fed what the store holds:
the same round trip as `dispy_sched/journal.py`, without the disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core import events as E
from dispy_sched.core.persist import ClusterRow, JobRow, SettingRow
from dispy_sched import views
from dispy_sched.core.state import JobState, decay, result_cost
from dispy_sched.journal import SqliteJournal, StateStore
from dispy_sched.pg_store import PgStore, create_schema
from dispy_wire.messages import JobRef, JobResult
from dispy_sched.policies import load_policy
from dispy_wire.status import JobStatus

from test_core import CoreMachine, arrived, delivered, dispatched, joined, of, opened, result, step, submitted

MakeCore = Callable[..., SchedulerCore]
NewJournal = Callable[[], "MemoryJournal"]


@pytest.fixture
def core(make_core: MakeCore) -> SchedulerCore:
    return make_core()


class MemoryJournal:
    """What the SQLite journal keeps, in dicts."""

    def __init__(self) -> None:
        self.clusters: dict[str, ClusterRow] = {}
        self.jobs: dict[tuple[str, int], JobRow] = {}
        self.usage: dict[str, tuple[float, float]] = {}
        self.settings: list[SettingRow] = []
        self.commits = 0

    def apply(self, actions: list[A.Action]) -> None:
        persists = of(actions, A.Persist)
        assert len(persists) <= 1, "one transaction per call"
        if not persists:
            return
        assert actions[0] is persists[0], "the record goes before any acknowledgement"
        p = persists[0]
        self.commits += 1
        for c in p.clusters:
            self.clusters[c.cluster_id] = c
        for j in p.new_jobs:
            assert (j.cluster_id, j.job_id) not in self.jobs, "a job inserted twice"
            self.jobs[(j.cluster_id, j.job_id)] = j
        for j in p.changed_jobs:
            old = self.jobs[(j.cluster_id, j.job_id)]
            self.jobs[(j.cluster_id, j.job_id)] = JobRow(
                j.cluster_id, j.job_id, old.priority, old.seq, None if j.state == "done" else old.payload,
                old.options, old.submit_time, j.state, j.node, j.attempts, j.cancel_requested, j.result, j.result_size,
                j.node_run,
            )  # fmt: skip
        for key in p.gone_jobs:
            del self.jobs[key]
        for cid in p.gone_clusters:
            self.clusters.pop(cid, None)
            self.jobs = {k: v for k, v in self.jobs.items() if k[0] != cid}
        for u in p.usage:
            self.usage[u.user] = (u.cpu_seconds, u.as_of)
        if p.settings is not None:
            self.settings = list(p.settings)

    def restored(self, adopt_within: float = 30.0) -> E.StateRestored:
        """What `SqliteJournal.load` gives: every row, results left on disk (their sizes only)."""
        jobs = [j._replace(result=None) for j in sorted(self.jobs.values(), key=lambda j: j.seq)]
        return E.StateRestored(list(self.clusters.values()), jobs, dict(self.usage), adopt_within, list(self.settings))

    def read_results(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        """As `StateStore.read_results`: the held results of those jobs it still has."""
        rows = [self.jobs.get((cluster_id, job_id)) for job_id in job_ids]
        return [r.result for r in rows if r is not None and r.result is not None]


class StoreJournal(MemoryJournal):
    """`MemoryJournal`'s model and checks, with every `Persist` also written to a real `StateStore`,
    which must read back exactly what the model holds; a restart reads the store, not the model."""

    def __init__(self, store: StateStore) -> None:
        super().__init__()
        self.store = store

    def apply(self, actions: list[A.Action]) -> None:
        super().apply(actions)
        for persist in of(actions, A.Persist):
            self.store.write(persist)
            snap = self.store.load()
            assert {c.cluster_id: c for c in snap.clusters} == self.clusters
            assert snap.jobs == [j._replace(result=None) for j in sorted(self.jobs.values(), key=lambda j: j.seq)]
            assert snap.usage == self.usage
            assert snap.settings == self.settings

    def read_results(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        from_store = self.store.read_results(cluster_id, job_ids)
        assert from_store == super().read_results(cluster_id, job_ids)
        return from_store

    def restored(self, adopt_within: float = 30.0) -> E.StateRestored:
        snap = self.store.load()
        return E.StateRestored(snap.clusters, snap.jobs, snap.usage, adopt_within, snap.settings)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def new_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewJournal]:
    """Makes the journal the scenarios below write: the model alone, or the model beside a real store."""
    stores: list[StateStore] = []

    def make() -> MemoryJournal:
        if request.param == "memory":
            return MemoryJournal()
        if request.param == "sqlite":
            stores.append(SqliteJournal(str(tmp_path)))
        else:
            dsn = request.getfixturevalue("pg_dsn")
            stores.append(PgStore(dsn, take_epoch(dsn)))
        return StoreJournal(stores[-1])

    yield make
    for store in stores:
        store.close()


def take_epoch(dsn: str) -> int:
    """Leads the database at `dsn` (as leadership.py does at a takeover): returns the new epoch."""
    create_schema(dsn)
    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("UPDATE leader SET epoch = epoch + 1 RETURNING epoch").fetchone()
        assert row is not None
        return int(row[0])


def run(core: SchedulerCore, journal: MemoryJournal, *events: E.Event, now: float) -> list[A.Action]:
    actions = step(core, *events, now=now)
    journal.apply(actions)
    return actions


def test_accepted_jobs_are_recorded_before_they_are_acknowledged(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K"), now=0)
    actions = run(core, journal, submitted("c1", "K", 1, 2), now=1)
    assert isinstance(actions[0], A.Persist) and of(actions, A.ConfirmAccepted)
    assert [j.job_id for j in actions[0].new_jobs] == [1, 2] and journal.jobs[("K", 1)].payload == b"args-1"
    assert journal.clusters["K"].computation == b"computation"
    assert not of(run(core, journal, submitted("c1", "K", 1), now=2), A.Persist)  # a resent submit changes nothing


def test_a_job_that_runs_and_ends_in_one_call_is_written_once_as_it_ends(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K"), joined("n1", 1), now=0)
    actions = run(core, journal, submitted("c1", "K", 1), now=1)
    assert journal.jobs[("K", 1)].state == "running" and journal.jobs[("K", 1)].node == "host-n1"
    actions = run(core, journal, arrived("n1", result("K", 1, start=1, end=4)), now=4)
    (persist,) = of(actions, A.Persist)
    assert [(j.job_id, j.state) for j in persist.changed_jobs] == [(1, "done")]
    assert journal.jobs[("K", 1)].payload is None and journal.jobs[("K", 1)].result == result("K", 1, start=1, end=4)
    assert journal.usage["alice"][0] == 3.0  # usage is written with the result that adds it, not every minute
    run(core, journal, E.ResultsAcked("c1", "K", [1]), now=5)
    assert not journal.jobs
    run(core, journal, E.ClusterClosed("c1", "K", False), now=6)
    assert not journal.clusters


def test_after_a_restart_queued_jobs_run_and_held_results_reach_the_returning_client(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K"), joined("n1", 1), now=0)
    run(core, journal, submitted("c1", "K", 1, 2, 3), now=1)
    run(core, journal, E.ClientLeft("c1"), arrived("n1", result("K", 1)), now=2)  # 2 dispatched, 3 queued
    # kill -9: a new core reads the journal; the node and the client come back on new sessions
    core = make_core(persist=True)
    run(core, journal, journal.restored(), now=10)
    assert core.clusters["K"].jobs[2].state is JobState.ORPHANED and core.clusters["K"].queued == 1
    actions = run(core, journal, joined("n9", 1), opened("c2", "K"), now=11)
    assert A.ConfirmOpened("c2", "K", True, [1, 2, 3]) in actions
    assert ("c2", "K") not in delivered(actions)  # the result stayed on disk: the shell reads it back
    (stored,) = of(actions, A.DeliverStored)
    assert (stored.client, stored.cluster_id, stored.jobs) == ("c2", "K", [(1, result_cost(result("K", 1)))])
    assert journal.read_results("K", [1]) == [result("K", 1)]
    assert dispatched(actions) == {"n9": [("K", 3)]}  # the queue resumed without a resubmit


def test_a_node_reporting_an_orphan_keeps_running_it_and_its_result_counts(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K", reentrant=False), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "K", 1), now=1)
    core = make_core(persist=True)
    run(core, journal, journal.restored(adopt_within=30), now=10)
    back = E.NodeJoined("n2", "host-n1", "10.0.0.2", 2, 5.0, (), (JobRef("K", 1), JobRef("K", 77)), ("K", "gone"))
    actions = run(core, journal, back, opened("c2", "K"), now=11)
    assert A.KillJobs("n2", [JobRef("K", 77)]) in actions  # a job nobody knows is not left running
    assert A.UnloadCluster("n2", "gone") in actions
    assert not of(actions, A.LoadCluster) and not of(actions, A.Dispatch)
    assert core.clusters["K"].jobs[1].state is JobState.RUNNING and core.nodes["n2"].busy == 1
    actions = run(core, journal, arrived("n2", result("K", 1)), E.Tick(), now=100)
    assert [r.status for r in delivered(actions)[("c2", "K")]] == [JobStatus.FINISHED]


def test_orphans_no_node_reports_rerun_if_reentrant_else_end_abandoned(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "R", reentrant=True), opened("c2", "N", reentrant=False), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "R", 1), submitted("c2", "N", 1), now=1)
    core = make_core(persist=True)
    run(core, journal, journal.restored(adopt_within=30), opened("c3", "R"), opened("c4", "N"), now=10)
    assert not of(run(core, journal, E.Tick(), joined("n5", 2), now=39), A.Dispatch)  # still waiting for its node
    actions = run(core, journal, E.Tick(), now=41)
    assert dispatched(actions) == {"n5": [("R", 1)]}
    (abandoned,) = delivered(actions)[("c4", "N")]
    assert abandoned.status == JobStatus.ABANDONED and "not run again" in abandoned.exception
    assert journal.jobs[("R", 1)].attempts == 2  # at least once: the rerun is counted


def test_a_journal_round_trip_keeps_usage_and_submission_order(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True, usage_half_life=100.0), new_journal()
    run(core, journal, opened("ca", "A", "adam"), joined("n1", 1), now=0)
    run(core, journal, submitted("ca", "A", 1), now=0)
    run(core, journal, arrived("n1", result("A", 1, start=0, end=400)), now=0)
    core = make_core(persist=True, usage_half_life=100.0)
    run(core, journal, journal.restored(), now=100)
    assert core.users["adam"].decayed_usage(100.0, 100.0) == 200.0
    run(core, journal, opened("ca2", "A", "adam"), opened("cz", "Z", "zoe"), now=101)
    run(core, journal, submitted("ca2", "A", 2), submitted("cz", "Z", 1), now=102)
    actions = run(core, journal, joined("n2", 1), now=103)
    assert dispatched(actions) == {"n2": [("Z", 1)]}  # adam's journaled history makes him yield
    assert journal.jobs[("A", 2)].seq > journal.jobs[("A", 1)].seq  # new jobs queue behind the restored ones


def test_cpus_a_client_set_for_a_node_hold_after_a_restart_while_it_is_away(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K"), E.NodeCpusSet("c1", "K", "host-n1", 0), now=0)
    run(core, journal, submitted("c1", "K", 1), E.ClientLeft("c1"), now=1)
    core = make_core(persist=True)
    run(core, journal, journal.restored(), now=10)
    assert not of(run(core, journal, joined("n1", 2), now=11), A.Dispatch)  # still kept off host-n1
    assert dispatched(run(core, journal, joined("n22", 2), now=12)) == {"n22": [("K", 1)]}


def test_drains_cpu_caps_and_shares_an_operator_set_hold_after_a_restart_until_undone(
    make_core: MakeCore, new_journal: NewJournal
) -> None:
    core, journal = make_core(persist=True, shares={"adam": 1.0}), new_journal()
    run(core, journal, joined("n1", 4), joined("n2", 4), opened("ca", "A", "adam"), now=0)
    for event in (E.NodeDrainSet("d", "host-n1", True), E.NodeCpusCapped("c", "host-n2", 1), E.UserShareSet("s", "adam", 3.0)):
        assert not answer_error(run(core, journal, event, now=1))
    assert journal.settings == [SettingRow("cpus", "host-n2", 1.0), SettingRow("drain", "host-n1", 1.0), SettingRow("share", "adam", 3.0)]
    core = make_core(persist=True, shares={"adam": 1.0})
    run(core, journal, journal.restored(), now=10)
    run(core, journal, joined("n1", 4), joined("n2", 4), opened("ca", "A", "adam"), submitted("ca", "A", 1, 2, 3), now=11)
    assert core.users["adam"].share == 3.0
    assert {n.name: (n.drained, n.cpus) for n in core.nodes.values()} == {"host-n1": (True, 4), "host-n2": (False, 1)}
    assert sum(n.busy for n in core.nodes.values()) == 1  # one CPU of n2; none of the drained n1
    run(core, journal, E.NodeDrainSet("u", "host-n1", False), E.NodeCpusCapped("c", "host-n2", -1), now=12)
    run(core, journal, E.UsersReloaded("r", {"adam": 2.0}, {}, core.default_limits), now=13)  # the file's share again
    assert journal.settings == []
    core = make_core(persist=True, shares={"adam": 2.0})
    run(core, journal, journal.restored(), now=20)
    assert not core.drained and not core.cpu_caps and not core.share_overrides


def answer_error(actions: list[A.Action]) -> str:
    return "".join(a.error for a in of(actions, A.AnswerAdmin))


def test_a_node_back_before_its_old_connection_is_noticed_keeps_its_jobs(core: SchedulerCore) -> None:
    step(core, opened("c1", "K", reentrant=False), joined("n1", 2), now=0)
    step(core, submitted("c1", "K", 1), now=1)
    back = E.NodeJoined("n9", "host-n1", "10.0.0.2", 2, 5.0, (), (JobRef("K", 1),), ("K",))
    actions = step(core, back, now=2)
    assert not of(actions, A.KillJobs) and not of(actions, A.LoadCluster)
    assert core.clusters["K"].jobs[1].node == "n9"
    assert not of(step(core, E.NodeLeft("n1", "connection reset"), now=3), A.DeliverResults)  # nothing to abandon
    actions = step(core, arrived("n9", result("K", 1)), now=4)
    assert [r.status for r in delivered(actions)[("c1", "K")]] == [JobStatus.FINISHED]


def test_a_node_is_told_each_result_is_recorded_after_the_record_late_ones_too(make_core: MakeCore, new_journal: NewJournal) -> None:
    core, journal = make_core(persist=True), new_journal()
    run(core, journal, opened("c1", "K"), joined("n1", 2), now=0)
    run(core, journal, submitted("c1", "K", 1), now=1)
    actions = run(core, journal, arrived("n1", result("K", 1), result("K", 1), result("K", 99)), now=2)
    assert isinstance(actions[0], A.Persist)  # the confirmation goes after the record
    assert of(actions, A.ConfirmResults) == [A.ConfirmResults("n1", [JobRef("K", 1), JobRef("K", 1), JobRef("K", 99)])]


# --------------------------------------------------------------------------
# Random interleavings with restarts: the journal always matches the core


class JournaledCoreMachine(CoreMachine):
    """`CoreMachine` with a journal, and a rule that kills the scheduler and starts it from that journal.

    After every step the journal holds exactly what the core holds (so a
    restart at any point loses nothing); at a restart every client is
    detached, and each node either comes back on a new session as the same
    run of its runner, reporting the jobs it got (they are adopted; the
    rest never arrived and are queued again), or comes back restarted, or
    is gone (its jobs wait out `ADOPT_WITHIN`); jobs of a restarted or gone
    node run again or end Abandoned. The teardown still finds exactly one
    result per accepted job.
    """

    ADOPT_WITHIN = 20.0

    def __init__(self) -> None:
        super().__init__()
        self.config = CoreConfig(usage_half_life=50.0, limits=self.LIMITS, persist=True, prefetch=self.PREFETCH,
                                 close_slice=self.CLOSE_SLICE, prefetch_max=self.PREFETCH_MAX,
                                 prefetch_target=self.PREFETCH_TARGET)  # fmt: skip
        self.core = SchedulerCore(load_policy(self.POLICY), self.config)
        self.journal = MemoryJournal()
        self.names: dict[str, str] = {}  # node session -> the node's name
        self.runs: dict[str, str] = {}  # node session -> the run of its runner

    def joined(self, node: str, cpus: int) -> E.NodeJoined:
        ev = dataclasses.replace(super().joined(node, cpus), node_run=f"run-{node}")
        self.names[node], self.runs[node] = ev.name, ev.node_run
        return ev

    def record(self, actions: list[A.Action]) -> None:
        self.journal.apply(actions)

    def read_stored(self, cluster_id: str, job_ids: list[int]) -> list[JobResult]:
        results = self.journal.read_results(cluster_id, job_ids)
        assert len(results) == len(job_ids), "a result the core left to the store is not there"
        return results

    @rule(data=st.data())
    def scheduler_restarts(self, data: st.DataObject) -> None:
        """A kill -9; each node then stays away, comes back restarted (holding nothing, another run), or comes
        back as the same run holding what it got: the jobs last sent to it may never have arrived."""
        self.core = SchedulerCore(load_policy(self.POLICY), self.config)
        self.attached.clear()
        old_nodes, self.node_jobs = self.node_jobs, {}
        self.apply(self.journal.restored(self.ADOPT_WITHIN))
        for old, jobs in sorted(old_nodes.items()):
            how = data.draw(st.sampled_from(["gone", "restarted", "back"]), label=f"node {old}")
            if how == "gone":
                continue  # gone with its jobs while the scheduler was down
            self.nodes_made += 1
            node = f"n{self.nodes_made}"
            if how == "restarted":  # what ran there is lost: rerun if reentrant, else Abandoned
                jobs, run = [], f"run-{node}"
            else:  # a tail of what it was sent never reached it (lost with the scheduler's last write)
                jobs, run = list(jobs[: data.draw(st.integers(0, len(jobs)), label="received")]), self.runs.get(old, "")
            name = self.names.get(old, f"host-{old}")
            self.names[node], self.runs[node] = name, run
            self.node_jobs[node] = jobs  # what it still holds; the join may dispatch more
            refs = tuple(JobRef(c, j) for c, j in jobs)
            back = E.NodeJoined(node, name, "10.0.0.9", 2, 10.0, (), refs, (), queues=self.PREFETCH > 0, node_run=run)
            actions = self.apply(back)
            killed = {(r.cluster_id, r.job_id) for k in of(actions, A.KillJobs) for r in k.jobs}
            assert killed <= self.killed, "a running job the journal knows was killed on adoption"

    def sessions_of_known_runs_holding_jobs(self) -> list[str]:
        """A node that names no run (one of another Python, back after a restart) proves nothing by its Hello."""
        return sorted(n for n, run in self.runs.items() if run and self.node_jobs.get(n))

    @precondition(lambda self: self.sessions_of_known_runs_holding_jobs())
    @rule(data=st.data())
    def node_reconnects_before_its_old_session_is_noticed(self, data: st.DataObject) -> None:
        """The node's connection broke and it logged in again, the same run: what it got since is listed, the
        rest (lost with the connection) never arrived; its old session ends at once."""
        old = data.draw(st.sampled_from(self.sessions_of_known_runs_holding_jobs()))
        jobs = self.node_jobs.pop(old)
        kept = jobs[: data.draw(st.integers(0, len(jobs)), label="received")]
        self.nodes_made += 1
        node = f"n{self.nodes_made}"
        self.names[node], self.runs[node] = self.names[old], self.runs[old]
        self.node_jobs[node] = list(kept)
        refs = tuple(JobRef(c, j) for c, j in kept)
        back = E.NodeJoined(node, self.names[node], "10.0.0.9", 2, 10.0, (), refs, (), queues=self.PREFETCH > 0,
                            node_run=self.runs[node])  # fmt: skip
        actions = self.apply(back)
        assert old not in self.core.nodes and any(isinstance(a, A.DropNode) and a.node == old for a in actions)

    @invariant()
    def journal_matches_core(self) -> None:
        core, journal = self.core, self.journal
        assert set(journal.clusters) == set(core.clusters)
        rows = {}
        for cluster in core.clusters.values():
            assert journal.clusters[cluster.cluster_id].closing == cluster.closing
            assert journal.clusters[cluster.cluster_id].overrides == cluster.overrides
            for job in cluster.jobs.values():
                state = "running" if job.state is JobState.ORPHANED else job.state.value
                assert job.result is None, "a result held in memory as well as in the journal"
                rows[job.key] = (state, job.attempts, job.cancel_requested, job.result_size, job.payload is None)
        held = {
            k: (r.state, r.attempts, r.cancel_requested, r.result_size, r.payload is None) for k, r in journal.jobs.items()
        }
        assert all((r.result is not None) == (r.state == "done") for r in journal.jobs.values()), "a result is missing"
        assert held == rows
        for user in core.users.values():  # the same decayed usage, maybe as of another time
            if user.usage > 0:
                usage, as_of = journal.usage[user.name]
                now, half_life = core.now, core.usage_half_life
                assert decay(usage, as_of, now, half_life) == pytest.approx(user.decayed_usage(now, half_life))

    def teardown(self) -> None:
        self.apply(E.Tick(), dt=self.ADOPT_WITHIN + 1)  # orphans no node reported: rerun or written off
        super().teardown()


JournaledCoreMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_interleavings_with_restarts_lose_nothing = JournaledCoreMachine.TestCase


def test_with_a_store_a_held_result_is_on_disk_only_and_a_returning_client_gets_it_from_there(make_core: MakeCore) -> None:
    core, journal = make_core(persist=True), MemoryJournal()
    run(core, journal, opened("c1", "K"), joined("n1", 1), now=0)
    run(core, journal, submitted("c1", "K", 1), now=1)
    run(core, journal, E.ClientLeft("c1"), now=2)
    actions = run(core, journal, arrived("n1", result("K", 1)), now=3)
    (persist,) = of(actions, A.Persist)
    assert [j.result for j in persist.changed_jobs] == [result("K", 1)]  # written with the call that got it ...
    job = core.clusters["K"].jobs[1]
    assert job.result is None and job.result_size == result_cost(result("K", 1))  # ... then let go of
    assert core.users["alice"].held_bytes == job.result_size  # still counted against max_held_bytes
    actions = run(core, journal, opened("c2", "K"), now=4)
    assert of(actions, A.DeliverStored) == [A.DeliverStored("c2", "K", [(1, job.result_size)])]
    assert journal.read_results("K", [1]) == [result("K", 1)]
    run(core, journal, E.ResultsAcked("c2", "K", [1]), now=5)
    assert not journal.jobs and core.users["alice"].held_bytes == 0


def test_an_ended_job_shows_its_status_while_its_result_is_on_disk_only(make_core: MakeCore) -> None:
    """With a store the core drops a result once written; the API still says how the job ended."""
    core = make_core(persist=True)
    step(core, opened("c1", "K"), joined("n1", 2), submitted("c1", "K", 1, 2), now=0)
    step(core, arrived("n1", result("K", 1), result("K", 2, JobStatus.TERMINATED)), now=1)
    assert all(job.result is None for job in core.clusters["K"].jobs.values())
    assert [(j["job"], j["state"]) for j in views.jobs(core, None)] == [(1, "finished"), (2, "terminated")]
