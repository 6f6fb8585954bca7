"""What of a loop turn's actions leaves while the turn's journal commit is made durable.

The journal promises that nothing is acknowledged that a crash could lose: a
turn's `Persist` is committed before its JobsAccepted, ResultsRecorded and
the rest leave (journal.py). Results, start notices and node updates to a
client acknowledge nothing, so they need not wait for the commit's write
and fsync: the store calls the shell back (`StateStore.write`'s
`before_commit`) once the turn's changes are staged, and they leave then.
A round trip then waits for one fsync (its submit's), not two
(benchmarks/latency.py).

What a crash in that instant costs: a client can hold a result the journal
lost. Its job stays running in the journal, its node keeps the result until
the scheduler's ResultsRecorded (which does wait for the commit) and sends it
again to the next run, and the client keeps the first terminal result it
saw, so the user still gets one; the job does not run again. (The node keeps
it for `dispynode --scheduler-grace`, 60 s by default: a scheduler away
longer finds the job gone from its node, as any other it sent there, and
writes it off or runs it again if reentrant; the user still sees the first.)
So only results a node sent in this very turn go ahead: one the core made (a
cancel, a job written off) exists nowhere else, and the next run, without
it, would decide that job's end anew. Likewise a start notice goes ahead only
if it is not of a job dispatched in the turn (to a node that starts what it
is sent). Submits and dispatches keep waiting for their commit: a job that
is not reentrant runs at most once.

A client's frames keep their order: an action goes ahead only if every
earlier action of the turn for the same client does too, and results only if
its connection sends them at once (`PeerConnection.sends_now`; what it must
keep waiting is read back from the store later, after the commit). A client
that submits while results come back gets them after its turn's commit, with
the JobsAccepted before them: sequential round trips gain most.
"""

from __future__ import annotations

from collections.abc import Callable

from .core import actions as A

def split(
    actions: list[A.Action], sends_now: Callable[[str], bool], from_nodes: set[int]
) -> tuple[list[A.Action], list[A.Action]]:
    """A turn's actions after its `Persist` (and `RecordJobEnds`), as (ahead of the commit, after it), each
    in their order. `sends_now(client)`: whether that client's connection sends results at once;
    `from_nodes`: the `id` of each result the turn's `ResultsArrived` events brought (alive meanwhile)."""
    dispatched = {(r.cluster_id, r.job_id) for a in actions if isinstance(a, A.Dispatch) for r in a.jobs}
    ahead: list[A.Action] = []
    after: list[A.Action] = []
    held: set[str] = set()  # clients with an action this turn that waits for the commit
    for action in actions:
        client = getattr(action, "client", None)
        if client not in held and _acknowledges_nothing(action, sends_now, from_nodes, dispatched):
            ahead.append(action)
        else:
            after.append(action)
            if client is not None:
                held.add(client)
    return ahead, after


def _acknowledges_nothing(
    action: A.Action, sends_now: Callable[[str], bool], from_nodes: set[int], dispatched: set[tuple[str, int]]
) -> bool:
    match action:
        case A.NotifyNodes():
            return True
        case A.NotifyStarted(_, cluster_id, starts):
            return not any((cluster_id, s.job_id) in dispatched for s in starts)
        case A.DeliverResults(client, _, results):
            return sends_now(client) and all(id(r) in from_nodes for r in results)
    return False
