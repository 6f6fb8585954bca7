"""The life of a cluster on a node, as one state machine: phases, transitions, and the chain per cluster id.

Theory of operation. Each `load` of a cluster makes an *incarnation*: one
zygote, its jobs, its directory and uid. An incarnation moves through the
phases below, and only through the transitions in `TRANSITIONS`; each
transition is one small method of `Incarnation` (`_starting_to_ready`, ...),
the only place its phase changes, and a transition not in the table raises
`InvalidTransition` (a bug of ours, never of a peer). This module knows no
processes, tasks or clocks: `runner.py` (the shell) drives it and acts on
the phase.

    STARTING --ready--> READY --unload--> UNLOADING --stop--> STOPPED --retire--> RETIRED
       |                  |                                      ^
       +----fail----------+---> FAILED ------stop----------------+
       +----stop--------------------------------------------------+   (also from READY)

Invariants, kept by `Chains`:
- per cluster id at most one incarnation is *live* (STARTING or READY);
- incarnations of one id end in the order they began: a new one starts its
  zygote only once every earlier one is RETIRED (`predecessor`), so two
  incarnations never share the directory or the control group;
- a cluster id whose live incarnation FAILED drops its late jobs silently
  (the scheduler requeues them itself) until it is loaded or unloaded again.

Only STARTING, READY and UNLOADING report anything (`reports`): once FAILED or
STOPPED an incarnation is silent, whatever its zygote still says.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from . import NodeError

T = TypeVar("T")


class Phase(Enum):
    #: zygote loading: jobs queue
    STARTING = "starting"
    #: zygote ready: jobs run
    READY = "ready"
    #: the scheduler asked: jobs are cancelled, cleanup runs
    UNLOADING = "unloading"
    #: cannot run here: reports nothing more, is stopped and retired
    FAILED = "failed"
    #: zygote told to stop (or gone): its processes are being ended; reports nothing more
    STOPPED = "stopped"
    #: processes, control group, directory and uid dealt with: the next incarnation may start
    RETIRED = "retired"


class InvalidTransition(NodeError):
    """A transition the table does not allow: a bug in the shell, not bad input."""


#: (from, to) -> the method doing it
TRANSITIONS: dict[tuple[Phase, Phase], str] = {
    (Phase.STARTING, Phase.READY): "_starting_to_ready",
    (Phase.STARTING, Phase.FAILED): "_live_to_failed",
    (Phase.READY, Phase.FAILED): "_live_to_failed",
    (Phase.READY, Phase.UNLOADING): "_ready_to_unloading",
    (Phase.STARTING, Phase.STOPPED): "_to_stopped",
    (Phase.READY, Phase.STOPPED): "_to_stopped",
    (Phase.UNLOADING, Phase.STOPPED): "_to_stopped",
    (Phase.FAILED, Phase.STOPPED): "_to_stopped",
    (Phase.STOPPED, Phase.RETIRED): "_stopped_to_retired",
}

#: transitions kept per incarnation, for `story()`
_LOG_SIZE = 32
_seq = itertools.count(1)


@dataclass(eq=False, slots=True)
class Incarnation(Generic[T]):
    """One load of one cluster; `body` is the shell's object for it (its zygote and jobs)."""

    cluster_id: str
    body: T
    phase: Phase = Phase.STARTING
    seq: int = field(default_factory=lambda: next(_seq))
    why: str = ""  # why it failed, once it did
    log: list[tuple[Phase, Phase, str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.phase in (Phase.STARTING, Phase.READY)

    @property
    def reports(self) -> bool:
        """Whether what its zygote says is passed on."""
        return self.phase in (Phase.STARTING, Phase.READY, Phase.UNLOADING)

    def to(self, phase: Phase, stimulus: str = "") -> None:
        """Moves to `phase` by the table's method for it.

        Raises:
            InvalidTransition: (current, phase) is not in `TRANSITIONS`.
        """
        name = TRANSITIONS.get((self.phase, phase))
        if name is None:
            raise InvalidTransition(f"cluster {self.cluster_id} #{self.seq}: {self.phase.name} -> {phase.name} ({stimulus})")
        getattr(self, name)(stimulus)
        self.log.append((self.phase, phase, stimulus))
        del self.log[:-_LOG_SIZE]
        self.phase = phase

    def story(self) -> list[str]:
        return [f"{a.name}->{b.name}: {why}" for a, b, why in self.log]

    # -- the transitions: checks and bookkeeping each needs, nothing else ----

    def _starting_to_ready(self, stimulus: str) -> None:
        pass

    def _live_to_failed(self, stimulus: str) -> None:
        self.why = stimulus

    def _ready_to_unloading(self, stimulus: str) -> None:
        pass

    def _to_stopped(self, stimulus: str) -> None:
        pass

    def _stopped_to_retired(self, stimulus: str) -> None:
        pass


@dataclass(slots=True)
class _Chain(Generic[T]):
    """The incarnations of one cluster id, oldest first; the last may be live."""

    incarnations: list[Incarnation[T]] = field(default_factory=list)
    dropping: bool = False  # its live incarnation failed: late jobs are dropped


class Chains(Generic[T]):
    """Every cluster id's incarnations: which is live, which are ending, which ids drop jobs."""

    def __init__(self) -> None:
        self._chains: dict[str, _Chain[T]] = {}

    def begin(self, cluster_id: str, make: Callable[[Incarnation[T] | None], T]) -> Incarnation[T] | None:
        """A new live incarnation, unless one is live already (then None).

        `make(predecessor)` builds the shell's body; `predecessor` is the newest
        earlier incarnation not yet RETIRED, which the new one must wait for.
        """
        chain = self._chains.setdefault(cluster_id, _Chain())
        if chain.incarnations and chain.incarnations[-1].live:
            return None
        chain.dropping = False
        before = chain.incarnations[-1] if chain.incarnations else None
        inc: Incarnation[T] = Incarnation(cluster_id, make(before))
        chain.incarnations.append(inc)
        return inc

    def remnant(self, cluster_id: str, body: T) -> Incarnation[T]:
        """An incarnation that never ran (only a directory to remove), born STOPPED."""
        chain = self._chains.setdefault(cluster_id, _Chain())
        inc: Incarnation[T] = Incarnation(cluster_id, body, Phase.STOPPED)
        chain.incarnations.append(inc)
        return inc

    def live(self, cluster_id: str) -> Incarnation[T] | None:
        chain = self._chains.get(cluster_id)
        if chain is None or not chain.incarnations or not chain.incarnations[-1].live:
            return None
        return chain.incarnations[-1]

    def newest(self, cluster_id: str) -> Incarnation[T] | None:
        """The newest incarnation not yet retired, live or ending."""
        chain = self._chains.get(cluster_id)
        return chain.incarnations[-1] if chain and chain.incarnations else None

    def fail(self, inc: Incarnation[T], why: str) -> bool:
        """The live `inc` cannot run here; False (and nothing changes) if it is not the live one."""
        if self.live(inc.cluster_id) is not inc:
            return False
        inc.to(Phase.FAILED, why)
        self._chains[inc.cluster_id].dropping = True
        return True

    def refuse(self, cluster_id: str) -> None:
        """A load refused before any incarnation began: its late jobs are dropped too."""
        self._chains.setdefault(cluster_id, _Chain()).dropping = True

    def forget_failure(self, cluster_id: str) -> None:
        chain = self._chains.get(cluster_id)
        if chain is not None:
            chain.dropping = False
            self._gc(cluster_id)

    def dropping(self, cluster_id: str) -> bool:
        chain = self._chains.get(cluster_id)
        return chain is not None and chain.dropping

    def retire(self, inc: Incarnation[T]) -> None:
        """`inc` is STOPPED and all of it is gone: out of its chain."""
        inc.to(Phase.RETIRED, "retired")
        chain = self._chains.get(inc.cluster_id)
        if chain is not None and inc in chain.incarnations:
            chain.incarnations.remove(inc)
            self._gc(inc.cluster_id)

    def all_live(self) -> Iterator[Incarnation[T]]:
        for chain in self._chains.values():
            if chain.incarnations and chain.incarnations[-1].live:
                yield chain.incarnations[-1]

    def ending(self) -> Iterator[Incarnation[T]]:
        """Incarnations neither live nor retired."""
        for chain in self._chains.values():
            yield from (i for i in chain.incarnations if not i.live)

    def _gc(self, cluster_id: str) -> None:
        chain = self._chains[cluster_id]
        if not chain.incarnations and not chain.dropping:
            del self._chains[cluster_id]

    def check(self) -> None:
        """The invariants in the module docstring (for tests)."""
        for cid, chain in self._chains.items():
            assert all(i.cluster_id == cid for i in chain.incarnations)
            assert all(not i.live for i in chain.incarnations[:-1]), f"{cid}: a live incarnation is not the newest"
            assert all(i.phase is not Phase.RETIRED for i in chain.incarnations), f"{cid}: a retired one is kept"
            assert chain.incarnations or chain.dropping, f"{cid}: an empty chain is kept"
