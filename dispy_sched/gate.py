"""Who may try to log in: caps on connections that have not, and a brake on failed logins.

`PreLoginGate` counts connections that have not logged in yet, in all and
per address. Past the per-address cap a new connection is refused (that
address is the one flooding). Past the total cap the *oldest* waiting
connection is evicted instead: the flood is spread over many addresses, and a
legitimate peer logs in within milliseconds, so letting the newest in and the
longest-idle go keeps the door open to it while descriptors stay bounded.

`LoginThrottle` is a token bucket per address and one per name: each failed
login takes a token, tokens come back at one per `refill` seconds up to the
burst. With no token left, logins from that address (or for that name) are
refused with the time until the next token, before any proof is checked. A
name's bucket is larger than an address's, so one address guessing cannot
lock a user out alone; both forget idle entries past `MAX_ENTRIES`.

Both are pure: the shell passes the clock and does the closing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
MAX_ENTRIES = 65536


class PreLoginGate(Generic[K]):
    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._waiting: OrderedDict[K, str] = OrderedDict()  # oldest first
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, key: K, address: str) -> tuple[bool, K | None]:
        """Admits `key` from `address` unless its address is over the cap.

        Returns:
            (admitted, evicted): `evicted` is the oldest waiting connection
            to close to make room, if the total cap was reached.
        """
        if self._per_address.get(address, 0) >= self.per_address:
            return False, None
        evicted = None
        if len(self._waiting) >= self.total:
            evicted = next(iter(self._waiting))
            self.release(evicted)
        self._waiting[key] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return True, evicted

    def release(self, key: K) -> None:
        """`key` logged in or left: it no longer counts."""
        address = self._waiting.pop(key, None)
        if address is None:
            return
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class _Buckets:
    def __init__(self, burst: int, refill: float) -> None:
        self.burst = burst
        self.refill = refill
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.burst)
        return min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: now)."""
        level = self._level(key, now)
        return 0.0 if level >= 1.0 else (1.0 - level) * self.refill

    def take(self, key: str, now: float) -> None:
        self._buckets[key] = _Bucket(max(0.0, self._level(key, now) - 1.0), now)
        if len(self._buckets) > MAX_ENTRIES:
            self._buckets = {k: b for k, b in self._buckets.items() if self._level(k, now) < self.burst}


class LoginThrottle:
    """Failed logins per address and per name.

    Args:
        burst: failures an address may have in a row before it must wait.
        name_burst: the same for one name, from anywhere.
        refill: seconds for one failure to be forgiven.
    """

    def __init__(self, burst: int = 10, name_burst: int = 30, refill: float = 2.0) -> None:
        self._addresses = _Buckets(burst, refill)
        self._names = _Buckets(name_burst, refill)

    def retry_after(self, address: str, name: str, now: float) -> float:
        """Seconds until a login from `address` for `name` may be tried (0: now)."""
        return max(self._addresses.wait(address, now), self._names.wait(name, now))

    def failed(self, address: str, name: str, now: float) -> None:
        self._addresses.take(address, now)
        self._names.take(name, now)
