"""One peer connection: bytes → wire messages → core events, and back.

`PeerConnection` is an `asyncio.Protocol`: it feeds received bytes to a
`FrameDecoder`, runs the handshake, turns each authenticated message into a
core event (clients and nodes may send different sets), and hands events to
the server, which batches them into one `SchedulerCore.handle` call per loop
turn. Outgoing messages, results too, are buffered and written once per turn.

Backpressure, input side: at most `MESSAGES_PER_TURN` messages of a peer
are taken in one loop turn; the rest stay undecoded in the frame decoder,
reading is paused, and the next turn (after the core has answered these)
takes more, unless its replies are still above the write mark. So the
replies one turn makes for one peer are bounded, whatever it sends at once.

Backpressure, output side: the transport's write buffer has a high-water mark
(`WRITE_HIGH`). Above it the transport pauses us (`pause_writing`): results
for this peer stop being encoded and wait as (cluster, job id, size) in
`_results`, their bytes in the journal (or, without one, in the core's
records, which hold them anyway); and we stop reading from a client, whose
requests would only add replies it does not read (a flooding client is
paused, not dropped; its kernel buffers then push back on it). Below the
low mark (`resume_writing`) both resume, and the waiting results are read
back and written a slice at a time, until the mark is reached again. So a
slow or stopped client costs the scheduler at most about `WRITE_HIGH` plus
a slice of memory, whatever piles up for it.

Bad input never escapes this module as an exception: it becomes a log line,
a `Refused` (fatal) or `Error` (non-fatal) frame to the sender, and, if
fatal, the end of this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from dispy_wire import messages as M
from dispy_wire.batching import BatchedWriter
from dispy_wire.errors import ErrorCode, RemoteWireError
from dispy_wire.framing import NEED_DATA, PRELOGIN_MAX_SIZE, PREAMBLE, FrameDecoder
from dispy_wire.handshake import HandshakeState, Peer, Role, ServerHandshake
from dispy_wire.liveness import Liveness
from dispy_wire.status import JobStatus
from dispy_wire.tls import channel_binding, peer_identity

from .core import events as E
from .core.state import result_cost
from .logsafe import peer_text

if TYPE_CHECKING:
    from .server import SchedulerServer

log = logging.getLogger(__name__)

#: bytes waiting in a connection's transport above which it pauses us (and below which, `WRITE_LOW`, resumes)
WRITE_HIGH = 4 << 20
WRITE_LOW = 1 << 20
#: results are read back and encoded in slices of about this many bytes (at least one result each)
RESULT_SLICE = 1 << 20
#: in the queue of waiting results: where a cluster's ClusterClosed goes out
CLOSED_MARK = -1
#: messages of one peer taken in one loop turn; the rest wait (undecoded) for the next
MESSAGES_PER_TURN = 1000


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
            return E.StatusRequested(session, ref, user)
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
        case M.NodeStarts(jobs):
            return E.StartsReported(session, jobs)
        case M.NodeReturned(jobs):
            return E.JobsReturned(session, jobs)
        case M.ClusterFailed(cluster_id, message):
            return E.ClusterFailedOnNode(session, cluster_id, message)
    return None


class PeerConnection(asyncio.Protocol):
    def __init__(self, server: SchedulerServer) -> None:
        self.server = server
        self.session = server.new_session_id()
        self.peer: Peer | None = None
        #: a node that said it holds jobs from before joins once it has listed them (NodeHolds)
        self.awaiting_holds: E.NodeJoined | None = None
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.host = "?"
        #: the TLS session (None: plaintext)
        self.ssl_object: ssl.SSLObject | None = None
        # small until the peer has logged in: an unauthenticated frame cannot cost us more than this
        self._decoder = FrameDecoder(PRELOGIN_MAX_SIZE)
        self._handshake: ServerHandshake | None = None
        self._writer: BatchedWriter | None = None
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        #: silence both ways, from login on (`SchedulerServer._watch_links` checks it)
        self.liveness: Liveness | None = None
        #: the transport's buffer is above WRITE_HIGH: results wait in `_results`
        self.write_paused = False
        #: terminal results not yet sent: (cluster, job id, size, its packed bytes if kept in memory); the size
        #: is those bytes' length, or else `state.result_cost` (what the store's result weighs, about as much);
        #: job id CLOSED_MARK: the cluster's ClusterClosed, which must not overtake its results
        self._results: deque[tuple[str, int, int, bytes | None]] = deque()
        self._closed: dict[str, M.ClusterClosed] = {}
        self._buffer_seen = 0  # the write buffer's size at the last liveness check
        #: reading is paused until the next turn: this turn took MESSAGES_PER_TURN messages
        self._input_held = False
        self._paused_before = False
        #: a `_pump` is scheduled for after this turn's write (one, however many deliveries the turn made)
        self._pump_scheduled = False

    # ---------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        loop = asyncio.get_running_loop()
        self._writer = BatchedWriter(loop.call_soon, self.transport.write, self.transport.is_closing)
        self.ssl_object = transport.get_extra_info("ssl_object")
        peername = transport.get_extra_info("peername")
        self.address = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.host = str(peername[0]) if peername else "?"
        self.transport.write(PREAMBLE)
        if not self.server.admit(self):
            return
        self._handshake = self.server.new_handshake(channel_binding(self.ssl_object), peer_identity(self.ssl_object))
        self.send(self._handshake.challenge())
        self._timer = loop.call_later(self.server.config.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self.liveness is not None:
            self.liveness.heard = True
        self._decoder.feed(data)
        if not self._input_held:  # else the next turn takes it
            self._take_messages()

    def _take_messages(self) -> None:
        """Handles the messages the decoder holds, up to `MESSAGES_PER_TURN`; the rest wait for the next turn."""
        taken = 0
        while not self._closing:
            if taken >= MESSAGES_PER_TURN and self.transport is not None:
                if not self._input_held:
                    self._input_held = True
                    self.transport.pause_reading()
                    asyncio.get_running_loop().call_soon(self._next_turn)  # after the core's turn (scheduled first)
                return
            taken += 1
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
        self.server.release(self)
        if self.peer is not None:
            reason = f"connection lost ({exc})" if exc else "connection closed"
            log.info("%s %s (%s) disconnected: %s", self.peer.role, peer_text(self.peer.name), self.address, reason)
            self.server.peer_left(self, reason)

    # ------------------------------------------------------------ handshake

    def _on_hello(self, msg: M.Message) -> None:
        """One handshake message: a Hello (throttled), then the proof."""
        hs = self._handshake
        if hs is None:  # refused at connection_made; its Refused is on its way
            return
        now = time.monotonic()
        if isinstance(msg, M.Hello) and hs.state is HandshakeState.AWAIT_HELLO:
            wait = self.server.throttle.retry_after(self.host, f"{msg.role}:{msg.name}", now)
            if wait > 0:
                message = f"too many failed logins, retry in {math.ceil(wait)} s"
                self.fail(RemoteWireError(ErrorCode.THROTTLED, message), fatal=True, name=msg.name)
                return
        try:
            out = hs.receive(msg)
        except RemoteWireError as exc:
            if hs.role is not None:  # a login was tried and failed: it counts against address and name
                self.server.throttle.failed(self.host, f"{hs.role}:{hs.name}", now)
                self.server.metrics_login_refused("wire")
            self.fail(exc, fatal=True, name=hs.name or None)
            return
        if isinstance(out, M.ServerFirst):
            self.send(out)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.release(self)
        refusal = self.server.admit_user(out)
        if refusal is not None:  # over a per-user limit: refused like a bad login, never registered
            self.fail(refusal, fatal=True, who=f"{out.role} {peer_text(out.name)!r}")
            return
        self._decoder.max_size = self.server.config.max_message_size
        self.peer = out
        event = self.server.peer_joined(self)
        self.send(hs.welcome(self.session, self.server.welcome_info(out.role)))
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
        if isinstance(msg, M.Ping):  # its bytes were the sign of life
            return
        if self.awaiting_holds is not None:  # a node's join waits for what it holds (its first message)
            joined, self.awaiting_holds = self.awaiting_holds, None
            if isinstance(msg, M.NodeHolds):
                self.server.submit(self.server.node_holds(joined, msg))
                return
            self.server.submit(joined)
        if self.peer.role is Role.CLIENT:
            event = _client_event(self.session, self.peer.name, msg)
        else:
            event = _node_event(self.session, msg)
        if event is None:
            what = "clients" if self.peer.role is Role.CLIENT else "nodes"
            self.fail(RemoteWireError(ErrorCode.BAD_MESSAGE, f"{type(msg).__name__} is not a message {what} may send"))
            return
        self.server.submit(event)

    # ---------------------------------------------------------- backpressure

    def _next_turn(self) -> None:
        """Takes more of a peer's held input, unless our replies to it are still above the write mark."""
        if self._closing or self.transport is None:
            return
        if self.write_paused:
            return  # resume_writing goes on
        if self._over_mark():
            # this turn's replies are not yet written: once they are, the transport pauses us or we go on
            asyncio.get_running_loop().call_soon(self._next_turn)
            return
        self._input_held = False
        self._take_messages()
        if not self._input_held and not self._closing:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        peer = self.peer
        if peer is not None and peer.role is Role.CLIENT and self.transport is not None:
            self.transport.pause_reading()  # its requests would add replies it does not read
            if not self._paused_before:  # once per connection: a slow link may pause and resume all the time
                self._paused_before = True
                log.info(
                    "client %s (%s) does not read as fast as we send: its results wait in the journal and its "
                    "requests are not read until it catches up (%d bytes unsent)",
                    peer_text(peer.name), self.address, self._buffered(),
                )  # fmt: skip

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.liveness is not None:
            self.liveness.heard = True  # it read what we sent: alive, even though we did not read it meanwhile
        log.debug("%s: resumed writing; %d results waiting", self.address, len(self._results))
        self._pump()
        if self._input_held:
            self._next_turn()  # input held back meanwhile goes on
        elif self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def drained(self) -> bool:
        """Whether the peer took some of our unsent bytes since the last call (a paused peer still reading)."""
        size = self._buffered()
        progressed = size < self._buffer_seen
        self._buffer_seen = size
        return progressed

    def sends_now(self) -> bool:
        """Whether results handed to `deliver_results` go out at once, none waiting behind others or for the
        peer to read (`SchedulerServer._send_ahead`)."""
        return self._writer is not None and not (self._closing or self.write_paused or self._results)

    def flush(self) -> None:
        """Writes what this turn queued now, not at the turn's end."""
        if self._writer is not None and not self._closing:
            self._writer.flush()

    def _buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _over_mark(self) -> bool:
        """Whether this turn's queued bytes and the transport's unsent ones are above `WRITE_HIGH` (as the
        transport judges its own buffer: above, not at, the mark pauses us)."""
        return self._writer is not None and self._writer.queued + self._buffered() > WRITE_HIGH

    def deliver_results(
        self, cluster_id: str, results: list[M.JobResult], stored: bool, pack: Callable[[M.JobResult], bytes] = M.pack_result
    ) -> None:
        """Sends results (in order, after what is queued already); while paused they wait, see the module doc.

        Args:
            stored: the journal holds the terminal ones: a waiting one keeps its id, not its bytes.
            pack: a result's packed bytes (the journal's `PackedResults.get`: those it has just stored).
        """
        behind = self.write_paused or bool(self._results)  # before this call's own results queue up
        for r in results:
            if r.status == JobStatus.PROVISIONAL_RESULT:
                # a progress report, kept nowhere: a client that is behind does not get it (the job's end it does)
                if not behind:
                    self._send_results(cluster_id, [M.pack_result(r)])
            elif stored and self.write_paused:  # read back when its turn comes: not packed now
                self._results.append((cluster_id, r.job_id, result_cost(r), None))
            else:  # its size is its bytes' (what a slice's bytes are): not measured again field by field
                data = pack(r)
                self._results.append((cluster_id, r.job_id, len(data), data))
        self._pump()
        if stored:  # what could not go now waits by id: its bytes are in the journal
            waiting = self._results
            for i in range(max(0, len(waiting) - len(results)), len(waiting)):
                c, job_id, size, packed = waiting[i]
                if packed is not None:
                    waiting[i] = (c, job_id, size, None)

    def deliver_stored(self, cluster_id: str, jobs: list[tuple[int, int]]) -> None:
        """Sends results the journal holds, by (job id, size), read back a slice at a time as the peer takes them."""
        self._results.extend((cluster_id, job_id, size, None) for job_id, size in jobs)
        self._pump()

    def _pump(self) -> None:
        """Queues waiting results for this turn's write until the transport pauses us, this turn's bytes
        reach `WRITE_HIGH` (the next turn goes on, once the transport has them), or none is left."""
        if self.transport is None or self._writer is None:
            return
        while self._results and not self.write_paused and not self._closing:
            if self._over_mark():
                if not self._pump_scheduled:  # after the write: it may pause us, or not
                    self._pump_scheduled = True
                    asyncio.get_running_loop().call_soon(self._pump_again)
                return
            cluster_id = self._results[0][0]
            batch: list[tuple[int, bytes | None]] = []
            size = 0
            if self._results[0][1] == CLOSED_MARK:
                self._results.popleft()
                self._writer.send(M.encode(self._closed.pop(cluster_id)))
                continue
            while self._results and self._results[0][0] == cluster_id and (not batch or size < RESULT_SLICE):
                if self._results[0][1] == CLOSED_MARK:
                    break
                _, job_id, cost, packed = self._results.popleft()
                batch.append((job_id, packed))
                size += cost
            missing = [job_id for job_id, packed in batch if packed is None]
            read = dict(self.server.read_packed(cluster_id, missing)) if missing else {}
            packs = [packed if packed is not None else read.get(job_id) for job_id, packed in batch]
            found = [packed for packed in packs if packed is not None]  # one acknowledged or released meanwhile is gone
            if found:  # in this turn's one write with the rest, in order
                self._send_results(cluster_id, found)

    def _send_results(self, cluster_id: str, packed: list[bytes]) -> None:
        """Queues a JobResults of results packed already (`M.pack_result`): their bytes go out as they are."""
        if self._closing or self._writer is None:
            return
        if self.liveness is not None:
            self.liveness.sent = True
        self._writer.send(M.encode_results(cluster_id, packed))

    def _pump_again(self) -> None:
        self._pump_scheduled = False
        self._pump()

    # --------------------------------------------------------------- output

    def send(self, msg: M.Message) -> None:
        """Queues a message; everything queued in one loop turn is one write."""
        if self._closing or self._writer is None:
            return
        if self.liveness is not None:
            self.liveness.sent = True
        if isinstance(msg, M.ClusterClosed) and self._results:  # after the results still waiting
            self._closed[msg.cluster_id] = msg
            self._results.append((msg.cluster_id, CLOSED_MARK, 0, None))
            return
        self._writer.send(M.encode(msg))

    def fail(
        self, exc: RemoteWireError, fatal: bool = False, name: str | None = None, quiet: bool = False, who: str = ""
    ) -> None:
        """Logs a bad input (one line, unless `quiet`), tells the sender, and (if fatal) closes.

        `name` is who an unauthenticated peer claims to be, `who` the peer as the log line should name it.
        """
        if not quiet:
            who = who or self._who(exc, name)
            log.warning(
                "%s from %s (%s): %s%s", exc.code, who, self.address, peer_text(exc.message, 500), "; closing" if fatal else ""
            )
        if fatal:
            self.send(ServerHandshake.refuse(exc))
            self.close()
        else:
            self.send(M.Error(str(exc.code), exc.message, ""))

    def _who(self, exc: RemoteWireError, name: str | None) -> str:
        """The peer as a log line names it."""
        if self.peer is not None:
            return f"{self.peer.role} {peer_text(self.peer.name)!r}"
        if name is None:
            return "unauthenticated peer"
        who = f"unauthenticated peer claiming {peer_text(name)!r}"
        hs = self._handshake
        if exc.code is ErrorCode.LOGIN_FAILED and hs is not None:
            who += " (a known name)" if hs.known else " (no such name)"  # for the operator, never the peer
        return who

    def abort(self) -> None:
        """Drops the connection at once, without flushing: for a peer that reads nothing any more."""
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    def close(self) -> None:
        if self._closing or self.transport is None:
            return
        self._closing = True
        if self._writer is not None:
            self._writer.flush()
        transport = self.transport
        # give the peer a moment to read a final Refused before the reset
        asyncio.get_running_loop().call_soon(transport.close)
