"""Exceptions a user of dispy_client may see; all derive from `DispyError`."""

from __future__ import annotations


class DispyError(Exception):
    """Base of every dispy_client error."""


class SchedulerUnreachable(DispyError, ConnectionError):
    """The scheduler could not be reached (or stopped answering) in time."""


class AuthenticationError(DispyError):
    """The scheduler refused our user name or secret."""


class ProtocolError(DispyError):
    """The scheduler and this client do not understand each other."""


class ClusterError(DispyError):
    """The scheduler refused a request about a cluster (the message says why)."""
