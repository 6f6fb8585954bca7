"""The scheduler's answer to nodes' UDP Discover broadcasts (`dispynode --discover`).

The scheduler still dials nobody: it only answers a Discover, by unicast to
its sender, with an Announce of where to dial and a proof that it holds the
node verifier (see `dispy_wire.discovery`). It never broadcasts.

The socket is bound to the wildcard address even when the scheduler listens
on one address, because Linux delivers broadcasts only to sockets bound to
the wildcard (or to the broadcast address itself). SO_REUSEADDR lets several
schedulers on one host share the port: each gets every broadcast, and only
the one holding the verifier of a node's secret can answer it validly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

from dispy_wire import discovery
from dispy_wire.errors import RemoteWireError
from dispy_wire.handshake import Role
from dispy_wire.verifier import Verifier

from .config import SchedConfig
from .logsafe import peer_text

log = logging.getLogger(__name__)

_WILDCARDS = ("0.0.0.0", "::", "")


class Responder(asyncio.DatagramProtocol):
    """Answers each well-formed Discover; counts and rate-limits complaints about the rest.

    Args:
        host: the address to announce, or None to announce, per node, the
            local address the kernel routes to that node from (for a
            scheduler listening on every interface).
    """

    def __init__(self, name: str, node_verifier: Verifier, host: str | None, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._node_verifier = node_verifier
        self._throttle = discovery.Throttle()
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's does not subclass asyncio's

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            msg = discovery.decode(data, discovery.Discover)
        except RemoteWireError as exc:
            self._complain(addr, exc.message)
            return
        try:
            host = self.host or local_address_towards(addr[0])
        except OSError as exc:  # no route back to the sender
            self._complain(addr, f"cannot answer: {exc}")
            return
        reply = discovery.answer(msg, self._node_verifier, self.name, host, self.port)
        log.debug("discovery: telling %s to dial %s:%d", addr[0], host, self.port)
        assert self._transport is not None
        self._transport.sendto(discovery.encode(reply), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("discovery socket: %s", exc)

    def _complain(self, addr: tuple[Any, ...], why: str) -> None:
        more = self._throttle.admit(asyncio.get_running_loop().time())
        if more is not None:
            log.warning("discovery: ignoring a datagram from %s:%s: %s%s", addr[0], addr[1], peer_text(why), more)


def local_address_towards(ip: str) -> str:
    """Our address on the route to `ip`: connecting a UDP socket only looks the route up, it sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, discovery.DISCOVERY_PORT))
        return str(probe.getsockname()[0])


async def start_responder(cfg: SchedConfig, host: str, port: int) -> asyncio.DatagramTransport | None:
    """Starts answering Discovers on UDP `cfg.discovery_port`, if set, for the scheduler at host:port.

    Returns:
        The transport to close at shutdown, or None when discovery is off or
        its port cannot be bound: the scheduler serves on without it.
    """
    if not cfg.discovery_port:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", cfg.discovery_port))
    except OSError as exc:
        sock.close()
        log.warning("discovery off: cannot bind UDP port %d: %s", cfg.discovery_port, exc.strerror or exc)
        return None
    announced = None if host in _WILDCARDS else host
    node_verifier = cfg.verifier_for(Role.NODE, "")
    assert node_verifier is not None  # nodes always have one (from node_verifier or node_secret)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Responder(cfg.name, node_verifier, announced, port), sock=sock
    )
    log.info("answering node discovery on UDP port %d", cfg.discovery_port)
    return transport
