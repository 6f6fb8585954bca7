"""Turning a computation and its `depends` into the blob nodes load.

What each kind of `depends` entry becomes on the node:
- a path to a file: the file, in the job's working directory;
- a module: its source file, importable by the job (`import mod`); a package
  (or a module without a plain source file) is pickled by value instead;
- a function or class: a global of the computation, as dispy provides it.

Code that lives in the user's own modules (not the standard library or an
installed package) is pickled by value, so a node needs only what is
installed on it, not the user's source tree.
"""

from __future__ import annotations

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


def build_computation(
    computation: Callable[..., Any],
    depends: Sequence[Any] = (),
    setup: Callable[..., Any] | None = None,
    cleanup: Callable[..., Any] | bool = True,
) -> bytes:
    """Packs everything a node needs to run `computation`.

    Raises:
        TypeError: for a computation that is not callable or a bad `depends` entry.
        OSError: a file named in `depends` cannot be read.
    """
    if not callable(computation):
        raise TypeError(f"computation must be a function, not {type(computation).__name__}")
    files: list[tuple[str, bytes, int]] = []
    modules: list[tuple[str, bytes]] = []
    objects: dict[str, Any] = {}
    for dep in depends:
        if isinstance(dep, (str, os.PathLike)):
            path = os.fspath(dep)
            with open(path, "rb") as f:
                data = f.read()
            files.append((os.path.basename(path), data, stat.S_IMODE(os.stat(path).st_mode)))
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
    code = CodeObjects(func=computation, setup=setup, cleanup=cleanup, globals=objects)
    name = getattr(computation, "__name__", "computation")
    return pack_computation(Computation("function", name, files, modules, dumps(code)))
