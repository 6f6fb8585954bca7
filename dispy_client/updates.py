"""What the loop thread hands the dispatcher thread (`JobTracker`): one small record per kind of news.

Each record carries a message's worth of the scheduler's records of one
kind, in the order they came; the tracker applies them in that order, with
a `match` on the record's type. `Created` and `Closed` come from user
threads (a submit, `close`); `Turn` is what one loop turn handed over, as
one item of the dispatcher's queue (one wake-up of that thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from dispy_wire import messages as M

from .job import DispyJob


@dataclass(frozen=True, slots=True)
class Started:
    """Jobs a node started."""

    starts: list[M.JobStart]


@dataclass(frozen=True, slots=True)
class Provisional:
    """Provisional results (`dispy_provisional_result`): their jobs go on."""

    results: list[M.JobResult]


@dataclass(frozen=True, slots=True)
class Files:
    """Files jobs sent (`dispy_send_file`), before their jobs end."""

    files: list[M.JobFile]


@dataclass(frozen=True, slots=True)
class Results:
    """Terminal results, each job's once (`ClusterSession` hands on only a job's first)."""

    results: list[M.JobResult]


@dataclass(frozen=True, slots=True)
class Nodes:
    """Nodes that joined, reported or left."""

    infos: list[M.NodeInfo]


@dataclass(frozen=True, slots=True)
class Unusable:
    """Nodes the cluster cannot run on, and why."""

    notes: list[M.NodeUnusable]


@dataclass(frozen=True, slots=True)
class Created:
    """A job was submitted (for `cluster_status(Created, None, job)`)."""

    job: DispyJob


@dataclass(frozen=True, slots=True)
class Closed:
    """The cluster is closing: its nodes are told `Closed` to `cluster_status`."""


#: what the scheduler's messages become, handed in by the loop thread (`JobTracker.deliver`)
News: TypeAlias = Started | Provisional | Files | Results | Nodes | Unusable
#: one item the dispatcher applies
Update: TypeAlias = News | Created | Closed


@dataclass(frozen=True, slots=True)
class Turn:
    """What one turn of the loop handed over, in order."""

    updates: list[Update]
