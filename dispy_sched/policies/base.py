"""The policy interface: in what order users and clusters get free CPUs.

A policy does not search; it ranks. It gives two sort keys, and the core
keeps every user and cluster with queued jobs in heaps by those keys
(`core/ready.py`), re-keying only what a dispatch, finish, submit or cancel
changed. So each decision costs O(log n) whatever the policy, and limits
(`max_cpus`, `max_queued_jobs`, `priority_max`), node choice and set-up
failures are handled once, by the core, for every policy.

The next free CPU goes to the user with the smallest `user_key`, and within
that user to the cluster with the smallest `cluster_key`; the cluster runs
its own head job (highest priority, then first submitted). The node is the
least loaded one with a free CPU.

Rules a policy must keep (the core relies on them):
- a key reads only the record(s) it is given, and only fields the core
  changes through its own events (busy, load, queued, usage, head job,
  last dispatch, ...): a key that depended on other users, or on the clock,
  would go stale in the heap. Decayed usage is time-dependent, so use
  `UserRecord.usage_rank`, which orders users as their decayed usage does
  but does not change as time passes;
- `user_key(user, best)` is monotone in `best` (a better best cluster never
  makes the user rank worse): the core relies on it to skip users when a
  node cannot run some clusters;
- keys of different users (and of different clusters) compare with `<`,
  and never tie: each ends in a sequence number (`head.seq`, `cluster.seq`,
  or `best`), since the order in which the core re-keys is no contract;
- a policy never mutates records and never does I/O.

A flat policy (one global order of clusters, whoever owns them) returns
`best` as the user key: the user whose best cluster ranks first wins.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from ..core.state import ClusterRecord, JobRecord, UserRecord

#: a sort key: any value that compares with `<` (tuples of numbers are usual)
Key = Any


class Policy(Protocol):
    """What `--policy` names: a class whose instances rank users and clusters."""

    #: the name `--policy` and the status report use
    name: ClassVar[str]

    def cluster_key(self, cluster: ClusterRecord, head: JobRecord) -> Key:
        """Rank of a cluster with queued jobs among its user's clusters (smaller first).

        Args:
            cluster: the cluster (busy CPUs, queued jobs, seq, last_dispatch, ...).
            head: the job it would run next (priority, seq, submit_time).
        """
        ...

    def user_key(self, user: UserRecord, best: Key) -> Key:
        """Rank of a user with queued jobs (smaller first), monotone in `best`.

        Args:
            user: the user (share, busy, load, queued, usage_rank, limits, ...).
            best: the `cluster_key` of the user's best cluster.
        """
        ...
