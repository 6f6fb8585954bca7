"""The ready index: which user and cluster get the next free CPU.

Theory of operation
-------------------
Two levels of `KeyedHeap`: users by the policy's `user_key`, and per user
its clusters with queued jobs by `cluster_key`. The core calls `update` for
a cluster after anything that may change its key or its user's (a submit,
dispatch, finish, cancel or requeue) and `update_user` after a change to the
user alone (restored usage, results held or collected); each costs
O(log n). A user at its `max_cpus`, or holding `max_held_bytes` of
uncollected results, leaves the user heap (its clusters stay in theirs)
until a job of its ends or its results are collected: that is how every
policy enforces the limits, and why a capped user's idle CPUs go to the
others (work-conserving).

A job's end changes its cluster's and user's keys, and a node returns
results in batches: `touch` only notes the cluster, and the next look at
the index (`bool`, `choose`, `check`) re-keys each noted one once, however
many of its jobs ended meanwhile. The order in which items are re-keyed
breaks ties between equal keys, so a policy's keys must not tie: each ends
in a sequence number (docs/policies.md).

`choose(usable)` is a peek at two heap tops when the top cluster may run on
the CPU being filled, the common case. Otherwise (the cluster's set-up failed
on that node) it walks users in order, taking each one's first usable
cluster, and stops at the first user whose own key cannot beat the best
found: `user_key` is monotone in its cluster's key, so none after can.

A closing cluster is never indexed, whatever it still queues, nor is one
under a bulk cancel (`cancelling`): their queued jobs are being cancelled a
slice per call (the core's Cancelling), so none may start meanwhile, nor
weigh in its user's rank.

Invariants (`check`): exactly the clusters with queued jobs that are not
closing nor cancelling are indexed,
under their user, with the key the policy gives now; exactly the users with
an indexed cluster and not `capped` are in the user heap, keyed on their
best cluster. It must not know about nodes, sockets or time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .keyed_heap import KeyedHeap
from .state import ClusterRecord, UserRecord

if TYPE_CHECKING:  # the policies package imports the core's records
    from ..policies.base import Policy


class ReadyIndex:
    """Users and clusters with queued jobs, in the policy's order.

    Args:
        policy: gives the sort keys.
        users: the core's user records, by name (read, never changed).
        clusters: the core's cluster records, by id (read, never changed).
    """

    def __init__(self, policy: Policy, users: Mapping[str, UserRecord], clusters: Mapping[str, ClusterRecord]) -> None:
        self.policy = policy
        self._users = users
        self._clusters = clusters
        self.ready_users: KeyedHeap[str] = KeyedHeap()
        self.user_clusters: dict[str, KeyedHeap[str]] = {}
        #: clusters to re-key at the next look, by id -> their user (a cluster may be gone by then)
        self._touched: dict[str, str] = {}

    def __bool__(self) -> bool:
        """Whether some user may get a CPU now."""
        if self._touched:
            self._rekey_touched()
        return bool(self.ready_users)

    def touch(self, cluster: ClusterRecord) -> None:
        """`update` for a cluster, at the next look: a job of it ended (more may, before anyone looks)."""
        self._touched[cluster.cluster_id] = cluster.user

    def _rekey_touched(self) -> None:
        touched, self._touched = self._touched, {}
        for cluster_id, user in touched.items():
            cluster = self._clusters.get(cluster_id)
            if cluster is not None:
                self.update(cluster)
            if cluster is None or cluster.user != user:  # closed and gone since (its id free): its user's CPUs
                self.update_user(self._users[user])  # still changed

    def update(self, cluster: ClusterRecord) -> None:
        """Re-keys a cluster (and its user) after a change to either."""
        heap = self.user_clusters.get(cluster.user)
        head = None if cluster.closing or cluster.cancelling else cluster.head()
        if head is not None:
            if heap is None:
                heap = self.user_clusters[cluster.user] = KeyedHeap()
            heap.set(cluster.cluster_id, self.policy.cluster_key(cluster, head))
        elif heap is not None:
            heap.discard(cluster.cluster_id)
        self.update_user(self._users[cluster.user])

    def update_user(self, user: UserRecord) -> None:
        """Re-keys a user after a change to it or to its best cluster."""
        heap = self.user_clusters.get(user.name)
        best = heap.peek() if heap is not None else None
        if best is None:
            self.user_clusters.pop(user.name, None)
            self.ready_users.discard(user.name)
        elif user.capped:
            self.ready_users.discard(user.name)
        else:
            assert heap is not None
            self.ready_users.set(user.name, self.policy.user_key(user, heap.key(best)))

    def choose(self, usable: Callable[[ClusterRecord], bool]) -> ClusterRecord | None:
        """The cluster whose head job gets the CPU being filled, or None.

        Args:
            usable: whether a cluster may run on that CPU's node.
        """
        if self._touched:
            self._rekey_touched()
        name = self.ready_users.peek()
        if name is None:
            return None
        cluster_id = self.user_clusters[name].peek()
        assert cluster_id is not None
        cluster = self._clusters[cluster_id]
        return cluster if usable(cluster) else self._search(usable)

    def _search(self, usable: Callable[[ClusterRecord], bool]) -> ClusterRecord | None:
        best: ClusterRecord | None = None
        best_key: Any = None
        for name in self.ready_users.ordered():
            if best is not None and not self.ready_users.key(name) < best_key:
                break  # this user's best cluster cannot beat it, nor can any later user's
            heap = self.user_clusters[name]
            for cluster_id in heap.ordered():
                cluster = self._clusters[cluster_id]
                if usable(cluster):
                    key = self.policy.user_key(self._users[name], heap.key(cluster_id))
                    if best is None or key < best_key:
                        best, best_key = cluster, key
                    break
        return best

    def check(self) -> None:
        """Raises AssertionError if the index disagrees with the records."""
        if self._touched:
            self._rekey_touched()
        for cluster in self._clusters.values():
            heap = self.user_clusters.get(cluster.user)
            head = None if cluster.closing or cluster.cancelling else cluster.head()  # their queued jobs never start
            indexed = heap is not None and cluster.cluster_id in heap
            assert indexed == (head is not None), f"{cluster.cluster_id}: indexed {indexed}, queued {cluster.queued}"
            if head is not None and heap is not None:
                want = self.policy.cluster_key(cluster, head)
                assert heap.key(cluster.cluster_id) == want, f"{cluster.cluster_id}: stale key"
        for name, heap in self.user_clusters.items():
            heap.check()
            assert heap, f"user {name}: an empty cluster heap is kept"
        self.ready_users.check()
        for user in self._users.values():
            heap = self.user_clusters.get(user.name)
            ready = heap is not None and not user.capped
            assert (user.name in self.ready_users) == ready, f"user {user.name}: ready is wrong"
            best = heap.peek() if heap is not None else None
            if ready and heap is not None and best is not None:
                assert self.ready_users.key(user.name) == self.policy.user_key(user, heap.key(best)), f"{user.name}: stale key"
