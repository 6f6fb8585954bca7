"""Turning a computation and its `depends` into the blob nodes load.

What each kind of `depends` entry becomes on the node:
- a path to a file: the file, in the job's working directory;
- a module: its source file, importable by the job (`import mod`); a package
  (or a module without a plain source file) is pickled by value instead;
- a function or class: a global of the computation, as dispy provides it.

A computation given as a string is a program's path: the file is shipped
like a `depends` file and each job runs it with its arguments as the command
line (a `.py` file with the node's own Python interpreter).

Code that lives in the user's own modules (not the standard library or an
installed package) is pickled by value, so a node needs only what is
installed on it, not the user's source tree.
"""

from __future__ import annotations

import functools
import inspect
import os
import stat
import sys
import sysconfig
import types
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from dispy_wire.payload import CodeObjects, Computation, dumps, pack_computation

_INSTALLED_PREFIXES = tuple(
    os.path.realpath(p)
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {sys.prefix, sys.base_prefix, sys.exec_prefix}
)


def _is_user_module(module: types.ModuleType | None) -> bool:
    if module is None or module.__name__ == "__main__":
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return not os.path.realpath(path).startswith(_INSTALLED_PREFIXES)


def _pickle_by_value(obj: Any) -> None:
    """Makes cloudpickle carry `obj`'s module by value if it is the user's own."""
    module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is not None and _is_user_module(module):
        top = sys.modules.get(module.__name__.partition(".")[0], module)
        cloudpickle.register_pickle_by_value(top)


class NodePython:
    """Stands for the node's Python interpreter in a program's argv.

    Pickled as `sys.executable` looked up where it is unpickled, so the
    zygote, which unpickles the computation, sees its own interpreter's path.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (sys, "executable")


def _read_file(path: str) -> tuple[str, bytes, int]:
    with open(path, "rb") as f:
        data = f.read()
    return os.path.basename(path), data, stat.S_IMODE(os.stat(path).st_mode)


def computation_name(computation: Callable[..., Any] | str) -> str:
    """The name dispy gives a cluster: the function's, or the program file's."""
    if isinstance(computation, str):
        return os.path.basename(computation)
    return getattr(computation, "__name__", "computation")


def build_computation(
    computation: Callable[..., Any] | str,
    result_key: bytes,
    depends: Sequence[Any] = (),
    setup: Callable[..., Any] | None = None,
    cleanup: Callable[..., Any] | bool = True,
) -> bytes:
    """Packs everything a node needs to run `computation`.

    Args:
        computation: a function, or the path of a program to run.
        result_key: the cluster's key: its jobs MAC what they send back with it (`dispy_wire.result_mac`).
        depends: files, modules, functions and classes jobs need.
        setup: run once per node before its jobs.
        cleanup: True, False, or a function run when the cluster closes on a node.

    Returns:
        the computation blob (`dispy_wire.payload` format).

    Raises:
        TypeError: for a computation that is neither callable nor a path, or a bad `depends` entry.
        OSError: the program or a file named in `depends` cannot be read.
    """
    files: list[tuple[str, bytes, int]] = []
    program: list[Any] | None = None
    if isinstance(computation, str):
        if not os.path.isfile(computation):
            raise FileNotFoundError(f"program {computation!r} is not a file")
        name, data, mode = _read_file(computation)
        files.append((name, data, mode | stat.S_IRUSR | stat.S_IXUSR))
        program = [NodePython(), name] if name.endswith(".py") else [f"./{name}"]
    elif not callable(computation):
        raise TypeError(f"computation must be a function or a program's path, not {type(computation).__name__}")
    modules: list[tuple[str, bytes]] = []
    objects: dict[str, Any] = {}
    for dep in map(_code_of, depends):
        if isinstance(dep, (str, os.PathLike)):
            files.append(_read_file(os.fspath(dep)))
        elif isinstance(dep, types.ModuleType):
            source = getattr(dep, "__file__", None)
            if source and source.endswith(".py") and os.path.basename(source) != "__init__.py" and _is_user_module(dep):
                with open(source, "rb") as f:
                    modules.append((os.path.basename(source), f.read()))
            else:
                _pickle_by_value(dep)
        elif inspect.isfunction(dep) or inspect.isclass(dep) or inspect.isbuiltin(dep):
            objects[dep.__name__] = dep
            _pickle_by_value(dep)
        else:
            raise TypeError(f"depends entries must be paths, modules, functions or classes, not {dep!r}")
    for obj in (computation, setup, cleanup):
        if callable(obj):
            _pickle_by_value(obj)
    if program is not None:
        code = CodeObjects(program=program, setup=setup, cleanup=cleanup, globals=objects)
        kind = "program"
    else:
        code = CodeObjects(func=computation, setup=setup, cleanup=cleanup, globals=objects)
        kind = "function"
    return pack_computation(Computation(kind, computation_name(computation), files, modules, dumps(code), result_key))


def _code_of(dep: Any) -> Any:
    """What dispy ships for a `depends` entry: a partial's function, an instance's class, else the entry."""
    if isinstance(dep, functools.partial):
        return dep.func
    if isinstance(dep, (str, os.PathLike, types.ModuleType)) or inspect.isroutine(dep) or inspect.isclass(dep):
        return dep
    return dep if type(dep).__module__ == "builtins" else type(dep)  # None, 5, ...: refused below


def job_files(depends: Sequence[Any]) -> list[list[Any]]:
    """Per-job files (`dispy_job_depends`) as `[basename, bytes, mode]` entries for `JobSpec.options`.

    Raises:
        TypeError: an entry that is not a path (only files can travel with one job).
        OSError: a file cannot be read.
    """
    entries: list[list[Any]] = []
    for dep in depends:
        if not isinstance(dep, (str, os.PathLike)):
            raise TypeError(f"dispy_job_depends entries must be file paths, not {dep!r}")
        entries.append(list(_read_file(os.fspath(dep))))
    return entries
