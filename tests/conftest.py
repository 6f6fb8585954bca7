"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core.invariants import check_invariants
from dispy_sched.policies import load_policy
from procs import Cluster


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Real processes for one test; all of them are ended afterwards, pass or fail."""
    c = Cluster(tmp_path)
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(c.describe())
    c.stop_all()


@pytest.fixture
def make_core() -> Iterator[Callable[..., SchedulerCore]]:
    """Builds scheduler cores (a restart is a new one); every core built is checked for invariants at teardown."""
    cores: list[SchedulerCore] = []

    def make(policy: str = "fair", **config: Any) -> SchedulerCore:
        cores.append(SchedulerCore(load_policy(policy), CoreConfig(**config)))
        return cores[-1]

    yield make
    for core in cores:
        check_invariants(core)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


from pg import pg, pg_dsn, pg_server  # noqa: E402,F401  (fixtures: a real PostgreSQL server)
