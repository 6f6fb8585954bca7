"""Fair share and its limits with real processes: dispyscheduler, dispynode, user programs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from procs import Cluster, write_users_file

USERS = """
[users.alice]
secret = "a-secret"
max_queued_jobs = 5
[users.bob]
secret = "b-secret"
"""

BATCH = """
    import json, os, sys, time
    from dispy_client import SharedJobCluster

    def compute(t):
        import time
        time.sleep(t)
        return t

    user, secret, jobs_count, seconds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    stop = sys.argv[6] if len(sys.argv) > 6 else None  # a backlog: run until this file appears, then cancel the rest
    with SharedJobCluster(compute, user=user, secret=secret) as cluster:
        jobs = [cluster.submit(seconds) for _ in range(jobs_count)]
        print("submitted", flush=True)
        if stop:
            deadline = time.monotonic() + 100
            while not os.path.exists(stop) and not cluster.wait(timeout=0.05):
                assert time.monotonic() < deadline, "never told to stop"
            cluster.close(terminate=True)
            jobs = [j for j in jobs if j.status == j.Finished]
        cluster.wait()
        assert all(j.status == j.Finished for j in jobs), [(j.status, j.exception) for j in jobs]
    with open(out, "w") as f:
        json.dump([j.end_time for j in jobs], f)
    """


def users_file(cluster: Cluster, text: str) -> str:
    return str(write_users_file(cluster.workdir / "users.toml", text))


def batch(cluster: Cluster, user: str, jobs: int, seconds: float, stop: Path | None = None) -> tuple[object, Path]:
    out = cluster.workdir / f"{user}.json"
    args = [user, f"{user[0]}-secret", str(jobs), str(seconds), str(out), *([str(stop)] if stop else [])]
    return cluster.client(BATCH, user, args=args), out


def test_two_users_get_half_each_of_the_completed_jobs_while_both_have_work(cluster: Cluster) -> None:
    cluster.scheduler("--users-file", users_file(cluster, USERS.replace("max_queued_jobs = 5", "")), "--policy", "fair")
    cluster.node(cpus=4)
    stop = cluster.workdir / "stop"
    # alice's backlog outlasts bob's work however late a busy machine starts him
    alice, alice_out = batch(cluster, "alice", 1000, 0.05, stop)
    alice.wait_for_line("submitted")  # type: ignore[attr-defined]
    time.sleep(1.0)  # the second user starts one second later: the scenario, not a settling delay
    bob, bob_out = batch(cluster, "bob", 200, 0.05)
    assert bob.wait(90) == 0, cluster.describe()  # type: ignore[attr-defined]
    stop.touch()
    assert alice.wait(60) == 0, cluster.describe()  # type: ignore[attr-defined]
    ends = {"alice": json.loads(alice_out.read_text()), "bob": json.loads(bob_out.read_text())}
    assert len(ends["bob"]) == 200
    # the overlap: bob's run, from his first completed job to his last
    t0, t1 = min(ends["bob"]), max(ends["bob"])
    done = {u: sum(t0 <= e <= t1 for e in es) for u, es in ends.items()}
    assert sum(done.values()) >= 40, f"too short an overlap to measure: {done}"
    share = done["bob"] / sum(done.values())
    print(f"completed during the overlap: {done}, bob's share {share:.1%}")
    assert 0.40 <= share <= 0.60, f"bob completed {share:.0%} of the jobs during the overlap: {done}"


def test_submit_beyond_max_queued_jobs_is_refused_with_a_clear_message_at_the_client(cluster: Cluster) -> None:
    cluster.scheduler("--users-file", users_file(cluster, USERS))
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster, DispyJob

        with SharedJobCluster(lambda x: x, user="alice", secret="a-secret") as cluster:
            jobs = [cluster.submit(i) for i in range(8)]  # no node: they all stay queued
            for job in jobs[5:]:
                job()
                assert job.status == DispyJob.Cancelled, job.status
                print("refused:", job.exception)
            cluster.close(terminate=True)
        """
    )
    assert client.stdout.count("refused: user alice may have at most max_queued_jobs = 5 jobs queued") == 3
    # the Error frame, logged at ERROR by the client library (here by logging's last-resort handler)
    assert "scheduler: user alice may have at most max_queued_jobs = 5" in client.stderr, client.stderr
    assert "3 of the 8 jobs submitted" in client.stderr
    scheduler = cluster.procs[0]
    assert "max_queued_jobs = 5" in scheduler.stderr


def test_decayed_usage_survives_a_scheduler_kill(cluster: Cluster) -> None:
    state = str(cluster.workdir / "state")
    users = users_file(cluster, USERS)
    first = cluster.scheduler("--users-file", users, "--state-dir", state, name="first")
    node = cluster.node(cpus=2)
    bob, _ = batch(cluster, "bob", 4, 0.3)
    assert bob.wait(60) == 0, cluster.describe()  # type: ignore[attr-defined]
    node.stop()
    first.kill9()  # no chance to save anything on the way out: the journal has it already
    second = cluster.scheduler("--users-file", users, "--state-dir", state, name="second")
    second.wait_for_line(r"usage of 1 users", stream="stderr")
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster
        with SharedJobCluster(lambda x: x, user="bob", secret="b-secret") as cluster:
            print("usage", cluster.scheduler_status()["users"]["bob"]["usage"])
        """
    )
    usage = float(client.stdout.split("usage")[1])
    # 4 jobs of 0.3 s, hardly decayed (half-life 1 h); counted once (a busy machine stretches them a little)
    assert 1.0 <= usage < 2.0, usage
