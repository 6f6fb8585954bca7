"""What is inside the opaque payloads: written by clients, read by job processes.

The scheduler and the node daemon never import this module: only client
programs and the node's zygote and job processes unpickle (principles 2 and
3 of DESIGN.md).

A computation is two layers, so that files and modules are in place before
any pickle that may refer to them is loaded:

    msgpack {"v": 1, "kind": "function" | "program",
             "name": str,
             "files":   [[basename, bytes, mode], ...],   # depends paths
             "modules": [[filename, bytes], ...],          # depends modules, as source
             "objects": bytes,                             # cloudpickle of `CodeObjects`
             "result_key": bytes}                          # the cluster's key for `result_mac`

The result key is the reason no one but the client and the cluster's own
processes may read a computation: whoever holds it can make results the
client will unpickle. A zygote that must leave the computation in a file
(spawn mode) writes it `without_result_key`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

FORMAT_VERSION = 1


@dataclass(slots=True)
class CodeObjects:
    """The Python objects of a computation (pickled by value with cloudpickle)."""

    func: Any = None  # the computation, for kind "function"
    program: list[str] | None = None  # argv prefix, for kind "program"
    setup: Any = None
    cleanup: Any = None  # a callable, or a bool
    globals: dict[str, Any] = field(default_factory=dict)  # depends functions/classes
    setup_args: tuple[Any, ...] = ()  # `setup(*setup_args)` and `cleanup(*setup_args)`, as in dispy (per node)


@dataclass(slots=True)
class Computation:
    kind: str
    name: str
    files: list[tuple[str, bytes, int]]
    modules: list[tuple[str, bytes]]
    objects: bytes  # cloudpickle(CodeObjects)
    result_key: bytes  # `result_mac.new_key()`: job processes MAC what they send the client with it


def pack_computation(comp: Computation) -> bytes:
    blob: bytes = msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "kind": comp.kind,
            "name": comp.name,
            "files": [list(f) for f in comp.files],
            "modules": [list(m) for m in comp.modules],
            "objects": comp.objects,
            "result_key": comp.result_key,
        },
        use_bin_type=True,
    )
    return blob


def unpack_computation(blob: bytes) -> Computation:
    """Reads the outer layer (no pickles). Raises ValueError if malformed."""
    try:
        d = msgpack.unpackb(blob, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed computation: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"malformed computation: a {type(d).__name__}, not a map")
    if d.get("v") != FORMAT_VERSION:
        raise ValueError(f"computation format {d.get('v')!r}, expected {FORMAT_VERSION}")
    try:
        return Computation(
            kind=_typed(d["kind"], str),
            name=_typed(d["name"], str),
            files=[(_typed(n, str), _typed(b, bytes), _typed(m, int)) for n, b, m in d["files"]],
            modules=[(_typed(n, str), _typed(b, bytes)) for n, b in d["modules"]],
            objects=_typed(d["objects"], bytes),
            result_key=_typed(d["result_key"], bytes),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed computation: {exc}") from None


def without_result_key(blob: bytes) -> bytes:
    """The packed computation `blob` with its result key left out (`b""`).

    Raises:
        ValueError: `blob` is malformed.
    """
    comp = unpack_computation(blob)
    comp.result_key = b""
    return pack_computation(comp)


_T = TypeVar("_T")


def _typed(value: Any, tp: type[_T]) -> _T:
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def dumps(obj: Any) -> bytes:
    """Pickles user data by value where it must be (functions of `__main__`).

    Built-in values (numbers, strings, bytes, and tuples, lists and dicts of
    them: most jobs' arguments) go through the standard pickle, which gives
    them the same bytes at a fraction of cloudpickle's cost per call.
    """
    if _plain(obj):
        return pickle.dumps(obj, protocol=5)
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
#: values looked at before giving the decision to cloudpickle (a large argument costs it little more)
_PLAIN_BUDGET = 256


def _plain(obj: Any) -> bool:
    """Whether `obj` is made of built-in values only (exact types: a subclass may pickle by reference)."""
    todo, budget = [obj], _PLAIN_BUDGET
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is tuple or kind is list:
            todo += item
        elif kind is dict:
            todo += item.keys()
            todo += item.values()
        else:
            return False
        budget -= len(item)
        if budget < 0:
            return False
    return True


def loads(data: bytes) -> Any:
    return pickle.loads(data)
