"""Exceptions a user of dispy_client may see; all derive from `DispyError`."""

from __future__ import annotations


class DispyError(Exception):
    """Base of every dispy_client error."""


class SchedulerUnreachable(DispyError, ConnectionError):
    """The scheduler could not be reached (or stopped answering) in time."""


class SchedulerSilent(SchedulerUnreachable):
    """The scheduler accepted the connection and said nothing in time (stopped, hung, or speaking TLS)."""


class StandingBy(SchedulerUnreachable):
    """The scheduler dialed stands by; `leader` is the address of the one that leads ('' while none does)."""

    def __init__(self, message: str, leader: str) -> None:
        super().__init__(message)
        self.leader = leader


class AuthenticationError(DispyError):
    """The scheduler refused our user name or secret."""


class SchedulerNotTrusted(AuthenticationError):
    """The scheduler did not prove its identity (TLS certificate or pinned fingerprint); nothing was sent to it."""


class ProtocolError(DispyError):
    """The scheduler and this client do not understand each other."""


class ClusterError(DispyError):
    """The scheduler refused a request about a cluster (the message says why)."""


class LimitError(ClusterError):
    """The scheduler refused a request beyond one of this user's limits; the message names it and the numbers."""


class JobError(DispyError):
    """A job ended without a result (raised by `map`, executor futures and `asubmit`).

    Attributes:
        job: the `DispyJob`, with its status, `exception` text and output.
    """

    def __init__(self, job: object, message: str) -> None:
        super().__init__(message)
        self.job = job
