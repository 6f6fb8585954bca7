"""Consistency checks of the core's records, run after every step in tests."""

from __future__ import annotations

from collections import Counter

from .scheduler import SchedulerCore
from .state import JobState


def check_invariants(core: SchedulerCore) -> None:
    """Raises AssertionError naming the first broken invariant."""
    node_busy: Counter[str] = Counter()
    user_busy: Counter[str] = Counter()
    user_queued: Counter[str] = Counter()
    for cluster in core.clusters.values():
        queued = [j for j in cluster.jobs.values() if j.state is JobState.QUEUED]
        running = [j for j in cluster.jobs.values() if j.state is JobState.RUNNING]
        assert cluster.queued == len(queued), f"{cluster.cluster_id}: queued {cluster.queued} != {len(queued)}"
        assert cluster.busy == len(running), f"{cluster.cluster_id}: busy {cluster.busy} != {len(running)}"
        live = {job_id for _, job_id in cluster.queue}
        assert all(j.job_id in live for j in queued), f"{cluster.cluster_id}: a queued job is missing from the heap"
        waiting = core.waiting.get(cluster.user, {})
        assert (cluster.cluster_id in waiting) == (cluster.queued > 0), f"{cluster.cluster_id}: waiting set is wrong"
        for job in running:
            assert job.node in core.nodes, f"job {job.key} runs on unknown node {job.node}"
            assert job.key in core.nodes[job.node].jobs, f"job {job.key} missing from its node"
            node_busy[job.node] += 1
        for job in cluster.jobs.values():
            assert (job.state is JobState.DONE) == (job.result is not None), f"job {job.key}: result and state disagree"
        user_busy[cluster.user] += len(running)
        user_queued[cluster.user] += len(queued)
    for node in core.nodes.values():
        assert node.busy == len(node.jobs) == node_busy[node.node_id], f"node {node.name}: busy is wrong"
        assert (node.node_id in core._free_nodes) == (node.free > 0), f"node {node.name}: free set is wrong"
    for user in core.users.values():
        assert user.busy == user_busy[user.name], f"user {user.name}: busy {user.busy} != {user_busy[user.name]}"
        assert user.queued == user_queued[user.name], f"user {user.name}: queued is wrong"
