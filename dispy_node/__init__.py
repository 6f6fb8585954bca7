"""dispynode: the compute-node daemon of dispy-shared.

The daemon (`main`, `conn`) talks to the scheduler; `runner` starts one zygote
process per cluster (`zygote`, speaking `zygote_protocol` over pipes), which
loads the user's computation and forks one process per job, so that user code
never runs in the daemon (principle 3 of DESIGN.md). `report` measures the
resources the node advertises.
"""


class NodeError(Exception):
    """Base of the errors raised by `dispy_node`."""
