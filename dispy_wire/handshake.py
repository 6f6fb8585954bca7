"""The authentication handshake, as two small sans-I/O state machines.

    scheduler                              peer (client or node)
    ─────────  PREAMBLE + Challenge(nonce) ──────────▶
    ◀───────── PREAMBLE + Hello(role, name, mac) ─────
    ─────────  Welcome | Refused ────────────────────▶

`mac` is HMAC-SHA256 over the nonce, role and name, keyed by the secret the
scheduler holds for that user (clients) or the node secret (nodes): the
secret never crosses the wire and a recorded Hello cannot be replayed against
another nonce. Both sides act on decoded messages and return the message to
send; the shell owns sockets, timers and the frame decoder.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from .errors import ErrorCode, LocalWireError, RemoteWireError
from .messages import PROTOCOL_VERSION, Challenge, Hello, Message, Refused, Welcome


class Role(StrEnum):
    CLIENT = "client"
    NODE = "node"


class HandshakeState(Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_HELLO = "await-hello"
    AWAIT_WELCOME = "await-welcome"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated peer, as the scheduler knows it."""

    role: Role
    name: str
    info: dict[str, Any]


def compute_mac(secret: str, nonce: bytes, role: str, name: str) -> bytes:
    msg = b"dispy-shared/%d\0" % PROTOCOL_VERSION + nonce + b"\0" + role.encode() + b"\0" + name.encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


class ServerHandshake:
    """Scheduler side.

    Args:
        secret_for: returns the secret for (role, name), or None when the name
            is unknown.
        nonce: fresh random bytes for this connection.
        server: a name for the scheduler, shown to peers.
    """

    def __init__(self, secret_for: Callable[[Role, str], str | None], nonce: bytes, server: str) -> None:
        self.state = HandshakeState.AWAIT_HELLO
        self._secret_for = secret_for
        self._nonce = nonce
        self._server = server

    def challenge(self) -> Challenge:
        return Challenge(PROTOCOL_VERSION, self._nonce, self._server)

    def receive(self, msg: Message) -> Peer:
        """Checks the peer's Hello; returns the authenticated peer.

        Raises:
            RemoteWireError: what to send back in a `Refused` before closing.
        """
        if self.state is not HandshakeState.AWAIT_HELLO:
            raise LocalWireError(f"handshake is {self.state.name}, not waiting for Hello")
        self.state = HandshakeState.FAILED
        if not isinstance(msg, Hello):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Hello, got {type(msg).__name__}")
        if msg.version != PROTOCOL_VERSION:
            raise RemoteWireError(
                ErrorCode.BAD_VERSION,
                f"protocol version {msg.version} not supported (scheduler speaks {PROTOCOL_VERSION})",
            )
        try:
            role = Role(msg.role)
        except ValueError:
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"unknown role {msg.role!r}") from None
        what = "user" if role is Role.CLIENT else "node"
        if not msg.name:
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"empty {what} name")
        secret = self._secret_for(role, msg.name)
        if secret is None:
            raise RemoteWireError(ErrorCode.UNKNOWN_USER, f"unknown {what} {msg.name!r}")
        if not hmac.compare_digest(msg.mac, compute_mac(secret, self._nonce, role, msg.name)):
            raise RemoteWireError(ErrorCode.BAD_SECRET, f"{what} {msg.name!r}: bad secret")
        self.state = HandshakeState.DONE
        return Peer(role, msg.name, msg.info)

    @staticmethod
    def welcome(session: str, info: dict[str, Any]) -> Welcome:
        return Welcome(session, info)

    @staticmethod
    def refuse(error: RemoteWireError) -> Refused:
        return Refused(str(error.code), error.message)


class PeerHandshake:
    """Client or node side: answers the challenge, then waits for the verdict."""

    def __init__(self, role: Role, name: str, secret: str, info: dict[str, Any]) -> None:
        self.state = HandshakeState.AWAIT_CHALLENGE
        self.role = role
        self.name = name
        self._secret = secret
        self._info = info
        self.server = ""

    def receive(self, msg: Message) -> Hello | Welcome:
        """Returns the Hello to send after the Challenge, then the Welcome.

        Raises:
            RemoteWireError: the scheduler refused us (its code and message),
                or sent something out of order.
        """
        if self.state is HandshakeState.AWAIT_CHALLENGE:
            self.state = HandshakeState.FAILED
            if isinstance(msg, Refused):
                raise RemoteWireError(_code(msg.code), msg.message)
            if not isinstance(msg, Challenge):
                raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Challenge, got {type(msg).__name__}")
            if msg.version != PROTOCOL_VERSION:
                raise RemoteWireError(
                    ErrorCode.BAD_VERSION,
                    f"scheduler speaks protocol version {msg.version}, we speak {PROTOCOL_VERSION}",
                )
            self.server = msg.server
            self.state = HandshakeState.AWAIT_WELCOME
            mac = compute_mac(self._secret, msg.nonce, self.role, self.name)
            return Hello(PROTOCOL_VERSION, str(self.role), self.name, mac, self._info)
        if self.state is HandshakeState.AWAIT_WELCOME:
            self.state = HandshakeState.FAILED
            if isinstance(msg, Refused):
                raise RemoteWireError(_code(msg.code), msg.message)
            if not isinstance(msg, Welcome):
                raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Welcome, got {type(msg).__name__}")
            self.state = HandshakeState.DONE
            return msg
        raise LocalWireError(f"handshake is {self.state.name}")


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.BAD_MESSAGE
