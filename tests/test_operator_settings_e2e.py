"""Drains, CPU caps and shares set through dispyadmin outlive a real scheduler restart, with either state store."""

from __future__ import annotations

import signal

import pytest

from procs import Cluster, Proc, write_users_file
from test_http_api import USERS, Http
from test_journal_e2e import restart
from waiting import wait_until


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_drain_cpu_cap_and_share_hold_across_a_restart_until_the_users_file_is_read_again(
    cluster: Cluster, request: pytest.FixtureRequest, store: str
) -> None:
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    args = ["--users-file", str(users), "--http-port", "0", "--state-dir", str(cluster.workdir / "scheduler-state")]
    if store == "postgresql":
        args += ["--state", request.getfixturevalue("pg_dsn"), "--lease", "2"]

    def leading(scheduler: Proc) -> Http:
        """The scheduler's API once it leads (on PostgreSQL, a restarted one stands by until the old lock is gone)."""
        scheduler.wait_for_line(r"HTTP API and /metrics on", stream="stderr")
        return Http(cluster, scheduler)

    scheduler = cluster.scheduler(*args)
    http = leading(scheduler)
    cluster.node(cpus=2, name="drained")
    cluster.node(cpus=3, name="capped")
    wait_until(lambda: len(http.admin_json("nodes")) == 2, what="both nodes connected")
    http.admin("drain", "drained")
    http.admin("set-cpus", "capped", "1")
    http.admin("set-share", "alice", "3")

    scheduler = restart(cluster, scheduler, signal.SIGTERM, *args)
    http = leading(scheduler)
    assert "3 operator settings" in scheduler.wait_for_line("journal: restored .*", stream="stderr").group(0)
    wait_until(lambda: len(http.admin_json("nodes")) == 2, what="both nodes back")
    nodes = {n["name"]: n for n in http.admin_json("nodes")}
    assert nodes["drained"]["state"] == "drained"
    assert (nodes["capped"]["cpus"], nodes["capped"]["offered_cpus"]) == (1, 3)
    assert {u["name"]: u["share"] for u in http.admin_json("users")}["alice"] == 3.0

    http.admin("undrain", "drained")
    http.admin("set-cpus", "capped", "-1")
    http.admin("reload")  # the users file's shares again
    scheduler = restart(cluster, scheduler, signal.SIGKILL, *args)
    http = leading(scheduler)
    wait_until(lambda: len(http.admin_json("nodes")) == 2, what="both nodes back again")
    nodes = {n["name"]: n for n in http.admin_json("nodes")}
    assert (nodes["drained"]["state"], nodes["capped"]["cpus"]) == ("idle", 3)
    # listed only once it connects, with the file's share; a share still stored would list it with 3
    assert {u["name"]: u["share"] for u in http.admin_json("users")}.get("alice", 1.0) == 1.0
