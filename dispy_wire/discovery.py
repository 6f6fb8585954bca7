"""Datagrams of UDP discovery: how a node finds a scheduler on its own segment.

    node (broadcast, UDP port 9701)              scheduler
    ───────  Discover(nonce, padding) ─────────────────▶
    ◀──────  Announce(name, host, port, proof) ───────── (unicast)

A datagram is `MAGIC` followed by the msgpack array `[kind, version,
fields...]`, at most `MAX_DATAGRAM` bytes. Discovery only tells a node where
to dial; the TCP handshake still authenticates the node as usual.

Why the proof. The TCP handshake makes the node prove its secret, not the
scheduler, so a node must not follow just anyone who answers a broadcast
(it would run that party's code). `proof` is an HMAC over the node's fresh
nonce *and* the address it is told to dial, keyed by the SCRAM ServerKey of
the node secret: the scheduler holds only the node verifier, which has that
key; the node derives it from its secret with the salt and iteration count
the Announce carries (capped, and cached, so a forged Announce cannot make
it hash for long). A party without the verifier cannot forge a proof, and a
genuine Announce replayed from elsewhere still points at the genuine
scheduler.

Why the padding. A `Discover` is at least `DISCOVER_SIZE` bytes and an
`Announce` never larger, so a scheduler answering forged source addresses is
no amplifier.

No sockets here: the shells (`dispy_sched.discovery`, `dispy_node.discovery`)
own them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Any, NamedTuple, TypeVar

import msgpack

from .errors import ErrorCode, LocalWireError, RemoteWireError
from .messages import PROTOCOL_VERSION
from .schema import checker_for
from .verifier import MAX_ITERATIONS, Verifier

#: dispy's node port: where schedulers listen for Discover broadcasts
DISCOVERY_PORT = 9701
MAGIC = b"dispyDSC"
#: larger datagrams are refused unread
MAX_DATAGRAM = 1024
#: a Discover is padded to this size; an Announce is never larger
DISCOVER_SIZE = 512
NONCE_SIZE = 16
#: scheduler names are cut to this many characters so an Announce stays small
NAME_LIMIT = 80
_PROOF_PREFIX = b"dispy-shared/discovery\0"


class Discover(NamedTuple):
    """Node → broadcast: which scheduler here knows my node secret?"""

    nonce: bytes  # fresh per search; the proof must cover it
    padding: bytes = b""  # filled by `encode`, see the module's docstring


class Announce(NamedTuple):
    """Scheduler → node: dial me at host:port."""

    name: str  # for logs only
    host: str
    port: int
    salt: bytes  # of the node verifier: the node derives the proof's key from its secret with them
    iterations: int
    proof: bytes  # see `prove`


_KINDS: dict[int, type[Discover | Announce]] = {1: Discover, 2: Announce}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
_CHECKERS = {kind: checker_for(cls) for kind, cls in _KINDS.items()}
_D = TypeVar("_D", Discover, Announce)


def prove(server_key: bytes, nonce: bytes, name: str, host: str, port: int) -> bytes:
    """The HMAC an Announce carries; msgpack makes its input unambiguous."""
    body: bytes = msgpack.packb([PROTOCOL_VERSION, nonce, name, host, port], use_bin_type=True)
    return hmac.new(server_key, _PROOF_PREFIX + body, hashlib.sha256).digest()


def answer(discover: Discover, node_verifier: Verifier, name: str, host: str, port: int) -> Announce:
    """The Announce that tells the sender of `discover` to dial host:port."""
    name = name[:NAME_LIMIT]
    proof = prove(node_verifier.server_key, discover.nonce, name, host, port)
    return Announce(name, host, port, node_verifier.salt, node_verifier.iterations, proof)


def verify(announce: Announce, node_secret: str, nonce: bytes) -> bool:
    """Whether `announce` comes from a scheduler that holds the verifier of `node_secret` and answers `nonce`."""
    if not 0 < announce.iterations <= MAX_ITERATIONS or not 0 < len(announce.salt) <= 64:
        return False
    try:
        key = _server_key(node_secret, announce.salt, announce.iterations)
    except ValueError:  # fewer iterations than SCRAM allows
        return False
    expected = prove(key, nonce, announce.name, announce.host, announce.port)
    return hmac.compare_digest(announce.proof, expected)


@functools.lru_cache(maxsize=4)
def _server_key(node_secret: str, salt: bytes, iterations: int) -> bytes:
    return Verifier.from_secret(node_secret, iterations, salt).server_key


def encode(msg: Discover | Announce) -> bytes:
    """Returns the datagram for `msg`; a Discover is padded to `DISCOVER_SIZE`.

    Raises:
        LocalWireError: `msg` would exceed its size limit.
    """
    kind = _KIND_OF[type(msg)]
    data = _pack(kind, msg)
    short = DISCOVER_SIZE - len(data)
    if isinstance(msg, Discover) and short > 0:
        data = _pack(kind, msg._replace(padding=bytes(short)))
        # the padding's own msgpack length header may have grown by a byte or two
        data = _pack(kind, msg._replace(padding=bytes(short - (len(data) - DISCOVER_SIZE))))
    limit = DISCOVER_SIZE if isinstance(msg, Announce) else MAX_DATAGRAM
    if len(data) > limit:
        raise LocalWireError(f"{type(msg).__name__} of {len(data)} bytes exceeds {limit}")
    return data


def _pack(kind: int, msg: tuple[Any, ...]) -> bytes:
    body: bytes = msgpack.packb([kind, PROTOCOL_VERSION, *msg], use_bin_type=True)
    return MAGIC + body


def decode(data: bytes, expect: type[_D]) -> _D:
    """Parses one datagram, which must be an `expect` (a scheduler takes Discovers, a node Announces).

    Raises:
        RemoteWireError: TOO_LARGE, NOT_DISPY (no magic), BAD_VERSION, or
            BAD_MESSAGE for anything else that is not a well-formed datagram.
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteWireError(ErrorCode.TOO_LARGE, f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if not data.startswith(MAGIC):
        raise RemoteWireError(ErrorCode.NOT_DISPY, "not a dispy-shared discovery datagram")
    try:
        obj = msgpack.unpackb(data[len(MAGIC) :], raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise _bad(f"undecodable datagram ({type(exc).__name__})") from None
    if not isinstance(obj, list) or len(obj) < 2 or type(obj[0]) is not int or type(obj[1]) is not int:
        raise _bad("datagram is not [kind, version, ...]")
    kind, version = obj[0], obj[1]
    if version != PROTOCOL_VERSION:
        raise RemoteWireError(ErrorCode.BAD_VERSION, f"protocol version {version}, we speak {PROTOCOL_VERSION}")
    if kind not in _KINDS:
        raise _bad(f"unknown datagram kind {kind}")
    if _KINDS[kind] is not expect:
        raise _bad(f"expected {expect.__name__}, got {_KINDS[kind].__name__}")
    try:
        msg: _D = _CHECKERS[kind](obj[2:])
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    if isinstance(msg, Discover) and (len(data) < DISCOVER_SIZE or len(msg.nonce) != NONCE_SIZE):
        raise _bad(f"a Discover needs a {NONCE_SIZE}-byte nonce and {DISCOVER_SIZE} bytes in all")
    if isinstance(msg, Announce) and not 0 < msg.port < 65536:
        raise _bad(f"port {msg.port} out of range")
    return msg


def _bad(message: str) -> RemoteWireError:
    return RemoteWireError(ErrorCode.BAD_MESSAGE, message)


class Throttle:
    """Lets one complaint through per `interval` seconds and counts the rest.

    Both shells log bad datagrams through one of these: anyone on the segment
    can send them, and must not be able to flood the log.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._held = 0

    def admit(self, now: float) -> str | None:
        """None: stay quiet; else log now, ending the line with the returned note of what was held back."""
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.interval
        return f" ({held} more since the last report)" if held else ""
