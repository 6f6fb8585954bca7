"""Job states shared by every process; values match dispy's `DispyJob` constants."""

from __future__ import annotations

from enum import IntEnum


class JobStatus(IntEnum):
    CREATED = 5
    RUNNING = 6
    PROVISIONAL_RESULT = 7
    CANCELLED = 8
    TERMINATED = 9
    ABANDONED = 10
    FINISHED = 11

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.CANCELLED, JobStatus.TERMINATED, JobStatus.ABANDONED, JobStatus.FINISHED})
