"""`fair`: weighted fair share between users.

The next CPU goes to the user, among those with queued jobs, whose busy CPUs
divided by its share is lowest; ties (notably between users with nothing
running) go to the lower decayed usage divided by share, so a user who just
ran a big batch yields to one who did not. Inside a user, its clusters take
turns: the one with fewer busy CPUs first, then the older head job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from ..core.state import ClusterRecord, UserRecord
from .base import SchedulerView


class FairPolicy:
    name: ClassVar[str] = "fair"

    def choose(
        self, view: SchedulerView, usable: Callable[[ClusterRecord], bool], now: float
    ) -> ClusterRecord | None:
        half_life = view.usage_half_life

        def user_key(user: UserRecord) -> tuple[float, float, str]:
            return (user.busy / user.share, user.decayed_usage(now, half_life) / user.share, user.name)

        for user in sorted((view.users[name] for name in view.waiting), key=user_key):
            best: ClusterRecord | None = None
            best_key: tuple[int, int] | None = None
            for cluster in view.waiting[user.name].values():
                head = cluster.head()
                if head is None or not usable(cluster):
                    continue
                key = (cluster.busy, head.seq)
                if best_key is None or key < best_key:
                    best, best_key = cluster, key
            if best is not None:
                return best
        return None
