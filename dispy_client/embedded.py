"""The scheduler and node(s) a `JobCluster` starts for itself.

`EmbeddedScheduler` runs dispy_sched's `SchedulerServer` and `SchedulerCore`
in this process, on the client's loop thread (with a thread of its own, each
message between client and scheduler would wait for the GIL to change hands:
a third of the throughput), listening like `dispyscheduler` does; it keeps
no state on disk. It starts a `dispynode` process for this machine (a `localnode`,
which ends with us whatever happens), and nodes elsewhere may join it with
`dispynode --scheduler HOST:PORT --node-secret SECRET`.
`wait_node` tells when this machine's node has joined and can take jobs:
a `JobCluster` returns only then, so its first jobs do not wait on a node
that is still starting (a Python start, imports and handshake: about half a
second, more on a busy machine).

Given an IP address (127.0.0.1 by default), its listening socket is bound
when it is made, and the scheduler's code (dispy_sched, about 0.3 s of CPU
to import) is imported only in `start`: the node starts in between, and its
start-up runs beside that import on another CPU instead of after it
(benchmarks/startup.py). Given a name, it listens on every address the name
resolves to, from `start` on, and the node starts after it.

Clients other than ours cannot use it: the client secret is a random token
only this process knows. Nodes prove `secret`, the cluster's. Our own client
reaches it through an in-process pipe (`join`, pipe.py), not a socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings

from typing import TYPE_CHECKING

from dispy_wire.dialing import is_address
from dispy_wire.tls import ServerTLS, cert_fingerprint, is_loopback

from . import localnode, pipe
from .connection import LoopThread
from .errors import DispyError

if TYPE_CHECKING:
    from dispy_sched.server import SchedulerServer

log = logging.getLogger("dispy_client")


class EmbeddedScheduler:
    """A scheduler in this process, plus this machine's node.

    Args:
        loop_thread: the loop thread to run on; the owner stops it after `stop`.
        host: address to listen on ('127.0.0.1' keeps it to this machine).
        port: port to listen on (0: any free one).
        node_secret: what nodes must prove to join.
        tls: the certificate it serves TLS with (None: plaintext).

    Attributes:
        client_secret: what our own client proves (a random token).
        address: (host, port) it listens on: from the start if `listening`, else once started.
        listening: its socket is bound already (an IP address was given): a node may be started before `start`.

    Raises:
        OSError: an IP address given cannot be listened on (e.g. in use).
        TLSConfigError: `tls` names files that cannot be read.
    """

    def __init__(
        self,
        loop_thread: LoopThread,
        host: str = "127.0.0.1",
        port: int = 0,
        node_secret: str = "",
        tls: ServerTLS | None = None,
    ) -> None:
        if tls is not None:
            tls.context()  # a bad file is the constructor's error (TLSConfigError), before anything starts
        if not is_loopback(host) and not node_secret:
            warnings.warn(
                f"JobCluster: listening on {host} with an empty secret: any machine that reaches it can join "
                "as a node and receive your computation and arguments",
                stacklevel=3,
            )
        elif not is_loopback(host) and tls is None:
            warnings.warn(
                f"JobCluster: listening on {host} without TLS: nodes that join receive your computation, "
                "arguments and results in plaintext (certfile= and keyfile= serve TLS)",
                stacklevel=3,
            )
        self.client_secret = secrets.token_hex(16)
        self.node_secret = node_secret
        self._pin = cert_fingerprint(tls.cert) if tls else None
        self._tls = tls
        self._state_dir = tempfile.mkdtemp(prefix="dispy-embedded-")
        try:
            os.chmod(self._state_dir, 0o711)  # a node started as root runs jobs as another account: let it through
            self._listener = _listen(host, port) if is_address(host) else None
        except BaseException:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            raise
        self.listening = self._listener is not None
        self.address: tuple[str, int] = self._listener.getsockname()[:2] if self._listener else (host, port)
        self._server: SchedulerServer | None = None
        self._loop = loop_thread
        self._nodes: list[subprocess.Popen[bytes]] = []
        self._stopped = False
        self.node_name = socket.gethostname()  # the name this machine's node joins by

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        """Imports the scheduler's code and serves (on the socket bound when it was made, if any); returns
        (host, port).

        Raises:
            OSError: the name given cannot be listened on (e.g. in use).
        """
        from dispy_sched.config import SchedConfig
        from dispy_sched.core import SchedulerCore
        from dispy_sched.policies import load_policy
        from dispy_sched.server import SchedulerServer

        tls_cert, tls_key = (self._tls.cert, self._tls.key) if self._tls else (None, None)
        config = SchedConfig(
            host=self.address[0], port=self.address[1], secret=self.client_secret, node_secret=self.node_secret,
            state_dir=self._state_dir, name=self.node_name, tls_cert=tls_cert, tls_key=tls_key,
            # one user's jobs on its own machine: none of the per-user limits a shared scheduler sets
            user_max_connections=None, user_max_clusters=None, user_max_queued_bytes=None, user_max_held_bytes=None,
        )  # fmt: skip
        self._server = SchedulerServer(config, SchedulerCore(load_policy("fair"), config.core_config(persist=False, accounting=False)))
        self.address = self._loop.run(self._server.start(self._listener), timeout=timeout)
        return self.address

    def join(self, link: asyncio.Protocol) -> None:
        """Joins our client's link to the scheduler through an in-process pipe (on the loop thread): the same
        frames and login as over a socket, without the two system calls and wake-up a socket costs per turn.

        Raises:
            ConnectionRefusedError: it has stopped (as its closed socket would refuse a client dialing it again).
        """
        if self._stopped or self._server is None:
            raise ConnectionRefusedError("the embedded scheduler has stopped")
        from dispy_sched.conn import PeerConnection

        pipe.connect(asyncio.get_running_loop(), link, PeerConnection(self._server))

    def start_node(self, cpus: int, heartbeat: float | None = None) -> None:
        """Starts a node process for this machine offering `cpus` CPUs."""
        host, port = dialable(self.address)
        work_dir = tempfile.mkdtemp(prefix="work-", dir=self._state_dir)
        argv = ["--scheduler", f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "--cpus", str(cpus)]
        argv += ["--name", self.node_name]
        # the jobs are this program's own code: they run as its user, like the program
        argv += ["--work-dir", work_dir, "--loglevel", "WARNING", "--jobs-as-self"]
        if heartbeat:
            argv += ["--heartbeat", str(heartbeat)]
        if self._pin:
            argv += ["--tls-fingerprint", self._pin]
        # the secret goes by environment, not argv, which any local user can read
        self._nodes.append(localnode.start(argv, {"DISPY_NODE_SECRET": self.node_secret}))

    def wait_node(self, timeout: float) -> None:
        """Returns once the node `start_node` started has joined with CPUs to offer.

        Raises:
            DispyError: the node exited, or had not joined after `timeout` seconds.
        """
        proc = self._nodes[-1]
        assert self._server is not None, "wait_node before start"
        core = self._server.core

        async def joined() -> bool:
            deadline = time.monotonic() + timeout
            # polled: the core has no event for a node joining, and a node that
            # dies before joining is seen only by its exit status
            while not any(n.name == self.node_name and n.cpus > 0 for n in core.nodes.values()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.01)
            return True

        if not self._loop.run(joined()):
            rc = proc.poll()
            why = f"exited with status {rc} (its errors are above, on stderr)" if rc is not None else (
                f"had not joined the scheduler after {timeout:g} s"
            )
            raise DispyError(f"JobCluster: this machine's node (dispynode, pid {proc.pid}) {why}")

    def stop(self) -> None:
        """Stops the nodes it started, then the scheduler; removes their files. Once: later calls do nothing."""
        if self._stopped:
            return
        self._stopped = True
        for proc in self._nodes:
            localnode.stop(proc)
        self._nodes.clear()
        if self._server is not None:
            try:
                self._loop.run(self._server.stop(), timeout=10)
            except (TimeoutError, OSError) as exc:
                log.warning("stopping the embedded scheduler: %s", exc)
        if self._listener is not None:
            self._listener.close()  # (its server closed it already, if it started)
        shutil.rmtree(self._state_dir, ignore_errors=True)


def dialable(address: tuple[str, int]) -> tuple[str, int]:
    """Where this machine dials a scheduler listening on `address`: loopback for a wildcard address."""
    host, port = address
    if host in ("0.0.0.0", ""):
        return "127.0.0.1", port
    return ("::1", port) if host == "::" else (host, port)  # (an IPv6 wildcard socket takes no IPv4 here)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on IP address `host`, as asyncio's `create_server` would bind it.

    Raises:
        OSError: it cannot be listened on (e.g. in use).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=100)
    sock.setblocking(False)
    return sock
