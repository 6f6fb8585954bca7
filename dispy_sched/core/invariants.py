"""Consistency checks of the core's records, run after every step in tests."""

from __future__ import annotations

import math
from collections import Counter

from .scheduler import SchedulerCore
from .state import JobRecord, JobState, file_cost, job_cost, result_cost, usage_rank_of
from .window import depth as window_depth


def check_invariants(core: SchedulerCore) -> None:
    """Raises AssertionError naming the first broken invariant."""
    node_busy: Counter[str] = Counter()
    node_waiting: Counter[str] = Counter()
    user_waiting: Counter[str] = Counter()
    user_busy: Counter[str] = Counter()
    user_queued: Counter[str] = Counter()
    user_orphans: Counter[str] = Counter()
    user_queued_bytes: Counter[str] = Counter()
    user_held_bytes: Counter[str] = Counter()
    persist = core.config.persist
    for cluster in core.clusters.values():
        assert not cluster.released or cluster.closing, f"{cluster.cluster_id}: released but not closing"
        # a closing (or released) cluster may still queue jobs: they are cancelled a slice per call, so a sweep
        # must cover them all until none is left (it is kept out of the ready index: `ReadyIndex.check`)
        sweep = core._sweeps.get(cluster.cluster_id)
        sweep = sweep if sweep is not None and sweep.cluster is cluster else None
        assert cluster.cancelling == (sweep is not None), f"{cluster.cluster_id}: cancelling, yet no sweep (or the reverse)"
        assert not (cluster.closing and cluster.queued) or (sweep is not None and sweep.upto == math.inf), (
            f"{cluster.cluster_id}: closing with {cluster.queued} queued jobs no sweep ends"
        )
        queued: list[JobRecord] = []
        running: list[JobRecord] = []
        unfinished = orphans = held_bytes = queued_bytes = 0
        for job in cluster.jobs.values():  # one pass: the simulations check thousands of jobs hundreds of times
            state = job.state
            if state is JobState.QUEUED:
                queued.append(job)
            elif state is JobState.RUNNING:
                running.append(job)
            assert job.started <= (state is JobState.RUNNING), f"job {job.key}: started, yet {state.value}"
            done = state is JobState.DONE
            assert not (done and cluster.released), f"{cluster.cluster_id}: released, yet holds job {job.key}'s result"
            unfinished += not done
            assert done == (job.result_size > 0), f"job {job.key}: result size and state disagree"
            assert done == (job.payload is None), f"job {job.key}: payload and state disagree"
            if persist:  # the store holds results: none stays in memory past the call that wrote it
                assert job.result is None, f"job {job.key}: its result is held in memory as well as in the store"
            else:
                assert done == (job.result is not None), f"job {job.key}: result and state disagree"
            if job.result is not None:
                assert job.result_size == result_cost(job.result), f"job {job.key}: result size is wrong"
            held = job.result_size + sum(map(file_cost, job.files))
            assert job.held == held, f"job {job.key}: holds {job.held} bytes, counts {held}"
            held_bytes += held
            if job.payload is not None:
                queued_bytes += job_cost(job.payload)
            orphan = state is JobState.ORPHANED
            orphans += orphan
            assert orphan == (job.key in core._orphans and core._orphans[job.key].job is job), f"job {job.key}: orphan and state disagree"
            assert not orphan or job.node is None, f"job {job.key}: an orphan on node {job.node}"
        # a queued job marked for a cancel (a restart reads it back so) is one a sweep still has to end
        assert sweep is not None or not any(j.cancel_requested for j in queued), f"{cluster.cluster_id}: a cancel was lost"
        assert cluster.queued == len(queued), f"{cluster.cluster_id}: queued {cluster.queued} != {len(queued)}"
        assert cluster.unfinished == unfinished, f"{cluster.cluster_id}: unfinished {cluster.unfinished} != {unfinished}"
        assert cluster.busy == len(running), f"{cluster.cluster_id}: busy {cluster.busy} != {len(running)}"
        live = {job_id for _, _, job_id in cluster.queue + (sweep.kept if sweep is not None else [])}
        assert all(j.job_id in live for j in queued), f"{cluster.cluster_id}: a queued job is missing from the heap"
        if cluster.unpinned is not None:  # `pop` and `runnable_on` read it, not `queue`: no unpinned job may miss it
            unpinned = {e for e in cluster.unpinned if cluster._valid(e)}
            unpinned |= set(sweep.kept[: sweep.unsplit] if sweep is not None else [])  # back in it when the sweep ends
            assert all((-j.priority, j.seq, j.job_id) in unpinned for j in queued if not j.pin), (
                f"{cluster.cluster_id}: a queued job is missing from the unpinned heap"
            )
        for job in running:
            assert job.node in core.nodes, f"job {job.key} runs on unknown node {job.node}"
            assert job.started or core.nodes[job.node].queues, f"job {job.key}: its client was not told it runs"
            node_waiting[job.node] += not job.started
            assert job.key in core.nodes[job.node].jobs, f"job {job.key} missing from its node"
            node_busy[job.node] += 1
        user_queued_bytes[cluster.user] += cluster.code_bytes() + queued_bytes
        user_held_bytes[cluster.user] += held_bytes
        waiting = sum(1 for j in running if not j.started)
        assert cluster.waiting == waiting, f"{cluster.cluster_id}: waiting {cluster.waiting} != {waiting}"
        user_waiting[cluster.user] += waiting
        on_nodes = Counter(j.node for j in running)
        assert cluster.busy_on == dict(on_nodes), f"{cluster.cluster_id}: busy per node is wrong"
        if cluster.restricted:
            assert set(cluster.node_cpus) == set(core.nodes), f"{cluster.cluster_id}: placement cache is stale"
        else:
            assert not cluster.node_cpus, f"{cluster.cluster_id}: a placement cache without a restriction"
        user_busy[cluster.user] += len(running)
        user_queued[cluster.user] += len(queued)
        user_orphans[cluster.user] += orphans
    assert all(core.clusters.get(k[0]) is not None and k[1] in core.clusters[k[0]].jobs for k in core._orphans), "a stray orphan"
    core._free_nodes.check()
    for node in core.nodes.values():
        assert node.drained == (node.name in core.drained), f"node {node.name}: drained flag is stale"
        assert node.cpus == min(node.offered, core.cpu_caps.get(node.name, node.offered)), f"node {node.name}: stale CPUs"
        depth = window_depth(node.run_estimate, core.config.prefetch, core.config.prefetch_max, core.config.prefetch_target)
        window = depth * node.cpus if node.queues and node.cpus == node.offered else 0
        assert node.window == window, f"node {node.name}: window {node.window}, should be {window}"
    for node in core.nodes.values():
        assert node.busy == len(node.jobs) == node_busy[node.node_id], f"node {node.name}: busy is wrong"
        assert node.waiting == node_waiting[node.node_id], f"node {node.name}: waiting is wrong"
        free = node.free > 0 and not node.drained and node.node_id not in core._parked
        if node.node_id in core._parked:  # left out while its pick waits: it holds jobs whose ends take it back
            assert node.free > 0 and node.busy >= node.cpus > 0, f"node {node.name}: parked with nothing to end"
        assert (node.node_id in core._free_nodes) == free, f"node {node.name}: free set is wrong"
        if free:
            assert core._free_nodes.key(node.node_id) == (node.load, node.name), f"node {node.name}: stale load"
    assert all(n in core.nodes for n in core._free_nodes.ordered()), "a lost node is still free"
    assert core._parked <= set(core.nodes), "a lost node is still parked"
    for user in core.users.values():
        assert user.busy == user_busy[user.name], f"user {user.name}: busy {user.busy} != {user_busy[user.name]}"
        assert user.queued == user_queued[user.name], f"user {user.name}: queued is wrong"
        assert user.waiting == user_waiting[user.name], f"user {user.name}: waiting is wrong"
        assert user.orphans == user_orphans[user.name], f"user {user.name}: orphans is wrong"
        assert user.queued_bytes == user_queued_bytes[user.name], f"user {user.name}: queued_bytes is wrong"
        assert user.held_bytes == user_held_bytes[user.name], f"user {user.name}: held_bytes is wrong"
        assert user.clusters == {c.cluster_id for c in core.clusters.values() if c.user == user.name}, f"{user.name}: clusters"
        cap = user.limits.max_cpus
        assert cap is None or user.busy <= cap, f"user {user.name}: {user.busy} busy CPUs beyond max_cpus = {cap}"
        # fair share's measure of the CPUs it uses (`UserRecord.load`): a part of its busy ones, from sane means
        assert user.wait_mean >= 0 and user.run_mean >= 0, f"user {user.name}: negative mean stay"
        assert 0 <= user.load <= user.busy, f"user {user.name}: load {user.load} beyond busy {user.busy}"
        rank = usage_rank_of(user.usage, user.usage_time, core.usage_half_life)
        assert rank == user.usage_rank or math.isclose(rank, user.usage_rank), f"user {user.name}: stale usage rank"
    core.ready.check()
