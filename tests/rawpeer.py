"""Speaking the wire protocol over a plain socket, as a hand-written peer would (a probe, an attacker).

The tests and benchmarks that need frames the real client would never send
start from these: read one message, or log in as a client would.
"""

from __future__ import annotations

import socket

from dispy_wire import messages as M
from dispy_wire.framing import NEED_DATA, PREAMBLE, FrameDecoder
from dispy_wire.handshake import HandshakeState, PeerHandshake, Role


def read_message(sock: socket.socket, decoder: FrameDecoder) -> M.Message | None:
    """The next message, or None once the scheduler has closed the connection."""
    while True:
        frame = decoder.next_frame()
        if frame is not NEED_DATA:
            assert isinstance(frame, bytes)
            return M.decode(frame)
        data = sock.recv(65536)
        if not data:
            return None
        decoder.feed(data)


def login(sock: socket.socket, decoder: FrameDecoder, user: str, secret: str) -> M.Message | None:
    """A client's login: returns the Welcome, the Refused that ended it, or None if the connection closed."""
    hs = PeerHandshake(Role.CLIENT, user, secret, {})
    sock.sendall(PREAMBLE)
    while True:
        msg = read_message(sock, decoder)
        if msg is None or isinstance(msg, M.Refused):
            return msg
        reply = hs.receive(msg)
        if hs.state is HandshakeState.DONE:
            return reply
        sock.sendall(M.encode(reply))
