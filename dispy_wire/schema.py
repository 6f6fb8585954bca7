"""Field checkers built from type annotations, for validating decoded messages.

Supported: int, float, str, bytes, bool, dict, Any, `X | None`, `list[X]`,
and NamedTuple records (which arrive as lists and leave as the record type).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from .errors import LocalWireError


def checker_for(tp: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if len(options) == 2 and type(None) in options:
            inner = checker_for(next(o for o in options if o is not type(None)))
            return lambda v: None if v is None else inner(v)
        raise LocalWireError(f"unsupported union {tp}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = checker_for(item_tp)

        def check_list(v: Any) -> list[Any]:
            if not isinstance(v, list):
                raise TypeError(f"expected a list, got {type(v).__name__}")
            return [item(x) for x in v]

        return check_list
    if origin is dict or tp is dict:
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return _dict_checker(key_tp, value_tp)
    if tp is Any:
        return _any
    if isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields"):
        return _record_checker(tp)
    if tp is int:
        return _int
    if tp is float:
        return _float
    if tp in (str, bytes, bool):
        return _isinstance(tp)
    raise LocalWireError(f"unsupported field type {tp}")


def _isinstance(tp: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, tp):
            raise TypeError(f"expected {tp.__name__}, got {type(v).__name__}")
        return v

    return check


def _any(v: Any) -> Any:
    return v


def _dict_checker(key_tp: Any, value_tp: Any) -> Callable[[Any], Any]:
    key, value = checker_for(key_tp), checker_for(value_tp)

    def check(v: Any) -> dict[Any, Any]:
        if not isinstance(v, dict):
            raise TypeError(f"expected a map, got {type(v).__name__}")
        return {key(k): value(x) for k, x in v.items()}

    return check


#: the ints a message may carry: SQLite's (a journal or accounting row), where msgpack's go up to 2**64 - 1
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"expected int, got {type(v).__name__}")
    if not INT_MIN <= v <= INT_MAX:
        raise ValueError(f"int {v} out of the signed 64-bit range")
    return v


def _float(v: Any) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"expected float, got {type(v).__name__}")
    return float(v)


def _record_checker(tp: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(tp)
    checkers = [checker_for(hints[name]) for name in tp._fields]  # type: ignore[attr-defined]
    n = len(checkers)

    def check(v: Any) -> Any:
        if not isinstance(v, list) or len(v) != n:
            raise TypeError(f"{tp.__name__} must be a list of {n} fields")
        return tp(*[c(x) for c, x in zip(checkers, v)])

    exact = [_exact_types(hints[name]) for name in tp._fields]  # type: ignore[attr-defined]
    if any(types is None for types in exact):
        return check
    # every field a scalar (or Any): the records of hot messages (results, starts, job refs, submitted jobs)
    # come in thousands, and one look at each field's exact type accepts what the field checkers would pass on
    # unchanged; anything else (an int where a float goes, a subclass, garbage) takes the checkers' way, errors
    # included. An Any field is not looked at.
    fields = [(i, typing.cast(frozenset[type], types)) for i, types in enumerate(exact) if types is not _ANY_TYPE]
    ints = [i for i, types in fields if int in types]

    def check_scalars(v: Any) -> Any:
        if type(v) is list and len(v) == n:
            for i, types in fields:
                if type(v[i]) not in types:
                    return check(v)
            for i in ints:
                if v[i] is not None and not INT_MIN <= v[i] <= INT_MAX:
                    return check(v)
            return tp(*v)
        return check(v)

    return check_scalars


#: `_exact_types` of an Any field: whatever it holds passes
_ANY_TYPE: frozenset[type] = frozenset({object})


def _exact_types(tp: Any) -> frozenset[type] | None:
    """The types a scalar field's checker passes on unchanged (None: not a scalar field; `_ANY_TYPE`: Any)."""
    if tp is Any:
        return _ANY_TYPE
    if tp in (int, float, str, bytes, bool):
        return frozenset({tp})
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if len(options) == 2 and type(None) in options:
            inner = _exact_types(next(o for o in options if o is not type(None)))
            return None if inner is None else inner | {type(None)}
    return None
