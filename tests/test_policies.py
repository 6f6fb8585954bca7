"""Policies found by name: built-ins, entry points, `module:Class`, and the example of docs/policies.md.

The example is taken from the page itself, so the docs cannot drift from what
works; it is loaded both ways in-process and once through a real scheduler.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.policies import BUILTIN, UnknownPolicy, available, load_policy
from dispy_wire.messages import JobResult, JobSpec
from procs import ROOT, Cluster

DOCS = ROOT / "docs" / "policies.md"


def example_source() -> str:
    """The one python block of docs/policies.md that defines a class."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    (source,) = [b for b in blocks if "\nclass " in b]
    return source


@pytest.fixture
def example_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Writes the docs' example as `round_robin.py` on sys.path; returns its directory."""
    (tmp_path / "round_robin.py").write_text(example_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    return str(tmp_path)


def test_the_docs_example_is_about_thirty_lines() -> None:
    assert 20 <= len(example_source().splitlines()) <= 40


def test_builtins_load_by_name_and_through_their_entry_points() -> None:
    assert {"fair", "fifo", "fair_cluster", "fcfs_cluster"} <= set(available())
    for name, cls in BUILTIN.items():
        policy = load_policy(name)
        assert isinstance(policy, cls) and policy.name == name


def test_the_docs_example_loads_as_module_colon_class_and_ranks(example_module: str) -> None:
    policy = load_policy("round_robin:RoundRobinUsers")
    assert policy.name == "round_robin"
    core = SchedulerCore(policy, CoreConfig())
    events: list[E.Event] = [E.NodeJoined("n1", "host", "10.0.0.1", 1, 1e9)]
    for user, count in (("ann", 6), ("bob", 2), ("cat", 2)):
        events += [
            E.ClusterOpened(user, user, user, user, b"", True, {}),
            E.JobsSubmitted(user, user, [JobSpec(i, 0, b"", {}) for i in range(count)]),
        ]
    core.handle(*events, now=0.0)
    order: list[str] = []
    for now in range(1, 11):
        (running,) = core.nodes["n1"].jobs
        order.append(running[0])
        result = JobResult(running[0], running[1], 5, None, b"", b"", "", "", now - 1.0, float(now))
        core.handle(E.ResultsArrived("n1", [result]), now=float(now))
        check_invariants(core)
    assert order == ["ann", "bob", "cat", "ann", "bob", "cat", "ann", "ann", "ann", "ann"]


def test_the_docs_example_loads_through_an_entry_point(example_module: str) -> None:
    dist = Path(example_module) / "round_robin_policy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: round-robin-policy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dispy_sched.policies]\nround_robin = round_robin:RoundRobinUsers\n")
    assert "round_robin" in available()
    assert type(load_policy("round_robin")).__name__ == "RoundRobinUsers"


def test_what_is_not_a_policy_is_refused_naming_what_it_lacks(example_module: str) -> None:
    (Path(example_module) / "not_a_policy.py").write_text("class Chooser:\n    def choose(self, view, usable, now): ...\n")
    with pytest.raises(UnknownPolicy, match="has no name, cluster_key, user_key"):
        load_policy("not_a_policy:Chooser")
    with pytest.raises(UnknownPolicy, match="cannot load policy 'no_such_module:X'"):
        load_policy("no_such_module:X")
    with pytest.raises(UnknownPolicy, match="known: .*fair_cluster"):
        load_policy("nope")


def test_dispyscheduler_runs_jobs_under_the_docs_example(cluster: Cluster) -> None:
    # the scheduler runs with its working directory on sys.path (python -m)
    (cluster.workdir / "round_robin.py").write_text(example_source())
    scheduler = cluster.scheduler("--policy", "round_robin:RoundRobinUsers")
    scheduler.wait_for_line(r"policy round_robin;", stream="stderr")
    cluster.node(cpus=2)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        with SharedJobCluster(lambda x: x * 2) as cluster:
            jobs = [cluster.submit(i) for i in range(6)]
            assert [job() for job in jobs] == [0, 2, 4, 6, 8, 10]
            print("policy", cluster.scheduler_status()["policy"])
        """
    )
    assert "policy round_robin" in client.stdout
