"""`fifo`: the earliest submitted job first, whoever submitted it."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from ..core.state import ClusterRecord
from .base import SchedulerView


class FifoPolicy:
    name: ClassVar[str] = "fifo"

    def choose(
        self, view: SchedulerView, usable: Callable[[ClusterRecord], bool], now: float
    ) -> ClusterRecord | None:
        best: ClusterRecord | None = None
        best_seq = 0
        for clusters in view.waiting.values():
            for cluster in clusters.values():
                head = cluster.head()
                if head is None or not usable(cluster):
                    continue
                # a high-priority job jumps ahead inside its own cluster
                # only, never ahead of other users' older jobs
                if best is None or head.seq < best_seq:
                    best, best_seq = cluster, head.seq
        return best
