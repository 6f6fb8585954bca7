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

import functools
import importlib
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

#: what a successful `setup` returns: dispy's 0, 1 and 2 (which choose how dispynode keeps the setup's globals;
#: here jobs always fork from the process that ran it), or nothing
SETUP_SUCCESS = (0, 1, 2, None)

#: modules dispynode's own globals hold, which dispy's job code sees without importing them
#: (dispy runs `setup` and jobs in dispynode's module namespace: its examples use `os`, `sys`, `time` so)
NODE_MODULES = (
    "copy", "errno", "glob", "hashlib", "io", "marshal", "multiprocessing", "os", "pickle", "platform", "re",
    "shutil", "signal", "socket", "stat", "struct", "subprocess", "sys", "tempfile", "threading", "time",
    "traceback",
)  # fmt: skip


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
        import cloudpickle  # noqa: F401  (once here, not in every job; and before the cluster's files, first on the
        # path from here, could hold a module of that name: the node's is the one the computation is unpickled with)

        sys.path.insert(0, files)
        os.chdir(files)

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
    setup_args = tuple(getattr(objs, "setup_args", ()))  # a computation packed before setup_args has none
    if objs.setup is not None:
        try:
            value = objs.setup(*setup_args)
        except (Exception, SystemExit):  # noqa: BLE001  (user code: any failure is a setup failure)
            return "setup failed:\n" + traceback.format_exc()
        if value not in SETUP_SUCCESS:
            return f"setup returned {value!r} (0, 1, 2 or None means success)"
    sys.stdout.flush()
    sys.stderr.flush()
    groups = cgroups.JobGroups(load.cgroups) if load.cgroups else None
    code = job_process.Code(comp.kind, objs.func, objs.program, load.cluster_dir, load.cluster_id, comp.result_key, groups)
    cleanup = functools.partial(objs.cleanup, *setup_args) if callable(objs.cleanup) and setup_args else objs.cleanup
    return code, cleanup


def _inject_globals(objs: CodeObjects, node: dict[str, Any]) -> None:
    """Depends functions and classes, the node's name and address, and dispynode's modules become the
    computation's globals (as in dispy). A module only fills a name the computation left free: its
    own global of that name wins, as dispy's client globals win over dispynode's."""
    modules = {name: importlib.import_module(name) for name in NODE_MODULES}
    for target in code_globals(objs.func, objs.setup, objs.cleanup):
        for name, module in modules.items():
            target.setdefault(name, module)
        target.update(node)
        target.update(objs.globals)


def code_globals(*funcs: Any) -> list[dict[str, Any]]:
    """The namespaces the computation's code looks its globals up in: `__main__`'s and each function's own
    (a function pickled by value brings a globals dict of its own)."""
    targets = [sys.modules["__main__"].__dict__]
    for fn in funcs:
        fn = getattr(fn, "func", fn)  # a functools.partial: the function it calls
        g = getattr(fn, "__globals__", None)
        if isinstance(g, dict) and all(g is not t for t in targets):
            targets.append(g)
    return targets
