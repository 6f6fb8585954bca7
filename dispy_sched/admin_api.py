"""`dispyadmin`'s commands that talk to a running scheduler's JSON API (its --http-port).

    dispyadmin status | users | nodes | clusters | jobs [--user U] [--state S]
    dispyadmin cancel CLUSTER/JOB | --cluster CLUSTER
    dispyadmin drain NODE | undrain NODE | set-cpus NODE N | set-share USER S | reload

As an administrator by default (the admin token, read from the scheduler's
state directory), or as a user with `--as NAME` (the secret from
$DISPY_SECRET, else asked for), who sees and cancels only their own work.
`--json` prints what the API answered; otherwise a table.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from rich.console import Console
from rich.table import Table

from .config import default_state_dir
from .views import JOB_STATES

#: the port `dispyadmin` tries when no --url is given (the scheduler serves HTTP only with --http-port)
DEFAULT_HTTP_PORT = 9703
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"


class ApiFailure(Exception):
    """The scheduler refused a request, or could not be reached; the message says why."""


class ApiClient:
    def __init__(self, url: str, authorization: str, ca: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.authorization = authorization
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca) if self.url.startswith("https:") else None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", self.authorization)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                error = json.load(exc)
                raise ApiFailure(f"{error['message']} ({error['error']}, HTTP {exc.code})") from None
            except (ValueError, KeyError, TypeError):
                raise ApiFailure(f"HTTP {exc.code} {exc.reason} from {self.url}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiFailure(
                f"cannot reach the scheduler at {self.url}: {reason} (is it started with --http-port? --url says where)"
            ) from None


def client_from(args: argparse.Namespace) -> ApiClient:
    if args.login:
        secret = os.environ.get("DISPY_SECRET") or getpass.getpass(f"secret of {args.login}: ")
        auth = "Basic " + base64.b64encode(f"{args.login}:{secret}".encode()).decode()
    else:
        path = args.token_file or os.path.join(default_state_dir(), "admin-token")
        try:
            with open(path, encoding="utf-8") as f:
                auth = "Bearer " + f.read().strip()
        except OSError as exc:
            raise ApiFailure(f"cannot read the admin token: {exc} (--token-file, or --as USER to log in as a user)") from None
    return ApiClient(args.url, auth, args.ca)


# ---------------------------------------------------------------- printing


def _ago(when: float | None) -> str:
    if not when:
        return "-"
    seconds = max(0.0, time.time() - when)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 else f"{seconds / 3600:.1f} h ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} B"


def _table(title: str, columns: Sequence[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _print_status(s: dict[str, Any]) -> None:
    you = s.get("you", {})
    leader = s.get("leader")
    if s.get("role") == "standby":
        _table("scheduler", ["", ""], [
            ["version", str(s["version"])], ["role", "standing by"], ["uptime", f"{s['uptime']:.0f} s"],
            ["leader", _leader(leader) if leader else "none at the moment (a takeover is under way)"],
            ["leader's HTTP API", (leader or {}).get("http") or "unknown"],
        ])  # fmt: skip
        return
    rows = [
        ["version", str(s["version"])], ["policy", str(s["policy"])], ["uptime", f"{s['uptime']:.0f} s"],
        ["nodes", f"{s['nodes']} ({', '.join(s['drained_nodes']) or 'none'} drained)"],
        ["CPUs busy", f"{s['busy_cpus']} of {s['cpus']}"], ["jobs queued", str(s["queued_jobs"])],
        ["users", f"{s['users']} ({s['active_users']} active)"], ["clusters", str(s["clusters"])],
        ["jobs held", ", ".join(f"{n} {state}" for state, n in s["jobs"].items() if n) or "none"],
        ["you", "administrator" if you.get("admin") else f"user {you.get('user')}"],
    ]  # fmt: skip
    if leader:  # one of several schedulers on a shared state
        rows.insert(1, ["role", f"leading: {_leader(leader)}"])
    _table("scheduler", ["", ""], rows)


def _leader(leader: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(leader["since"]))
    return f"{leader['address']}, epoch {leader['epoch']}, since {since}"


def _busy(user: dict[str, Any]) -> str:
    """Its busy CPUs, and in brackets those fair share counts for it, to a tenth (not from an older scheduler).
    One column: a terminal of 80 characters shows the table without cutting words."""
    return f"{user['busy']} ({user['load']:.1f})" if "load" in user else str(user["busy"])


def _print_users(users: list[dict[str, Any]]) -> None:
    rows = [
        [u["name"], f"{u['share']:g}", f"{100 * u['target']:.0f}%", _busy(u), str(u["queued"]),
         f"{u['usage']:.0f}", str(u["clusters"]), ", ".join(f"{k}={v}" for k, v in u["limits"].items()) or "-"]
        for u in users
    ]  # fmt: skip
    _table("users", ["user", "share", "target", "busy CPUs (fair share)", "queued", "usage (CPU-s)", "clusters", "limits"], rows)


def _print_nodes(nodes: list[dict[str, Any]]) -> None:
    rows = [
        [n["name"], n["ip_addr"], n["state"], f"{n['busy_cpus']}/{n['cpus']}", str(n["offered_cpus"]),
         "-" if n["cpu_percent"] is None else f"{n['cpu_percent']:.0f}%", _size(n["memory_available"]),
         _ago(n["last_heartbeat"])]
        for n in nodes
    ]  # fmt: skip
    _table("nodes", ["node", "address", "state", "busy/CPUs", "offered", "CPU", "memory free", "heard"], rows)


def _print_clusters(clusters: list[dict[str, Any]]) -> None:
    rows = [
        [c["id"], c["user"], c["name"], ", ".join(f"{n} {s}" for s, n in c["jobs"].items() if n) or "none",
         ", ".join(c["nodes"]) or "-", _ago(c["opened"]), "attached" if c["attached"] else "away",
         "closing" if c["closing"] else "open"]
        for c in clusters
    ]  # fmt: skip
    _table(f"clusters ({len(clusters)})", ["cluster", "user", "name", "jobs", "nodes", "opened", "client", "state"], rows)


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    rows = [
        [j["id"], j["user"], j["state"], j["node"] or "-", _ago(j["submitted"]), _ago(j["started"]), _ago(j["ended"])]
        for j in jobs
    ]
    _table(f"jobs ({len(jobs)})", ["job", "user", "state", "node", "submitted", "started", "ended"], rows)


def _print_done(answer: dict[str, Any]) -> None:
    print(answer["message"])


# ---------------------------------------------------------------- commands


def _run(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None,
         show: Callable[[Any], None]) -> int:  # fmt: skip
    answer = client_from(args).call(method, path, body)
    if args.json:
        json.dump(answer, sys.stdout, indent=2)
        print()
    else:
        show(answer)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    return _run(args, "GET", "/api/v1/status", None, _print_status)


def _cmd_users(args: argparse.Namespace) -> int:
    return _run(args, "GET", "/api/v1/users", None, _print_users)


def _cmd_nodes(args: argparse.Namespace) -> int:
    return _run(args, "GET", "/api/v1/nodes", None, _print_nodes)


def _cmd_clusters(args: argparse.Namespace) -> int:
    return _run(args, "GET", "/api/v1/clusters", None, _print_clusters)


def _cmd_jobs(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("user", args.user), ("state", args.state)) if v}
    return _run(args, "GET", "/api/v1/jobs" + (f"?{urlencode(query)}" if query else ""), None, _print_jobs)


def _cmd_cancel(args: argparse.Namespace) -> int:
    if (args.job is None) == (args.cluster is None):
        raise ApiFailure("name either a job (CLUSTER/JOB, as `dispyadmin jobs` shows it) or --cluster CLUSTER")
    if args.cluster is not None:
        return _run(args, "POST", f"/api/v1/clusters/{quote(args.cluster, safe='')}/cancel", None, _print_done)
    cluster, sep, job = args.job.rpartition("/")
    if not sep or not cluster or not job.isdigit():
        raise ApiFailure(f"a job is CLUSTER/JOB, as `dispyadmin jobs` shows it, not {args.job!r}")
    return _run(args, "POST", f"/api/v1/jobs/{quote(cluster, safe='')}/{job}/cancel", None, _print_done)


def _node_path(node: str, what: str) -> str:
    return f"/api/v1/nodes/{quote(node, safe='')}/{what}"


def _cmd_drain(args: argparse.Namespace) -> int:
    return _run(args, "POST", _node_path(args.node, "drain"), None, _print_done)


def _cmd_undrain(args: argparse.Namespace) -> int:
    return _run(args, "POST", _node_path(args.node, "undrain"), None, _print_done)


def _cmd_set_cpus(args: argparse.Namespace) -> int:
    return _run(args, "POST", _node_path(args.node, "cpus"), {"cpus": args.cpus}, _print_done)


def _cmd_set_share(args: argparse.Namespace) -> int:
    return _run(args, "POST", f"/api/v1/users/{quote(args.name, safe='')}/share", {"share": args.share}, _print_done)


def _cmd_reload(args: argparse.Namespace) -> int:
    return _run(args, "POST", "/api/v1/reload", None, _print_done)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the API's subcommands to dispyadmin's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DISPY_ADMIN_URL", DEFAULT_URL),
                        help=f"the scheduler's HTTP API (default $DISPY_ADMIN_URL, else {DEFAULT_URL})")  # fmt: skip
    common.add_argument("--token-file", metavar="F", default=os.environ.get("DISPY_ADMIN_TOKEN_FILE"),
                        help="the admin token (default $DISPY_ADMIN_TOKEN_FILE, else admin-token in the scheduler's "
                             f"default state dir, {default_state_dir()})")  # fmt: skip
    common.add_argument("--as", dest="login", metavar="USER", help="log in as this user (secret: $DISPY_SECRET, else "
                        "asked for), who sees and cancels only their own clusters and jobs")  # fmt: skip
    common.add_argument("--ca", metavar="FILE", help="CA that signed the scheduler's certificate (https URLs)")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.set_defaults(run=run)
        return p

    command("status", _cmd_status, "the scheduler at a glance: version, uptime, nodes, CPUs, jobs")
    command("users", _cmd_users, "users: share, target share, busy CPUs (and as fair share counts them), queued jobs, decayed usage, limits")
    command("nodes", _cmd_nodes, "nodes: state (idle, busy, full, drained), CPUs, CPU %%, memory, last heartbeat")
    command("clusters", _cmd_clusters, "clusters: id, user, name, jobs by state, nodes it is loaded on, opened when")
    jobs = command("jobs", _cmd_jobs, "jobs held by the scheduler: queued, running, or ended and not yet collected")
    jobs.add_argument("--user", metavar="U", help="only this user's")
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    cancel = command("cancel", _cmd_cancel, "cancel a job (CLUSTER/JOB) or every unfinished job of --cluster C")
    cancel.add_argument("job", nargs="?", metavar="CLUSTER/JOB")
    cancel.add_argument("--cluster", metavar="C", help="cancel every queued and running job of this cluster")
    command("drain", _cmd_drain, "no new jobs start on NODE; its running jobs finish").add_argument("node")
    command("undrain", _cmd_undrain, "NODE takes new jobs again").add_argument("node")
    cpus = command("set-cpus", _cmd_set_cpus, "give NODE at most N of the CPUs it offers (negative: all of them)")
    cpus.add_argument("node")
    cpus.add_argument("cpus", type=int, metavar="N")
    share = command("set-share", _cmd_set_share, "change a user's fair share (until the users file is read again)")
    share.add_argument("name", metavar="USER")
    share.add_argument("share", type=float, metavar="S")
    command("reload", _cmd_reload, "read the users file again (verifiers, shares, limits) without a restart; "
            "SIGHUP does the same")  # fmt: skip
