"""What a standby scheduler says to every peer that dials it: "not leader; the leader is host:port".

(`LeaderInfo`, who leads as one scheduler knows it, is here too: the
standby's and the leader's HTTP views show it, without psycopg.)

It sends the preamble and a `NotLeader` frame in the place of a Challenge,
reads the peer's preamble (closing with unread bytes would reset the
connection, and the peer might lose the frame), and closes. Peers follow
the address (dispy_wire/schedulers.py). Nothing is read past the preamble,
so a standby spends nothing on a peer's login.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from dispy_wire import messages as M
from dispy_wire.framing import PREAMBLE

log = logging.getLogger(__name__)

#: seconds a peer has to send its preamble before the standby closes anyway
LINGER = 5.0


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who leads the schedulers sharing one state, as last read from the database ('' address: none leads)."""

    address: str  # host:port peers dial
    epoch: int
    since: float  # Unix time it took over (the database's clock)
    http: str = ""  # its dashboard's URL, if it serves one

    def as_json(self) -> dict[str, Any]:
        return {"address": self.address, "epoch": self.epoch, "since": self.since, "http": self.http}


class StandbyAnswer(asyncio.Protocol):
    """One connection to a standby scheduler.

    Args:
        leader: the leader's address as last read from the database ('' while none leads).
    """

    def __init__(self, leader: Callable[[], str]) -> None:
        self._leader = leader
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        leader = self._leader()
        log.debug("standing by: sent %s to the leader %s", transport.get_extra_info("peername"), leader or "(none yet)")
        self._transport.write(PREAMBLE + M.encode(M.NotLeader(leader)))
        self._timer = asyncio.get_running_loop().call_later(LINGER, self._transport.close)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
