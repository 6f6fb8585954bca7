"""`python -m dispy_node.job_spawn LOAD_FILE START_FD`: one job in a new interpreter (no fork).

Started by a zygote in spawn mode (see loading.py): enters the job's control
group, limits and umask, loads the cluster from the zygote's Load message,
runs `setup`, then lives the job's life exactly as a forked job does
(`job_process.run`).
"""

from __future__ import annotations

import os
import sys
import types

from dispy_wire.framing import HEADER

from . import cgroups, job_process, limits, loading
from . import zygote_protocol as zp


def main(argv: list[str]) -> None:
    load_file, start_fd = argv[0], int(argv[1])
    with open(load_file, "rb") as f:
        frame = f.read()
    load = zp.decode(frame[HEADER.size :])
    assert isinstance(load, zp.Load)
    with os.fdopen(start_fd, "rb") as f:
        start = job_process.unpack_start(f.read())
    try:  # setup is user code too: in the job's group, under its limits, its output the job's
        os.umask(0o077)
        os.dup2(start.out, 1)
        os.dup2(start.err, 2)
        if load.cgroups and start.group:
            cgroups.join(cgroups.JobGroups(load.cgroups), start.group)
        limits.apply(start.limits)
    except (OSError, ValueError) as exc:
        print(f"the node could not start the job: {exc}", file=sys.stderr, flush=True)
        os._exit(job_process.CHILD_INTERNAL_ERROR)
    loaded = loading.load_code(load, first=False)
    if isinstance(loaded, str):  # setup failed here though it ran in the zygote: the job fails with why
        print(loaded, file=sys.stderr, flush=True)
        os._exit(job_process.CHILD_INTERNAL_ERROR)
    job_process.run(loaded[0], start)


if __name__ == "__main__":
    # As in the zygote: user globals go into a fresh `__main__`, not this module's.
    from dispy_node.job_spawn import main as _main

    sys.modules["__main__"] = types.ModuleType("__main__")
    _main(sys.argv[1:])
