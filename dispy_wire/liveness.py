"""Liveness of a logged-in link: each side hears from the other at least every interval.

Theory of operation. A peer that is stopped, partitioned away or gone
without a FIN sends nothing, and TCP alone tells the other side only after
minutes (or never, if that side has nothing to send). So each side of a
client or node link promises to send something at least every `send_every`
seconds: any message counts, and an idle side sends a `Ping`. Each side
announces its interval at login (the peer's Hello info, the scheduler's
Welcome info, key `heartbeat`), and the other side gives up on it after
`MISSES` of those intervals without a byte: it closes the connection, and
what follows is the link's ordinary path for a lost connection (a client
reconnects, a node redials and keeps its jobs, the scheduler detaches a
client's clusters).

`Liveness` is the pure part: the shell's hot path only sets the `heard` and
`sent` flags (no clock, no timer per message); one periodic `check(now)` per
link turns them into times and says what to do. Sending lags by at most one
check period, so the shell checks at least every half interval.

TCP keepalive (`set_keepalive`) is the backstop for whatever this misses.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import Any

#: intervals of silence after which a peer is given up
MISSES = 4
#: intervals of silence after which a peer that knows several schedulers asks the others whether one of
#: them leads now (dispy_wire/dialing.py's `another_leads`): a stopped leader is left in seconds, not MISSES
DOUBT = 1.5
#: an announced interval outside these bounds is replaced by the default
MIN_INTERVAL, MAX_INTERVAL = 0.05, 3600.0
#: seconds between an idle side's Pings unless configured
DEFAULT_INTERVAL = 2.0
#: TCP keepalive: first probe after this many idle seconds, then every KEEPINTVL, given up after KEEPCNT
KEEPIDLE, KEEPINTVL, KEEPCNT = 30, 10, 3


class Verdict(enum.Enum):
    OK = "ok"
    #: nothing sent for an interval: send a Ping
    PING = "ping"
    #: nothing heard for MISSES of the peer's intervals: close the connection
    SILENT = "silent"


def announced_interval(info: dict[str, Any], default: float = DEFAULT_INTERVAL) -> float:
    """The `heartbeat` a peer announced in its Hello or Welcome info, or `default` if missing or out of bounds."""
    value = info.get("heartbeat")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        return default
    return float(value)


@dataclass(slots=True)
class Liveness:
    """One link's silence in both directions.

    Args:
        send_every: our interval (announced to the peer): at most this long without sending.
        expect_every: the peer's announced interval.
        now: a monotonic time at login.
    """

    send_every: float
    expect_every: float
    last_heard: float
    last_sent: float
    #: set by the shell whenever bytes arrive / a message is queued; cleared by `check`
    heard: bool = False
    sent: bool = False
    last_check: float = 0.0

    @classmethod
    def start(cls, send_every: float, expect_every: float, now: float) -> Liveness:
        return cls(send_every, expect_every, now, now, last_check=now)

    @property
    def deadline(self) -> float:
        """Seconds of silence after which the peer is given up."""
        return self.expect_every * MISSES

    @property
    def period(self) -> float:
        """How often the shell should call `check`."""
        return min(self.send_every, self.expect_every) / 2

    def silence(self, now: float) -> float:
        """Seconds since the peer was last heard (as of the last check)."""
        return now - self.last_heard

    def doubtful(self, now: float) -> bool:
        """The peer missed a sign of life (as of the last check): it may be stopped, or only slow."""
        return now - self.last_heard > self.expect_every * DOUBT

    def check(self, now: float) -> Verdict:
        """What the link needs now; a PING verdict counts as sent."""
        if now - self.last_check > self.deadline / 2:
            # we ourselves did not run for that long (stopped, starved): the silence is ours, not the peer's,
            # and what it sent meanwhile is still unread; it gets a full deadline from now
            self.last_heard = now
        self.last_check = now
        if self.heard:
            self.heard, self.last_heard = False, now
        if self.sent:
            self.sent, self.last_sent = False, now
        if now - self.last_heard > self.deadline:
            return Verdict.SILENT
        if now - self.last_sent >= self.send_every - self.period / 2:
            self.last_sent = now
            return Verdict.PING
        return Verdict.OK


def set_keepalive(sock: Any) -> None:
    """Turns on TCP keepalive with short timers where the platform has them (a backstop for `Liveness`).

    `sock` is the transport's socket (or None, e.g. a test double): anything that is not a TCP socket is left alone.
    """
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # a socket already closing: the link's own end is near anyway
