"""`dispy.httpd.DispyHTTPServer(cluster)`: dispy's monitor, a web page of a program's own clusters.

`GET /` serves the page: per cluster its nodes (CPUs this cluster is given
and busy of those the node offers, the node's CPU use, memory, disk, jobs
done, last report) and its jobs (state, node, submitted/started/ended), kept
live by server-sent events (`GET /api/v1/events`: a `snapshot` when the
cluster changes, checked every `MIN_INTERVAL`, or its nodes do, asked of the
scheduler every `PUSH_INTERVAL`), with a button to cancel a
queued or running job (`POST /api/v1/clusters/NAME/jobs/UID/cancel`). The
page's script and style are the scheduler dashboard's (dispy_sched/static:
common.js, style.css, and this page's cluster.html and cluster.js): one
copy of each, shipped as package data, nothing from the internet. They stay
there because this package already depends on dispy_sched (a `JobCluster`
runs an embedded scheduler), so no third place is needed.
`GET /cluster_status.json` (and `/api/v1/status`) gives the same as JSON.

It serves on threads of its own (the program's clusters are thread-safe to
read); it is not the scheduler's event loop.

Differences from dispy, each for a reason: it listens on 127.0.0.1 unless
`host` says otherwise (the page names hosts and jobs and cancels them:
nothing is exposed by default), and it answers only requests whose `Host` is
an address, `localhost` or the `host` it was given (so a web page elsewhere
cannot reach it by rebinding its own name to 127.0.0.1), and only JSON POSTs
(which another site's page cannot send without asking first); a port in use
(8181, dispy's, often is) falls back to a free one with a warning, since a
monitor must not stop the program (`address` says where it listens);
`shutdown()` does not linger `poll_sec`: the page is pushed to, and sees
the stream end; TLS (`certfile`) is not served (warned).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from dispy_sched.dashboard import KEEPALIVE, MAX_JOBS, MIN_INTERVAL, PUSH_INTERVAL, STATIC, static_file
from dispy_wire.dialing import is_address
from dispy_wire.errors import ErrorCode
from dispy_wire.status import JobStatus

from .errors import DispyError

log = logging.getLogger("dispy_client")

DEFAULT_PORT = 8181  # dispy's
#: what the page is made of (dispy_sched/static/)
PAGE_FILES = ("cluster.html", "cluster.js", "common.js", "style.css")
_CANCEL = re.compile(r"/api/v1/clusters/([^/]+)/jobs/(\d+)/cancel")


class DispyHTTPServer:
    """Serves the page of `cluster` (and of clusters added later).

    Args:
        cluster: a `JobCluster` or `SharedJobCluster`, or None.
        host: the address to listen on (default 127.0.0.1).
        port: the port (default dispy's 8181; a free one if that is taken).
        poll_sec, DocumentRoot, show_job_args: dispy's page settings; kept, unused (the page is pushed to).
        keyfile, certfile: dispy's TLS files; not served here (warned).
    """

    def __init__(
        self,
        cluster: Any,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        poll_sec: float = 10,
        DocumentRoot: str | None = None,  # noqa: N803  (dispy's parameter name)
        keyfile: str | None = None,
        certfile: str | None = None,
        show_job_args: bool = True,
    ) -> None:
        if certfile or keyfile:
            log.warning("DispyHTTPServer: certfile/keyfile are ignored: the page is served on plain HTTP")
        self._lock = threading.Lock()
        self._clusters: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._files = {name: static_file(name) for name in PAGE_FILES}
        if cluster is not None:
            self.add_cluster(cluster)
        host = host or "127.0.0.1"
        self._host_names = {host.lower(), "localhost"}
        handler = _handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            log.warning("DispyHTTPServer: cannot listen on port %s (%s); using a free port", port, exc)
            self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._server.serve_forever, name="dispy-httpd", daemon=True)
        self._thread.start()
        log.info("DispyHTTPServer: cluster page at http://%s:%d/", *self.address)

    def add_cluster(self, cluster: Any) -> None:
        """Adds a cluster to the page (dispy: more than one cluster per program)."""
        with self._lock:
            if cluster.name in self._clusters:
                log.warning("DispyHTTPServer: cluster %s is already shown", cluster.name)
                return
            self._clusters[cluster.name] = cluster

    def del_cluster(self, cluster: Any) -> None:
        """Stops showing `cluster`."""
        with self._lock:
            self._clusters.pop(cluster.name, None)

    def status(self) -> dict[str, Any]:
        """What `GET /cluster_status.json` returns and the page shows: per cluster name, `cluster_status`."""
        return {name: cluster_status(cluster) for name, cluster in self._shown().items()}

    def cancel(self, name: str, uid: int) -> tuple[int, dict[str, Any]]:
        """Cancels job `uid` of cluster `name`: (HTTP status, JSON answer)."""
        cluster = self._shown().get(name)
        if cluster is None:
            return 404, {"error": str(ErrorCode.UNKNOWN_CLUSTER), "message": f"no cluster {name} on this page"}
        job = cluster._tracker.get(uid)
        if job is None or cluster.cancel(job) != 0:
            return 409, {"error": "ended", "message": f"job {uid} of {name} is not queued or running"}
        log.info("DispyHTTPServer: job %s of cluster %s cancelled from the page", uid, name)
        return 200, {"ok": True, "message": f"job {job.id if job.id is not None else uid} of {name} cancelled"}

    def shutdown(self, wait: bool = True) -> None:
        """Stops serving (`wait` is dispy's: linger for a browser's last poll; open pages see their stream end)."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _shown(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._clusters)

    def _versions(self) -> list[tuple[str, int]]:
        """Changes when any shown cluster's jobs or nodes change (or clusters come and go)."""
        return [(name, c._tracker.version) for name, c in self._shown().items()]

    def allowed_host(self, header: str | None) -> bool:
        """Whether a request's `Host` names this server: an address, localhost, or the `host` it was given."""
        if not header:
            return False
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        name = name.strip("[]").lower()
        return name in self._host_names or is_address(name)


def cluster_status(cluster: Any) -> dict[str, Any]:
    """One cluster's counts, nodes (the scheduler's, with this cluster's use of them: `cluster.status()`)
    and jobs: unfinished ones, then those that ended last, at most `MAX_JOBS` (`jobs_total` counts them all)."""
    tracker = cluster._tracker
    counts = tracker.counts()
    try:
        known = cluster.status().nodes
    except (DispyError, TimeoutError) as exc:  # closing, or the scheduler is away: what its jobs told
        log.debug("DispyHTTPServer: no node status for %s: %s", cluster.name, exc)
        known = list(tracker.nodes().values())
    nodes = []
    for node in sorted(known, key=lambda n: n.name):
        avail = node.avail_info
        nodes.append({
            "name": node.name, "ip_addr": node.ip_addr, "cpus": node.cpus, "busy": node.busy,
            "offered_cpus": tracker.total_cpus(node.name) or node.cpus, "jobs_done": node.jobs_done,
            "cpu_time": round(node.cpu_time, 3), "update_time": node.update_time,
            "cpu_percent": avail.cpu if avail else None, "memory_available": avail.memory if avail else None,
            "disk_available": avail.disk if avail else None,
        })  # fmt: skip
    unfinished = sorted(tracker.unfinished(), key=lambda j: j._uid)
    ended = tracker.ended()
    jobs = [_job(j._uid, j.id, j.status, j.node, j.submit_time, j.start_time, j.end_time) for j in unfinished]
    jobs += [_job(e.uid, e.id, e.status, e.node, e.submit_time, e.start_time, e.end_time) for e in reversed(ended)]
    return {
        "jobs_submitted": counts.submitted,
        "jobs_done": counts.done,
        "jobs_failed": counts.failed,
        "jobs_running": counts.running,
        "jobs_pending": counts.pending,
        "nodes": nodes,
        "jobs": jobs[:MAX_JOBS],
        "jobs_total": len(jobs),
    }


def _job(uid: int, user_id: Any, status: int, node: str | None, submitted: float, started: float | None,
         ended: float | None) -> dict[str, Any]:  # fmt: skip
    return {
        "uid": uid,
        "id": user_id if isinstance(user_id, (int, float, str)) or user_id is None else repr(user_id)[:100],
        "state": JobStatus(status).name.lower(),
        "node": node,
        "submitted": submitted,
        "started": started,
        "ended": ended,
    }


def _handler(server: DispyHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._file("cluster.html")
            elif path.startswith("/static/") and path[8:] in PAGE_FILES:
                self._file(path[8:])
            elif path in ("/cluster_status.json", "/api/v1/status"):
                self._json(200, server.status())
            elif path == "/api/v1/events":
                self._events()
            else:
                self._json(404, {"error": "not-found", "message": f"no page {path}"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._host_ok():
                return
            self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 16))
            found = _CANCEL.fullmatch(self.path)
            if found is None:
                self._json(404, {"error": "not-found", "message": f"no action {self.path}"})
            elif (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                self._json(415, {"error": "bad-request", "message": "an action is a POST of application/json"})
            else:
                self._json(*server.cancel(unquote(found.group(1)), int(found.group(2))))

        def _host_ok(self) -> bool:
            if server.allowed_host(self.headers.get("Host")):
                return True
            self._json(421, {"error": "bad-request", "message": "this server answers only to its address or localhost"})
            return False

        def _file(self, name: str) -> None:
            self._send(200, STATIC[name], server._files[name], {"Cache-Control": "no-cache"})

        def _json(self, status: int, body: Any) -> None:
            self._send(status, "application/json", json.dumps(body, separators=(",", ":")).encode())

        def _send(self, status: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            """A `snapshot` now and after each change, a comment line when quiet, until the page or server goes."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            seen: list[tuple[str, int]] | None = None
            last, sent, made = "", time.monotonic(), 0.0
            try:
                while not server._stopping.is_set():
                    versions = server._versions()
                    # the jobs at each change; the nodes' own CPU and memory (the scheduler's) as they move
                    if versions != seen or time.monotonic() - made >= PUSH_INTERVAL:
                        seen, made = versions, time.monotonic()
                        body = json.dumps(server.status(), separators=(",", ":"))
                        if body != last:
                            self.wfile.write(f"event: snapshot\ndata: {body}\n\n".encode())
                            self.wfile.flush()
                            last, sent = body, time.monotonic()
                    if time.monotonic() - sent >= KEEPALIVE:
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                        sent = time.monotonic()
                    server._stopping.wait(MIN_INTERVAL)  # a busy cluster's changes coalesce into one snapshot
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page was closed
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
            log.debug("DispyHTTPServer: %s", format % args)

    return Handler
