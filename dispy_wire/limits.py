"""The limits a client may ask of the nodes for its jobs: their names and the sizes they are written in.

The client checks them (`check`) and sends them as cluster options, which
the scheduler passes to nodes unread; each node merges them with its own
caps (a user may ask for less, never more; dispy_node/limits.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: option -> what it bounds
KEYS = {
    "timeout": "wall-clock seconds per job",
    "memory": "bytes per job (a size such as 512M or 2G): its address space, and its whole tree where the node has cgroups",
    "cpu_time": "CPU seconds per job",
    "open_files": "open files per job process",
    "processes": "processes at once in a job's tree (where the node has cgroups)",
    "setup_timeout": "seconds the cluster's setup may take on a node",
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def check(limits: Mapping[str, Any]) -> dict[str, int | float]:
    """The limits as sent: known keys, positive numbers, sizes in bytes.

    Raises:
        ValueError: naming the key at fault.
    """
    if not isinstance(limits, Mapping):
        raise ValueError(f"limits must be a dict such as {{'memory': '1G', 'timeout': 60}}, not {limits!r}")
    checked: dict[str, int | float] = {}
    for key, value in limits.items():
        if key not in KEYS:
            raise ValueError(f"limits: unknown {key!r}; known: {', '.join(KEYS)}")
        if key == "memory":
            checked[key] = parse_size(value)
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"limits: {key}={value!r} is not a positive number")
        else:
            checked[key] = value
    return checked


def parse_size(text: str | int) -> int:
    """`512M`, `2G`, `1.5GiB`, `4096` (bytes) → bytes.

    Raises:
        ValueError: not a size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size {text} is not positive")
        return text
    match = _SIZE.fullmatch(str(text))
    size = float(match.group(1)) * _UNITS[match.group(2).upper()] if match else 0.0
    if not 1 <= size < math.inf:  # a long enough string of digits is an infinite float
        raise ValueError(f"{text!r} is not a size such as 512M or 2G")
    return int(size)


def format_size(size: int) -> str:
    """The largest binary unit that divides `size` evenly: 536870912 → '512 MiB'."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"
