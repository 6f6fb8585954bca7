"""Errors of the wire layer, split by who is at fault (h11's convention).

`LocalWireError`: we misused the API (a bug on our side).
`RemoteWireError`: the peer sent something we cannot accept; it carries an
`ErrorCode` and a message meant for that peer, so the shell can reply with a
`Refused`/`Error` frame before closing.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable reason carried by `Refused` and `Error` frames."""

    #: the login proof failed: an unknown name or a wrong secret (one answer for both, on purpose)
    LOGIN_FAILED = "login-failed"
    #: too many failed logins from this address or for this name; retry later
    THROTTLED = "throttled"
    #: the two ends see different channels (TLS on one side only, or a relay in between)
    CHANNEL_BINDING = "channel-binding"
    #: a login by certificate (EXTERNAL) whose certificate is missing, or names another peer or role
    CERTIFICATE = "certificate"
    #: the scheduler did not prove it knows the verifier: not the real scheduler
    SERVER_NOT_VERIFIED = "server-not-verified"
    #: the peer speaks another protocol version
    BAD_VERSION = "bad-version"
    #: first bytes are not the dispy-shared preamble
    NOT_DISPY = "not-dispy"
    #: a frame that does not decode to a known, well-formed message
    BAD_MESSAGE = "bad-message"
    #: a frame larger than the receiver's limit
    TOO_LARGE = "too-large"
    #: the peer did not finish the handshake in time
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    #: a request naming a cluster this peer does not own
    UNKNOWN_CLUSTER = "unknown-cluster"
    #: the cluster's set-up failed on a node (the cluster goes on elsewhere)
    SETUP_FAILED = "setup-failed"
    #: a well-formed request with a bad argument
    BAD_REQUEST = "bad-request"
    #: a configured limit was hit
    LIMIT = "limit"
    #: the cluster was released: its program stayed away longer than the scheduler's result retention
    RELEASED = "released"
    #: the receiver is shutting down
    SHUTTING_DOWN = "shutting-down"
    #: a standby scheduler: another one leads (`NotLeaderError.leader` says where)
    NOT_LEADER = "not-leader"


class WireError(Exception):
    """Base of every error raised by `dispy_wire`."""


class LocalWireError(WireError):
    """We tried to send something the protocol does not allow."""


class RemoteWireError(WireError):
    """The peer broke the protocol; `code` and `args[0]` are what to tell it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotLeaderError(RemoteWireError):
    """We dialed a standby scheduler; `leader` is the one that leads (host:port, '' while none does)."""

    def __init__(self, leader: str) -> None:
        where = f"the leader is {leader}" if leader else "no scheduler leads right now (a takeover is under way)"
        super().__init__(ErrorCode.NOT_LEADER, f"this scheduler stands by; {where}")
        self.leader = leader
