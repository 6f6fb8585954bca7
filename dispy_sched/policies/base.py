"""The policy interface: which cluster gets the next free CPU.

A policy is asked one question, over and over, by the core's scheduling pass:
of the clusters that have queued jobs and may use this free CPU, which one
goes next? The core then takes that cluster's head job (priority, then FIFO)
and places it on the least loaded node. A policy reads the core's records
through `SchedulerView`; it never mutates them and never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol

from ..core.state import ClusterRecord, UserRecord


class SchedulerView(Protocol):
    """What a policy may read."""

    #: every known user, by name
    users: Mapping[str, UserRecord]
    #: user name -> that user's clusters with queued jobs (insertion ordered)
    waiting: Mapping[str, Mapping[str, ClusterRecord]]
    #: half-life of decayed usage, in seconds
    usage_half_life: float


class Policy(Protocol):
    name: ClassVar[str]

    def choose(
        self, view: SchedulerView, usable: Callable[[ClusterRecord], bool], now: float
    ) -> ClusterRecord | None:
        """Returns the cluster whose head job gets the next CPU, or None.

        Args:
            view: the core's records.
            usable: whether a cluster may run on the CPU being filled.
            now: the core's current time.
        """
        ...
