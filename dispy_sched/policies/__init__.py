"""Scheduling policies, found by name.

Built-ins are registered under the entry-point group `dispy_sched.policies`
in pyproject.toml; a third-party package adds its own the same way, or the
operator names a class directly as `package.module:Class`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import Key, Policy
from .dispy_compat import FairClusterPolicy, FcfsClusterPolicy
from .fair import FairPolicy
from .fifo import FifoPolicy

BUILTIN: dict[str, type] = {
    cls.name: cls for cls in (FairPolicy, FifoPolicy, FairClusterPolicy, FcfsClusterPolicy)
}


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
        return _instantiate(cls, name)
    if name in BUILTIN:
        return _instantiate(BUILTIN[name], name)
    for ep in entry_points(group="dispy_sched.policies", name=name):
        return _instantiate(ep.load(), name)
    raise UnknownPolicy(f"unknown policy {name!r}; known: {', '.join(available())}")


def _instantiate(cls: type, name: str) -> Policy:
    """Builds the policy, refusing (at start, not at the first decision) what cannot rank."""
    missing = [attr for attr in ("name", "cluster_key", "user_key") if not hasattr(cls, attr)]
    if missing:
        raise UnknownPolicy(f"policy {name!r} is not a policy: it has no {', '.join(missing)} (see docs/policies.md)")
    policy: Policy = cls()
    return policy


__all__ = [
    "BUILTIN",
    "FairClusterPolicy",
    "FairPolicy",
    "FcfsClusterPolicy",
    "FifoPolicy",
    "Key",
    "Policy",
    "UnknownPolicy",
    "available",
    "load_policy",
]
