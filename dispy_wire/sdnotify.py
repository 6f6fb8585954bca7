"""systemd's service notifications (sd_notify(3)) for `Type=notify` units with `WatchdogSec=`.

Both daemons tell systemd when they are ready (after the listening socket
or the job runner is up, so `systemctl start` returns only then), what they
are doing (`systemctl status` shows it), when they stop, and, while their
event loop is alive, ping the watchdog: a scheduler or node whose loop hangs
is restarted by systemd instead of silently holding its users' work.

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the socket systemd named in the environment."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        #: seconds between watchdog pings: half the unit's WatchdogSec, as sd_watchdog_enabled(3) advises
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._warned = False

    @classmethod
    def from_env(cls) -> Notifier:
        """As sd_notify(3) and sd_watchdog_enabled(3) read the environment (the watchdog only if meant for us).

        Called once per process: it takes the variables out of the environment.
        """
        # taken out of the environment, as sd_notify(3)'s unset_environment does: not for our children
        usec, pid = os.environ.pop("WATCHDOG_USEC", ""), os.environ.pop("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        return cls(os.environ.pop("NOTIFY_SOCKET", "") or None, int(usec) if usec.isdigit() and mine else None)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    async def keep_alive(self) -> None:
        """Pings the watchdog while the event loop runs (a hung loop misses pings, and systemd restarts us)."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def send(self, text: str) -> None:
        if not self.address:
            return
        try:
            # non-blocking: a listener that does not read (its queue full) costs a notification, never the loop
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(text.encode(), self.address)
        except BlockingIOError:  # systemd busy: the next notification says the same, or more
            pass
        except OSError as exc:  # systemd gone or a wrong address: the service itself goes on
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
