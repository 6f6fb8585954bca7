"""Nodes as a cluster sees them: `DispyNode`, `DispyNodeAvailInfo`, `NodeAllocate`, `ClusterStatus`.

`NodeAllocate` follows dispy: `allocate()` returns how many CPUs of a node
the cluster may use, 0 to leave the node out, or a negative number when the
entry does not apply (the next entry of `nodes` is tried). The client sends
the plain entries with the cluster (the scheduler applies them); subclasses,
and entries with `depends` or `setup_args` of their own, are decided here,
node by node (see docs/client.md); `JobCluster` sizes its local node from them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from dispy_wire.cluster_options import NodeSpec


@dataclass(slots=True)
class DispyNodeAvailInfo:
    """A node's free resources, from its last report.

    Attributes:
        cpu: CPU use in percent (dispy: "available CPU"), from psutil.
        memory: available memory in bytes.
        disk: free disk space in bytes under the node's work directory.
        swap: swap use in percent.
    """

    cpu: float
    memory: int
    disk: int
    swap: float

    @classmethod
    def from_report(cls, avail: Mapping[str, Any]) -> DispyNodeAvailInfo | None:
        """Builds it from a node's heartbeat `avail` mapping (None if it has none yet)."""
        if "memory" not in avail:
            return None
        return cls(
            float(avail.get("cpu_percent", 0.0)),
            int(avail.get("memory", 0)),
            int(avail.get("disk", 0)),
            float(avail.get("swap", 0.0)),
        )


class DispyNode:
    """One compute node, with this cluster's use of it (dispy's attributes).

    Attributes:
        name, ip_addr: the node's name and address.
        cpus: CPUs it offers; avail_cpus: those not busy with anyone's jobs.
        busy: this cluster's jobs running there.
        jobs_done, cpu_time: this cluster's jobs finished there, and their time.
        update_time: when this record last changed (seconds since the epoch).
        avail_info: a `DispyNodeAvailInfo`, or None before the first report.
        tx, rx: dispy's bytes sent to and received from the node; the scheduler
            moves them here, so the client counts none (always 0).
    """

    # dispy's values: beside the job statuses (5-11) that cluster_status also receives
    Initialized = 4
    Closed = 16
    AvailInfo = 17

    def __init__(self, ip_addr: str, name: str, cpus: int = 0) -> None:  # dispy's order
        self.ip_addr = ip_addr
        self.name = name
        self.cpus = cpus
        self.avail_cpus = cpus
        self.busy = 0
        self.jobs_done = 0
        self.cpu_time = 0.0
        self.update_time = 0.0
        self.tx = 0
        self.rx = 0
        self.avail_info: DispyNodeAvailInfo | None = None
        self.platform = ""
        #: why the cluster cannot run on this node ('' while it can): its set-up failed, or another Python
        self.failure = ""

    def __repr__(self) -> str:
        return f"<DispyNode {self.name} ({self.ip_addr}) cpus={self.cpus} busy={self.busy} done={self.jobs_done}>"


class ClusterStatus(NamedTuple):
    """What `cluster.status()` returns: the nodes, and this cluster's unfinished jobs."""

    nodes: list[DispyNode]
    jobs_pending: int


class NodeAllocate:
    """Selects nodes (and how many of their CPUs) for a cluster, as in dispy.

    Args:
        host: a host name, an IP address, or an IP pattern with `*` (e.g. '192.168.1.*').
        port: the node's port in dispy; nodes dial the scheduler here, so it is kept, not used.
        cpus: at most this many CPUs of a matching node; 0 means all, -N all but N.
        depends: files (and, here, modules, functions and classes) for the nodes this entry
            allocates only, besides the cluster's `depends`.
        setup_args: the arguments of `setup` (and `cleanup`) on the nodes this entry allocates.

    Subclasses may override `allocate`, which may set `self.depends` and
    `self.setup_args` for the node it is deciding on (dispy's node_setup example does).
    """

    def __init__(
        self, host: str, port: int | None = None, cpus: int = 0, depends: list[Any] | None = None,
        setup_args: tuple[Any, ...] = (),
    ) -> None:  # fmt: skip
        if depends is not None and not isinstance(depends, list):
            raise TypeError(f"NodeAllocate depends must be a list, not {type(depends).__name__}")
        if not isinstance(setup_args, tuple):
            raise TypeError(f"NodeAllocate setup_args must be a tuple, not {type(setup_args).__name__}")
        self.host = str(host)
        self.ip_addr = _resolve(self.host)
        self.ip_rex = re.compile(re.escape(self.ip_addr).replace(r"\*", r"[0-9a-fA-F:.]*") + r"\Z")
        self.port = int(port) if port else None
        self.cpus = int(cpus or 0)
        self.depends: list[Any] = list(depends or [])
        self.setup_args: tuple[Any, ...] = setup_args

    @property
    def per_node(self) -> bool:
        """Whether the client must decide on each node itself: a subclass's `allocate`, or a per-node set-up."""
        return type(self).allocate is not NodeAllocate.allocate or bool(self.depends or self.setup_args)

    def allocate(
        self,
        cluster: Any,
        ip_addr: str,
        name: str,
        cpus: int,
        avail_info: DispyNodeAvailInfo | None = None,
        platform: str = "",
    ) -> int:
        """How many of the node's `cpus` the cluster uses.

        Returns:
            a positive count; 0 to leave the node out; negative when this
            entry does not match the node (the next entry is tried).
        """
        if not (self.ip_rex.match(ip_addr) or self.host == name):
            return -1
        if self.cpus > 0:
            return min(cpus, self.cpus)
        if self.cpus < 0:
            return max(0, cpus + self.cpus)
        return cpus

    def to_spec(self) -> NodeSpec:
        """The form the scheduler applies (a subclass's `allocate` runs here, in the client)."""
        return NodeSpec(self.host, self.ip_addr, self.port, self.cpus)

    def __repr__(self) -> str:
        return f"NodeAllocate({self.host!r}, port={self.port!r}, cpus={self.cpus})"


def parse_nodes(nodes: Iterable[Any] | str | None) -> list[NodeAllocate]:
    """dispy's `nodes` argument as `NodeAllocate` objects.

    Args:
        nodes: None, or entries each a host name, IP address or pattern with
            `*`, a `(host, port)` or `(host, port, cpus)` tuple, or a `NodeAllocate`.

    Raises:
        TypeError: an entry of another kind.
        ValueError: a port or cpus that is no whole number.
    """
    if nodes is None:
        return []
    if isinstance(nodes, (str, NodeAllocate)):
        nodes = [nodes]
    parsed: list[NodeAllocate] = []
    for entry in nodes:
        if isinstance(entry, NodeAllocate):
            parsed.append(entry)
        elif isinstance(entry, str):
            parsed.append(NodeAllocate(entry))
        elif isinstance(entry, (tuple, list)) and 1 <= len(entry) <= 3:
            try:
                parsed.append(NodeAllocate(*entry))
            except OverflowError:  # int(inf): a ValueError, as for int(nan)
                raise ValueError(f"nodes entry {entry!r}: port and cpus must be whole numbers") from None
        else:
            raise TypeError(f"nodes entries must be host names, patterns, (host, port, cpus) or NodeAllocate, not {entry!r}")
    return parsed


def allocate_cpus(allocations: list[NodeAllocate], cluster: Any, ip_addr: str, name: str, cpus: int) -> int:
    """CPUs the first matching entry grants a node; all when `allocations` is empty, 0 if none matches."""
    if not allocations:
        return cpus
    for allocation in allocations:
        granted = allocation.allocate(cluster, ip_addr, name, cpus)
        if granted >= 0:
            return granted
    return 0


def _resolve(host: str) -> str:
    """An IP address for `host`; patterns, addresses and unresolvable names are kept as given."""
    if "*" in host:
        return host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host
