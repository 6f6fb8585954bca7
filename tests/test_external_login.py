"""Login by certificate (EXTERNAL) in the pure handshake: bytes in, messages out, no sockets."""

from __future__ import annotations

import pytest

from dispy_wire import messages as M
from dispy_wire.errors import ErrorCode, LocalWireError, RemoteWireError
from dispy_wire.framing import PREAMBLE, FrameDecoder
from dispy_wire.handshake import EXTERNAL, ChannelBinding, HandshakeState, Peer, PeerHandshake, Role, ServerHandshake
from dispy_wire.messages import PROTOCOL_VERSION, Message, encode, next_message
from dispy_wire.tls import NODE_UNIT, USER_UNIT, CertIdentity

BINDING = ("tls-server-end-point", b"A" * 32)
ALICE = CertIdentity("alice", (USER_UNIT,))
NODE_1 = CertIdentity("node-1", (NODE_UNIT,))
#: who may log in by certificate in these tests: nodes, and the users listed here
CERT_USERS = {"alice", "bob"}


def allowed(role: Role, name: str) -> bool:
    return role is Role.NODE or name in CERT_USERS


def carry(msg: Message) -> Message:
    """Encodes and decodes one message, as the wire would."""
    decoder = FrameDecoder()
    decoder.feed(PREAMBLE + encode(msg))
    got = next_message(decoder)
    assert isinstance(got, Message)
    return got


def login(
    role: Role,
    name: str,
    certificate: CertIdentity | None,
    server_binding: ChannelBinding | None = BINDING,
    peer_binding: ChannelBinding | None = BINDING,
) -> tuple[Peer, M.Welcome, ServerHandshake, PeerHandshake]:
    """Runs an EXTERNAL login; a refusal reaches the peer as a Refused frame and raises there."""
    server = ServerHandshake(
        lambda r, n: None, b"k" * 32, "sched-1", server_binding, certificate=certificate, certificate_allowed=allowed
    )
    peer = PeerHandshake(role, name, None, {"host": "h1"}, peer_binding)
    hello = peer.receive(carry(server.challenge()))
    assert isinstance(hello, M.Hello) and hello.mechanism == EXTERNAL and hello.client_first == ""
    try:
        who = server.receive(carry(hello))
    except RemoteWireError as exc:
        assert server.state is HandshakeState.FAILED
        peer.receive(carry(server.refuse(exc)))
        raise AssertionError("the peer did not raise on Refused") from exc
    assert isinstance(who, Peer)
    welcome = peer.receive(carry(server.welcome("session-1", {"heartbeat": 5.0})))
    assert isinstance(welcome, M.Welcome)
    return who, welcome, server, peer


def refused(role: Role, name: str, certificate: CertIdentity | None, **kw: ChannelBinding | None) -> RemoteWireError:
    with pytest.raises(RemoteWireError) as info:
        login(role, name, certificate, **kw)
    return info.value


def test_a_user_logs_in_by_a_certificate_naming_it() -> None:
    who, welcome, server, peer = login(Role.CLIENT, "alice", ALICE)
    assert who == Peer(Role.CLIENT, "alice", {"host": "h1"})
    assert welcome.session == "session-1" and welcome.server_final == ""
    assert server.state is HandshakeState.DONE and peer.state is HandshakeState.DONE


def test_a_node_logs_in_by_a_node_certificate() -> None:
    who, _, _, _ = login(Role.NODE, "node-1", NODE_1)
    assert who.role is Role.NODE and who.name == "node-1"


def test_a_certificate_for_bob_cannot_log_in_as_alice() -> None:
    err = refused(Role.CLIENT, "alice", CertIdentity("bob", (USER_UNIT,)))
    assert err.code is ErrorCode.CERTIFICATE
    assert err.message == "certificate names user 'bob', not 'alice'"


def test_a_user_certificate_cannot_log_in_as_a_node_nor_a_node_certificate_as_a_user() -> None:
    err = refused(Role.NODE, "alice", ALICE)
    assert err.code is ErrorCode.CERTIFICATE and f"needs OU={NODE_UNIT}" in err.message
    err = refused(Role.CLIENT, "node-1", NODE_1)
    assert err.code is ErrorCode.CERTIFICATE and f"needs OU={USER_UNIT}" in err.message


def test_a_certificate_without_a_dispy_unit_logs_in_as_nobody() -> None:
    # e.g. one made by `tls init` before certificates named roles, or by another CA for TLS only
    err = refused(Role.CLIENT, "alice", CertIdentity("alice", ()))
    assert err.code is ErrorCode.CERTIFICATE and "OU=none" in err.message


def test_no_certificate_is_refused_with_a_reason() -> None:
    err = refused(Role.CLIENT, "alice", None)
    assert err.code is ErrorCode.CERTIFICATE and "no client certificate" in err.message


def test_a_user_not_allowed_certificate_logins_gets_the_answer_of_a_wrong_secret() -> None:
    err = refused(Role.CLIENT, "carol", CertIdentity("carol", (USER_UNIT,)))
    assert (err.code, err.message) == (ErrorCode.LOGIN_FAILED, "login failed for user 'carol': unknown name or wrong secret")


def test_external_on_plaintext_is_refused_by_the_scheduler() -> None:
    # a peer that sees TLS the scheduler does not (a relay) stops at the Challenge; one that lies gets refused
    server = ServerHandshake(lambda r, n: None, b"k" * 32, "sched-1", None, certificate=ALICE, certificate_allowed=allowed)
    server.challenge()
    with pytest.raises(RemoteWireError) as info:
        server.receive(carry(M.Hello(PROTOCOL_VERSION, "client", "alice", "", {}, EXTERNAL)))
    assert info.value.code is ErrorCode.CERTIFICATE and "plaintext" in info.value.message


def test_the_peer_will_not_log_in_by_certificate_without_tls() -> None:
    peer = PeerHandshake(Role.CLIENT, "alice", None, {}, None)
    with pytest.raises(LocalWireError, match="not TLS"):
        peer.receive(M.Challenge(PROTOCOL_VERSION, "s", "SCRAM-SHA-256"))


def test_a_mechanism_not_offered_is_refused() -> None:
    server = ServerHandshake(lambda r, n: None, b"k" * 32, "sched-1", BINDING)
    with pytest.raises(RemoteWireError) as info:
        server.receive(carry(M.Hello(PROTOCOL_VERSION, "client", "alice", "n,,n=client:alice,r=a", {}, "PLAIN")))
    assert info.value.code is ErrorCode.BAD_MESSAGE and "'PLAIN' not offered" in info.value.message


def test_the_scheduler_allows_no_certificate_logins_unless_told() -> None:
    # ServerHandshake's default: a scheduler that was given no rule refuses every EXTERNAL login
    server = ServerHandshake(lambda r, n: None, b"k" * 32, "sched-1", BINDING, certificate=NODE_1)
    with pytest.raises(RemoteWireError) as info:
        server.receive(carry(M.Hello(PROTOCOL_VERSION, "node", "node-1", "", {}, EXTERNAL)))
    assert info.value.code is ErrorCode.LOGIN_FAILED
