"""dispy-shared's client: dispy 4.x's API on a shared scheduler.

    import dispy_client as dispy
    cluster = dispy.SharedJobCluster(compute, scheduler_host="sched:9702")
"""

from __future__ import annotations

import logging

from .cluster import SharedJobCluster
from .errors import AuthenticationError, ClusterError, DispyError, ProtocolError, SchedulerUnreachable
from .job import DispyJob

logger = logging.getLogger("dispy_client")

__all__ = [
    "AuthenticationError",
    "ClusterError",
    "DispyError",
    "DispyJob",
    "ProtocolError",
    "SchedulerUnreachable",
    "SharedJobCluster",
    "logger",
]
