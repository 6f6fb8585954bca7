"""dispy's own cluster policies, for users who know them from `dispyscheduler`.

Both ignore users: one global order of clusters (the user key is its best
cluster's key). Jobs inside a cluster keep the core's order (priority, then
FIFO), and limits still apply, as for every policy.
"""

from __future__ import annotations

from typing import ClassVar

from ..core.state import ClusterRecord, JobRecord, UserRecord
from .base import Key


class FairClusterPolicy:
    """`fair_cluster`: the least recently scheduled cluster first.

    A cluster that never ran a job goes first; then each dispatch sends its
    cluster to the back, so clusters with queued jobs take turns, one job
    each, whatever their owners and sizes.
    """

    name: ClassVar[str] = "fair_cluster"

    def cluster_key(self, cluster: ClusterRecord, head: JobRecord) -> Key:
        return (cluster.last_dispatch, cluster.seq)

    def user_key(self, user: UserRecord, best: Key) -> Key:
        return best


class FcfsClusterPolicy:
    """`fcfs_cluster`: the earliest created cluster with queued jobs first.

    A later cluster gets a CPU only when every earlier one has nothing queued
    (or cannot run on that node).
    """

    name: ClassVar[str] = "fcfs_cluster"

    def cluster_key(self, cluster: ClusterRecord, head: JobRecord) -> Key:
        return cluster.seq

    def user_key(self, user: UserRecord, best: Key) -> Key:
        return best
