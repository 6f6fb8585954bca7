"""The pure scheduling core: events in, actions out (see scheduler.py)."""

from .scheduler import JOB_TRANSITIONS, CoreConfig, SchedulerCore
from .state import ClusterRecord, JobRecord, JobState, NodeRecord, UserRecord

__all__ = ["JOB_TRANSITIONS", "ClusterRecord", "CoreConfig", "JobRecord", "JobState", "NodeRecord", "SchedulerCore", "UserRecord"]
