"""`fifo`: the earliest submitted job first, whoever submitted it.

A cluster ranks by its head job's submission order, and a user by its best
cluster, so the globally oldest head runs next. A high-priority job jumps
ahead inside its own cluster only, never ahead of other users' older jobs.
"""

from __future__ import annotations

from typing import ClassVar

from ..core.state import ClusterRecord, JobRecord, UserRecord
from .base import Key


class FifoPolicy:
    name: ClassVar[str] = "fifo"

    def cluster_key(self, cluster: ClusterRecord, head: JobRecord) -> Key:
        return head.seq

    def user_key(self, user: UserRecord, best: Key) -> Key:
        return best
