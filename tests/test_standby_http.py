"""Who leads, as the schedulers on one PostgreSQL show it (/metrics, /api/v1/status, the page, dispyadmin);
three racing for one database; the database reached over TLS with its certificate verified.

Real `dispyscheduler` processes with `--http-port 0` on a real PostgreSQL
(tests/pg.py); /metrics is parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pg import PgServer
from procs import Cluster, Proc
from waiting import wait_until

LEASE = "2"
#: (sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def start(cluster: Cluster, dsn: str, name: str) -> tuple[Proc, str, str]:
    """A scheduler on the shared database with an HTTP port: (it, its wire address, its HTTP URL)."""
    proc = cluster.scheduler("--state", dsn, "--lease", LEASE, "--http-port", "0", name=name)
    address = cluster.address
    url = proc.wait_for_line(r"http on (\S+)").group(1)
    return proc, address, url


def get(url: str, path: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def token_of(cluster: Cluster, name: str) -> str:
    return (cluster.workdir / f"{name}-state" / "admin-token").read_text().strip()


def metrics(url: str, token: str) -> Samples:
    status, text = get(url, "/metrics", token)
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def status_of(url: str, token: str) -> dict[str, Any]:
    status, text = get(url, "/api/v1/status", token)
    assert status == 200, text
    body: dict[str, Any] = json.loads(text)
    return body


def dispyadmin_status(url: str, token_file: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dispy_sched.admin", "status", "--url", url, "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done
    return done.stdout


def test_both_schedulers_say_who_leads_and_the_standby_takes_over_its_page_and_metrics(pg_dsn: str, cluster: Cluster) -> None:
    started = time.time()
    first, a, first_url = start(cluster, pg_dsn, "first")
    first.wait_for_line("leading on")
    second, b, second_url = start(cluster, pg_dsn, "second")
    wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
    assert "(standing by)" in second.stdout
    first_token, second_token = token_of(cluster, "first"), token_of(cluster, "second")

    # the leader: leading, and who it is (address, epoch), since when
    seen = metrics(first_url, first_token)
    assert seen[("dispy_scheduler_leading", ())] == 1
    assert seen[("dispy_scheduler_leader", (("address", a), ("epoch", "1")))] == 1
    since = seen[("dispy_scheduler_leader_since_seconds", ())]
    assert started - 5 <= since <= time.time() + 5
    leader = status_of(first_url, first_token)
    assert leader["role"] == "leader" and leader["leader"] == {"address": a, "epoch": 1, "since": since, "http": first_url}

    # the standby: standing by, naming the same leader
    named = ("dispy_scheduler_leader", (("address", a), ("epoch", "1")))
    seen = wait_until(lambda: _naming(metrics(second_url, second_token), named), what="the standby's /metrics to name the leader")
    assert seen[("dispy_scheduler_leading", ())] == 0
    assert seen[("dispy_scheduler_leader_since_seconds", ())] == since
    assert seen[("dispy_logins_refused_total", (("via", "http"),))] == 0
    standby = status_of(second_url, second_token)
    assert standby["role"] == "standby" and standby["leader"]["address"] == a and standby["leader"]["http"] == first_url
    # its page says it stands by and links to the leader's dashboard; the page needs no login, its API does
    status, page = get(second_url, "/", None)
    assert status == 200 and "stands by" in page and f'href="{first_url}/"' in page, page
    assert get(second_url, "/metrics", None)[0] == 401
    assert get(second_url, "/metrics", "wrong")[0] == 401
    assert metrics(second_url, second_token)[("dispy_logins_refused_total", (("via", "http"),))] == 1
    # what only the leader knows: a typed refusal that says where to go
    status, text = get(second_url, "/api/v1/nodes", second_token)
    assert status == 503 and json.loads(text)["error"] == "not-leader" and a in text and first_url in text, text
    shown = dispyadmin_status(second_url, cluster.workdir / "second-state" / "admin-token")
    assert "standing by" in shown and f"{a}, epoch 1, since" in shown, shown
    shown = dispyadmin_status(first_url, cluster.workdir / "first-state" / "admin-token")
    assert f"leading: {a}, epoch 1, since" in shown, shown

    # the leader dies: the standby leads, on the same HTTP port, and says so
    first.kill9()
    second.wait_for_line("leading on", timeout=60)
    seen = wait_until(lambda: _reachable_metrics(second_url, second_token), what="the new leader's /metrics")
    assert seen[("dispy_scheduler_leading", ())] == 1
    assert seen[("dispy_scheduler_leader", (("address", b), ("epoch", "2")))] == 1
    assert seen[("dispy_scheduler_leader_since_seconds", ())] > since
    assert status_of(second_url, second_token)["leader"]["epoch"] == 2
    status, page = get(second_url, "/", None)
    assert status == 200 and "stands by" not in page and "/static/app.js" in page  # the dashboard now
    shown = dispyadmin_status(second_url, cluster.workdir / "second-state" / "admin-token")
    assert f"leading: {b}, epoch 2, since" in shown, shown


def _reachable_metrics(url: str, token: str) -> Samples | None:
    """/metrics, or None while the port changes hands (the standby's server closed, the leader's not yet open)."""
    try:
        return metrics(url, token)
    except (urllib.error.URLError, ConnectionError):
        return None


def _naming(seen: Samples, sample: tuple[str, tuple[tuple[str, str], ...]]) -> Samples | None:
    """`seen` if it has `sample` at 1 (a standby reads the leader every lease/6 s), else None."""
    return seen if seen.get(sample) == 1 else None


def test_three_schedulers_started_at_once_elect_one_leader_and_one_successor(pg_dsn: str, cluster: Cluster) -> None:
    names = ["s0", "s1", "s2"]
    procs = {
        name: cluster.start(
            [sys.executable, "-m", "dispy_sched.main", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
             "--state-dir", str(cluster.workdir / f"{name}-state"), "--state", pg_dsn, "--lease", LEASE],
            name,
        )  # fmt: skip
        for name in names
    }  # all three race for the empty database: its schema and the leadership
    urls = {name: proc.wait_for_line(r"http on (\S+)").group(1) for name, proc in procs.items()}
    wait_until(lambda: all("listening on" in p.stdout for p in procs.values()), what="all three to listen")

    def leaders() -> list[str]:
        return [name for name, proc in procs.items() if "leading on" in proc.stdout]

    def leading() -> dict[str, float] | None:
        """Each live scheduler's dispy_scheduler_leading, once all name the same leader (None before)."""
        seen = {n: _reachable_metrics(urls[n], token_of(cluster, n)) for n in names if procs[n].popen.poll() is None}
        if any(m is None for m in seen.values()):
            return None
        named = {k for m in seen.values() if m is not None for k in m if k[0] == "dispy_scheduler_leader"}
        if len(named) != 1:
            return None
        return {n: m[("dispy_scheduler_leading", ())] for n, m in seen.items() if m is not None}

    (first,) = leaders()
    assert sum(wait_until(leading, what="all three to name one leader").values()) == 1
    assert all("standing by" in procs[n].stderr for n in names if n != first)
    assert _leader_row(pg_dsn)[0] == 1  # nobody took over from another

    procs[first].kill9()
    wait_until(lambda: len(leaders()) == 2, timeout=60, what="a standby to take over")
    (second,) = (n for n in leaders() if n != first)
    # a few leases later: still the one successor, and the last standby names it
    wait_until(lambda: _leader_row(pg_dsn)[1] >= 9, timeout=60, what="three leases of the new leader's beats")
    assert len(leaders()) == 2 and _leader_row(pg_dsn)[0] == 2
    final = wait_until(leading, what="both live schedulers to name the new leader")
    assert final == {second: 1, next(n for n in names if n not in (first, second)): 0}


def _leader_row(dsn: str) -> tuple[int, int]:
    """(epoch, beat) of the leader row."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        row = db.execute("SELECT epoch, beat FROM leader").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def test_schedulers_reach_postgresql_over_tls_with_its_certificate_verified(tmp_path: Path, cluster: Cluster) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "dispy_sched.main", "tls", "init", str(tmp_path / "pki"), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made
    pki = tmp_path / "pki"
    server = PgServer(tls=(pki / "scheduler.pem", pki / "scheduler.key"))
    try:
        dsn = f"postgresql://dispy@127.0.0.1:{server.port}/dispy?sslmode=verify-full&sslrootcert={pki / 'ca.pem'}"
        first = cluster.scheduler("--state", dsn, "--lease", LEASE, name="first")
        first.wait_for_line("leading on")
        second = cluster.scheduler("--state", dsn, "--lease", LEASE, name="second")
        wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
        with psycopg.connect(dsn, autocommit=True) as db:  # both schedulers' connections are encrypted
            row = db.execute(
                "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.datname = 'dispy' AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'"
            ).fetchone()
        assert row is not None and row[0] >= 2 and row[1] is True, row
        # a CA that did not sign the server's certificate: refused before anything is sent
        other = tmp_path / "other"
        subprocess.run([sys.executable, "-m", "dispy_sched.main", "tls", "init", str(other), "--host", "127.0.0.1"],
                       capture_output=True, timeout=60, check=True)  # fmt: skip
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            psycopg.connect(dsn.replace(str(pki / "ca.pem"), str(other / "ca.pem")), connect_timeout=10).close()
        # and a name the certificate does not hold (verify-full checks the host too)
        with pytest.raises(psycopg.OperationalError, match="does not match host name"):
            psycopg.connect(dsn.replace("127.0.0.1", "localhost"), connect_timeout=10).close()
    finally:
        cluster.stop_all()
        server.close()
