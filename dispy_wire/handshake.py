"""The login, as two small sans-I/O state machines around SCRAM-SHA-256 (RFC 5802, 7677).

    scheduler                                               peer (client or node)
    ─────────  PREAMBLE + Challenge(version, server, mechanism) ────────▶
    ◀───────── PREAMBLE + Hello(version, role, name, client-first, info, mechanism) ─
    ─────────  ServerFirst(server-first: nonce, salt, iterations) ──────▶
    ◀───────── ClientProof(client-final: channel binding, proof) ────────
    ─────────  Welcome(session, info, server-final) | Refused ──────────▶

The proof works both ways: the scheduler checks the peer's proof against the
verifier it stores (dispy_wire/verifier.py: it never holds the secret), and
the peer accepts the Welcome only if its server-final signature shows the
scheduler knows that verifier too, so a fake scheduler is caught. Fresh
nonces from both sides make a recorded exchange useless for a replay, and a
recorded exchange is worth one PBKDF2 run per offline guess.

Channel binding: when the connection is TLS, each side passes its view of
the channel (`tls-server-end-point`: a hash of the scheduler's certificate)
and the mechanism is SCRAM-SHA-256-PLUS; the proof then covers the channel,
so a relay that passes someone else's exchange between two TLS connections
fails, and a side that sees TLS refuses a peer that does not. Without TLS the
mechanism is plain SCRAM-SHA-256.

Login by certificate (SASL EXTERNAL, RFC 4422 appendix A, in spirit): on
a TLS connection whose client certificate the scheduler verified against its
CA (`--tls-ca`), the Hello may name the mechanism EXTERNAL instead:

    ◀───────── PREAMBLE + Hello(version, role, name, "", info, "EXTERNAL") ─
    ─────────  Welcome(session, info, "") | Refused ─────────────────────▶

The certificate is the proof: its CN must be the claimed name and its OU
must say the claimed role (`dispy-user` for clients, `dispy-node` for nodes:
dispy_wire/tls.py `USER_UNIT`, `NODE_UNIT`), else CERTIFICATE; and the
scheduler must allow that name to log in by certificate (`certificate_allowed`),
else the same LOGIN_FAILED as a wrong secret. The scheduler proved itself in
the TLS handshake, which the peer verified before sending anything, so the
Welcome carries no signature. On plaintext EXTERNAL is refused (CERTIFICATE).

An unknown name gets a deterministic fake verifier (`Verifier.fake`): its
exchange costs and reads the same as a wrong secret, and ends in the same
LOGIN_FAILED refusal. Both sides act on decoded messages and return the
message to send; the shell owns sockets, timers, throttling and the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from scramp import ScramClient, ScramException, ScramMechanism
from scramp.utils import ServerError

from .errors import ErrorCode, LocalWireError, NotLeaderError, RemoteWireError
from .version import VERSION
from .messages import PROTOCOL_VERSION, Challenge, ClientProof, Hello, Message, NotLeader, Refused, ServerFirst, Welcome
from .tls import NODE_UNIT, USER_UNIT, CertIdentity
from .verifier import DEFAULT_ITERATIONS, MAX_ITERATIONS, MECHANISM, Verifier

#: (binding type, binding data) of a TLS connection, e.g. ("tls-server-end-point", cert hash); None without TLS
ChannelBinding = tuple[str, bytes]

_BINDING_ERRORS = frozenset(
    {
        ServerError.CHANNEL_BINDINGS_DONT_MATCH,
        ServerError.SERVER_DOES_SUPPORT_CHANNEL_BINDING,
        ServerError.CHANNEL_BINDING_NOT_SUPPORTED,
        ServerError.UNSUPPORTED_CHANNEL_BINDING_TYPE,
    }
)


class Role(StrEnum):
    CLIENT = "client"
    NODE = "node"


class HandshakeState(Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_HELLO = "await-hello"
    AWAIT_SERVER_FIRST = "await-server-first"
    AWAIT_PROOF = "await-proof"
    AWAIT_WELCOME = "await-welcome"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated peer, as the scheduler knows it."""

    role: Role
    name: str
    info: dict[str, Any]


#: the Hello's mechanism for a login by the connection's client certificate
EXTERNAL = "EXTERNAL"


def mechanism_for(channel_binding: ChannelBinding | None) -> str:
    return MECHANISM + "-PLUS" if channel_binding is not None else MECHANISM


def scram_user(role: Role, name: str) -> str:
    """SCRAM's user name: role and name, so the proof binds both (a client's login never passes as a node's)."""
    return f"{role}:{name}"


def _what(role: Role) -> str:
    return "user" if role is Role.CLIENT else "node"


def unit_for(role: Role) -> str:
    """The OU a certificate needs to log in as `role` by itself."""
    return USER_UNIT if role is Role.CLIENT else NODE_UNIT


def _allow_none(role: Role, name: str) -> bool:
    return False


class ServerHandshake:
    """Scheduler side.

    Args:
        verifier_for: the stored verifier for (role, name), or None when the
            name is unknown.
        fake_key: random bytes the scheduler draws once at start; unknown
            names get fake verifiers derived from it.
        server: a name for the scheduler, shown to peers.
        channel_binding: our view of the TLS channel, or None without TLS.
        nonce: the server's SCRAM nonce (printable ASCII); None draws a fresh one.
        fake_iterations: the iteration count fake verifiers claim (the one
            real verifiers are made with, so the count gives nothing away).
        certificate: the identity in the peer's verified client certificate,
            or None (none asked for, none given).
        certificate_allowed: whether (role, name) may log in by certificate.
    """

    def __init__(
        self,
        verifier_for: Callable[[Role, str], Verifier | None],
        fake_key: bytes,
        server: str,
        channel_binding: ChannelBinding | None = None,
        nonce: str | None = None,
        fake_iterations: int = DEFAULT_ITERATIONS,
        certificate: CertIdentity | None = None,
        certificate_allowed: Callable[[Role, str], bool] = _allow_none,
    ) -> None:
        self.state = HandshakeState.AWAIT_HELLO
        self._verifier_for = verifier_for
        self._fake_key = fake_key
        self._server = server
        self._binding = channel_binding
        self._nonce = nonce
        self._fake_iterations = fake_iterations
        self._certificate = certificate
        self._certificate_allowed = certificate_allowed
        self.mechanism = mechanism_for(channel_binding)
        #: the mechanism the peer chose: `mechanism` or EXTERNAL
        self.chosen = ""
        #: who the peer claims to be, once its Hello is read (for throttling and logs)
        self.role: Role | None = None
        self.name = ""
        #: whether `name` has a verifier: for the scheduler's log only, never for the peer
        self.known = False
        self._info: dict[str, Any] = {}
        self._scram: Any = None

    def challenge(self) -> Challenge:
        return Challenge(PROTOCOL_VERSION, self._server, self.mechanism)

    def receive(self, msg: Message) -> ServerFirst | Peer:
        """Returns the ServerFirst to send after a Hello, then the authenticated peer after its proof.

        A Hello naming EXTERNAL returns the authenticated peer at once.

        Raises:
            RemoteWireError: what to send back in a `Refused` before closing.
        """
        if self.state is HandshakeState.AWAIT_HELLO:
            self.state = HandshakeState.FAILED
            first = self._on_hello(msg)
            self.state = HandshakeState.DONE if isinstance(first, Peer) else HandshakeState.AWAIT_PROOF
            return first
        if self.state is HandshakeState.AWAIT_PROOF:
            self.state = HandshakeState.FAILED
            peer = self._on_proof(msg)
            self.state = HandshakeState.DONE
            return peer
        raise LocalWireError(f"handshake is {self.state.name}, not waiting for a peer message")

    def _on_hello(self, msg: Message) -> ServerFirst | Peer:
        if not isinstance(msg, Hello):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Hello, got {type(msg).__name__}")
        if msg.version != PROTOCOL_VERSION:
            raise RemoteWireError(
                ErrorCode.BAD_VERSION,
                f"protocol version {msg.version} not supported: this scheduler (dispy-shared {VERSION}) speaks "
                f"protocol {PROTOCOL_VERSION}; install the scheduler's dispy-shared version where this peer runs",
            )
        try:
            role = Role(msg.role)
        except ValueError:
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"unknown role {msg.role!r}") from None
        if not msg.name:
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"empty {_what(role)} name")
        self.role, self.name, self._info, self.chosen = role, msg.name, msg.info, msg.mechanism
        verifier = self._verifier_for(role, msg.name)
        self.known = verifier is not None
        if msg.mechanism == EXTERNAL:
            return self._external(role, msg.name)
        if msg.mechanism != self.mechanism:
            raise RemoteWireError(
                ErrorCode.BAD_MESSAGE, f"mechanism {msg.mechanism!r} not offered (this connection takes {self.mechanism!r} or {EXTERNAL!r})"
            )
        if verifier is None:
            verifier = Verifier.fake(self._fake_key, f"{role}\0{msg.name}", self._fake_iterations)
        scram_names: list[str] = []

        def auth_info(username: str) -> tuple[bytes, bytes, bytes, int]:
            scram_names.append(username)
            return verifier.auth_info()

        self._scram = ScramMechanism(self.mechanism).make_server(
            auth_info, channel_binding=self._binding, s_nonce=self._nonce
        )
        try:
            self._scram.set_client_first(msg.client_first)
            server_first: str = self._scram.get_server_first()
        except ScramException as exc:
            raise self._error(exc) from None
        if scram_names != [scram_user(role, msg.name)]:
            # the proof covers SCRAM's user name: it must be the role and name we looked up
            raise RemoteWireError(
                ErrorCode.BAD_MESSAGE,
                f"{_what(role)} name {msg.name!r} differs from the SCRAM user name (names must be SASLprep-normal)",
            )
        return ServerFirst(server_first)

    def _external(self, role: Role, name: str) -> Peer:
        """A login by the connection's client certificate: it must name `name` in `role`."""
        who = f"{_what(role)} {name!r}"
        cert = self._certificate
        if self._binding is None:
            raise RemoteWireError(ErrorCode.CERTIFICATE, f"login of {who} by certificate needs TLS; this connection is plaintext")
        if cert is None:
            raise RemoteWireError(
                ErrorCode.CERTIFICATE,
                f"login of {who} by certificate, but no client certificate signed by the scheduler's CA came with the connection",
            )
        if unit_for(role) not in cert.units:
            raise RemoteWireError(
                ErrorCode.CERTIFICATE,
                f"certificate CN={cert.name} (OU={','.join(cert.units) or 'none'}) is not a {_what(role)} certificate: "
                f"logging in as a {_what(role)} needs OU={unit_for(role)}",
            )
        if cert.name != name:
            raise RemoteWireError(ErrorCode.CERTIFICATE, f"certificate names {_what(role)} {cert.name!r}, not {name!r}")
        if not self._certificate_allowed(role, name):
            # one answer for an unknown name and a wrong secret, as for SCRAM
            raise RemoteWireError(ErrorCode.LOGIN_FAILED, f"login failed for {who}: unknown name or wrong secret")
        return Peer(role, name, self._info)

    def _on_proof(self, msg: Message) -> Peer:
        if not isinstance(msg, ClientProof):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected ClientProof, got {type(msg).__name__}")
        try:
            self._scram.set_client_final(msg.client_final)
        except ScramException as exc:
            raise self._error(exc) from None
        assert self.role is not None
        return Peer(self.role, self.name, self._info)

    def _error(self, exc: ScramException) -> RemoteWireError:
        who = f"{_what(self.role or Role.CLIENT)} {self.name!r}"
        error = getattr(exc, "server_error", None)
        if error is ServerError.INVALID_PROOF:
            return RemoteWireError(ErrorCode.LOGIN_FAILED, f"login failed for {who}: unknown name or wrong secret")
        if error in _BINDING_ERRORS:
            return RemoteWireError(
                ErrorCode.CHANNEL_BINDING,
                f"login of {who} not bound to this connection ({exc}): TLS on one side only, or a relay in between",
            )
        return RemoteWireError(ErrorCode.BAD_MESSAGE, f"bad SCRAM message from {who}: {exc}")

    def welcome(self, session: str, info: dict[str, Any]) -> Welcome:
        """The Welcome, with the server signature that proves we know the verifier."""
        if self.state is not HandshakeState.DONE:
            raise LocalWireError(f"handshake is {self.state.name}: no Welcome before the proof is checked")
        if self.chosen == EXTERNAL:
            return Welcome(session, info, "")  # TLS proved us: the peer checked our certificate
        return Welcome(session, info, self._scram.get_server_final())

    @staticmethod
    def refuse(error: RemoteWireError) -> Refused:
        return Refused(str(error.code), error.message)


class PeerHandshake:
    """Client or node side: logs in, then checks that the scheduler proved itself.

    Args:
        role, name: who we are.
        secret: what we prove; None: log in by our TLS client certificate
            (EXTERNAL), whose CN must be `name`.
        info: sent with the Hello (nodes: cpus, heartbeat, ...; clients: host, pid).
        channel_binding: our view of the TLS channel, or None without TLS.
        nonce: our SCRAM nonce (printable ASCII); None draws a fresh one.
    """

    def __init__(
        self,
        role: Role,
        name: str,
        secret: str | None,
        info: dict[str, Any],
        channel_binding: ChannelBinding | None = None,
        nonce: str | None = None,
    ) -> None:
        self.state = HandshakeState.AWAIT_CHALLENGE
        self.role = role
        self.name = name
        self._secret = secret
        self._info = info
        self._binding = channel_binding
        self._nonce = nonce
        self._scram: Any = None
        self.server = ""

    def receive(self, msg: Message) -> Hello | ClientProof | Welcome:
        """Returns the Hello after the Challenge, the ClientProof after ServerFirst, then the Welcome.

        Logging in by certificate, the Welcome follows the Hello.

        Raises:
            RemoteWireError: the scheduler refused us (its code and message),
                sent something out of order, or failed to prove itself
                (SERVER_NOT_VERIFIED).
            LocalWireError: our own name or secret cannot be used in SCRAM, or
                we log in by certificate without TLS.
        """
        state = self.state
        if state not in (HandshakeState.AWAIT_CHALLENGE, HandshakeState.AWAIT_SERVER_FIRST, HandshakeState.AWAIT_WELCOME):
            raise LocalWireError(f"handshake is {state.name}")
        self.state = HandshakeState.FAILED
        if isinstance(msg, Refused):
            raise RemoteWireError(_code(msg.code), msg.message)
        if isinstance(msg, NotLeader) and state is HandshakeState.AWAIT_CHALLENGE:
            raise NotLeaderError(msg.leader)
        reply: Hello | ClientProof | Welcome
        if state is HandshakeState.AWAIT_CHALLENGE:
            reply = self._on_challenge(msg)
            self.state = HandshakeState.AWAIT_WELCOME if self._secret is None else HandshakeState.AWAIT_SERVER_FIRST
        elif state is HandshakeState.AWAIT_SERVER_FIRST:
            reply, self.state = self._on_server_first(msg), HandshakeState.AWAIT_WELCOME
        else:
            reply, self.state = self._on_welcome(msg), HandshakeState.DONE
        return reply

    def _on_challenge(self, msg: Message) -> Hello:
        if not isinstance(msg, Challenge):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Challenge, got {type(msg).__name__}")
        if msg.version != PROTOCOL_VERSION:
            raise RemoteWireError(
                ErrorCode.BAD_VERSION,
                f"scheduler speaks protocol version {msg.version}, this dispy-shared ({VERSION}) speaks protocol "
                f"{PROTOCOL_VERSION}: install the scheduler's dispy-shared version here",
            )
        self.server = msg.server
        ours = mechanism_for(self._binding)
        if msg.mechanism != ours:
            sides = "it sees TLS and we do not" if msg.mechanism.endswith("-PLUS") else "we see TLS and it does not"
            raise RemoteWireError(
                ErrorCode.CHANNEL_BINDING,
                f"scheduler asks for {msg.mechanism!r}, we need {ours!r}: {sides} (a relay in between?)",
            )
        if self._secret is None:
            if self._binding is None:
                raise LocalWireError(f"cannot log in as {self.name!r} by certificate: the connection is not TLS")
            return Hello(PROTOCOL_VERSION, str(self.role), self.name, "", self._info, EXTERNAL)
        try:
            self._scram = ScramClient(
                [ours], scram_user(self.role, self.name), self._secret, channel_binding=self._binding, c_nonce=self._nonce
            )
            client_first: str = self._scram.get_client_first()
        except ScramException as exc:
            raise LocalWireError(f"cannot log in as {self.name!r}: {exc}") from None
        return Hello(PROTOCOL_VERSION, str(self.role), self.name, client_first, self._info, ours)

    def _on_server_first(self, msg: Message) -> ClientProof:
        if not isinstance(msg, ServerFirst):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected ServerFirst, got {type(msg).__name__}")
        iterations = _iterations(msg.server_first)
        if iterations is not None and iterations > MAX_ITERATIONS:
            raise RemoteWireError(
                ErrorCode.BAD_MESSAGE, f"scheduler asks for {iterations} PBKDF2 iterations; we compute at most {MAX_ITERATIONS}"
            )
        try:
            self._scram.set_server_first(msg.server_first)
            return ClientProof(self._scram.get_client_final())
        except ScramException as exc:
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"bad SCRAM message from the scheduler: {exc}") from None

    def _on_welcome(self, msg: Message) -> Welcome:
        if not isinstance(msg, Welcome):
            raise RemoteWireError(ErrorCode.BAD_MESSAGE, f"expected Welcome, got {type(msg).__name__}")
        if self._secret is None:
            return msg  # the scheduler proved itself in the TLS handshake, checked before our first byte
        try:
            self._scram.set_server_final(msg.server_final)
        except ScramException:
            raise RemoteWireError(
                ErrorCode.SERVER_NOT_VERIFIED,
                f"scheduler {self.server!r} did not prove it knows the verifier of {self.name!r}: "
                "not the real scheduler",
            ) from None
        return msg


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.BAD_MESSAGE


def _iterations(server_first: str) -> int | None:
    """The iteration count a SCRAM server-first message asks for (`i=`), if it says one."""
    for attribute in server_first.split(","):
        if attribute.startswith("i=") and attribute[2:].isdigit():
            return int(attribute[2:])
    return None
