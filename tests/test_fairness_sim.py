"""Fair share measured on a simulated cluster (tests/sim.py): seeded, no sockets, no sleeping.

Shares are fractions of the busy CPU-time, measured in windows after the
last user arrived; Jain's fairness index is computed over the users'
achieved/target ratios (1.0 is perfectly fair).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import actions as A
from dispy_sched.core.invariants import check_invariants
from dispy_sched.core.state import Limits
from dispy_sched.policies import load_policy
from sim import Simulation, jain_index, peak_busy

NODES, CPUS = 50, 8
WINDOW = 10.0
TOLERANCE = 0.03  # 3 percentage points


def make_sim(policy: str = "fair", seed: int = 1, **config: object) -> Simulation:
    core = SchedulerCore(load_policy(policy), CoreConfig(**config))  # type: ignore[arg-type]
    return Simulation(core, seed=seed, job_seconds=(1.0, 3.0), check_every=500)


def windows(start: float, count: int) -> list[tuple[float, float]]:
    return [(start + i * WINDOW, start + (i + 1) * WINDOW) for i in range(count)]


def saturating_user(sim: Simulation, user: str, job_seconds: tuple[float, float] | None = None) -> str:
    cid = sim.open(user, job_seconds=job_seconds)
    sim.keep_queued(cid, 2 * NODES * CPUS)  # always more work than the cluster can run
    sim.send()
    return cid


def assert_shares(
    sim: Simulation,
    expected: dict[str, float],
    start: float,
    count: int,
    report: Callable[[str, object], None],
    tolerance: float = TOLERANCE,
) -> None:
    capacity = NODES * CPUS * WINDOW
    worst = 0.0
    for a, b in windows(start, count):
        busy = sim.busy_seconds(a, b)
        assert sum(busy.values()) >= 0.98 * capacity, f"cluster not saturated in [{a}, {b})"
        shares = sim.shares(a, b)
        for user, target in expected.items():
            got = shares.get(user, 0.0)
            worst = max(worst, abs(got - target))
            assert abs(got - target) <= tolerance, f"[{a:.0f}, {b:.0f}) {user}: {got:.1%}, target {target:.1%}"
    whole = sim.shares(start, start + count * WINDOW)
    jain = jain_index(whole[u] / t for u, t in expected.items())
    report("jain_index", round(jain, 5))
    report("worst_window_deviation_points", round(100 * worst, 2))
    print(f"shares {({u: f'{s:.1%}' for u, s in whole.items()})}, Jain {jain:.5f}, worst window {100 * worst:.2f} pts")
    assert jain > 0.99


def test_two_equal_users_split_a_saturated_cluster_in_half(record_property: Callable[[str, object], None]) -> None:
    sim = make_sim(seed=11)
    sim.add_nodes(NODES, CPUS)
    saturating_user(sim, "alice")
    sim.run_until(20.0)
    assert sim.busy_seconds(10.0, 20.0) == {"alice": pytest.approx(NODES * CPUS * 10.0, rel=0.01)}
    saturating_user(sim, "bob")  # arrives at t=20 into a cluster alice fills
    arrival = sim.now
    sim.run_until(arrival + 3.0 + 6 * WINDOW)
    # from the moment every job alice had running at bob's arrival has ended
    assert_shares(sim, {"alice": 0.5, "bob": 0.5}, arrival + 3.0, 6, record_property)
    check_invariants(sim.core)


def test_shares_three_two_one_give_fifty_thirty_three_seventeen(record_property: Callable[[str, object], None]) -> None:
    sim = make_sim(seed=7, shares={"ann": 3.0, "ben": 2.0, "cat": 1.0})
    sim.add_nodes(NODES, CPUS)
    saturating_user(sim, "cat")
    sim.run_until(5.0)
    saturating_user(sim, "ben")
    sim.run_until(10.0)
    saturating_user(sim, "ann")
    arrival = sim.now
    sim.run_until(arrival + 3.0 + 5 * WINDOW)
    assert_shares(sim, {"ann": 3 / 6, "ben": 2 / 6, "cat": 1 / 6}, arrival + 3.0, 5, record_property)
    check_invariants(sim.core)


def test_equal_shares_hold_when_one_user_runs_short_jobs_and_the_other_long_ones(
    record_property: Callable[[str, object], None],
) -> None:
    sim = make_sim(seed=5)
    sim.add_nodes(NODES, CPUS)
    saturating_user(sim, "quick", job_seconds=(0.2, 0.6))
    saturating_user(sim, "slow", job_seconds=(2.0, 6.0))
    sim.run_until(6.0 + 5 * WINDOW)
    assert_shares(sim, {"quick": 0.5, "slow": 0.5}, 6.0, 5, record_property)


def test_many_equal_users_each_get_their_share(record_property: Callable[[str, object], None]) -> None:
    sim = make_sim(seed=9)
    sim.add_nodes(NODES, CPUS)
    users = [f"u{i:02d}" for i in range(16)]
    for user in users:
        saturating_user(sim, user)
    sim.run_until(3.0 + 4 * WINDOW)
    assert_shares(sim, {u: 1 / len(users) for u in users}, 3.0, 4, record_property)


def test_newcomer_gets_the_very_next_free_cpu_despite_a_huge_backlog() -> None:
    sim = make_sim(seed=3)
    sim.add_nodes(NODES, CPUS)
    hog = sim.open("hog")
    sim.submit(hog, 10_000 + NODES * CPUS)
    sim.run_until(0.5)  # every CPU busy, none free yet (jobs last 1 to 3 s)
    assert sim.core.clusters[hog].queued == 10_000
    newcomer = sim.open("newbie")
    sim.submit(newcomer, 5)
    sim.send()
    arrived_at = sim.now
    next_free = sim.next_completion()
    assert next_free is not None
    assert sim.first_start(newcomer) is None  # every CPU was busy
    sim.run_until(next_free)
    assert sim.first_start(newcomer) == pytest.approx(next_free)
    assert next_free - arrived_at <= 3.0
    # the CPUs freed at that instant went to the newcomer first
    freed = sum(1 for r in sim.runs if r.end == pytest.approx(next_free))
    started = [r.user for r in [*sim.runs, *sim.running.values()] if r.start == pytest.approx(next_free)]
    assert started.count("newbie") == min(5, freed)


def test_fifo_by_contrast_keeps_the_newcomer_behind_the_backlog() -> None:
    sim = make_sim("fifo", seed=3)
    sim.add_nodes(NODES, CPUS)
    hog = sim.open("hog")
    sim.submit(hog, 2_000)
    sim.run_until(2.0)
    newcomer = sim.open("newbie")
    sim.submit(newcomer, 5)
    sim.run_until(20.0)
    first = sim.first_start(newcomer)
    assert first is not None
    hog_last = max(r.start for r in [*sim.runs, *sim.running.values()] if r.user == "hog")
    assert first >= hog_last > 5.0


def heavy_then_fresh(history: bool) -> list[str]:
    """`adam` ran 1,000 CPU-s ending one half-life ago (or nothing); `zoe` is new.

    Both then ask for work at the same instant on an idle node, `adam` first;
    returns whose jobs the node got, in dispatch order.
    """
    half_life = 600.0
    sim = make_sim(seed=5, usage_half_life=half_life)
    (node,) = sim.add_nodes(1, 10)
    adam = sim.open("adam")
    if history:
        sim.submit(adam, 10, seconds=100.0)  # 10 CPUs x 100 s
    sim.run_until(100.0)
    if history:
        assert sim.core.users["adam"].decayed_usage(100.0, half_life) == pytest.approx(1000.0)
    sim.run_until(100.0 + half_life)
    if history:
        assert sim.core.users["adam"].decayed_usage(sim.now, half_life) == pytest.approx(500.0)
    zoe = sim.open("zoe")
    sim.submit(adam, 10)
    sim.submit(zoe, 10)
    actions = sim.send()
    (dispatch,) = [a for a in actions if isinstance(a, A.Dispatch) and a.node == node]
    return [sim.user_of[r.cluster_id] for r in dispatch.jobs]


def test_user_with_decayed_usage_yields_to_a_fresh_user_on_ties() -> None:
    order = heavy_then_fresh(history=True)
    assert order[0] == "zoe"
    assert order.count("zoe") == order.count("adam") == 5  # after the tie, busy CPUs decide


def test_without_usage_history_the_tie_goes_the_other_way() -> None:
    # the control for the test above: same setup, no history, and adam goes first
    assert heavy_then_fresh(history=False)[0] == "adam"


def first_served(half_lives: int, fresh_usage: float) -> str:
    """`adam` ran 1,000 CPU-s ending `half_lives` hours ago (half-life 1 h); `bob`
    ran `fresh_usage` CPU-s ending now. Both then ask for one CPU at once, adam
    first: returns who gets the first.
    """
    hour = 3600.0
    sim = make_sim(seed=5, usage_half_life=hour)
    (node,) = sim.add_nodes(1, 10)
    adam, bob = sim.open("adam"), sim.open("bob")
    sim.submit(adam, 10, seconds=100.0)
    now = 100.0 + half_lives * hour
    sim.run_until(now - fresh_usage / 10)
    sim.submit(bob, 10, seconds=fresh_usage / 10)
    sim.run_until(now)
    assert sim.core.users["bob"].decayed_usage(now, hour) == pytest.approx(fresh_usage)
    sim.submit(adam, 1)
    sim.submit(bob, 1)
    (dispatch,) = [a for a in sim.send() if isinstance(a, A.Dispatch)]
    return sim.user_of[dispatch.jobs[0].cluster_id]


@pytest.mark.parametrize("half_lives", [1, 2])
def test_the_effect_of_past_usage_halves_per_half_life(half_lives: int) -> None:
    # 1,000 CPU-s weigh 500 after one half-life, 250 after two: a user with
    # a little less fresh usage than that goes first, a little more goes second
    weight = 1000.0 / 2**half_lives
    assert first_served(half_lives, 0.96 * weight) == "bob"
    assert first_served(half_lives, 1.04 * weight) == "adam"


def test_max_cpus_is_never_exceeded_and_idle_cpus_go_to_whoever_has_work(
    record_property: Callable[[str, object], None],
) -> None:
    sim = make_sim(seed=13, limits={"capped": Limits(max_cpus=4)})
    sim.add_nodes(4, 4)  # 16 CPUs
    capped = saturating_user(sim, "capped")
    sim.run_until(10.0)
    assert sim.busy_seconds(5.0, 10.0) == {"capped": pytest.approx(4 * 5.0, rel=0.01)}  # alone, still 4
    saturating_user(sim, "other")
    sim.run_until(10.0 + 3.0 + 4 * WINDOW)
    start, end = 13.0, 13.0 + 4 * WINDOW
    busy = sim.busy_seconds(start, end)
    assert sum(busy.values()) >= 0.98 * 16 * (end - start)  # the 12 CPUs capped may not use are not idle
    shares = sim.shares(start, end)
    assert shares["capped"] == pytest.approx(4 / 16, abs=TOLERANCE)
    assert peak_busy(sim, "capped") == 4 and sim.core.clusters[capped].queued > 0
    record_property("shares", {u: round(x, 4) for u, x in shares.items()})
    print(f"max_cpus 4 of 16: shares {({u: f'{x:.1%}' for u, x in shares.items()})}, peak {peak_busy(sim, 'capped')}")


def dispatch_order(sim: Simulation) -> list[tuple[str, int]]:
    """(cluster, job) in the order the core dispatched them, from its transition log."""
    return [(c, j) for stimulus, c, j, frm, to in sim.core.log if frm == "queued" and to == "running"]


def test_fifo_runs_jobs_in_strict_submit_order_across_users() -> None:
    sim = make_sim("fifo", seed=17)
    sim.add_nodes(5, 4)
    clusters = [sim.open(u) for u in ("ann", "ben", "cat", "ann")]
    for i in range(60):  # interleaved submits of uneven sizes, at different times
        sim.submit(clusters[sim.rng.randrange(4)], sim.rng.randint(1, 30))
        sim.run_until(i * 0.7)
    sim.run_until(1000.0)
    submitted = [(c, j) for stimulus, c, j, frm, to in sim.core.log if frm == "new"]
    assert len(submitted) > 500 and dispatch_order(sim) == submitted


def test_fair_cluster_gives_clusters_turns_whoever_owns_them() -> None:
    # dispy's fair_cluster: the least recently scheduled cluster first
    sim = make_sim("fair_cluster", seed=19)
    (node,) = sim.add_nodes(1, 1)
    clusters = [sim.open("alice"), sim.open("alice"), sim.open("bob")]
    for cid in reversed(clusters):  # submit order does not matter, only the last turn does
        sim.submit(cid, 20, seconds=1.0)
    sim.run_until(100.0)
    order = [c for c, _ in dispatch_order(sim)]
    assert order[:30] == clusters * 10  # alice, owning two clusters, gets two turns in three


def test_fcfs_cluster_serves_the_earliest_created_cluster_first() -> None:
    # dispy's fcfs_cluster: a later cluster runs only when the earlier ones have nothing queued
    sim = make_sim("fcfs_cluster", seed=23)
    sim.add_nodes(2, 2)
    first, second = sim.open("bob"), sim.open("alice")
    sim.submit(second, 30, seconds=1.0)
    sim.submit(first, 30, seconds=1.0)
    sim.run_until(8.5)  # 4 CPUs, 1 s jobs: first's 30 are all dispatched at t = 7
    sim.submit(first, 10, seconds=1.0)  # new work for the earlier cluster goes ahead again
    sim.run_until(100.0)
    order = [c for c, _ in dispatch_order(sim)]
    assert order[:30] == [first] * 30
    assert order[30:36] == [second] * 6  # first ran out: second took the CPUs...
    assert order[36:46] == [first] * 10  # ...until first got more jobs
    assert order[46:] == [second] * 24


def test_simulation_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[tuple[str, int, str, float]]:
        sim = make_sim(seed=seed)
        sim.add_nodes(4, 2)
        a, b = sim.open("a"), sim.open("b")
        sim.submit(a, 40)
        sim.submit(b, 40)
        sim.run_until(30.0)
        return [(r.cluster_id, r.job_id, r.node, r.start) for r in sim.runs]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_jain_index_bounds() -> None:
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert 0.25 < jain_index([0.6, 0.4]) < 1.0


#: nodes that queue jobs sent ahead, and the adaptive window: jobs of 1 to 3 s against a target of 6 s of
#: queued work per CPU, so each node holds 2 to 6 jobs per CPU beyond its CPUs (the fair policy's busy
#: counts hold them as running ones, while they wait on the node)
ADAPTIVE = {"prefetch": 1, "prefetch_max": 8, "prefetch_target": 6.0}


def test_with_an_adaptive_prefetch_window_shares_three_two_one_still_hold(
    record_property: Callable[[str, object], None],
) -> None:
    sim = make_sim(seed=7, shares={"ann": 3.0, "ben": 2.0, "cat": 1.0}, **ADAPTIVE)
    sim.check_every = 20  # each newcomer's unmeasured cluster parks nodes deepened by the others: hundreds of times
    sim.add_nodes(NODES, CPUS, queues=True)
    saturating_user(sim, "cat")
    sim.run_until(5.0)
    assert max(n.window for n in sim.core.nodes.values()) > CPUS  # deeper than one per CPU
    saturating_user(sim, "ben")
    sim.run_until(10.0)
    saturating_user(sim, "ann")
    arrival = sim.now
    sim.run_until(arrival + 10.0 + 5 * WINDOW)
    assert_shares(sim, {"ann": 3 / 6, "ben": 2 / 6, "cat": 1 / 6}, arrival + 10.0, 5, record_property)
    check_invariants(sim.core)



@pytest.mark.parametrize(
    ("window", "tolerance"),
    # a deep window defers a decision by the seconds a job waits on its node: shares swing more per 10 s
    [pytest.param({"prefetch": 1}, TOLERANCE, id="prefetch-1"), pytest.param(ADAPTIVE, 0.05, id="adaptive")],
)
def test_jobs_sent_ahead_do_not_tilt_equal_shares_toward_long_jobs(
    window: dict[str, object], tolerance: float, record_property: Callable[[str, object], None]
) -> None:
    # Nodes that queue what they are sent ahead start it in the order it came: a quick job sent behind slow ones
    # waits there for seconds, counted busy all the while. Counted so (by jobs held, not by jobs running), quick
    # got 32% of the CPU time with --prefetch 1 and 25% with the adaptive window, for 50% without any window.
    sim = make_sim(seed=5, **window)
    sim.add_nodes(NODES, CPUS, queues=True)
    saturating_user(sim, "quick", job_seconds=(0.2, 0.6))
    saturating_user(sim, "slow", job_seconds=(2.0, 6.0))
    sim.run_until(8.0 + 4 * WINDOW)  # from when the jobs sent at the start have ended
    assert max(n.waiting for n in sim.core.nodes.values()) > 0  # jobs did wait on nodes
    assert_shares(sim, {"quick": 0.5, "slow": 0.5}, 8.0, 4, record_property, tolerance)
    assert sim.shares(8.0, 8.0 + 4 * WINDOW)["quick"] == pytest.approx(0.5, abs=0.02)  # over the whole run
    check_invariants(sim.core)
