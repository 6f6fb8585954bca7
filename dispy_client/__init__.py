"""dispy-shared's client: dispy 4.x's API on a shared scheduler.

    import dispy_client as dispy
    cluster = dispy.JobCluster(compute)                  # its own scheduler and this machine's CPUs
    cluster = dispy.SharedJobCluster(compute, scheduler_node="sched:9702")

See docs/client.md for the whole API and where it differs from dispy.
"""

from __future__ import annotations

import logging

from . import config
from .cluster import BaseCluster, SharedJobCluster
from .errors import (
    AuthenticationError,
    ClusterError,
    DispyError,
    JobError,
    LimitError,
    ProtocolError,
    SchedulerNotTrusted,
    SchedulerUnreachable,
)
from .executor import ClusterExecutor
from .job import DispyJob
from .jobcluster import JobCluster
from .node import ClusterStatus, DispyNode, DispyNodeAvailInfo, NodeAllocate
from .recover import recover_jobs
from dispy_wire.version import VERSION as __version__

logger = logging.getLogger("dispy_client")
# dispy's logger carries its levels: programs write `loglevel=dispy.logger.DEBUG`
for _level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    setattr(logger, _level, getattr(logging, _level))

__all__ = [
    "__version__",
    "AuthenticationError",
    "BaseCluster",
    "ClusterError",
    "ClusterExecutor",
    "ClusterStatus",
    "DispyError",
    "DispyJob",
    "DispyNode",
    "DispyNodeAvailInfo",
    "JobCluster",
    "JobError",
    "LimitError",
    "NodeAllocate",
    "ProtocolError",
    "SchedulerNotTrusted",
    "SchedulerUnreachable",
    "SharedJobCluster",
    "config",
    "logger",
    "recover_jobs",
]
