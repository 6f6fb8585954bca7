"""The asyncio shell around the scheduling core.

Owns the listening socket and the peer connections; owns no scheduling state.
Events from all connections are queued and handed to the core once per loop
turn (`_drain`), so a burst of submits and results from many peers costs one
scheduling pass; the actions that come back are routed to connections, which
write once per turn. With a `StateStore` (the journal), the turn's `Persist`
action, always first, is committed before any other action is carried out,
so nothing is acknowledged that a crash could lose; at start the store is
read back into the core. A periodic tick lets the core notice silent nodes
(and, after a restart, write off jobs no node reported) and logs each user's
share and usage.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
import time
from typing import Any

from dispy_wire import messages as M
from dispy_wire.batching import by_size
from dispy_wire.handshake import Role

from .config import SchedConfig
from .conn import PeerConnection
from .core import SchedulerCore
from .core import actions as A
from .core import events as E
from .journal import StateStore

log = logging.getLogger(__name__)

TICK_INTERVAL = 1.0
#: interface addresses taken from a node's Hello (for clusters' `nodes` patterns)
MAX_ADDRESSES = 64
#: jobs and clusters a node may report holding in its Hello
MAX_HELD = 1_000_000
#: exit status when the journal cannot be written: nothing more may be acknowledged
EXIT_JOURNAL_FAILED = 3


class SchedulerServer:
    """Listens for clients and nodes and drives a `SchedulerCore`.

    Args:
        config: the checked configuration.
        core: the scheduling core (policy chosen by the caller).
        store: where accepted clusters, jobs, held results and usage are
            kept across restarts (None: nowhere; the core's `persist` must
            be on with a store, off without).
    """

    def __init__(self, config: SchedConfig, core: SchedulerCore, store: StateStore | None = None) -> None:
        self.config = config
        self.core = core
        self.store = store
        self.peers: dict[str, PeerConnection] = {}
        self._ids = itertools.count(1)
        self._pending: list[E.Event] = []
        self._drain_scheduled = False
        self._stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._last_status_log = 0.0
        self.address: tuple[str, int] = (config.host, config.port)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        if self.store is not None:
            started = time.monotonic()
            snap = self.store.load()
            restored = E.StateRestored(snap.clusters, snap.jobs, snap.usage, self.config.adopt_within)
            for action in self.core.handle(restored, now=time.time()):
                self._execute(action)
            states: dict[str, int] = {}
            for job in snap.jobs:
                states[job.state] = states.get(job.state, 0) + 1
            log.info(
                "journal: restored %d clusters, %d jobs (%s), usage of %d users in %.2f s",
                len(snap.clusters), len(snap.jobs), ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none",
                len(snap.usage), time.monotonic() - started,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PeerConnection(self), self.config.host, self.config.port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._tick_task = asyncio.create_task(self._ticker())
        return self.address

    async def stop(self) -> None:
        """Stops accepting, handles (and journals) what already arrived, then closes every connection.

        The departures that closing causes are not fed to the core: this is
        a restart, not nodes and clients leaving, so the journal keeps the
        running jobs running (their nodes keep them for a grace period and
        hand them back to the next run).
        """
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self._server is not None:
            self._server.close()
        if self._pending:
            self._drain()
        self._stopping = True
        for peer in list(self.peers.values()):
            peer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self.submit(E.Tick())
            now = time.time()
            if now - self._last_status_log >= self.config.status_log_interval:
                self._last_status_log = now
                self._log_status()

    def _log_status(self) -> None:
        """One line for the cluster, one per user that is active or has usage left."""
        status = self.core.status()
        log.info("cluster: %d nodes, %d/%d CPUs busy, %d jobs queued", len(status["nodes"]), status["busy"], status["cpus"], status["queued"])
        for name, u in sorted(status["users"].items()):
            if u["busy"] or u["queued"] or u["usage"] >= 0.5:
                limits = "".join(f", {k} {v}" for k, v in u["limits"].items())
                log.info(
                    "user %s: share %g (target %.0f%%), %d busy, %d queued, usage %.0f CPU-s%s",
                    name, u["share"], 100 * u["target"], u["busy"], u["queued"], u["usage"], limits,
                )

    # ---------------------------------------------------------------- peers

    def new_session_id(self) -> str:
        return f"s{next(self._ids)}"

    def welcome_info(self, role: Role) -> dict[str, Any]:
        return {
            "scheduler": self.config.name,
            "policy": getattr(self.core.policy, "name", ""),
            "max_message_size": self.config.max_message_size,
            # accepted jobs survive a restart here: a client need not keep them to resubmit
            "journal": self.store is not None,
        }

    def peer_joined(self, conn: PeerConnection) -> E.Event | None:
        """Registers an authenticated peer; returns the event announcing it."""
        assert conn.peer is not None
        self.peers[conn.session] = conn
        peer = conn.peer
        log.info("%s %s connected from %s", peer.role, peer.name, conn.address)
        if peer.role is Role.CLIENT:
            return None
        cpus, heartbeat = peer.info.get("cpus"), peer.info.get("heartbeat", 2.0)
        if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 0:
            cpus = 0
        if not isinstance(heartbeat, (int, float)) or not 0.05 <= heartbeat <= 3600:
            heartbeat = 2.0
        ip_addr = conn.address.rsplit(":", 1)[0]
        reported = peer.info.get("addresses")
        addresses = tuple(a for a in reported[:MAX_ADDRESSES] if isinstance(a, str)) if isinstance(reported, list) else ()
        held, loaded = peer.info.get("jobs"), peer.info.get("clusters")
        jobs = tuple(
            M.JobRef(j[0], j[1]) for j in (held[:MAX_HELD] if isinstance(held, list) else ())
            if isinstance(j, list) and len(j) == 2 and isinstance(j[0], str) and type(j[1]) is int
        )  # fmt: skip
        clusters = tuple(c for c in (loaded[:MAX_HELD] if isinstance(loaded, list) else ()) if isinstance(c, str))
        if jobs or clusters:
            log.info("node %s still holds %d jobs of %d clusters from before", peer.name, len(jobs), len(clusters))
        return E.NodeJoined(conn.session, peer.name, ip_addr, cpus, float(heartbeat), addresses, jobs, clusters)

    def peer_left(self, conn: PeerConnection, reason: str) -> None:
        if self.peers.pop(conn.session, None) is None or conn.peer is None:
            return
        if conn.peer.role is Role.CLIENT:
            self.submit(E.ClientLeft(conn.session))
        else:
            self.submit(E.NodeLeft(conn.session, reason))

    # ---------------------------------------------------------- core driving

    def submit(self, event: E.Event) -> None:
        """Queues an event for the core; all queued this turn go in one call."""
        if self._stopping:
            return
        self._pending.append(event)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._stopping:
            return
        events, self._pending = self._pending, []
        for action in self.core.handle(*events, now=time.time()):
            self._execute(action)

    def _commit(self, changes: A.Persist) -> None:
        """Writes one turn's changes; if that fails, stops before acknowledging anything more."""
        if self.store is None:
            return
        try:
            self.store.write(changes)
        except sqlite3.Error as exc:
            # acknowledging what is not recorded would break the promise the journal makes;
            # a restart (systemd) resumes from the last commit, and peers resend the rest
            log.critical("cannot write the journal: %s; exiting before anything unrecorded is acknowledged", exc)
            logging.shutdown()
            os._exit(EXIT_JOURNAL_FAILED)

    def _execute(self, action: A.Action) -> None:
        match action:
            case A.Persist():
                self._commit(action)
            case A.Dispatch(node, jobs):
                self._send(node, M.RunJobs(jobs))
            case A.DeliverResults(client, cluster_id, results):
                for batch in by_size(results):  # many large results at once (a client back) need frames
                    self._send(client, M.JobResults(cluster_id, batch))
            case A.NotifyNodes(client, cluster_id, nodes):
                self._send(client, M.NodeUpdates(cluster_id, nodes))
            case A.ForwardFile(node, put):
                self._send(node, put)
            case A.ReportFilePut(client, ref, ok, message):
                self._send(client, M.FilePutDone(ref, ok, message))
            case A.DeliverFiles(client, files):
                for some in by_size(files):
                    self._send(client, M.JobFiles(some))
            case A.NotifyStarted(client, cluster_id, starts):
                self._send(client, M.JobsStarted(cluster_id, starts))
            case A.ConfirmAccepted(client, cluster_id, job_ids):
                self._send(client, M.JobsAccepted(cluster_id, job_ids))
            case A.LoadCluster(node, cluster_id, user, computation, options):
                self._send(node, M.LoadCluster(cluster_id, user, computation, options))
            case A.KillJobs(node, refs):
                self._send(node, M.KillJobs(refs))
            case A.ConfirmResults(node, refs):
                self._send(node, M.ResultsRecorded(refs))
            case A.UnloadCluster(node, cluster_id):
                self._send(node, M.UnloadCluster(cluster_id))
            case A.ConfirmOpened(client, cluster_id, resumed):
                self._send(client, M.ClusterOpened(cluster_id, resumed))
            case A.ConfirmClosed(client, cluster_id):
                self._send(client, M.ClusterClosed(cluster_id))
            case A.ReportStatus(client, ref, status):
                self._send(client, M.Status(ref, status))
            case A.Reject(client, code, message, ref):
                log.info("refused request from %s: %s (%s)", self._who(client), message, code)
                self._send(client, M.Error(code, message, ref))
            case A.DropNode(node, reason):
                name = self._who(node)
                conn = self.peers.pop(node, None)
                if conn is not None:
                    log.warning("dropping node %s (%s): %s", name, conn.address, reason)
                    conn.close()
            case _:
                raise TypeError(f"unhandled action {action!r}")

    def _send(self, session: str, msg: M.Message) -> None:
        conn = self.peers.get(session)
        if conn is not None:
            conn.send(msg)

    def _who(self, session: str) -> str:
        conn = self.peers.get(session)
        return conn.peer.name if conn is not None and conn.peer is not None else session
