"""What operators and users are shown of a user's CPUs: `busy` (running its jobs now) and fair share's `load`.

With jobs sent ahead to nodes (--prefetch) the two differ: fair share counts
a user's jobs on nodes by the part of their stay they run (`UserRecord.load`),
and every place that shows a user's busy CPUs shows that figure beside it:
the JSON view (HTTP API, dashboard, `dispyadmin users --json`), dispyadmin's
table, the scheduler's status log line and /metrics.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dispy_sched import views
from dispy_sched.admin_api import _print_users
from dispy_sched.core import SchedulerCore
from dispy_sched.core import events as E
from dispy_sched.metrics import StateCollector
from dispy_sched.server import SchedulerServer, user_status_line
from dispy_wire.messages import JobRef

from test_core import arrived, opened, result, step, submitted
from test_core_prefetch import queueing


@pytest.fixture
def core(make_core: Callable[..., SchedulerCore]) -> SchedulerCore:
    """alice with one job running and one sent ahead, waiting, on a one-CPU node; her jobs ran 1 s after a 1.5 s wait
    on average: fair share counts 2 * 1 / (1 + 1.5) = 0.8 CPUs for her, where 1 runs (the scenario of
    tests/test_core_prefetch.py's test_fair_share_counts_jobs_on_nodes_by_the_part_of_their_stay_they_run)."""
    core = make_core(prefetch=1)
    step(core, opened("c1", "K"), queueing("n1", 1), submitted("c1", "K", 1, 2, 3, 4), now=0)
    step(core, E.StartsReported("n1", [JobRef("K", 1)]), now=0)
    step(core, arrived("n1", result("K", 1, start=0.0, end=1.0)), E.StartsReported("n1", [JobRef("K", 2)]), now=3)
    assert core.users["alice"].load == pytest.approx(0.8)
    return core


def test_the_users_view_shows_fair_shares_cpus_beside_the_busy_ones(core: SchedulerCore) -> None:
    for viewer in (None, "alice"):  # the administrator, and alice herself
        (alice,) = views.users(core, viewer)
        assert (alice["name"], alice["busy"], alice["queued"], alice["load"]) == ("alice", 1, 2, 0.8)
    # job 2 ends after 1 s; job 3, sent at 3, starts at 4: waits (0 + 3 + 1) / 3 s, runs 1 s, on average
    step(core, arrived("n1", result("K", 2, start=3.0, end=4.0)), E.StartsReported("n1", [JobRef("K", 3)]), now=4)
    assert core.users["alice"].load == pytest.approx(2 * 1 / (1 + 4 / 3))  # 0.857...: two decimals are shown
    assert views.users(core, None)[0]["load"] == 0.86


def test_dispyadmins_users_table_shows_fair_shares_cpus_beside_the_busy_ones(
    core: SchedulerCore, capsys: pytest.CaptureFixture[str]
) -> None:
    _print_users(views.users(core, None))  # as `dispyadmin users` prints them, 80 characters wide
    table = capsys.readouterr().out
    assert all(word in table for word in ("busy", "CPUs", "(fair", "share)")) and "…" not in table, table
    (row,) = [line for line in table.splitlines() if "alice" in line]
    assert [cell.strip() for cell in row.split("│")[1:6]] == ["alice", "1", "100%", "1 (0.8)", "2"], table


def test_the_status_log_line_of_a_user_names_both_figures(core: SchedulerCore) -> None:
    (alice,) = views.users(core, None)
    line = user_status_line(alice)
    assert line.startswith("user alice: share 1 (target 100%), 1 busy, 0.8 fair-share CPUs, 2 queued, usage "), line


def test_metrics_export_fair_shares_cpus_per_user(core: SchedulerCore) -> None:
    registry = CollectorRegistry()
    registry.register(StateCollector(cast(SchedulerServer, types.SimpleNamespace(core=core, peers={}))))
    samples: dict[str, Any] = {
        s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples
    }
    assert samples["dispy_user_busy_cpus"] == 1 and samples["dispy_user_fair_share_cpus"] == pytest.approx(0.8)
