"""Dialing schedulers that share one state: every address a name stands for, and who leads now.

A peer given `sched.lan:9702`, where the name has several A/AAAA records,
dials each address in turn (the caller, with schedulers.deadline for each):
asyncio's own connect would always take the first address that accepts TCP,
which may be a stopped scheduler, and never reach the others.

A peer connected to a leader that falls silent asks the others who leads
(`another_leads`), without logging in: a standby's first frame names the
leader, a leader's is its challenge. (The one module of dispy_wire that
dials: both the client and the node ask the same way.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl

from . import messages as M
from .errors import WireError
from .framing import NEED_DATA, PREAMBLE, FrameDecoder
from .schedulers import format_address, parse_address
from .tls import ClientTLS, UntrustedScheduler

logger = logging.getLogger(__name__)


def is_address(host: str) -> bool:
    """Whether `host` is an IP address literal (no brackets), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def addresses_of(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, each once, in the resolver's order.

    An address literal is itself; a name that does not resolve is returned
    as it is, so that dialing it reports why.
    """
    if is_address(host.strip("[]")):
        return [host]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return [host]
    found: list[str] = []
    for *_, sockaddr in infos:
        if str(sockaddr[0]) not in found:
            found.append(str(sockaddr[0]))
    return found or [host]


async def who_leads(
    host: str, address: str, port: int, tls: ClientTLS | None, timeout: float, context: ssl.SSLContext | None = None
) -> str | None:
    """Asks the scheduler at `address`:`port` (named `host`) who leads, without logging in.

    A standby's first frame is `NotLeader` naming the leader ('' while none
    does); the leader's is its login challenge: it names itself. None if it
    does not answer within `timeout` (stopped, gone), says something else, or
    does not prove itself as the login would demand (CA and pinned
    fingerprint: `ClientTLS.check`): an untrusted scheduler must not steer us.

    Args:
        context: `tls.context()`, made once by a caller that asks several
            schedulers (it reads the CA and key files); made here if None.
    """
    if tls is not None and context is None:
        context = tls.context()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host if context else None
            )  # fmt: skip
            if tls is not None:
                tls.check(writer.get_extra_info("ssl_object"))  # the pin too, before our first byte
            writer.write(PREAMBLE)
            decoder = FrameDecoder(expect_preamble=True)
            while True:
                data = await reader.read(4096)
                if not data:
                    return None
                decoder.feed(data)
                msg = M.next_message(decoder)
                if isinstance(msg, M.NotLeader):
                    return msg.leader
                if isinstance(msg, M.Challenge):
                    return format_address(address, port)  # the address, not the name: the name may be ours too
                if msg is not NEED_DATA:
                    return None
    except UntrustedScheduler as exc:
        logger.warning("not asking scheduler %s who leads: it is not trusted: %s", format_address(address, port), exc)
        return None
    except (OSError, TimeoutError, ssl.SSLError, WireError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


async def another_leads(
    connected: tuple[str, int], ip: str, schedulers: list[tuple[str, int]], tls: ClientTLS | None, timeout: float
) -> str | None:
    """Whether a scheduler other than the one we are `connected` to (at `ip`) leads now; returns its address.

    Asked when the one we are connected to has been silent a while: if it
    was stopped (SIGSTOP, a hung host) a standby has taken over after its
    lease, and a peer that asks the others finds out in seconds instead of
    waiting out the silence. None if every one that answers names ours.
    """
    ours = {connected, (ip, connected[1])}
    context: ssl.SSLContext | None = None  # made at the first probe, then shared by all (files read once)
    for host, port in schedulers:
        for address in await addresses_of(host, port):
            if (address, port) in ours:
                continue
            if tls is not None and context is None:
                context = tls.context()
            leader = await who_leads(host, address, port, tls, timeout, context)
            if not leader:
                continue
            try:
                named = parse_address(leader, port)
            except ValueError:
                continue
            if named in ours or (named[1] == connected[1] and ip in await addresses_of(*named)):
                continue  # it names ours (perhaps by another name): ours is only slow, or nobody took over yet
            return leader
    return None


def leader_host(leader: str) -> str:
    """The host part of a leader's address as `another_leads` returns it ('' if malformed)."""
    try:
        return parse_address(leader, 0 if ":" in leader else 1)[0]
    except ValueError:
        return ""
