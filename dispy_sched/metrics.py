"""Prometheus metrics of the scheduler (`GET /metrics` on its HTTP port).

Two kinds. What the core holds anyway (queue depth, busy and offered CPUs,
nodes by state, connections) is read at scrape time by `StateCollector`, so
no event pays for keeping a gauge current. What passes and is gone (a job's
end, a dispatch, a refused login, the loop's lag) is counted when it happens,
from the core's actions (`RecordJobEnds`, `Dispatch`) and the shell's own events.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispy_wire.handshake import Role
from dispy_wire.messages import RunJob

from .core import actions as A
from .standby import LeaderInfo
from .views import node_state

if TYPE_CHECKING:
    from .server import SchedulerServer

#: seconds from submit to dispatch: from a free CPU's instant to a backlog's hours
DISPATCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600, 14400)
#: seconds a job ran on its node
RUN_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 14400, 86400)
#: how often the loop's lag is sampled
LAG_INTERVAL = 0.5
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SchedMetrics:
    """The scheduler's registry; `server` is read at each scrape."""

    def __init__(self, server: SchedulerServer) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_ended = Counter(
            "dispy_jobs_ended", "Jobs that got their terminal result, by user and status",
            ["user", "status"], registry=self.registry,
        )  # fmt: skip
        self.dispatch_latency = Histogram(
            "dispy_job_dispatch_latency_seconds", "Seconds from a job's submit to its dispatch to a node",
            buckets=DISPATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.run_time = Histogram(
            "dispy_job_run_seconds", "Seconds a job ran on its node, by its start and end there",
            buckets=RUN_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.logins_refused = logins_refused(self.registry)
        self.loop_lag = Gauge(
            "dispy_scheduler_loop_lag_seconds", "How late the scheduler's event loop ran a timer, last sampled",
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(StateCollector(server))
        self.registry.register(LeadershipCollector(True, lambda: server.leadership))

    def ended(self, ends: list[A.JobEnd]) -> None:
        tally: Tally[tuple[str, str]] = Tally((e.user, e.status) for e in ends)
        for (user, status), n in tally.items():
            self.jobs_ended.labels(user, status.lower()).inc(n)
        for end in ends:
            if end.node and end.start_time > 0 and end.end_time >= end.start_time:  # it ran
                self.run_time.observe(end.end_time - end.start_time)

    def dispatched(self, jobs: list[RunJob]) -> None:
        """Observes how long each just-dispatched job waited since its submit (the core set its start time)."""
        clusters = self.server.core.clusters
        for run in jobs:
            cluster = clusters.get(run.cluster_id)
            job = cluster.jobs.get(run.job_id) if cluster is not None else None
            if job is not None:
                self.dispatch_latency.observe(max(0.0, job.start_time - job.submit_time))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop(self) -> None:
        """Samples how late a timer fires: the time the loop spent on other work past its deadline."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag.set(max(0.0, loop.time() - due))


def logins_refused(registry: CollectorRegistry) -> Counter:
    """`dispy_logins_refused_total{via}`, on a leader and a standby alike."""
    counter = Counter(
        "dispy_logins_refused", "Logins refused (a wrong secret, an unknown name, throttled), by where",
        ["via"], registry=registry,
    )  # fmt: skip
    for via in ("wire", "http"):
        counter.labels(via)  # shown as 0 before the first
    return counter


class StateCollector(Collector):
    """Gauges read from the core and the shell when scraped."""

    def __init__(self, server: SchedulerServer) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
        core = self.server.core
        users = sorted(core.users.values(), key=lambda u: u.name)
        yield _family("dispy_user_queued_jobs", "Jobs waiting to run, per user", "user", ((u.name, u.queued + u.waiting) for u in users))
        yield _family("dispy_user_busy_cpus", "CPUs running a job of the user", "user", ((u.name, u.busy - u.waiting) for u in users))
        yield _family(
            "dispy_user_fair_share_cpus", "CPUs fair share counts for the user: its jobs on nodes, by the part of their stay they run",
            "user", ((u.name, round(u.load, 3)) for u in users),
        )  # fmt: skip
        yield _family(
            "dispy_user_usage_cpu_seconds", "Decayed CPU-seconds the user used (the fair share's history)", "user",
            ((u.name, u.decayed_usage(time.time(), core.usage_half_life)) for u in users),
        )  # fmt: skip
        nodes = sorted(core.nodes.values(), key=lambda n: n.name)
        yield _family("dispy_node_offered_cpus", "CPUs the node offers", "node", ((n.name, n.offered) for n in nodes))
        yield _family("dispy_node_cpus", "CPUs the node is given (offered, under an operator's cap)", "node",
                      ((n.name, n.cpus) for n in nodes))  # fmt: skip
        yield _family("dispy_node_busy_cpus", "CPUs of the node running a job", "node", ((n.name, n.busy - n.waiting) for n in nodes))
        states: Tally[str] = Tally({s: 0 for s in ("idle", "busy", "full", "drained")})
        states.update(node_state(n) for n in nodes)
        yield _family("dispy_nodes", "Connected nodes by state", "state", states.items())
        roles: Tally[str] = Tally({str(Role.CLIENT): 0, str(Role.NODE): 0})
        roles.update(str(c.peer.role) for c in self.server.peers.values() if c.peer is not None)
        yield _family("dispy_connections", "Authenticated connections, by role", "role", roles.items())


class LeadershipCollector(Collector):
    """Which scheduler leads, as this one knows it (the same names on a leader and a standby).

    `dispy_scheduler_leading` is 1 on a scheduler that serves peers, 0 on a
    standby: the sum over all schedulers of one state is 1 when all is well.
    With a shared state, `dispy_scheduler_leader` (labels: its address and
    epoch) and `dispy_scheduler_leader_since_seconds` name the leader.

    Args:
        leading: this scheduler leads.
        leader: the leader as last read (None: no shared state; an empty address: none leads now).
    """

    def __init__(self, leading: bool, leader: Callable[[], LeaderInfo | None]) -> None:
        self.leading = leading
        self.leader = leader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("dispy_scheduler_leading", "1 if this scheduler leads (serves peers), 0 if it stands by",
                                value=int(self.leading))  # fmt: skip
        info = self.leader()
        if info is None or not info.address:
            return
        family = GaugeMetricFamily(
            "dispy_scheduler_leader", "The scheduler that leads this one's shared state (1; the labels say which)",
            labels=["address", "epoch"],
        )  # fmt: skip
        family.add_metric([info.address, str(info.epoch)], 1)
        yield family
        yield GaugeMetricFamily("dispy_scheduler_leader_since_seconds", "Unix time the leader took over", value=info.since)


def _family(name: str, doc: str, label: str, samples: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for value, sample in samples:
        family.add_metric([value], sample)
    return family
