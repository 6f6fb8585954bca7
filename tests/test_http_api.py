"""The scheduler's HTTP API, /metrics and dispyadmin against real processes: scheduler, nodes, two users' programs."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispy_sched import admin
from procs import ROOT, Cluster, Proc, write_users_file
from waiting import wait_until

USERS = """
[users.alice]
secret = "a-secret"
[users.bob]
secret = "b-secret"
"""

#: a user's program: N jobs that each run until their release file appears, then prints each job's end
HOLDING = """
    import json, sys
    from dispy_client import SharedJobCluster

    def compute(release):
        import os, time
        deadline = time.monotonic() + 100
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.path.exists(release)

    user, secret, count, release = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with SharedJobCluster(compute, user=user, secret=secret) as cluster:
        jobs = [cluster.submit(f"{release}.{i}") for i in range(count)]
        print("submitted", flush=True)
        cluster.wait()
        print("ends", json.dumps([(j.id, j.status, j.result) for j in jobs]), flush=True)
    """


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class Http:
    """The scheduler's HTTP API as a test calls it."""

    def __init__(self, cluster: Cluster, scheduler: Proc) -> None:
        self.url = scheduler.wait_for_line(r"http on (\S+)").group(1)
        self.token_file = cluster.workdir / "scheduler-state" / "admin-token"
        self.token = self.token_file.read_text().strip()

    def call(self, method: str, path: str, auth: str | None = "admin", body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if auth == "admin":
            request.add_header("Authorization", f"Bearer {self.token}")
        elif auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if path.startswith("/api") else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def get(self, path: str, auth: str | None = "admin") -> Any:
        status, body = self.call("GET", path, auth)
        assert status == 200, (status, body)
        return body

    def admin(self, *args: str, login: str | None = None, expect: int = 0) -> Ran:
        """Runs `dispyadmin ARGS` against this scheduler, as the administrator or as user `login`.

        In this process (its `main`, as the console script calls it): a Python start per command would
        make these tests minutes long on a busy machine; the scheduler it talks to is a real process.
        """
        argv = [*args, "--url", self.url, "--token-file", str(self.token_file)]
        if login is not None:
            argv += ["--as", login]
        out, err = io.StringIO(), io.StringIO()
        with patch.dict(os.environ, {"DISPY_SECRET": f"{(login or '?')[0]}-secret", "COLUMNS": "200"}):
            with redirect_stdout(out), redirect_stderr(err):
                rc = admin.main(argv)
        done = Ran(rc, out.getvalue(), err.getvalue())
        assert done.returncode == expect, (args, done)
        return done

    def admin_json(self, *args: str, login: str | None = None) -> Any:
        return json.loads(self.admin(*args, "--json", login=login).stdout)


def start(cluster: Cluster, *args: str) -> tuple[Http, Proc]:
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    scheduler = cluster.scheduler("--users-file", str(users), "--http-port", "0", *args)
    return Http(cluster, scheduler), scheduler


def holding(cluster: Cluster, user: str, count: int) -> tuple[Proc, Path]:
    """A program of `user` with `count` jobs that run until `release` + ".N" exists."""
    release = cluster.workdir / f"release-{user}"
    proc = cluster.client(HOLDING, user, args=[user, f"{user[0]}-secret", str(count), str(release)])
    proc.wait_for_line("submitted")
    return proc, release


def running(http: Http, user: str | None = None) -> list[dict[str, Any]]:
    return [j for j in http.get("/api/v1/jobs?state=running") if user is None or j["user"] == user]


def test_every_view_and_dispyadmin_command_on_two_users_running_jobs(cluster: Cluster) -> None:
    http, scheduler = start(cluster)
    cluster.node(cpus=4)
    alice, alice_release = holding(cluster, "alice", 2)
    bob, bob_release = holding(cluster, "bob", 2)
    wait_until(lambda: len(running(http)) == 4, what="both users' jobs running")

    status = http.admin_json("status")
    assert (status["nodes"], status["cpus"], status["busy_cpus"], status["queued_jobs"]) == (1, 4, 4, 0)
    assert status["jobs"]["running"] == 4 and status["clusters"] == 2 and status["you"] == {"admin": True}
    assert status["version"] and status["uptime"] >= 0
    users = {u["name"]: u for u in http.admin_json("users")}
    assert {n: (u["busy"], u["queued"], u["target"]) for n, u in users.items()} == {"alice": (2, 0, 0.5), "bob": (2, 0, 0.5)}
    assert {n: u["load"] for n, u in users.items()} == {"alice": 2.0, "bob": 2.0}  # none sent ahead: as busy
    assert "2 (2.0)" in http.admin("users").stdout  # busy CPUs, and as fair share counts them
    (node,) = http.admin_json("nodes")
    assert (node["name"], node["state"], node["busy_cpus"], node["cpus"], node["offered_cpus"]) == ("node", "full", 4, 4, 4)
    assert node["memory_available"] > 0 and node["last_heartbeat"] > 0
    clusters = http.admin_json("clusters")
    assert sorted((c["user"], c["running"], c["attached"]) for c in clusters) == [("alice", 2, True), ("bob", 2, True)]
    for c in clusters:
        assert (c["name"], c["nodes"], c["closing"]) == ("compute", ["node"], False)
        assert c["jobs"] == {**dict.fromkeys(("queued", "orphaned", "finished", "terminated", "cancelled", "abandoned"), 0),
                             "running": 2}  # fmt: skip
        assert status["started"] <= c["opened"] <= time.time()
    assert [c["user"] for c in http.admin_json("clusters", login="bob")] == ["bob"]  # a user sees only their own
    table = http.admin("clusters").stdout
    assert all(c["id"] in table for c in clusters) and "2 running" in table and "alice" in table and "ago" in table
    alice_jobs = http.admin_json("jobs", "--user", "alice")
    assert [(j["user"], j["state"], j["node"]) for j in alice_jobs] == [("alice", "running", "node")] * 2
    assert all(j["started"] >= j["submitted"] > 0 and j["ended"] is None for j in alice_jobs)
    assert len(http.admin_json("jobs", "--state", "running")) == 4 and http.admin_json("jobs", "--state", "queued") == []
    table = http.admin("jobs").stdout  # the readable form names every job
    assert all(j["id"] in table for j in alice_jobs) and "running" in table

    # management: a share, a node's CPUs, the users file read again (by dispyadmin, then by SIGHUP)
    assert http.admin_json("set-share", "bob", "3")["ok"] is True
    assert {u["name"]: u["share"] for u in http.admin_json("users")}["bob"] == 3.0
    assert "1 of its 4 CPUs" in http.admin("set-cpus", "node", "1").stdout
    (node,) = http.admin_json("nodes")
    assert (node["cpus"], node["offered_cpus"], node["busy_cpus"]) == (1, 4, 4)  # running jobs are not stopped
    http.admin("set-cpus", "node", "-1")
    users_file = cluster.workdir / "users.toml"
    users_file.write_text(users_file.read_text().replace("[users.bob]", "[users.bob]\nshare = 5"))
    assert "2 users" in http.admin_json("reload")["message"]
    assert {u["name"]: u["share"] for u in http.admin_json("users")}["bob"] == 5.0  # the file's, not set-share's
    users_file.write_text(users_file.read_text().replace("share = 5", "share = 7"))
    scheduler.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: {u["name"]: u["share"] for u in http.get("/api/v1/users")}["bob"] == 7.0, what="SIGHUP's reload")

    # cancelling: one job of alice's, then bob's whole cluster
    first = alice_jobs[0]["id"]
    assert http.admin_json("cancel", first)["ok"] is True
    bob_cluster = next(c["id"] for c in clusters if c["user"] == "bob")
    assert "2 jobs" in http.admin("cancel", "--cluster", bob_cluster).stdout
    (bob_ends,) = [json.loads(line[5:]) for line in wait_until(lambda: bob.stdout.splitlines()[1:], what="bob's end")]
    assert [status for _, status, _ in bob_ends] == [8, 8]  # killed on the node: Cancelled (dispy's number)
    alice_release.with_name(f"{alice_release.name}.1").touch()
    alice.wait(60)
    assert alice.popen.returncode == 0, cluster.describe()
    (alice_ends,) = [json.loads(line[5:]) for line in alice.stdout.splitlines()[1:]]
    assert [(status, result) for _, status, result in alice_ends] == [(8, None), (11, True)]
    assert bob_release  # never released: cancelled instead


def test_a_user_sees_and_cancels_only_their_own_and_manages_nothing(cluster: Cluster) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=2)
    holding(cluster, "alice", 1)
    holding(cluster, "bob", 1)
    wait_until(lambda: len(running(http)) == 2, what="both users' jobs running")
    bob_job = running(http, "bob")[0]

    mine = http.admin_json("jobs", login="alice")
    assert [j["user"] for j in mine] == ["alice"]
    assert [c["user"] for c in http.get("/api/v1/clusters", auth="alice:a-secret")] == ["alice"]
    assert [u["name"] for u in http.admin_json("users", login="alice")] == ["alice"]
    status = http.admin_json("status", login="alice")
    assert (status["clusters"], status["jobs"]["running"], status["you"]) == (1, 1, {"admin": False, "user": "alice"})
    assert len(http.admin_json("nodes", login="alice")) == 1  # nodes are no one's secret

    refused = http.admin("jobs", "--user", "bob", login="alice", expect=1)
    assert "you may list only your own jobs" in refused.stderr and "forbidden" in refused.stderr
    refused = http.admin("cancel", bob_job["id"], login="alice", expect=1)
    assert "unknown-cluster" in refused.stderr and "HTTP 404" in refused.stderr
    refused = http.admin("cancel", "--cluster", bob_job["cluster"], login="alice", expect=1)
    assert "unknown-cluster" in refused.stderr
    for command in (["drain", "node"], ["set-cpus", "node", "1"], ["set-share", "alice", "9"], ["reload"]):
        assert "only an administrator" in http.admin(*command, login="alice", expect=1).stderr
    assert http.call("GET", "/metrics", auth="alice:a-secret")[0] == 403
    assert [j["state"] for j in running(http, "bob")] == ["running"]  # untouched by all of that

    # alice may cancel her own
    assert http.admin_json("cancel", mine[0]["id"], login="alice")["ok"] is True
    wait_until(lambda: not running(http, "alice"), what="alice's job to end")

    # refusals: no login, a wrong secret, an unknown name, a bad token: typed JSON errors, counted
    assert http.call("GET", "/api/v1/jobs", auth=None) == (401, {
        "error": "unauthorized", "message": "log in: an admin token (Authorization: Bearer) or your user name and secret",
    })  # fmt: skip
    assert http.call("GET", "/api/v1/jobs", auth="alice:b-secret") == (401, {"error": "login-failed", "message": "login failed"})
    assert http.call("GET", "/api/v1/jobs", auth="carol:a-secret")[1]["error"] == "login-failed"
    http.token, token = "wrong", http.token
    assert http.call("GET", "/api/v1/jobs")[1]["error"] == "login-failed"
    http.token = token
    assert "HTTP login of alice from 127.0.0.1 refused" in cluster.procs[0].stderr
    metrics = scrape(http)
    assert metrics[("dispy_logins_refused_total", (("via", "http"),))] == 3


def test_bad_requests_get_typed_json_errors(cluster: Cluster) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=1)
    assert http.call("GET", "/api/v1/nothing")[1]["error"] == "not-found"
    assert http.call("DELETE", "/api/v1/jobs")[1]["error"] == "method-not-allowed"
    assert http.call("GET", "/api/v1/jobs?state=sleeping") == (400, {
        "error": "bad-request", "message": "state must be one of queued, running, orphaned, finished, terminated, "
        "cancelled, abandoned, not 'sleeping'",
    })  # fmt: skip
    assert http.call("POST", "/api/v1/jobs/K/x/cancel")[0] == 400
    assert http.call("POST", "/api/v1/jobs/K/1/cancel") == (404, {"error": "unknown-cluster", "message": "no cluster K"})
    assert http.call("POST", "/api/v1/nodes/node/cpus", body={"cpus": "two"})[1]["error"] == "bad-request"
    assert http.call("POST", "/api/v1/nodes/node/cpus", body=[1])[1]["error"] == "bad-request"
    for key, path, value in (("cpus", "nodes/node/cpus", 10**400), ("share", "users/alice/share", float("inf"))):
        status, error = http.call("POST", f"/api/v1/{path}", body={key: value})  # beyond what the journal holds
        assert (status, error["error"]) == (400, "bad-request") and error["message"].startswith(f"{key} out of range")
    assert http.call("POST", "/api/v1/users/alice/share", body={"share": -1})[1]["error"] == "bad-request"
    assert http.call("POST", "/api/v1/nodes/elsewhere/cpus", body={"cpus": 1}) == (
        400, {"error": "bad-request", "message": "no node elsewhere is connected"},
    )  # fmt: skip
    assert "cannot reach the scheduler" in subprocess.run(
        [sys.executable, "-m", "dispy_sched.admin", "status", "--url", "http://127.0.0.1:9", "--token-file", str(http.token_file)],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)},
    ).stderr  # fmt: skip
    # the scheduler goes on serving
    assert http.get("/api/v1/status")["nodes"] == 1


def test_a_drained_node_finishes_its_running_job_and_starts_no_other_until_undrained(cluster: Cluster) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=1)
    alice, release = holding(cluster, "alice", 3)
    wait_until(lambda: len(running(http)) == 1, what="alice's first job running")
    assert "drained" in http.admin("drain", "node").stdout
    assert http.admin_json("nodes")[0]["state"] == "drained"
    assert http.admin_json("status")["drained_nodes"] == ["node"]
    release.with_name(f"{release.name}.0").touch()
    # the core would dispatch the next job in the very turn the first one's result arrives: once the API shows
    # that result, the others' being queued shows the drain held
    wait_until(lambda: http.admin_json("jobs", "--state", "running") == [], what="the first job to finish")
    states = sorted(j["state"] for j in http.admin_json("jobs"))
    assert states in (["queued", "queued"], ["finished", "queued", "queued"]), states  # collected or not yet
    for i in (1, 2):
        release.with_name(f"{release.name}.{i}").touch()
    http.admin("undrain", "node")
    alice.wait(60)
    assert alice.popen.returncode == 0, cluster.describe()
    assert [status for _, status, _ in json.loads(alice.stdout.splitlines()[1][5:])] == [11, 11, 11]


def scrape(http: Http) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed by prometheus-client's own parser: (sample name, labels) -> value."""
    status, text = http.call("GET", "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_a_known_workload(cluster: Cluster) -> None:
    http, _ = start(cluster)
    cluster.node(cpus=2)
    cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def compute(n):
            return n * n

        with SharedJobCluster(compute, user="alice", secret="a-secret") as cluster:
            jobs = [cluster.submit(i) for i in range(10)]
            assert [job() for job in jobs] == [i * i for i in range(10)]
        """
    )
    bob, _ = holding(cluster, "bob", 3)  # two run, one waits
    wait_until(lambda: len(running(http)) == 2, what="bob's jobs running")
    m = scrape(http)
    assert m[("dispy_jobs_ended_total", (("status", "finished"), ("user", "alice")))] == 10
    assert ("dispy_jobs_ended_total", (("status", "finished"), ("user", "bob"))) not in m
    assert m[("dispy_job_run_seconds_count", ())] == 10
    # alice's 10, bob's 2 running and 1 sent ahead to the node (--prefetch), where it waits for a CPU
    wait_until(lambda: scrape(http)[("dispy_job_dispatch_latency_seconds_count", ())] == 13, what="bob's third dispatched")
    m = scrape(http)
    assert m[("dispy_job_run_seconds_bucket", (("le", "+Inf"),))] == 10
    assert m[("dispy_user_queued_jobs", (("user", "bob"),))] == 1
    assert m[("dispy_user_queued_jobs", (("user", "alice"),))] == 0
    assert m[("dispy_user_busy_cpus", (("user", "bob"),))] == 2
    # fair share counts the one sent ahead too while none of bob's jobs has ended (no run time known yet)
    assert m[("dispy_user_fair_share_cpus", (("user", "bob"),))] == 3
    assert m[("dispy_node_busy_cpus", (("node", "node"),))] == 2
    assert m[("dispy_node_offered_cpus", (("node", "node"),))] == 2
    assert m[("dispy_nodes", (("state", "full"),))] == 1 and m[("dispy_nodes", (("state", "idle"),))] == 0
    assert m[("dispy_connections", (("role", "node"),))] == 1
    assert m[("dispy_connections", (("role", "client"),))] == 1  # bob's; alice's program has ended
    assert m[("dispy_logins_refused_total", (("via", "wire"),))] == 0
    assert 0 <= m[("dispy_scheduler_loop_lag_seconds", ())] < 5
    http.admin("drain", "node")
    assert scrape(http)[("dispy_nodes", (("state", "drained"),))] == 1
    http.admin("cancel", "--cluster", http.get("/api/v1/clusters")[0]["id"])
    wait_until(
        lambda: scrape(http).get(("dispy_jobs_ended_total", (("status", "cancelled"), ("user", "bob")))) == 3,
        what="bob's queued and running jobs counted as cancelled",
    )
    assert bob.wait(60) == 0


def test_over_tls_with_the_schedulers_certificate_users_and_dispyadmin_log_in(cluster: Cluster) -> None:
    from dispy_sched import tls_init

    pki = cluster.workdir / "tls"
    with redirect_stdout(io.StringIO()):
        assert tls_init.main(["init", str(pki), "--host", "127.0.0.1"]) == 0
    http, _ = start(cluster, "--tls-cert", str(pki / "scheduler.pem"), "--tls-key", str(pki / "scheduler.key"))
    assert http.url.startswith("https://127.0.0.1:")
    status = http.admin_json("status", "--ca", str(pki / "ca.pem"), login="alice")
    assert status["you"] == {"admin": False, "user": "alice"}
    assert http.admin_json("status", "--ca", str(pki / "ca.pem"))["you"] == {"admin": True}
    # without the CA the certificate is not trusted: refused before any secret leaves
    assert "certificate verify failed" in http.admin("status", login="alice", expect=1).stderr


def test_http_off_loopback_without_tls_is_refused_at_start_and_the_admin_token_is_private(tmp_path: Path) -> None:
    from dispy_sched.config import ConfigError, config_from_args
    from dispy_sched.httpd import load_admin_token

    args = ["--node-secret", "n", "--secret", "s", "--insecure-plaintext", "--host", "0.0.0.0"]
    with pytest.raises(ConfigError, match="refusing to serve HTTP on non-loopback address 0.0.0.0 without TLS"):
        config_from_args([*args, "--http-port", "9703", "--http-host", "0.0.0.0"])
    assert config_from_args([*args, "--http-port", "9703"]).http_host == "127.0.0.1"
    path = tmp_path / "token"
    token = load_admin_token(str(path))
    assert (path.stat().st_mode & 0o777, load_admin_token(str(path))) == (0o600, token)  # made once, then kept
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_admin_token(str(path))


class Feed:
    """The dashboard's live feed (server-sent events), read as the page reads it."""

    def __init__(self, http: Http, auth: str = "admin") -> None:
        request = urllib.request.Request(http.url + "/api/v1/events")
        if auth == "admin":
            request.add_header("Authorization", f"Bearer {http.token}")
        else:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        self.response = urllib.request.urlopen(request, timeout=60)
        assert self.response.headers["Content-Type"] == "text/event-stream"

    def next(self) -> Any:
        """The next snapshot (blocks until the scheduler sends one)."""
        lines = []
        while True:
            line = self.response.readline().decode().rstrip("\n")
            if line:
                lines.append(line)
            elif lines and lines[0] == "event: snapshot":
                return json.loads("".join(x[6:] for x in lines if x.startswith("data: ")))
            else:
                lines = []

    def until(self, predicate: Any, what: str) -> Any:
        """The first snapshot `predicate` holds for (each read blocks until the scheduler sends one)."""

        def seen() -> Any:
            snap = self.next()
            return snap if predicate(snap) else None

        return wait_until(seen, what=what)


def test_the_dashboard_page_and_its_live_feed(cluster: Cluster) -> None:
    http, _ = start(cluster)
    status, page = http.call("GET", "/", auth=None)  # the page itself is public; everything it shows is not
    assert status == 200 and "<title>dispy-shared scheduler</title>" in page and "/static/app.js" in page
    for name in ("app.js", "style.css"):
        assert http.call("GET", f"/static/{name}", auth=None)[0] == 200
    assert "http" not in http.call("GET", "/static/app.js", auth=None)[1].replace("http://www.w3.org", "")  # no CDN
    assert http.call("GET", "/api/v1/events", auth=None)[0] == 401
    cluster.node(cpus=2)
    admin_feed, alice_feed = Feed(http), Feed(http, "alice:a-secret")
    assert admin_feed.next()["status"]["you"] == {"admin": True}
    _, release = holding(cluster, "alice", 1)
    holding(cluster, "bob", 1)
    snap = admin_feed.until(lambda s: s["status"]["busy_cpus"] == 2, "both jobs running on the admin's page")
    assert sorted(j["user"] for j in snap["jobs"]) == ["alice", "bob"] and snap["nodes"][0]["busy_cpus"] == 2
    snap = alice_feed.until(lambda s: s["jobs"], "alice's job on her page")
    assert [j["user"] for j in snap["jobs"]] == ["alice"] and [u["name"] for u in snap["users"]] == ["alice"]
    assert all(set(p["busy"]) | set(p["load"]) <= {"alice"} for p in snap["history"])  # bob's CPUs are not hers to see
    # fair share counts her job from when it is sent to the node; busy, once the node has started it
    snap = alice_feed.until(lambda s: s["history"][-1]["busy"] == {"alice": 1}, "alice's job running on her chart")
    assert snap["history"][-1]["load"] == {"alice": 1.0}
    release.with_name(f"{release.name}.0").touch()
    snap = admin_feed.until(lambda s: [j["user"] for j in s["jobs"] if j["state"] == "running"] == ["bob"],
                            "the page to show alice's job ended")  # fmt: skip
    assert snap["status"]["busy_cpus"] == 1
