"""`fair`: hierarchical weighted fair share (the default).

Level 1, users: the next CPU goes to the user whose busy CPUs divided by its
share is lowest; ties (notably between users with nothing running) go to the
lower decayed usage divided by share, so a user who just ran a big batch
yields to one who did not, as Slurm's and HTCondor's fair share do.
Level 2, a user's clusters share that user's CPUs equally: the cluster with
fewer busy CPUs first, then the one with the older head job.
Level 3, inside a cluster, the core's own order: priority, then FIFO.
"""

from __future__ import annotations

import math
from typing import ClassVar

from ..core.state import ClusterRecord, JobRecord, UserRecord
from .base import Key


class FairPolicy:
    name: ClassVar[str] = "fair"

    def cluster_key(self, cluster: ClusterRecord, head: JobRecord) -> Key:
        return (cluster.busy, head.seq)

    def user_key(self, user: UserRecord, best: Key) -> Key:
        # usage_rank is log2(usage): dividing by share is subtracting log2(share)
        return (user.busy / user.share, user.usage_rank - math.log2(user.share), best)
