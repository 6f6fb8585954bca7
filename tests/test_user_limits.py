"""Per-user limits with real processes: a user over a limit gets a clear refusal, everyone else goes on.

Plus the users file's checks (no process needed) and privacy: what one
user's client can learn of another's work.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dispy_wire.settings import EX_CONFIG
from procs import Cluster, write_users_file

from dispy_sched.config import ConfigError, config_from_args
from dispy_sched.core.state import Limits

MiB = 1 << 20

USERS = """
[users.alice]
secret = "a-secret"
{alice}
[users.bob]
secret = "b-secret"
"""

#: another user's 100 jobs, which must all finish whatever alice does
BOB = """
    from dispy_client import SharedJobCluster

    def compute(i):
        return i * i

    with SharedJobCluster(compute, user="bob", secret="b-secret") as cluster:
        jobs = [cluster.submit(i) for i in range(100)]
        assert [j() for j in jobs] == [i * i for i in range(100)], [(j.status, j.exception) for j in jobs]
    print("bob: 100 jobs finished", flush=True)
"""


def users_file(workdir: Path, alice: str) -> str:
    return str(write_users_file(workdir / "users.toml", USERS.format(alice=alice)))


def bob_finishes(cluster: Cluster) -> None:
    bob = cluster.client(BOB, "bob")
    assert bob.wait(120) == 0, cluster.describe()
    assert "bob: 100 jobs finished" in bob.stdout


# --------------------------------------------------------------------------
# The users file


def test_an_unknown_key_in_a_users_table_is_refused_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    path = users_file(tmp_path, "max_cpu = 3")
    with pytest.raises(ConfigError) as info:
        config_from_args(["--users-file", path])
    message = str(info.value)
    assert "[users.alice]" in message and "max_cpu" in message
    assert "known keys: verifier, certificate, share, max_cpus, max_queued_jobs" in message and "max_held_bytes" in message


def test_the_scheduler_refuses_to_start_with_an_unknown_users_key(cluster: Cluster) -> None:
    proc = cluster.start(
        [sys.executable, "-m", "dispy_sched.main", "--port", "0", "--users-file", users_file(cluster.workdir, "max_cpu = 3")],
        "scheduler",
    )
    assert proc.wait(30) == EX_CONFIG
    assert "unknown key max_cpu" in proc.stderr


def test_limits_default_to_the_schedulers_and_a_users_table_overrides_them(tmp_path: Path) -> None:
    alice = 'max_clusters = "unlimited"\nmax_held_bytes = "1G"\nmax_connections = 3'
    cfg = config_from_args(["--users-file", users_file(tmp_path, alice), "--user-max-clusters", "5", "--user-max-queued-bytes", "8M"])
    assert cfg.limits()["alice"] == Limits(max_connections=3, max_clusters=None, max_queued_bytes=8 * MiB, max_held_bytes=1 << 30)
    assert cfg.limits()["bob"] == Limits(max_connections=64, max_clusters=5, max_queued_bytes=8 * MiB, max_held_bytes=512 * MiB)
    assert cfg.limits_for("nobody-in-the-file") == cfg.default_limits()
    assert cfg.private_data and not config_from_args(["--show-others"]).private_data
    with pytest.raises(ConfigError, match="max_held_bytes"):
        config_from_args(["--users-file", users_file(tmp_path, 'max_held_bytes = "lots"')])


# --------------------------------------------------------------------------
# Each limit, with another user at work


def test_clusters_and_queued_bytes_beyond_the_limits_are_refused_while_another_users_jobs_finish(cluster: Cluster) -> None:
    cluster.scheduler("--users-file", users_file(cluster.workdir, 'max_clusters = 1\nmax_queued_bytes = "2M"'))
    cluster.node(cpus=2)
    alice = cluster.client(
        """
        from dispy_client import SharedJobCluster, DispyJob, LimitError

        def compute(x):
            return len(x)

        with SharedJobCluster(compute, user="alice", secret="a-secret") as first:
            try:
                SharedJobCluster(compute, user="alice", secret="a-secret")
            except LimitError as exc:
                print("second cluster:", exc, flush=True)
            big = first.submit(b"x" * (3 << 20))
            assert big() is None and big.status == DispyJob.Cancelled, big.status
            print("big job:", big.exception, flush=True)
            assert first.submit(b"y" * 1000)() == 1000
        print("alice done", flush=True)
        """,
        "alice",
    )
    bob_finishes(cluster)
    assert alice.wait(60) == 0, cluster.describe()
    out = alice.stdout
    assert "second cluster: scheduler refused cluster" in out and "max_clusters = 1 clusters open and has 1" in out
    assert "big job: user alice may keep at most max_queued_bytes = 2.0 MiB" in out and "a job of 3.0 MiB" in out
    assert "alice done" in out
    sched = cluster.procs[0]
    assert sched.count(r"refused request from alice: .*max_clusters = 1", "stderr") == 1
    assert sched.count(r"refused request from alice: .*max_queued_bytes", "stderr") == 1


def test_results_nobody_collects_pause_their_users_jobs_until_collected(cluster: Cluster) -> None:
    config = cluster.workdir / "sched.toml"
    config.write_text("status_log_interval = 0.5\n")
    sched = cluster.scheduler("--config", str(config), "--users-file", users_file(cluster.workdir, 'max_held_bytes = "1M"'))
    cluster.node(cpus=2)
    recover = cluster.workdir / "alice.recover"
    alice = cluster.client(
        f"""
        import os, time
        from dispy_client import SharedJobCluster

        def compute(i):
            import time
            time.sleep(1)
            return bytes(400 * 1024)

        cluster = SharedJobCluster(compute, user="alice", secret="a-secret", recover_file={str(recover)!r})
        jobs = [cluster.submit(i) for i in range(8)]
        while True:  # until the scheduler has all 8 (they may leave in more than one submit)
            me = cluster.scheduler_status()["users"]["alice"]
            if me["queued"] + me["busy"] + me["finished"] == 8:
                break
            time.sleep(0.05)
        print("leaving", flush=True)
        os._exit(0)  # gone without closing: its results are held for it
        """,
        "alice",
    )
    assert alice.wait(60) == 0 and "leaving" in alice.stdout, cluster.describe()
    sched.wait_for_line(r"user alice: .*results held \(paused: results not collected\)", stream="stderr", timeout=60)
    bob_finishes(cluster)
    # bob's jobs ran; alice's jobs sent before the pause end (one may outlast bob's), the rest stay queued
    sched.wait_for_line(
        r"of user bob closed\n(?:.*\n)*?.*user alice: [^\n]*, 0 busy, [^\n]*, [1-9]\d* queued, [^\n]*\(paused: results not collected\)",
        stream="stderr", timeout=30,
    )  # fmt: skip
    collector = cluster.run_client(
        f"""
        from dispy_client import recover_jobs
        jobs = recover_jobs({str(recover)!r}, timeout=60, secret="a-secret")
        print("recovered", sorted(len(j.result) for j in jobs if j.result is not None), flush=True)
        """,
        "collector",
        env={"DISPY_USER": "alice"},
    )
    assert "recovered " + str([400 * 1024] * 8) in collector.stdout, cluster.describe()


@contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Processes started inside get `soft` as their RLIMIT_NOFILE (as under a default systemd unit)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


FLOOD = """
    import asyncio, resource, sys
    from dispy_client.connection import SchedulerLink
    from dispy_client import LimitError

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # room for 1,005 sockets here
    host, port = sys.argv[1].rsplit(":", 1)

    async def one(links, refusals):
        try:
            links.append(await SchedulerLink.connect(host, int(port), 60, "alice", "a-secret", {}, lambda m: None, lambda r: None))
        except LimitError as exc:
            refusals.append(str(exc))

    async def main():
        links, refusals = [], []
        for start in range(0, 1005, 100):
            await asyncio.gather(*(one(links, refusals) for _ in range(start, min(start + 100, 1005))))
        print(f"held {len(links)} refused {len(refusals)}", flush=True)
        print("refusal:", refusals[0] if refusals else None, flush=True)
        await asyncio.sleep(3600)  # idle, as the attack: the test ends this process

    asyncio.run(main())
"""


def test_1005_idle_connections_of_one_user_are_refused_beyond_the_limit_and_lock_nobody_out(cluster: Cluster) -> None:
    with open_files_limit(1024):  # the scheduler gets the default limit that 1,005 connections exhausted
        sched = cluster.scheduler(
            "--users-file", users_file(cluster.workdir, "max_connections = 50"),
            "--max-unauthenticated-per-address", "200",  # the flood logs in 100 at a time: this test is of the per-user cap
            # a flood busy with 100 logins at a time answers Pings late on a busy host: its first links
            # must not be written off as silent (that is the liveness tests' subject, not this one's)
            "--heartbeat", "60",
        )  # fmt: skip
    cluster.node(cpus=2)
    flood = cluster.client(FLOOD, "flood", args=[cluster.address])
    flood.wait_for_line(r"held \d+ refused \d+", timeout=120)
    assert "held 50 refused 955" in flood.stdout, cluster.describe()
    assert "max_connections = 50 connections to the scheduler and has 50" in flood.stdout
    assert sched.count(r"limit from client 'alice' .*max_connections = 50", "stderr") == 955
    bob_finishes(cluster)  # while alice's 50 connections stay open
    assert flood.popen.poll() is None


# --------------------------------------------------------------------------
# Privacy


def test_a_user_cannot_see_another_users_jobs_or_cluster_names(cluster: Cluster) -> None:
    cluster.scheduler("--users-file", users_file(cluster.workdir, ""))
    cluster.node(cpus=4, name="n1")
    alice = cluster.client(
        """
        import time
        from dispy_client import SharedJobCluster

        def alice_secret_computation(t):
            time.sleep(t)

        cluster = SharedJobCluster(alice_secret_computation, user="alice", secret="a-secret")
        jobs = [cluster.submit(120) for _ in range(2)]
        for j in jobs:
            j.id = "alice-private-job"
        print("submitted", flush=True)
        time.sleep(600)
        """,
        "alice",
    )
    alice.wait_for_line("submitted")
    bob = cluster.run_client(
        """
        import time
        from dispy_client import SharedJobCluster

        seen = []

        def compute(i):
            return i

        def status(*args):
            seen.append(repr(args))

        with SharedJobCluster(compute, user="bob", secret="b-secret", cluster_status=status) as cluster:
            deadline = time.monotonic() + 60
            while (st := cluster.scheduler_status())["others"]["busy"] < 2:  # alice's two jobs run
                assert time.monotonic() < deadline, st
                time.sleep(0.1)
            assert cluster.submit(7)() == 7
            seen.append(repr(st))
            seen.append(repr(cluster.node_jobs("n1")))
            seen.append(repr(cluster.status()))
        text = "\\n".join(seen)
        print("others:", st["others"], "users:", sorted(st["users"]), flush=True)
        print("nodes busy:", {n: v["busy"] for n, v in st["nodes"].items()}, flush=True)
        for secret in ("alice", "alice_secret_computation", "alice-private-job"):
            print(secret, "seen" if secret in text else "unseen", flush=True)
        """,
        "bob",
    )
    out = bob.stdout
    assert "others: {'users': 1, 'busy': 2, 'queued': 0} users: ['bob']" in out, cluster.describe()
    assert "nodes busy: {'n1': 2}" in out  # totals remain
    assert "alice unseen" in out and "alice_secret_computation unseen" in out and "alice-private-job unseen" in out
    assert alice.popen.poll() is None
