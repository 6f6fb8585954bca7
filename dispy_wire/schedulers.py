"""The schedulers a client or node may dial, and which of them to try next.

Several `dispyscheduler`s may share one PostgreSQL state store; one leads
and the others stand by, answering each connection with `NotLeader` (the
leader's address). A peer is given all their addresses (`"a:9702,b:9702"`)
and keeps them in the order to try: the one it reached last first, a leader
a standby named first of all. No I/O here: the caller dials (and resolves
a name that stands for several schedulers: dialing.py).

A stopped scheduler (SIGSTOP, a hung host) still accepts TCP and then says
nothing, so among several addresses each gets a short deadline to log us in
(`deadline`), doubled at each round that found no leader, up to the full
timeout: a takeover is found in seconds, a merely slow leader still in time.
"""

from __future__ import annotations

#: seconds the first round gives each of several schedulers to log us in
FIRST_DEADLINE = 2.0


def deadline(full: float, addresses: int, rounds: int) -> float:
    """Seconds to give one of `addresses` schedulers after `rounds` rounds without a leader; `full` with one."""
    if addresses <= 1:
        return full
    return min(full, FIRST_DEADLINE * (1 << min(rounds, 16)))


def parse_address(spec: str, default_port: int) -> tuple[str, int]:
    """'H', 'H:P' or '[v6]:P' → (host, port).

    Raises:
        ValueError: the port is not a port number.
    """
    host, port = spec.strip(), ""
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad scheduler address {spec!r}: port must be a number") from None
    if not host or not 0 < number < 65536:
        raise ValueError(f"bad scheduler address {spec!r}: not HOST:PORT")
    return host, number


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Schedulers:
    """The addresses of the schedulers sharing one state, best first.

    Args:
        spec: one address or several, comma-separated (each 'H', 'H:P' or '[v6]:P').
        default_port: the port of an address that names none.

    Raises:
        ValueError: an address is malformed, or there is none.
    """

    def __init__(self, spec: str, default_port: int) -> None:
        self.addresses = [parse_address(part, default_port) for part in spec.split(",") if part.strip()]
        if not self.addresses:
            raise ValueError(f"no scheduler address in {spec!r}")
        self._given = set(self.addresses)

    @property
    def first(self) -> tuple[str, int]:
        return self.addresses[0]

    def __len__(self) -> int:
        return len(self.addresses)

    def __str__(self) -> str:
        return ",".join(format_address(h, p) for h, p in self.addresses)

    def prefer(self, address: tuple[str, int]) -> None:
        """`address` answered as the leader (or a standby named it): it is tried first from now on."""
        if address in self.addresses:
            self.addresses.remove(address)
        else:  # a leader we were not given (advertised under another name): it replaces the last such one
            self.addresses = [a for a in self.addresses if a in self._given]
        self.addresses.insert(0, address)

    def rotate(self) -> tuple[str, int]:
        """The first address failed: it goes last; returns the next one to try."""
        self.addresses.append(self.addresses.pop(0))
        return self.addresses[0]

    def redirect(self, leader: str) -> tuple[str, int] | None:
        """A standby named `leader`: returns its address to dial next (None if it named none or garbage)."""
        if not leader:
            return None
        try:
            address = parse_address(leader, self.first[1])
        except ValueError:
            return None
        self.prefer(address)
        return address
