"""An in-process connection: two asyncio protocols on one loop joined without a socket.

A `JobCluster`'s client and its embedded scheduler run on the same loop
thread. Over loopback TCP each loop turn that carried news between them cost
a `send` and a `recv` system call and another wake-up of the loop (the
client's link was about a third of the loop thread's writes and reads, one
of each per job or so); here bytes go from one protocol's buffer to the
other's `data_received` on the next loop callback. The frames, the handshake
and the login are the same as on a socket, so both sides run their usual
code, backpressure included: the bytes one side wrote that the other has not
taken count as its write buffer (`pause_writing` above the high mark,
`resume_writing` below the low one), and a side that pauses reading holds
what arrives until it resumes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

#: what `get_extra_info("peername")` says: the scheduler counts connections waiting to log in by address
PEERNAME = ("127.0.0.1", 0)


class PipeEnd(asyncio.Transport):
    """One end of a pipe: the transport its protocol writes to; made by `connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.peer: PipeEnd | None = None
        self._inbox: list[bytes] = []  # written by the peer, not yet handed to our protocol
        self._inbox_size = 0
        self._delivering = False  # a `_deliver` is scheduled
        self._reading = True
        self._closing = False
        self._lost = False
        self._end_when_drained = False  # the peer closed: end both once its bytes reached our protocol
        self._high, self._low = 64 * 1024, 16 * 1024
        self._write_paused = False  # we told our protocol to pause writing

    # ----------------------------------------------------- asyncio.Transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self.peer
        if self._closing or peer is None or peer._lost or not data:
            return
        peer._inbox.append(bytes(data))
        peer._inbox_size += len(data)
        peer._schedule()
        if not self._write_paused and peer._inbox_size > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.peer._inbox_size if self.peer is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule()

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Ends both sides once what we wrote is delivered (a socket's orderly close)."""
        if self._closing:
            return
        self._closing = True
        peer = self.peer
        if peer is not None and peer._inbox:
            peer._end_when_drained = True
        else:
            self._loop.call_soon(self._end_both)

    def abort(self) -> None:
        """Ends both sides now, dropping what is not delivered."""
        self._closing = True
        self._loop.call_soon(self._end_both)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": PEERNAME, "sockname": PEERNAME}.get(name, default)  # no socket, no ssl_object

    def can_write_eof(self) -> bool:
        return False

    # --------------------------------------------------------------- inside

    def _schedule(self) -> None:
        if not self._delivering and self._reading and self._inbox and not self._lost:
            self._delivering = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivering = False
        if self._lost or not self._reading or not self._inbox:
            return
        data = self._inbox[0] if len(self._inbox) == 1 else b"".join(self._inbox)
        self._inbox.clear()
        self._inbox_size = 0
        writer = self.peer
        if writer is not None and writer._write_paused and not writer._lost:
            writer._write_paused = False
            writer._protocol.resume_writing()
        try:
            self._protocol.data_received(data)
        except Exception as exc:  # as a socket transport does: the connection fails, both sides see why, and
            # the client's session recovers as after any lost link (the unacknowledged results come again)
            log.exception("in-process connection: its reader failed, closing it")
            self._end_both(exc)
            return
        if self._end_when_drained and not self._inbox:
            self._end_both()

    def _end_both(self, exc: Exception | None = None) -> None:
        for end in (self, self.peer):
            if end is not None and not end._lost:
                end._lost = end._closing = True
                end._inbox.clear()
                end._inbox_size = 0
                # each side its own callback, as two sockets' would be: one failing must not skip the other
                self._loop.call_soon(end._protocol.connection_lost, exc)


def connect(loop: asyncio.AbstractEventLoop, client: asyncio.Protocol, server: asyncio.Protocol) -> None:
    """Joins `client` and `server` (on `loop`, from its thread): both see `connection_made`, the server first,
    as a listening socket would accept before the client's first byte."""
    a, b = PipeEnd(loop, client), PipeEnd(loop, server)
    a.peer, b.peer = b, a
    server.connection_made(b)
    client.connection_made(a)
