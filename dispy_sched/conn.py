"""One peer connection: bytes → wire messages → core events, and back.

`PeerConnection` is an `asyncio.Protocol`: it feeds received bytes to a
`FrameDecoder`, runs the handshake, turns each authenticated message into a
core event (clients and nodes may send different sets), and hands events to
the server, which batches them into one `SchedulerCore.handle` call per loop
turn. Outgoing messages are buffered and written once per turn.

Bad input never escapes this module as an exception: it becomes a log line,
a `Refused` (fatal) or `Error` (non-fatal) frame to the sender, and, if
fatal, the end of this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING, cast

from dispy_wire import messages as M
from dispy_wire.batching import BatchedWriter
from dispy_wire.errors import ErrorCode, RemoteWireError
from dispy_wire.framing import NEED_DATA, PREAMBLE, FrameDecoder
from dispy_wire.handshake import Peer, Role, ServerHandshake

from .core import events as E

if TYPE_CHECKING:
    from .server import SchedulerServer

log = logging.getLogger(__name__)


def _client_event(session: str, user: str, msg: M.Message) -> E.Event | None:
    match msg:
        case M.SubmitJobs(cluster_id, jobs):
            return E.JobsSubmitted(session, cluster_id, jobs)
        case M.AckResults(cluster_id, job_ids):
            return E.ResultsAcked(session, cluster_id, job_ids)
        case M.OpenCluster(cluster_id, name, computation, reentrant, options):
            return E.ClusterOpened(session, user, cluster_id, name, computation, reentrant, options)
        case M.CancelJobs(cluster_id, job_ids):
            return E.JobsCancelled(session, cluster_id, job_ids)
        case M.CloseCluster(cluster_id, terminate):
            return E.ClusterClosed(session, cluster_id, terminate)
        case M.ResetupNode(cluster_id, node, computation):
            return E.ResetupRequested(session, cluster_id, node, computation)
        case M.PutFile():
            return E.FilePutRequested(session, msg)
        case M.SetNodeCpus(cluster_id, node, cpus):
            return E.NodeCpusSet(session, cluster_id, node, cpus)
        case M.GetStatus(ref):
            return E.StatusRequested(session, ref)
    return None


def _node_event(session: str, msg: M.Message) -> E.Event | None:
    match msg:
        case M.NodeResults(results):
            return E.ResultsArrived(session, results)
        case M.Heartbeat(avail):
            return E.NodeReported(session, avail)
        case M.FilePutDone(ref, ok, message):
            return E.FilePutDone(session, ref, ok, message)
        case M.NodeFiles(files):
            return E.FilesArrived(session, files)
        case M.ClusterFailed(cluster_id, message):
            return E.ClusterFailedOnNode(session, cluster_id, message)
    return None


class PeerConnection(asyncio.Protocol):
    def __init__(self, server: SchedulerServer) -> None:
        self.server = server
        self.session = server.new_session_id()
        self.peer: Peer | None = None
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        #: the TLS session (None: plaintext), for channel binding (`dispy_wire.tls.channel_binding`)
        self.ssl_object: ssl.SSLObject | None = None
        self._decoder = FrameDecoder(server.config.max_message_size)
        self._handshake = ServerHandshake(server.config.secret_for, os.urandom(16), server.config.name)
        self._writer: BatchedWriter | None = None
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        loop = asyncio.get_running_loop()
        self._writer = BatchedWriter(loop.call_soon, self.transport.write, self.transport.is_closing)
        self.ssl_object = transport.get_extra_info("ssl_object")
        peername = transport.get_extra_info("peername")
        self.address = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.transport.write(PREAMBLE + M.encode(self._handshake.challenge()))
        self._timer = loop.call_later(self.server.config.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._decoder.feed(data)
        while not self._closing:
            try:
                msg = M.next_message(self._decoder)
            except RemoteWireError as exc:
                # a frame that decodes but is ill-typed leaves the stream in sync
                fatal = self.peer is None or exc.code is not ErrorCode.BAD_MESSAGE
                self.fail(exc, fatal=fatal)
                continue
            if msg is NEED_DATA:
                return
            assert isinstance(msg, M.Message)
            if self.peer is None:
                self._on_hello(msg)
            else:
                self._on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.peer is not None:
            reason = f"connection lost ({exc})" if exc else "connection closed"
            log.info("%s %s (%s) disconnected: %s", self.peer.role, self.peer.name, self.address, reason)
            self.server.peer_left(self, reason)

    # ------------------------------------------------------------ handshake

    def _on_hello(self, msg: M.Message) -> None:
        try:
            peer = self._handshake.receive(msg)
        except RemoteWireError as exc:
            self.fail(exc, fatal=True)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.peer = peer
        event = self.server.peer_joined(self)
        self.send(M.Welcome(self.session, self.server.welcome_info(peer.role)))
        if event is not None:
            self.server.submit(event)

    def _handshake_expired(self) -> None:
        self.fail(
            RemoteWireError(
                ErrorCode.HANDSHAKE_TIMEOUT,
                f"no handshake within {self.server.config.handshake_timeout:g} s",
            ),
            fatal=True,
        )

    # ------------------------------------------------------------- messages

    def _on_message(self, msg: M.Message) -> None:
        assert self.peer is not None
        if self.peer.role is Role.CLIENT:
            event = _client_event(self.session, self.peer.name, msg)
        else:
            event = _node_event(self.session, msg)
        if event is None:
            what = "clients" if self.peer.role is Role.CLIENT else "nodes"
            self.fail(RemoteWireError(ErrorCode.BAD_MESSAGE, f"{type(msg).__name__} is not a message {what} may send"))
            return
        self.server.submit(event)

    # --------------------------------------------------------------- output

    def send(self, msg: M.Message) -> None:
        """Queues a message; everything queued in one loop turn is one write."""
        if self._closing or self._writer is None:
            return
        self._writer.send(M.encode(msg))

    def fail(self, exc: RemoteWireError, fatal: bool = False) -> None:
        """Logs a bad input, tells the sender, and (if fatal) closes."""
        who = f"{self.peer.role} {self.peer.name!r}" if self.peer else "unauthenticated peer"
        log.warning("%s from %s (%s): %s%s", exc.code, who, self.address, exc.message, "; closing" if fatal else "")
        if fatal:
            self.send(ServerHandshake.refuse(exc))
            self.close()
        else:
            self.send(M.Error(str(exc.code), exc.message, ""))

    def close(self) -> None:
        if self._closing or self.transport is None:
            return
        self._closing = True
        if self._writer is not None:
            self._writer.flush()
        transport = self.transport
        # give the peer a moment to read a final Refused before the reset
        asyncio.get_running_loop().call_soon(transport.close)
