"""Scheduling policies, found by name.

Built-ins are registered under the entry-point group `dispy_sched.policies`
in pyproject.toml; a third-party package adds its own the same way, or the
operator names a class directly as `package.module:Class`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import Policy, SchedulerView
from .fair import FairPolicy
from .fifo import FifoPolicy

BUILTIN: dict[str, type] = {FairPolicy.name: FairPolicy, FifoPolicy.name: FifoPolicy}


class UnknownPolicy(ValueError):
    pass


def available() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group="dispy_sched.policies"))
    return sorted(names)


def load_policy(name: str) -> Policy:
    """Instantiates the policy called `name` (or `module:Class`).

    Raises:
        UnknownPolicy: no such policy; the message lists the known ones.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownPolicy(f"cannot load policy {name!r}: {exc}") from None
        return cls()
    if name in BUILTIN:
        return BUILTIN[name]()
    for ep in entry_points(group="dispy_sched.policies", name=name):
        return ep.load()()
    raise UnknownPolicy(f"unknown policy {name!r}; known: {', '.join(available())}")


__all__ = ["BUILTIN", "FairPolicy", "FifoPolicy", "Policy", "SchedulerView", "UnknownPolicy", "available", "load_policy"]
