"""The options of a cluster and of a job that cross packages: one typed definition each.

A client builds a `ClusterOptions` and sends its wire form (a plain map: the
`options` of `OpenCluster`); the scheduler reads it back with `from_wire`,
which checks every field, keeps the map (its journal and the nodes get it
as sent) and acts on the fields it owns (`nodes`, `allocate`,
`node_updates`, `runtime`); a node reads the same map from `LoadCluster`
and acts on `keep_files`, `cpus` and the limits. A job's `JobOptions`
travel likewise in `JobSpec.options` / `RunJob.options`.

`Runtime` is what a pickled computation needs of the interpreter that loads
it: code pickled by value (cloudpickle) is Python bytecode, which another
minor version of Python reads wrongly (at worst the job dies of SIGSEGV), and
cloudpickle's own reconstructors change between its releases. A client
states its runtime with the cluster; each node states its own when it logs
in; the scheduler places the cluster only where they agree (`Runtime.mismatch`).

Nothing here imports asyncio or unpickles anything.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import isolation as job_isolation
from . import limits as job_limits

#: the `allocate` value that leaves each node's CPUs to the client's `NodeAllocate` subclasses
ALLOCATE_BY_CLIENT = "client"


class BadOptions(ValueError):
    """Options that are not what this module defines; the message names the field at fault."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """The interpreter a computation was pickled by, or a node runs jobs with.

    Attributes:
        python: "major.minor" of the Python version.
        cloudpickle: cloudpickle's version ("" when it is not installed).
    """

    python: str
    cloudpickle: str

    @classmethod
    def here(cls) -> Runtime:
        """This process's runtime."""
        try:
            import cloudpickle

            version = str(cloudpickle.__version__)
        except ImportError:
            version = ""
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", version)

    def mismatch(self, node: Runtime) -> str:
        """Why a node with runtime `node` cannot load a computation pickled under this one ('' if it can).

        Python must agree on major.minor (bytecode); cloudpickle on major.minor too (its
        reconstructors are private and change between releases; patch releases keep them).
        """
        if node.python != self.python:
            return f"the node runs Python {node.python or '?'}, the client Python {self.python}"
        if _major_minor(node.cloudpickle) != _major_minor(self.cloudpickle):
            return f"the node has cloudpickle {node.cloudpickle or 'none'}, the client cloudpickle {self.cloudpickle}"
        return ""

    def to_wire(self) -> dict[str, str]:
        return {"python": self.python, "cloudpickle": self.cloudpickle}

    @classmethod
    def from_wire(cls, raw: Any) -> Runtime:
        """Raises BadOptions unless `raw` is {"python": str, "cloudpickle": str}."""
        if not isinstance(raw, Mapping) or set(raw) != {"python", "cloudpickle"}:
            raise BadOptions(f"runtime must be a map of python and cloudpickle versions, not {raw!r}")
        python, cp = raw["python"], raw["cloudpickle"]
        if not isinstance(python, str) or not isinstance(cp, str) or len(python) > 16 or len(cp) > 32:
            raise BadOptions(f"runtime versions must be short strings, not {raw!r}")
        return cls(python, cp)


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One entry of dispy's `nodes`, as the scheduler applies it (see dispy_sched/core/placement.py).

    Attributes:
        host: a name, an address, or an address pattern with `*`.
        ip_addr: the address (pattern) to match; `host` resolved by the client.
        port: dispy's node port: kept, not used (nodes dial the scheduler).
        cpus: at most this many CPUs of a matching node; 0 all; -N all but N.
    """

    host: str
    ip_addr: str
    port: int | None = None
    cpus: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "ip_addr": self.ip_addr, "port": self.port, "cpus": self.cpus}

    @classmethod
    def from_wire(cls, raw: Any) -> NodeSpec:
        """Raises BadOptions for anything but {host, [ip_addr], [port], [cpus]}."""
        if not isinstance(raw, Mapping):
            raise BadOptions(f"a nodes entry must be a map, not {type(raw).__name__}")
        unknown = set(raw) - {"host", "ip_addr", "port", "cpus"}
        if unknown:
            raise BadOptions(f"nodes entry {raw!r}: unknown {sorted(map(str, unknown))[0]!r}")
        host, ip_addr = raw.get("host"), raw.get("ip_addr") or raw.get("host")
        port, cpus = raw.get("port"), raw.get("cpus", 0)
        if not isinstance(host, str) or not isinstance(ip_addr, str) or not host:
            raise BadOptions(f"nodes entry {raw!r} needs a host name or address")
        if not _whole(cpus) or (port is not None and not _whole(port)):
            raise BadOptions(f"nodes entry {raw!r}: port and cpus must be whole numbers")
        return cls(host, ip_addr, port, cpus)


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """What a cluster asks of the scheduler and the nodes (`OpenCluster.options`, `LoadCluster.options`).

    Attributes:
        nodes: dispy's `nodes`: only matching nodes, at most their entry's CPUs (empty: every node).
        allocate_by_client: the client's `NodeAllocate` subclasses decide each node's CPUs
            (the scheduler gives the cluster none of a node until the client answers).
        node_updates: the client follows nodes joining, reporting and leaving (`NodeUpdates`).
        keep_files: nodes leave the cluster's and its jobs' files behind (dispy's `cleanup=False`).
        cpus: at most this many of the cluster's jobs at once on each node (None: no cap of its own).
        limits: defaults of its jobs' limits and its `setup_timeout` (`dispy_wire.limits.KEYS`).
        runtime: the client's Python and cloudpickle: nodes that differ are skipped. None: not stated
            (a client of before this field), placed anywhere.
        isolation: `dispy_wire.isolation`'s mode for its jobs (None: the node's default).
    """

    nodes: tuple[NodeSpec, ...] = ()
    allocate_by_client: bool = False
    node_updates: bool = False
    keep_files: bool = False
    cpus: int | None = None
    limits: Mapping[str, int | float] = field(default_factory=dict)
    runtime: Runtime | None = None
    isolation: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The plain map sent in `OpenCluster.options` (only what differs from the defaults)."""
        wire: dict[str, Any] = dict(self.limits)
        if self.nodes:
            wire["nodes"] = [n.to_wire() for n in self.nodes]
        if self.allocate_by_client:
            wire["allocate"] = ALLOCATE_BY_CLIENT
        if self.node_updates:
            wire["node_updates"] = True
        if self.keep_files:
            wire["keep_files"] = True
        if self.cpus is not None:
            wire["cpus"] = self.cpus
        if self.runtime is not None:
            wire["runtime"] = self.runtime.to_wire()
        if self.isolation is not None:
            wire[job_isolation.OPTION] = self.isolation
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> ClusterOptions:
        """Checks the map a client sent.

        Raises:
            BadOptions: an unknown key, or a field of the wrong type or value.
        """
        if not isinstance(raw, Mapping):
            raise BadOptions(f"cluster options must be a map, not {type(raw).__name__}")
        unknown = set(raw) - _CLUSTER_KEYS - set(job_limits.KEYS)
        if unknown:
            raise BadOptions(f"unknown cluster option {sorted(map(str, unknown))[0]!r}")
        nodes = raw.get("nodes") or []
        if not isinstance(nodes, list):
            raise BadOptions("nodes must be a list")
        allocate = raw.get("allocate")
        if allocate not in (None, ALLOCATE_BY_CLIENT):
            raise BadOptions(f"allocate must be {ALLOCATE_BY_CLIENT!r}, not {allocate!r}")
        for flag in ("node_updates", "keep_files"):
            if not isinstance(raw.get(flag, False), bool):
                raise BadOptions(f"{flag} must be true or false, not {raw[flag]!r}")
        cpus = raw.get("cpus")
        if cpus is not None and (not _whole(cpus) or cpus < 1):
            raise BadOptions(f"option cpus={cpus!r} is not a positive integer")
        limits = {k: v for k, v in raw.items() if k in job_limits.KEYS}
        for key, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise BadOptions(f"option {key}={value!r} is not a positive number")
        runtime = raw.get("runtime")
        mode = raw.get(job_isolation.OPTION)
        if mode is not None:
            try:
                job_isolation.check(mode)
            except ValueError as exc:
                raise BadOptions(f"option {exc}") from None
        return cls(
            nodes=tuple(NodeSpec.from_wire(n) for n in nodes),
            allocate_by_client=allocate == ALLOCATE_BY_CLIENT,
            node_updates=bool(raw.get("node_updates", False)),
            keep_files=bool(raw.get("keep_files", False)),
            cpus=cpus,
            limits=limits,
            runtime=None if runtime is None else Runtime.from_wire(runtime),
            isolation=mode,
        )


_CLUSTER_KEYS = {"nodes", "allocate", "node_updates", "keep_files", "cpus", "runtime", job_isolation.OPTION}


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What one job asks (`JobSpec.options`, passed on in `RunJob.options`).

    Attributes:
        timeout: wall-clock seconds (`dispy_job_timeout`).
        files: its own files, [basename, bytes, mode] each (`dispy_job_depends` paths).
        node: the node (name or address) it must run on (`submit_node`), or None.
    """

    timeout: float | None = None
    files: tuple[tuple[str, bytes, int], ...] = ()
    node: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if self.files:
            wire["depends"] = [list(f) for f in self.files]
        if self.node is not None:
            wire["node"] = self.node
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> JobOptions:
        """Raises BadOptions for an unknown key or a field of the wrong shape."""
        if not isinstance(raw, Mapping):
            raise BadOptions(f"job options must be a map, not {type(raw).__name__}")
        unknown = set(raw) - {"timeout", "depends", "node"}
        if unknown:
            raise BadOptions(f"unknown job option {sorted(map(str, unknown))[0]!r}")
        timeout, node, files = raw.get("timeout"), raw.get("node"), raw.get("depends") or []
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not 0 < timeout < math.inf):  # fmt: skip
            raise BadOptions(f"option timeout={timeout!r} is not a positive number")
        if node is not None and (not isinstance(node, str) or not node):
            raise BadOptions(f"option node={node!r} is not a node's name or address")
        ok = isinstance(files, list) and all(
            isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and isinstance(f[1], bytes) and _whole(f[2])
            for f in files
        )  # fmt: skip
        if not ok:
            raise BadOptions("job option 'depends' must be a list of [name, bytes, mode]")
        return cls(timeout, tuple((f[0], f[1], f[2]) for f in files), node)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
