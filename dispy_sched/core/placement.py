"""Which nodes a cluster may use, and how many of their CPUs: dispy's `nodes`.

A cluster opened with `options["nodes"]` (the client's `NodeAllocate`
entries in plain form: `{"host": ..., "ip_addr": ..., "cpus": N}`) may use
a node only if an entry matches it, and then at most that entry's CPUs of
it, by dispy's rule: the first matching entry decides; `cpus` > 0 is a cap,
0 means all, -N all but N. An entry matches a node whose name equals `host`,
or one of whose addresses (as the scheduler sees it, and as the node reports
its own interfaces) matches `ip_addr`, where `*` stands for any run of
address characters ('192.168.1.*').

Pure functions; the core caches their answers per (cluster, node) when a
cluster opens, a node joins, or a node's CPUs change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from dispy_wire.cluster_options import BadOptions, NodeSpec


class NodeEntry(NamedTuple):
    host: str
    ip_rex: re.Pattern[str]
    cpus: int


class BadNodes(ValueError):
    """`options["nodes"]` is not a list of {host, ip_addr, cpus} entries."""


def parse_nodes(raw: Any) -> list[NodeEntry] | None:
    """The cluster's entries from their wire form, or None when it names no nodes (all nodes, all CPUs).

    Raises:
        BadNodes: with what is wrong, to tell the client.
    """
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise BadNodes("nodes must be a list")
    try:
        return compile_nodes([NodeSpec.from_wire(item) for item in raw])
    except BadOptions as exc:
        raise BadNodes(str(exc)) from None


def compile_nodes(specs: Sequence[NodeSpec]) -> list[NodeEntry] | None:
    """The entries of checked `nodes` (`ClusterOptions.nodes`), or None for none (all nodes, all CPUs)."""
    if not specs:
        return None
    entries = []
    for spec in specs:
        pattern = re.escape(spec.ip_addr).replace(r"\*", r"[0-9a-fA-F:.]*") + r"\Z"
        entries.append(NodeEntry(spec.host, re.compile(pattern), spec.cpus))
    return entries


def allowed_cpus(entries: list[NodeEntry], name: str, addresses: Iterable[str], cpus: int) -> int:
    """How many of a node's `cpus` a cluster with these entries may use (0: none)."""
    addresses = list(addresses)
    for entry in entries:
        if entry.host == name or any(entry.ip_rex.match(a) for a in addresses):
            if entry.cpus > 0:
                return min(cpus, entry.cpus)
            if entry.cpus < 0:
                return max(0, cpus + entry.cpus)
            return cpus
    return 0
