"""`dispy.httpd.DispyHTTPServer(cluster)`: dispy's monitor, here a small JSON status server.

dispy's monitor serves a web page that polls its cluster's nodes and jobs.
This module keeps its constructor and methods so a dispy program that starts
one runs unchanged, and serves what the page would show as JSON
(`GET /cluster_status.json`, or any path): per cluster its jobs submitted,
done and pending, and its nodes with this cluster's use of them. The page
itself belongs with the scheduler's dashboard (see docs/client.md).

Differences from dispy, each for a reason: it listens on 127.0.0.1 unless
`host` says otherwise (the status names hosts and jobs: nothing is exposed
by default); a port in use (8181, dispy's, often is) falls back to a free
one with a warning, since a monitor must not stop the program (`address`
says where it listens); `shutdown()` does not linger `poll_sec` for a
browser's last poll, as there is no page polling; TLS (`certfile`) is not
served (warned).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("dispy_client")

DEFAULT_PORT = 8181  # dispy's


class DispyHTTPServer:
    """Serves the status of `cluster` (and of clusters added later) as JSON.

    Args:
        cluster: a `JobCluster` or `SharedJobCluster`, or None.
        host: the address to listen on (default 127.0.0.1).
        port: the port (default dispy's 8181; a free one if that is taken).
        poll_sec, DocumentRoot, show_job_args: dispy's page settings; kept, unused.
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
            log.warning("DispyHTTPServer: certfile/keyfile are ignored: the status is served on plain HTTP")
        self._lock = threading.Lock()
        self._clusters: dict[str, Any] = {}
        if cluster is not None:
            self.add_cluster(cluster)
        handler = _handler(self)
        try:
            self._server = ThreadingHTTPServer((host or "127.0.0.1", port), handler)
        except OSError as exc:
            log.warning("DispyHTTPServer: cannot listen on port %s (%s); using a free port", port, exc)
            self._server = ThreadingHTTPServer((host or "127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._server.serve_forever, name="dispy-httpd", daemon=True)
        self._thread.start()
        log.info("DispyHTTPServer: cluster status at http://%s:%d/cluster_status.json", *self.address)

    def add_cluster(self, cluster: Any) -> None:
        """Adds a cluster to the status (dispy: more than one cluster per program)."""
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
        """What `GET /cluster_status.json` returns."""
        with self._lock:
            clusters = dict(self._clusters)
        return {name: _cluster_status(cluster) for name, cluster in clusters.items()}

    def shutdown(self, wait: bool = True) -> None:
        """Stops serving (`wait` is dispy's: linger for a browser's last poll; there is none here)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _cluster_status(cluster: Any) -> dict[str, Any]:
    counts = cluster._tracker.counts()
    nodes = [
        {"name": n.name, "ip_addr": n.ip_addr, "cpus": n.cpus, "busy": n.busy, "jobs_done": n.jobs_done,
         "cpu_time": round(n.cpu_time, 3), "update_time": n.update_time}
        for n in sorted(cluster._tracker.nodes().values(), key=lambda n: n.name)
    ]  # fmt: skip
    return {
        "jobs_submitted": counts.submitted,
        "jobs_done": counts.done,
        "jobs_failed": counts.failed,
        "jobs_running": counts.running,
        "jobs_pending": counts.pending,
        "nodes": nodes,
    }


def _handler(server: DispyHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            body = json.dumps(server.status()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
            log.debug("DispyHTTPServer: %s", format % args)

    return Handler
