"""Loading a cluster's computation into a process: the zygote, or a spawned job.

The zygote loads once (`first=True`): it lays out the cluster's directory,
writes the depends files and modules, unpickles the computation, gives it
its globals and runs `setup`. Forked jobs inherit all of that.

Where a node may not fork (`dispynode --spawn-jobs`, or a platform without
`fork`), each job is a new interpreter (`python -m dispy_node.job_spawn`)
that loads the cluster again from the zygote's Load message (`LOAD_FILE` in
the cluster's directory, `first=False`: the files are there already) and
runs `setup` again before its job. That costs an interpreter start, the
imports, the unpickling and `setup` for every job: tens of milliseconds
instead of about one, and more with a slow `setup`. The file holds the
computation without its result key (`payload.without_result_key`): each
spawned job gets the key with its start record, through an anonymous file.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from dispy_wire import result_mac
from dispy_wire.payload import CodeObjects, loads, unpack_computation

from . import cgroups, channel, job_process, workdir
from . import zygote_protocol as zp

#: the zygote's Load message, in the cluster's directory, for spawned jobs
LOAD_FILE = "load.msgpack"


def load_code(load: zp.Load, first: bool) -> tuple[job_process.Code, Any] | str:
    """Loads the computation; returns (code, cleanup), or why it cannot run here."""
    try:
        comp = unpack_computation(load.computation)
        if first and len(comp.result_key) != result_mac.KEY_SIZE:
            return f"computation has a result key of {len(comp.result_key)} bytes, not {result_mac.KEY_SIZE}"
        if first:
            files = workdir.make_cluster_layout(load.cluster_dir)
            for name, data, mode in comp.files:
                workdir.write_file(files, name, data, mode)
            for name, source in comp.modules:
                workdir.write_file(files, name, source, 0o600)
        else:
            files = os.path.join(load.cluster_dir, workdir.FILES)
        sys.path.insert(0, files)
        os.chdir(files)
        import cloudpickle  # noqa: F401  (imported once here, not in every job)

        objs = loads(comp.objects)
        if not isinstance(objs, CodeObjects):
            return f"computation objects are a {type(objs).__name__}, not CodeObjects"
        if comp.kind == "function" and not callable(objs.func):
            return "computation has no callable function"
        if comp.kind == "program" and not objs.program:
            return "computation has no program to run"
        if comp.kind not in ("function", "program"):
            return f"unknown computation kind {comp.kind!r}"
        _inject_globals(objs, {
            "dispy_node_name": load.node_name,
            "dispy_node_ip_addr": load.node_ip_addr,
            "dispy_provisional_result": channel.provisional_result,
            "dispy_send_file": channel.send_file,
        })  # fmt: skip
    except (ValueError, OSError) as exc:
        return str(exc)
    except Exception:  # noqa: BLE001  (unpickling runs arbitrary user code)
        return "cannot load the computation:\n" + traceback.format_exc()
    if objs.setup is not None:
        try:
            value = objs.setup()
        except (Exception, SystemExit):  # noqa: BLE001  (user code: any failure is a setup failure)
            return "setup failed:\n" + traceback.format_exc()
        if value not in (0, None):
            return f"setup returned {value!r} (0 or None means success)"
    sys.stdout.flush()
    sys.stderr.flush()
    groups = cgroups.JobGroups(load.cgroups) if load.cgroups else None
    code = job_process.Code(comp.kind, objs.func, objs.program, load.cluster_dir, load.cluster_id, comp.result_key, groups)
    return code, objs.cleanup


def _inject_globals(objs: CodeObjects, node: dict[str, Any]) -> None:
    """Depends functions and classes, and the node's name and address, become the computation's globals (as in dispy)."""
    main = sys.modules["__main__"].__dict__
    targets = [main]
    for fn in (objs.func, objs.setup, objs.cleanup):
        g = getattr(fn, "__globals__", None)
        if isinstance(g, dict) and all(g is not t for t in targets):
            targets.append(g)
    for target in targets:
        target.update(node)
        target.update(objs.globals)
