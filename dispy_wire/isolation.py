"""How a node runs one cluster's jobs: the `isolation` cluster option, in one place.

`fork` (the default of `SharedJobCluster` and of `dispynode`): a process
forked from the cluster's zygote per job; nothing a job does reaches the next.
`worker`: each CPU slot keeps a process forked from the zygote that runs many
jobs of that cluster in turn (docs/isolation.md says what it gives up); much
cheaper per job. The client sends it as the cluster option `isolation`, the
scheduler passes it on unread, the node checks it (`check`) and falls back
to its own default (`dispynode --isolation`) when it is absent.
"""

from __future__ import annotations

from typing import Any

#: the cluster option's key
OPTION = "isolation"
FORK = "fork"
WORKER = "worker"
MODES = (FORK, WORKER)


def check(value: Any) -> str:
    """The mode, checked.

    Raises:
        ValueError: not one of `MODES`.
    """
    if not isinstance(value, str) or value not in MODES:
        raise ValueError(f"isolation={value!r} is not one of {', '.join(map(repr, MODES))}")
    return value
