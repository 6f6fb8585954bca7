"""`JobCluster`: dispy's cluster with nothing to set up.

It starts its own scheduler in this process and a node for this machine's
CPUs (`embedded.py`), then is a `BaseCluster` over them like any
`SharedJobCluster`. `close()` stops both, and so does leaving the program
without closing it, once its jobs have run (atexit, as in dispy; if the
process is killed, the node notices its lifeline close and stops itself).
A constructor that fails stops whatever it had started before raising.

`JobCluster()` returns once its local node has joined and can take jobs,
as a user expects of a cluster that "has" this machine's CPUs; a node that
cannot start is an error then, not jobs that never run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from dispy_wire import isolation
from dispy_wire.tls import ClientTLS, ServerTLS, cert_fingerprint

from .cluster import BaseCluster
from .connection import LoopThread
from .errors import DispyError
from .job import DispyJob
from .node import NodeAllocate, allocate_cpus
from .options import cluster_options
from .packaging import computation_name

log = logging.getLogger("dispy_client")

#: seconds the local node may take to start and join: bounds a hang only (a
#: node joins in about half a second, a few on a heavily loaded machine)
LOCAL_NODE_TIMEOUT = 60.0


def local_cpus(nodes: list[NodeAllocate]) -> int:
    """The CPUs of this machine that `nodes` lets the cluster use (all when it says nothing).

    Only `NodeAllocate`'s own rule (host, pattern, cpus) is applied here: a
    subclass's `allocate` is the user's code, run once when the node joins
    (as dispy does), when the cluster exists; it narrows this node then.
    """
    total = os.cpu_count() or 1  # what a node reports (psutil.cpu_count: the same sysconf), without psutil's import
    plain = [_as_plain(n) for n in nodes]
    return max(allocate_cpus(plain, None, ip, socket.gethostname(), total) for ip in ("127.0.0.1", _own_ip()))


def _as_plain(entry: NodeAllocate) -> NodeAllocate:
    if type(entry).allocate is NodeAllocate.allocate:
        return entry
    return NodeAllocate(entry.host, entry.port, entry.cpus)


def _own_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class JobCluster(BaseCluster):
    """A cluster with its own scheduler and this machine's CPUs (dispy's parameters, in dispy's order).

    Args:
        computation: the function each job calls, or a program's path.
        nodes: host names, IP patterns with `*`, `(host, port, cpus)` tuples or
            `NodeAllocate`s: how many of this machine's CPUs to use (all by
            default; none if the list matches no address of this machine:
            then only nodes that join from elsewhere run jobs).
        depends: files, modules, functions and classes jobs need.
        job_status: called as `job_status(job)` on each job status change
            (`callback` is its deprecated alias).
        cluster_status: called as `cluster_status(status, node, job)`.
        ip_addr: address the scheduler listens on (default 127.0.0.1; another
            one lets nodes elsewhere join with `dispynode --scheduler ip_addr:port`).
        port: its port (default: any free one).
        certfile, keyfile: dispy's names: the certificate and key its scheduler
            serves TLS with; nodes that join verify it (`dispynode --tls-ca` or
            `--tls-fingerprint`), its own node by fingerprint.
        **kwargs: the rest of dispy's parameters (`setup`, `cleanup`,
            `reentrant`, `secret` (what joining nodes prove), `pulse_interval`
            (the local node's heartbeat), `loglevel`, `dest_path`,
            `recover_file`, ...) and `isolation`: "worker" by default here
            (processes reused for many jobs), "fork" for a process per job as
            in SharedJobCluster (docs/isolation.md). See docs/client.md.

    Returns once this machine's node (if `nodes` gives it CPUs) has joined
    and can take jobs.

    Raises:
        OSError: the scheduler cannot listen on `ip_addr`:`port`.
        TypeError: a keyword dispy does not have.
        DispyError: the local node exited, or had not joined within
            `LOCAL_NODE_TIMEOUT` seconds (the cluster is closed again).
    """

    def __init__(
        self,
        computation: Callable[..., Any] | str,
        nodes: Any = None,
        depends: Sequence[Any] = (),
        job_status: Callable[[DispyJob], Any] | None = None,
        cluster_status: Callable[..., Any] | None = None,
        ip_addr: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> None:
        # dispy's certfile/keyfile: here the certificate our own scheduler serves TLS with
        certfile, keyfile = kwargs.pop("certfile", None), kwargs.pop("keyfile", None)
        # dispy 4.15's names: `host` where the client (here: its scheduler) listens, `dispy_port` its port
        ip_addr = ip_addr or kwargs.pop("host", None)
        port = port or kwargs.pop("dispy_port", None)
        ours = "a JobCluster's scheduler is its own: it verifies nothing (certfile/keyfile are its certificate)"
        options = cluster_options(
            "JobCluster", kwargs, {"tls_ca": ours, "tls_fingerprint": ours},
            nodes=nodes, depends=depends, job_status=job_status, cluster_status=cluster_status,
        )  # fmt: skip
        server_tls = ServerTLS(os.fspath(certfile), os.fspath(keyfile) if keyfile else None) if certfile else None
        # our link to our own scheduler, in this process: its bytes never leave this host; pinned under TLS
        pin = cert_fingerprint(server_tls.cert) if server_tls else None
        options.tls, options.insecure_plaintext = ClientTLS(fingerprint=pin) if pin else None, True
        if options.isolation is None:  # one user's jobs on their own machine: reuse processes (docs/isolation.md)
            options.isolation = isolation.WORKER
        # one loop thread for the client and its scheduler: no GIL hand-off between them per message
        cpus = local_cpus(options.nodes)
        loop_thread = LoopThread(f"dispy-{computation_name(computation)}-io")
        from .embedded import EmbeddedScheduler, dialable  # the scheduler: made by a JobCluster, not every client

        try:
            self._embedded = EmbeddedScheduler(
                loop_thread, ip_addr or "127.0.0.1", int(port or 0), options.secret, server_tls
            )
        except BaseException:
            loop_thread.stop()
            raise
        try:
            early = cpus > 0 and self._embedded.listening
            if early:  # the node starts while the scheduler's code is imported (`start`)
                self._embedded.start_node(cpus, options.pulse_interval)
            host, bound_port = dialable(self._embedded.start())
            if cpus > 0 and not early:
                self._embedded.start_node(cpus, options.pulse_interval)
            options.secret = self._embedded.client_secret
            super().__init__(computation, host, bound_port, options, loop_thread, pipe=self._embedded.join)
        except BaseException:  # nothing it started may outlive it (BaseCluster stopped its own part)
            self._embedded.stop()
            loop_thread.stop()
            raise
        if cpus > 0:
            try:
                self._embedded.wait_node(LOCAL_NODE_TIMEOUT)
            except DispyError:
                self.close(terminate=True)
                raise
            # the local node's Initialized (and allocation) come before anything the program does next
            if (options.cluster_status is not None or self._allocators) and not self._tracker.wait_announced(
                self._embedded.node_name, LOCAL_NODE_TIMEOUT
            ):
                log.warning("JobCluster: the scheduler did not announce this machine's node to the cluster")
        self._ready()

    @property
    def scheduler_address(self) -> tuple[str, int]:
        """(host, port) where nodes of other machines join this cluster."""
        return self._embedded.address

    def _stop_io(self) -> None:
        """After the cluster is closed: stops its node(s), its scheduler, then the loop."""
        self._embedded.stop()
        super()._stop_io()
