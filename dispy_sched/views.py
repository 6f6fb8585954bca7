"""Read-only views of the scheduler for people: what the JSON API (and a dashboard) show.

Each function reads the core's records at call time and returns plain JSON
types; none changes anything (changes go to the core as events). `viewer` is
the user who looks: they see only their own clusters and jobs, and other
users as totals; None is an administrator, who sees everything.
Times are wall-clock seconds since the epoch, as the core keeps them.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from dispy_wire.status import JobStatus

from .core import ClusterRecord, JobRecord, JobState, NodeRecord, SchedulerCore
from .standby import LeaderInfo

#: job states as the API names them: the core's own, a terminal one by its result's status
JOB_STATES = ("queued", "running", "orphaned", "finished", "terminated", "cancelled", "abandoned")


def version() -> str:
    try:
        return metadata.version("dispy-shared")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def job_state(job: JobRecord) -> str:
    if job.state is JobState.DONE and job.end_status:
        return JobStatus(job.end_status).name.lower()
    if job.state is JobState.RUNNING and not job.started:  # sent ahead, waiting on its node for a CPU
        return JobState.QUEUED.value
    return job.state.value


def node_state(node: NodeRecord) -> str:
    """drained, full (every CPU busy), busy (some), idle."""
    if node.drained:
        return "drained"
    running = node.busy - node.waiting
    if running and running >= node.cpus:
        return "full"
    return "busy" if running else "idle"


def status(core: SchedulerCore, started: float, viewer: str | None, leader: LeaderInfo | None = None) -> dict[str, Any]:
    """The scheduler at a glance: version, uptime, counts; `leader`: this one, leading others on a shared state."""
    clusters = _visible_clusters(core, viewer)
    jobs = {state: 0 for state in JOB_STATES}
    for cluster in clusters:
        for state, n in job_counts(cluster).items():
            jobs[state] += n
    return {
        "version": version(),
        "role": "leader",
        "leader": leader.as_json() if leader is not None else None,
        "policy": getattr(core.policy, "name", type(core.policy).__name__),
        "started": started,
        "uptime": max(0.0, core.now - started),
        "users": len(core.users) if viewer is None else 1,
        "active_users": sum(1 for u in core.users.values() if u.busy or u.queued),
        "nodes": len(core.nodes),
        "drained_nodes": sorted(core.drained),  # by name, connected or not
        "cpus": sum(n.cpus for n in core.nodes.values()),
        "busy_cpus": sum(n.busy - n.waiting for n in core.nodes.values()),
        "queued_jobs": sum(u.queued + u.waiting for u in core.users.values()),
        "clusters": len(clusters),
        "jobs": jobs,
    }


def users(core: SchedulerCore, viewer: str | None) -> list[dict[str, Any]]:
    """Each user (a viewer sees only themself): share, target share, busy, load, queued, decayed usage, limits.

    `busy` is the CPUs running its jobs now; `load` the CPUs fair share
    counts for it (`UserRecord.load`: its jobs on nodes, sent ahead or
    running, by the part of their stay they run), to two decimals. They
    differ while jobs are sent ahead (--prefetch): `busy` jumps as jobs start
    and end, `load` is what the policy evens out between users.
    """
    snapshot = core.status(viewer)["users"]
    return [{"name": name, **snapshot[name], "load": round(core.users[name].load, 2)} for name in sorted(snapshot)]


def nodes(core: SchedulerCore) -> list[dict[str, Any]]:
    """Each connected node: CPUs offered, given and busy, its own CPU % and memory, its state."""
    out = []
    for node in sorted(core.nodes.values(), key=lambda n: n.name):
        avail = node.avail
        out.append({
            "name": node.name,
            "ip_addr": node.ip_addr,
            "state": node_state(node),
            "offered_cpus": node.offered,
            "cpus": node.cpus,
            "busy_cpus": node.busy - node.waiting,
            "waiting_jobs": node.waiting,  # sent ahead (--prefetch), waiting there for a CPU
            "cpu_percent": avail.get("cpu_percent"),
            "memory_available": avail.get("memory"),
            "disk_available": avail.get("disk"),
            "last_heartbeat": node.last_seen,
            "clusters": len(node.loaded),
        })  # fmt: skip
    return out


def clusters(core: SchedulerCore, viewer: str | None) -> list[dict[str, Any]]:
    return [
        {
            "id": c.cluster_id,
            "name": c.name,
            "user": c.user,
            "attached": c.client is not None,
            "closing": c.closing,
            "queued": c.queued + c.waiting,
            "running": c.busy - c.waiting,
            "done": sum(1 for j in c.jobs.values() if j.state is JobState.DONE),
            "nodes": sorted(core.nodes[n].name for n in c.loaded_on if n in core.nodes),
            "jobs": job_counts(c),
            "opened": c.opened or None,  # None: opened under an earlier version
        }
        for c in sorted(_visible_clusters(core, viewer), key=lambda c: c.seq)
    ]


def job_counts(cluster: ClusterRecord) -> dict[str, int]:
    """How many of the cluster's held jobs are in each state (every state named, 0 or not)."""
    counts = {state: 0 for state in JOB_STATES}
    for job in cluster.jobs.values():
        counts[job_state(job)] += 1
    return counts


def jobs(core: SchedulerCore, viewer: str | None, user: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    """Jobs the scheduler holds (queued, running, or ended with a result not yet collected)."""
    out = []
    for cluster in sorted(_visible_clusters(core, viewer), key=lambda c: c.seq):
        if user is not None and cluster.user != user:
            continue
        for job in cluster.jobs.values():
            name = job_state(job)
            if state is None or name == state:
                out.append(_job(cluster, job, name))
    return out


def _job(cluster: ClusterRecord, job: JobRecord, state: str) -> dict[str, Any]:
    result = job.result
    return {
        "id": f"{cluster.cluster_id}/{job.job_id}",
        "cluster": cluster.cluster_id,
        "job": job.job_id,
        "user": cluster.user,
        "state": state,
        "node": job.last_node or None,
        "submitted": job.submit_time,
        "started": (result.start_time if result is not None else _start(job)) or None,
        "ended": result.end_time if result is not None else None,
        "attempts": job.attempts,
        "priority": job.priority,
    }


def _start(job: JobRecord) -> float:
    """When an unfinished job started; 0 for one sent ahead (--prefetch) that its node has not started yet."""
    return 0.0 if job.state is JobState.RUNNING and not job.started else job.start_time


def _visible_clusters(core: SchedulerCore, viewer: str | None) -> list[ClusterRecord]:
    if viewer is None:
        return list(core.clusters.values())
    user = core.users.get(viewer)
    return [core.clusters[c] for c in sorted(user.clusters)] if user is not None else []

