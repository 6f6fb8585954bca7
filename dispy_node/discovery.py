"""`dispynode --discover`: finds a scheduler on this network segment by UDP broadcast.

The node broadcasts a `Discover` with a fresh nonce to the limited broadcast
address and to each interface's own broadcast address (a host without a
default route cannot send to 255.255.255.255; a multi-homed one sends that
only out of one interface), again with backoff, until an `Announce` arrives
whose proof shows that its sender knows our node secret. Announces without a
valid proof (another cluster's scheduler, a wrong --node-secret, a stranger)
are logged, rate-limited, and ignored. Then the node asks the announced
scheduler who leads, as it asks a `--scheduler` it is given among standbys
(docs/standby.md), and dials the leader it names (`leader_of`).

A node that knows no other scheduler asks by broadcast when the one it serves
falls silent (`run_discovered`'s probe, called by the session as it would ask
the other schedulers): an Announce from another scheduler means that one leads
now, and the node follows it instead of waiting out the silence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import psutil

from dispy_wire import discovery
from dispy_wire.dialing import who_leads
from dispy_wire.errors import RemoteWireError
from dispy_wire.schedulers import FIRST_DEADLINE, format_address, parse_address
from dispy_wire.tls import ClientTLS, plaintext_refusal

from .conn import Backoff, NodeConfig, NodeControl, run_node

logger = logging.getLogger(__name__)

LIMITED_BROADCAST = "255.255.255.255"


class _Listener(asyncio.DatagramProtocol):
    """Resolves `found` with the first Announce that carries a valid proof for `nonce`."""

    def __init__(self, node_secret: str, nonce: bytes, found: asyncio.Future[discovery.Announce]) -> None:
        self._node_secret = node_secret
        self._nonce = nonce
        self._found = found
        self._throttle = discovery.Throttle()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            msg = discovery.decode(data, discovery.Announce)
        except RemoteWireError as exc:
            self._complain(addr, exc.message)
            return
        if not discovery.verify(msg, self._node_secret, self._nonce):
            self._complain(addr, f"scheduler {msg.name!r} does not prove our node secret")
        elif not self._found.done():
            self._found.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        logger.debug("discovery socket: %s", exc)  # e.g. no route for one broadcast address

    def _complain(self, addr: tuple[Any, ...], why: str) -> None:
        more = self._throttle.admit(asyncio.get_running_loop().time())
        if more is not None:
            logger.warning("discovery: ignoring an answer from %s: %s%s", addr[0], why, more)


def broadcast_addresses() -> list[str]:
    """The limited broadcast address and each up interface's IPv4 broadcast address."""
    stats = psutil.net_if_stats()
    targets = {LIMITED_BROADCAST}
    for nic, addrs in psutil.net_if_addrs().items():
        if nic in stats and stats[nic].isup:
            targets.update(a.broadcast for a in addrs if a.family == socket.AF_INET and a.broadcast)
    return sorted(targets)


async def find_scheduler(port: int, node_secret: str) -> discovery.Announce:
    """Broadcasts Discover on UDP `port` until a scheduler proves it knows `node_secret`.

    Returns:
        The verified Announce: dial `host`:`port` from it.
    """
    logger.info("looking for a scheduler by UDP broadcast to port %d", port)
    announce = await _broadcast(port, node_secret, _backing_off())
    assert announce is not None  # the waits never end
    logger.info("found scheduler %r at %s:%d", announce.name, announce.host, announce.port)
    return announce


def _backing_off() -> Iterator[float]:
    backoff = Backoff(first=0.5, maximum=8.0)
    while True:
        yield backoff.next()


async def _broadcast(port: int, node_secret: str, waits: Iterable[float]) -> discovery.Announce | None:
    """Broadcasts a Discover, then waits each of `waits` in turn for a proven Announce, broadcasting again
    after each; None once they are over."""
    loop = asyncio.get_running_loop()
    nonce = os.urandom(discovery.NONCE_SIZE)
    datagram = discovery.encode(discovery.Discover(nonce))
    found: asyncio.Future[discovery.Announce] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Listener(node_secret, nonce, found), local_addr=("0.0.0.0", 0), allow_broadcast=True
    )
    try:
        for wait in waits:
            targets = broadcast_addresses()
            logger.debug("discovery: Discover to %s", ", ".join(targets))
            for target in targets:
                transport.sendto(datagram, (target, port))
            try:
                return await asyncio.wait_for(asyncio.shield(found), wait)
            except TimeoutError:
                pass
        return None
    finally:
        transport.close()


async def leader_of(host: str, port: int, tls: ClientTLS | None, insecure_plaintext: bool) -> tuple[str, int]:
    """Where to dial for the scheduler a Discover found at `host`:`port`: the leader it names now.

    Only a leading scheduler answers a Discover, but one that answered may
    have stepped down since (paused past its lease, docs/standby.md) and
    name its successor: asked as a peer asks the schedulers it is given
    (`who_leads`, TLS checked as the login's), it says who leads. One that
    does not answer, or that the node may not dial (plaintext off
    loopback), is dialed as announced: the dial says why.
    """
    if plaintext_refusal(host, tls is not None, insecure_plaintext) is not None:
        return host, port
    leader = await who_leads(host, host, port, tls, FIRST_DEADLINE)
    try:
        named = parse_address(leader, port) if leader else (host, port)
    except ValueError:
        return host, port
    if named != (host, port):
        logger.info("scheduler %s stands by; %s leads", format_address(host, port), format_address(*named))
    return named


async def run_discovered(config: NodeConfig, control: NodeControl, port: int) -> int:
    """Finds a scheduler by broadcast, then serves it as `run_node` does (same return values)."""
    async def locate() -> tuple[str, int]:
        announce = await find_scheduler(port, config.node_secret)
        return await leader_of(announce.host, announce.port, config.tls, config.insecure_plaintext)

    async def probe(connected: tuple[str, int], ip: str) -> str | None:
        # the one we serve fell silent: only a leader answers a Discover, so an answer from another means
        # it took over (ours was stopped or is gone), and we follow it without waiting out the silence
        announce = await _broadcast(port, config.node_secret, [FIRST_DEADLINE])
        if announce is None:
            return None
        leader = await leader_of(announce.host, announce.port, config.tls, config.insecure_plaintext)
        return None if leader in (connected, (ip, connected[1])) else format_address(*leader)

    host, port_ = await locate()
    return await run_node(dataclasses.replace(config, host=host, port=port_), control, locate, probe)
