"""A daemon's last step before its process exits: `leaving`.

Python's finalization runs the cyclic collector over every object still
alive, more than once: about 100 ms of CPU for a scheduler or a node with
its code imported (the same process exits in 15 ms without it). A
scheduler or node pays it at every stop, and a JobCluster's close waits for
its node's. `leaving` freezes what is alive (`gc.freeze`), which the
collector then no longer looks at: the process's memory goes back to the
system as it ends anyway. What is freed by its reference count still is
(files, sockets, connections); only a cycle of garbage left at that moment is
not collected, whose destructors Python does not promise to run at exit.
"""

from __future__ import annotations

import gc


def leaving() -> None:
    """Called once a daemon has done all it does, just before its process exits (never in a process that
    goes on: nothing frozen is collected again)."""
    gc.freeze()
