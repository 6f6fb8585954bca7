"""The asyncio shell around the scheduling core.

Owns the listening socket and the peer connections; owns no scheduling state.
Events from all connections are queued and handed to the core once per loop
turn (`_drain`), so a burst of submits and results from many peers costs one
scheduling pass; the actions that come back are routed to connections, which
write once per turn. With a `StateStore` (the journal), the turn's `Persist`
action, always first, is committed before the other actions are carried
out, so nothing is acknowledged that a crash could lose; the results nodes
sent, which acknowledge nothing, go to their clients while the commit is
made durable (`ahead.py`). At start the store is read back into the core. A
periodic tick lets the core notice silent nodes (and, after a restart, write
off jobs no node reported) and logs each user's share and usage.

Before login, a connection is held to little: its frames are capped
(PRELOGIN_MAX_SIZE), the connections waiting to log in are capped in all and
per address (`PreLoginGate`), failed logins are throttled per address and
name (`LoginThrottle`), and the lines any of this logs are rate-limited and
escaped (`logsafe`), so a flood costs neither memory, descriptors nor log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import logging
import os
import resource
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dispy_wire.cluster_options import BadOptions, Runtime
from dispy_wire import messages as M
from dispy_wire.batching import by_size
from dispy_wire.discovery import Throttle
from dispy_wire.errors import ErrorCode, RemoteWireError
from dispy_wire.handshake import ChannelBinding, Peer, Role, ServerHandshake
from dispy_wire.liveness import Liveness, Verdict, announced_interval, set_keepalive
from dispy_wire.version import VERSION
from dispy_wire.tls import CertIdentity, peer_common_name

from . import ahead, gcpolicy, views
from .config import ConfigError, SchedConfig, load_users
from .conn import PeerConnection
from .core import SchedulerCore
from .core import actions as A
from .core import events as E
from .gate import LoginThrottle, PreLoginGate
from .accounting import AccountingStore, log_line, log_lines
from .journal import AccountingFailed, NotLeader, StateStore, StoreFailed
from .standby import LeaderInfo
from .logsafe import peer_text

if TYPE_CHECKING:
    from .httpd import HttpApi
    from .metrics import SchedMetrics

log = logging.getLogger(__name__)
#: a line per job end (several alike in one turn share one: `accounting.log_lines`), for log shippers
accounting_log = logging.getLogger("dispy_sched.accounting")

TICK_INTERVAL = 1.0
#: without a journal, accounting records waiting for the next tick are written at once from this many on
RECORD_BATCH = 5000
#: seconds between deletions of accounting records past their retention
PRUNE_INTERVAL = 3600.0
#: jobs and clusters a node may report holding in its Hello
MAX_HELD = 1_000_000
#: characters of a node's run id (`E.NodeJoined.node_run`) taken; a longer one is ignored
MAX_NODE_RUN = 64
#: exit status when the journal cannot be written: nothing more may be acknowledged
EXIT_JOURNAL_FAILED = 3
#: the longest grace a node may announce for its jobs to wait for it (a day)
MAX_NODE_GRACE = 86400.0
#: seconds a stopping scheduler waits for its peers to read their last messages (`Restarting`)
STOP_FLUSH_TIMEOUT = 5.0

#: exit status of a leader that another scheduler replaced (leadership.py): restarted, it stands by
EXIT_NOT_LEADER = 4

#: errors of accept() that mean "out of descriptors or memory", not "this peer is bad"
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def step_down(reason: str) -> None:
    """Leaves at once, writing and sending nothing more: another scheduler leads the shared state now."""
    log.critical("stepping down: %s; exiting before anything more is written or dispatched", reason)
    logging.shutdown()
    os._exit(EXIT_NOT_LEADER)


def raise_open_files_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard one; returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, every: Throttle) -> None:
    """Turns the loop's reports of accept() running out of descriptors into one line a second, no traceback.

    asyncio reports each failed accept() through the loop's exception
    handler, with a traceback; anything else still goes to the handler that
    was there before.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
            more = every.admit(time.monotonic())
            if more is not None:
                log.error("cannot accept connections: %s%s", exc.strerror or exc, more)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def user_status_line(u: dict[str, Any]) -> str:
    """A user's line in the periodic status log, from its `views.users` entry: `busy` CPUs running its jobs, and
    the CPUs fair share counts for it (`load`, jobs sent ahead counted by the part of their stay they run)."""
    limits = "".join(f", {k} {v}" for k, v in u["limits"].items())
    paused = " (paused: results not collected)" if u["paused"] else ""
    return (
        f"user {peer_text(u['name'])}: share {u['share']:g} (target {100 * u['target']:.0f}%), {u['busy']} busy, "
        f"{u['load']:.1f} fair-share CPUs, {u['queued']} queued, usage {u['usage']:.0f} CPU-s, {u['clusters']} clusters, "
        f"{u['queued_bytes']} bytes queued, {u['held_bytes']} bytes of results held{paused}{limits}"
    )


def _log_tls_failure(why: str) -> None:
    # asyncio drops a failed TLS handshake without a word, and without the peer's address
    log.warning("TLS handshake with a peer failed: %s; connection closed", why)


class SchedulerServer:
    """Listens for clients and nodes and drives a `SchedulerCore`.

    Args:
        config: the checked configuration.
        core: the scheduling core (policy chosen by the caller).
        store: where accepted clusters, jobs, held results and usage are
            kept across restarts (None: nowhere; the core's `persist` must
            be on with a store, off without).
        accounting: where job-end records are kept (`accounting.py`).
    """

    def __init__(
        self, config: SchedConfig, core: SchedulerCore, store: StateStore | None = None,
        accounting: AccountingStore | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.core = core
        self.store = store
        #: where job-end records go (the core's `accounting` on); None: only logged
        self.accounting = accounting
        #: without a journal, the records not yet written to `accounting` (`_record`)
        self._unrecorded: list[A.JobEnd] = []
        self._last_prune = 0.0
        self.peers: dict[str, PeerConnection] = {}
        #: authenticated client connections per user, for `max_connections`
        self._client_conns: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._pending: list[E.Event] = []
        self._drain_scheduled = False
        self._stopping = False
        #: set once a stopping scheduler's last peer has gone
        self._all_gone: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._last_status_log = 0.0
        self._dispatched = False
        #: with a shared state (leadership.py): this scheduler's address, epoch and since
        self.leadership: LeaderInfo | None = None
        self.address: tuple[str, int] = (config.host, config.port)
        self._fake_key = os.urandom(32)  # unknown names' fake verifiers derive from it (dispy_wire/verifier.py)
        self.throttle = LoginThrottle()
        self._gate: PreLoginGate[PeerConnection] = PreLoginGate(
            config.max_unauthenticated, config.max_unauthenticated_per_address
        )
        self._refusals = Throttle(1.0)  # one line a second for what a flood can trigger at will
        self._accept_errors = Throttle(1.0)
        #: operators' requests the core has not answered yet, by ref
        self._asked: dict[str, asyncio.Future[A.AnswerAdmin]] = {}
        #: the HTTP API and its metrics, with `config.http_port`
        self.http: HttpApi | None = None
        self.metrics: SchedMetrics | None = None
        self.http_url = ""
        #: `handle` calls of the core so far, and a future resolved after the next one, for live views
        self.turns = 0
        self._next_turn: asyncio.Future[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Serves on `config.host`:`config.port`, or on `sock`, a listening socket its owner bound (a JobCluster
        binds its own before this module is imported, so that its node can start meanwhile)."""
        self.config.prepare_verifiers()  # the PBKDF2 of plaintext secrets now, not in the first login
        if self.store is not None:
            started = time.monotonic()
            snap = self.store.load()
            restored = E.StateRestored(snap.clusters, snap.jobs, snap.usage, self.config.adopt_within, snap.settings)
            self._carry_out(self.core.handle(restored, now=time.time()))
            states: dict[str, int] = {}
            for job in snap.jobs:
                states[job.state] = states.get(job.state, 0) + 1
            log.info(
                "journal: restored %d clusters, %d jobs (%s), usage of %d users, %d operator settings (%s) in %.2f s",
                len(snap.clusters), len(snap.jobs), ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none",
                len(snap.usage), len(snap.settings), ", ".join(f"{r.kind} {r.name}={r.value:g}" for r in snap.settings)[:500],
                time.monotonic() - started,
            )  # fmt: skip
            del snap, restored  # the rows: what the core made of them stays, out of the collector's sight
            gcpolicy.settled()
        loop = asyncio.get_running_loop()
        self._size_gate(loop)
        tls = self.config.server_tls()
        # a peer's connection_made comes after the TLS handshake: the Challenge goes out encrypted
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": self.config.host, "port": self.config.port,
                                                             "reuse_address": True}  # fmt: skip
        self._server = await loop.create_server(
            lambda: PeerConnection(self), **where, ssl=tls.context(on_failure=_log_tls_failure) if tls else None,
            ssl_handshake_timeout=self.config.handshake_timeout if tls else None,
        )  # fmt: skip
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._tick_task = asyncio.create_task(self._ticker())
        self._watch_task = asyncio.create_task(self._watch_links())
        if self.config.http_port is not None:
            await self.start_http(self.config.http_port)
        return self.address

    async def start_http(self, port: int) -> None:
        """The JSON API and /metrics on `http_host`:`port`, TLS with the wire's certificate if it has one."""
        from .httpd import HttpApi, admin_token_file, http_tls, load_admin_token  # aiohttp and prometheus-client:
        from .metrics import SchedMetrics  # 0.4 s of CPU to import, paid only by a scheduler that serves HTTP

        token_file = admin_token_file(self.config)
        token = load_admin_token(token_file)
        tls = http_tls(self.config)
        self.metrics = SchedMetrics(self)
        self.http = HttpApi(self, token, self.config.http_host, tls)
        try:
            host, bound = await self.http.start(port)
        except OSError as exc:  # said here: main's message would name the wire's address
            raise OSError(exc.errno, f"HTTP API: {exc.strerror or exc}") from None
        self._lag_task = asyncio.create_task(self.metrics.watch_loop())
        self.http_url = f"{'https' if tls else 'http'}://{host}:{bound}"
        log.info("HTTP API and /metrics on %s (admin token in %s)", self.http_url, token_file)

    async def stop(self, restarting: str = "") -> None:
        """Stops accepting, handles (and journals) what already arrived, then closes every connection.

        The departures that closing causes are not fed to the core: this is
        a restart, not nodes and clients leaving, so the journal keeps the
        running jobs running (their nodes keep them for a grace period and
        hand them back to the next run). With `restarting` (the reason),
        each logged-in peer is told first (`Restarting`), so that it waits
        quietly and redials soon instead of reporting a failure. Returns
        once every peer's connection is closed, or after `STOP_FLUSH_TIMEOUT`
        seconds for peers that read too slowly: the stop is bounded.
        """
        for task in (self._tick_task, self._watch_task, self._lag_task):
            if task is not None:
                task.cancel()
        if self.http is not None:
            await self.http.stop()
        if self._server is not None:
            self._server.close()
        if self._pending:
            self._drain()  # its Persist is committed before this returns: the journal is up to date
        self.flush_accounting()
        self._stopping = True
        self._all_gone = asyncio.Event()
        if not self.peers:
            self._all_gone.set()
        for peer in list(self.peers.values()):
            if restarting:
                peer.send(M.Restarting(restarting, 0.0))
            peer.close()
        try:
            async with asyncio.timeout(STOP_FLUSH_TIMEOUT):
                await self._all_gone.wait()
                if self._server is not None:
                    await self._server.wait_closed()
        except TimeoutError:
            log.warning(
                "%d peers did not close within %g s; leaving them", len(self.peers), STOP_FLUSH_TIMEOUT
            )

    def _size_gate(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fits the pre-login cap to our descriptors and quiets accept()'s out-of-descriptor reports."""
        before, now = raise_open_files_limit()
        # a quarter of the descriptors for connections still logging in leaves the rest to peers that did
        cap = max(8, now // 4)
        if cap < self._gate.total:
            log.warning("only %d file descriptors: at most %d connections may wait to log in", now, cap)
            self._gate.total = cap
        raised = f" (soft limit raised from {before})" if now != before else ""
        log.info(
            "file descriptors: %d%s; connections waiting to log in: at most %d, %d per address",
            now, raised, self._gate.total, self._gate.per_address,
        )  # fmt: skip
        quiet_accept_errors(loop, self._accept_errors)


    async def _ticker(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            mono = time.monotonic()
            # a tick much later than asked means we did not run (SIGSTOP, a starved loop): the core must not
            # blame the nodes for that silence
            late = mono - last - TICK_INTERVAL
            last = mono
            stalled = late if late > TICK_INTERVAL else 0.0
            if stalled:
                log.warning("the scheduler did not run for %.1f s: nodes get a fresh heartbeat window", stalled + TICK_INTERVAL)
            self.submit(E.Tick(stalled))
            await asyncio.sleep(0)  # the core takes the tick (`_drain`, called soon) before the collection's pause
            self.flush_accounting()
            last += self._collect(mono)
            now = time.time()
            if now - self._last_status_log >= self.config.status_log_interval:
                self._last_status_log = now
                self._log_status()
            if now - self._last_prune >= PRUNE_INTERVAL:
                self._last_prune = now
                self.prune_accounting(now)

    @staticmethod
    def _collect(mono: float) -> float:
        """The collector's sweep (`gcpolicy`), planned, so not a stall: the seconds it took, for the ticker to leave
        out of its lateness. A long one (the hourly thaw with a million jobs queued: 1-2 s) is logged as what it is.

        It comes just after the core took a tick, so the nodes' reports of the
        pause are read before the next tick judges their silence.
        """
        began = time.monotonic()
        thawed = gcpolicy.sweep(mono)
        took = time.monotonic() - began
        if took >= TICK_INTERVAL:
            log.info("garbage collection (%s) took %.1f s", "all objects, the hourly thaw" if thawed else "a sweep", took)
        return took

    def prune_accounting(self, now: float) -> None:
        """Deletes the accounting records older than `accounting_retention` (0: keeps them forever)."""
        if self.accounting is None or not self.config.accounting_retention:
            return
        try:
            gone = self.accounting.prune(now - self.config.accounting_retention)
        except (sqlite3.Error, StoreFailed) as exc:
            log.error("cannot prune the accounting records: %s", exc)
            return
        if gone:
            log.info("accounting: deleted %d records older than %g s", gone, self.config.accounting_retention)

    async def _watch_links(self) -> None:
        """Every half heartbeat: a Ping to each idle peer; a client silent too long is written off.

        A silent node is the core's to drop (its Tick, after three of the node's
        heartbeats, since the node's reports are its sign of life): one place decides that.
        """
        while True:
            await asyncio.sleep(self.config.heartbeat / 2)
            now = time.monotonic()
            for conn in list(self.peers.values()):
                live = conn.liveness
                if live is None:
                    continue
                if conn.write_paused and conn.drained():
                    live.heard = True  # it reads what we send, though we stopped reading it
                verdict = live.check(now)
                if verdict is Verdict.PING:
                    conn.send(M.Ping())
                elif verdict is Verdict.SILENT and conn.peer is not None and conn.peer.role is Role.CLIENT:
                    self._write_off(conn, live.silence(now))

    def _write_off(self, conn: PeerConnection, silence: float) -> None:
        """Drops a client that sent nothing for too long: stopped, partitioned, or its host gone."""
        assert conn.peer is not None
        log.warning(
            "client %s (%s) silent for %.1f s: writing it off (its clusters wait, detached, for it to reconnect)",
            peer_text(conn.peer.name), conn.address, silence,
        )  # fmt: skip
        self.peer_left(conn, f"silent for {silence:.1f} s")
        conn.abort()  # not close(): a peer that reads nothing would keep a flush (and its descriptor) waiting

    def _log_status(self) -> None:
        """One line for the cluster, one per user that is active or has usage left."""
        status = self.core.status()
        log.info("cluster: %d nodes, %d/%d CPUs busy, %d jobs queued", len(status["nodes"]), status["busy"], status["cpus"], status["queued"])
        for u in views.users(self.core, None):
            if u["busy"] or u["queued"] or u["usage"] >= 0.5 or u["held_bytes"]:
                log.info("%s", user_status_line(u))

    # ---------------------------------------------------------------- peers

    def new_session_id(self) -> str:
        return f"s{next(self._ids)}"

    def new_handshake(self, channel_binding: ChannelBinding | None, certificate: CertIdentity | None) -> ServerHandshake:
        return ServerHandshake(
            self.config.verifier_for, self._fake_key, self.config.name, channel_binding,
            certificate=certificate, certificate_allowed=self.config.certificate_allowed,
        )  # fmt: skip

    def admit(self, conn: PeerConnection) -> bool:
        """Counts a new connection as waiting to log in; refuses it (or evicts the oldest) past the caps."""
        admitted, evicted = self._gate.admit(conn, conn.host)
        if not admitted:
            self._refuse(
                conn,
                f"too many connections from {conn.host} waiting to log in (at most {self._gate.per_address})",
            )
            return False
        if evicted is not None:
            self._refuse(
                evicted,
                f"too many connections waiting to log in (at most {self._gate.total}): the longest waiting is closed",
            )
        return True

    def release(self, conn: PeerConnection) -> None:
        """`conn` logged in or went away: it no longer waits."""
        self._gate.release(conn)

    def _refuse(self, conn: PeerConnection, why: str) -> None:
        """Closes a connection over a pre-login cap: a Refused to it, one log line a second for all of them."""
        more = self._refusals.admit(time.monotonic())
        if more is not None:
            log.warning("refused %s: %s%s", conn.address, why, more)
        conn.fail(RemoteWireError(ErrorCode.LIMIT, why), fatal=True, quiet=True)

    def welcome_info(self, role: Role) -> dict[str, Any]:
        return {
            "scheduler": self.config.name,
            "version": VERSION,
            "policy": getattr(self.core.policy, "name", ""),
            "max_message_size": self.config.max_message_size,
            # accepted jobs survive a restart here: a client need not keep them to resubmit
            "journal": self.store is not None,
            # we send at least this often; a peer silent for liveness.MISSES of its own intervals is written off
            "heartbeat": self.config.heartbeat,
        }

    def admit_user(self, peer: Peer) -> RemoteWireError | None:
        """Why an authenticated peer may not stay (its user's `max_connections`), or None."""
        if peer.role is not Role.CLIENT:
            return None
        limit = self.config.limits_for(peer.name).max_connections
        if limit is None or self._client_conns[peer.name] < limit:
            return None
        return RemoteWireError(
            ErrorCode.LIMIT,
            f"user {peer.name} may have at most max_connections = {limit} connections to the scheduler "
            f"and has {self._client_conns[peer.name]}",
        )

    def peer_joined(self, conn: PeerConnection) -> E.Event | None:
        """Registers an authenticated peer; returns the event announcing it."""
        assert conn.peer is not None
        self.peers[conn.session] = conn
        peer = conn.peer
        cn = peer_common_name(conn.ssl_object)  # mutual TLS: shown, not yet checked against the name
        version = peer.info.get("version")
        log.info(
            "%s %s connected from %s%s%s", peer.role, peer_text(peer.name), conn.address,
            f" (certificate CN={cn})" if cn else "",
            f", dispy-shared {peer_text(version, 40)}" if isinstance(version, str) else "",
        )  # fmt: skip
        heartbeat = announced_interval(peer.info, self.config.heartbeat)
        conn.liveness = Liveness.start(self.config.heartbeat, heartbeat, time.monotonic())
        if conn.transport is not None:
            set_keepalive(conn.transport.get_extra_info("socket"))
        if peer.role is Role.CLIENT:
            self._client_conns[peer.name] += 1
            return None
        cpus = peer.info.get("cpus")
        if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 0:
            cpus = 0
        ip_addr = conn.address.rsplit(":", 1)[0]
        reported = peer.info.get("addresses")
        addresses = tuple(a for a in reported[: M.HELLO_MAX_ADDRESSES] if isinstance(a, str)) if isinstance(reported, list) else ()
        try:
            runtime = Runtime.from_wire(peer.info["runtime"]) if "runtime" in peer.info else None
        except BadOptions as exc:
            log.warning("node %s reported a bad runtime (%s); taken to fit every cluster", peer_text(peer.name), exc)
            runtime = None
        grace = peer.info.get("scheduler_grace")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_NODE_GRACE:
            grace = 0.0  # not announced (an older node) or nonsense: its jobs are written off as they always were
        run = peer.info.get("node_run")  # an older node does not say: nothing is inferred of what it does not hold
        joined = E.NodeJoined(
            conn.session, peer.name, ip_addr, cpus, float(heartbeat), addresses, runtime=runtime, grace=float(grace),
            queues=peer.info.get("queues") is True,  # an older node runs all it is sent at once: no window
            node_run=run if isinstance(run, str) and 0 < len(run) <= MAX_NODE_RUN else "",
        )
        if peer.info.get("holds") is True:  # its NodeHolds comes next: the core hears of it with those
            conn.awaiting_holds = joined
            return None
        return joined

    def node_holds(self, joined: E.NodeJoined, msg: M.NodeHolds) -> E.NodeJoined:
        """The node's join, with the jobs and clusters it still holds from an earlier session."""
        jobs, clusters = tuple(msg.jobs[:MAX_HELD]), tuple(msg.clusters[:MAX_HELD])
        log.info("node %s still holds %d jobs of %d clusters from before", peer_text(joined.name), len(jobs), len(clusters))
        # a list cut short proves nothing of the jobs left out (they may run there): no run, no inference
        run = joined.node_run if len(msg.jobs) <= MAX_HELD else ""
        return dataclasses.replace(joined, jobs=jobs, clusters=clusters, node_run=run)

    def peer_left(self, conn: PeerConnection, reason: str) -> None:
        if self.peers.pop(conn.session, None) is None or conn.peer is None:
            return
        if self._all_gone is not None and not self.peers:
            self._all_gone.set()
        if conn.peer.role is Role.CLIENT:
            self._client_conns[conn.peer.name] -= 1
            if not self._client_conns[conn.peer.name]:
                del self._client_conns[conn.peer.name]
            self.submit(E.ClientLeft(conn.session))
        else:
            self.submit(E.NodeLeft(conn.session, reason))

    # ------------------------------------------------------------ operators

    def ask(self, make: Callable[[str], E.Event]) -> asyncio.Future[A.AnswerAdmin]:
        """Hands an operator's request (built around a fresh ref) to the core; resolves to its answer."""
        ref = f"a{next(self._ids)}"
        future: asyncio.Future[A.AnswerAdmin] = asyncio.get_running_loop().create_future()
        self._asked[ref] = future
        future.add_done_callback(lambda _: self._asked.pop(ref, None))
        self.submit(make(ref))
        return future

    def read_users(self) -> Callable[[str], E.Event]:
        """Reads the users file again: its verifiers apply to the next logins, its shares and limits
        to the core once the returned request is asked.

        Raises:
            ConfigError: no users file, or one the scheduler would not start with (nothing changes).
        """
        if not self.config.users_file:
            raise ConfigError("no users file to read again: the scheduler was started without --users-file")
        self.config.users = load_users(self.config.users_file)
        if self.http is not None:
            self.http.logins.forget()
        cfg = self.config
        shares, limits, default = cfg.shares(), cfg.limits(), cfg.default_limits()
        return lambda ref: E.UsersReloaded(ref, shares, limits, default)

    async def reload(self) -> None:
        """SIGHUP: reads the users file again, logging the outcome."""
        try:
            answer = await self.ask(self.read_users())
        except ConfigError as exc:
            log.error("reload refused, the users file is unchanged in memory: %s", exc)
            return
        log.info("SIGHUP: %s", answer.message)

    def metrics_login_refused(self, via: str) -> None:
        if self.metrics is not None:
            self.metrics.logins_refused.labels(via).inc()

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
        self._carry_out(self.core.handle(*events, now=time.time()), events)
        if self.store is not None:  # its results have gone out (or wait on disk): their packed bytes are not needed
            self.store.packed.clear()
        self.turns += 1
        if self._next_turn is not None:
            self._next_turn.set_result(None)
            self._next_turn = None

    def next_turn(self) -> asyncio.Future[None]:
        """A future resolved once the core has handled its next batch of events (something may have changed)."""
        if self._next_turn is None:
            self._next_turn = asyncio.get_running_loop().create_future()
        return self._next_turn

    def _carry_out(self, actions: list[A.Action], events: Sequence[E.Event] = ()) -> None:
        """The actions of the core's call on `events`: its changes committed first (`_commit_turn`)."""
        if actions and isinstance(actions[0], A.Persist):
            actions = self._commit_turn(actions[0], actions[1:], events)
        for action in actions:
            self._execute(action)

    def _commit_turn(self, changes: A.Persist, actions: list[A.Action], events: Sequence[E.Event]) -> list[A.Action]:
        """Commits a turn's changes, with its accounting records (in the same transaction: one fsync, not
        two), sending what need not wait for the commit while it is made durable (`ahead.py`: results its
        nodes sent in `events`, ...); returns the turn's actions left to carry out."""
        ends = None
        if actions and isinstance(actions[0], A.RecordJobEnds):
            ends, actions = actions[0].ends, actions[1:]
        early: list[A.Action] = []
        if self.store is not None:  # (it calls `_send_ahead` back)
            from_nodes = {id(r) for event in events if isinstance(event, E.ResultsArrived) for r in event.results}
            early, actions = ahead.split(actions, self._sends_now, from_nodes)
        kept = self._commit(
            changes, ends if self.accounting is self.store else None, (lambda: self._send_ahead(early)) if early else None
        )
        if ends is not None:
            self._record(ends, kept=kept)
        return actions

    def _sends_now(self, client: str) -> bool:
        conn = self.peers.get(client)
        return conn is not None and conn.sends_now()

    def _send_ahead(self, actions: list[A.Action]) -> None:
        """Carries out actions (`ahead.split`'s first list) and writes their clients' frames now. Called by the store inside
        its transaction: an error of ours must not undo the turn's changes there (the core has made them), so
        none leaves here."""
        for action in actions:
            try:
                self._execute(action)
            except Exception:
                log.exception("cannot carry out %s ahead of the journal commit", type(action).__name__)
        for client in {getattr(action, "client") for action in actions}:
            conn = self.peers.get(client)
            if conn is None:
                continue
            try:
                conn.flush()
            except Exception:
                log.exception("cannot write to %s ahead of the journal commit", conn.address)

    def _commit(
        self, changes: A.Persist, ends: list[A.JobEnd] | None = None, before_commit: Callable[[], None] | None = None
    ) -> bool | None:
        """Writes one turn's changes, and its accounting records `ends` with them; if the changes cannot be
        written, stops before acknowledging anything more. Returns whether `ends` were kept (None: not given)."""
        if self.store is None:
            return None
        try:
            self.store.write(changes, ends, before_commit)
        except NotLeader as exc:
            step_down(str(exc))
        except AccountingFailed as exc:  # the changes are written: the results go out, the log lines keep the records
            log.error("cannot write %d accounting records: %s", len(ends or ()), exc)
            return False
        except (sqlite3.Error, StoreFailed) as exc:
            # acknowledging what is not recorded would break the promise the journal makes;
            # a restart (systemd) resumes from the last commit, and peers resend the rest
            log.critical("cannot write the journal: %s; exiting before anything unrecorded is acknowledged", exc)
            logging.shutdown()
            os._exit(EXIT_JOURNAL_FAILED)
        return None if ends is None else True

    def _record(self, ends: list[A.JobEnd], kept: bool | None = None) -> None:
        """The job ends' records in the state database (unless `kept` says whether the journal's commit took
        them), their log lines (`log_lines`: several alike share one; without a database to keep the records,
        or when it fails, a line per job: the log keeps each record) and metrics.

        Without a journal, the records wait in `_unrecorded` for the next tick (`flush_accounting`), or until
        `RECORD_BATCH` of them do: one transaction a second, not one per turn (accounting.py says what a
        killed scheduler loses)."""
        if kept is None:
            kept = self.accounting is not None
            if self.accounting is not None and self.store is None:
                self._unrecorded.extend(ends)
                if len(self._unrecorded) >= RECORD_BATCH:
                    self.flush_accounting()
            elif self.accounting is not None:
                kept = self._write_records(ends)
        if accounting_log.isEnabledFor(logging.INFO):  # a line per turn or job: not built for nobody to read
            for line in log_lines(ends) if kept else map(log_line, ends):
                accounting_log.info("%s", line)
        if self.metrics is not None:
            self.metrics.ended(ends)

    def _write_records(self, ends: list[A.JobEnd]) -> bool:
        """Writes accounting records to `accounting`; returns whether it could."""
        assert self.accounting is not None
        try:
            self.accounting.record(ends)
        except (sqlite3.Error, StoreFailed) as exc:  # the jobs' results still go out: the log lines keep them
            log.error("cannot write %d accounting records: %s", len(ends), exc)
            return False
        return True

    def flush_accounting(self) -> None:
        """Writes the records waiting in `_unrecorded`; if it cannot, logs each of them (their log lines so far
        may have been summaries)."""
        ends, self._unrecorded = self._unrecorded, []
        if ends and not self._write_records(ends) and accounting_log.isEnabledFor(logging.INFO):
            for end in ends:
                accounting_log.info("%s", log_line(end))

    def _execute(self, action: A.Action) -> None:
        match action:
            case A.RecordJobEnds(ends):
                self._record(ends)
            case A.Dispatch(node, jobs):
                if not self._dispatched:  # after a takeover: when the new leader got going (benchmarks/pg_store.py)
                    self._dispatched = True
                    log.info("first dispatch since start: %d jobs to node %s", len(jobs), peer_text(self._who(node)))
                self._send(node, M.RunJobs(jobs))
                if self.metrics is not None:
                    self.metrics.dispatched(jobs)
            case A.AnswerAdmin(ref):
                future = self._asked.pop(ref, None)
                if future is not None and not future.done():
                    future.set_result(action)  # its asker logs it
            case A.DeliverResults(client, cluster_id, results):
                conn = self.peers.get(client)
                if conn is not None:  # it writes them in slices, or keeps them waiting while the client is slow
                    if self.store is None:
                        conn.deliver_results(cluster_id, results, stored=False)
                    else:  # the bytes this turn's commit stored go out as they are
                        conn.deliver_results(cluster_id, results, stored=True, pack=self.store.packed.get)
            case A.DeliverStored(client, cluster_id, jobs):
                conn = self.peers.get(client)
                if conn is not None:
                    conn.deliver_stored(cluster_id, jobs)
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
            case A.RecallJobs(node, refs):
                self._send(node, M.RecallJobs(refs))
            case A.ConfirmResults(node, refs):
                self._send(node, M.ResultsRecorded(refs))
            case A.UnloadCluster(node, cluster_id):
                self._send(node, M.UnloadCluster(cluster_id))
            case A.ConfirmOpened(client, cluster_id, resumed, known):
                cluster = self.core.clusters.get(cluster_id)
                if cluster is not None:
                    log.info(
                        "cluster %s (%s) of user %s %s", peer_text(cluster.name, 200), cluster_id,
                        peer_text(cluster.user), "re-attached" if resumed else "opened",
                    )  # fmt: skip
                self._send(client, M.ClusterOpened(cluster_id, resumed))
                if known is not None:
                    self._send(client, M.JobsKnown(cluster_id, known))
            case A.ConfirmClosed(client, cluster_id):
                log.info("cluster %s of user %s closed", cluster_id, peer_text(self._who(client)))
                self._send(client, M.ClusterClosed(cluster_id))
            case A.ResumeCancelling():
                # on the next loop turn, with whatever else has arrived by then: each call cancels one slice
                self.submit(E.CancellingResumed())
            case A.ReportStatus(client, ref, status):
                if self.leadership is not None:  # one of several schedulers on a shared state: this one leads
                    status = {**status, "leader": self.leadership.as_json()}
                self._send(client, M.Status(ref, status))
            case A.ReleaseCluster(user, cluster_id, name, results, jobs, _):
                log.warning(
                    "released cluster %s (%s) of user %s: its program was away for %g s or more (result retention); "
                    "%d results nobody collected dropped, %d queued or running jobs cancelled",
                    peer_text(name), cluster_id, peer_text(user), self.core.config.result_retention, results, jobs,
                )  # fmt: skip
            case A.NotifyUnusable(client, user, cluster_id, name, node, ip_addr, reason):
                log.warning("cluster %s (%s) of user %s cannot run on node %s: %s",
                            peer_text(name), cluster_id, peer_text(user), peer_text(node), peer_text(reason, 500))  # fmt: skip
                self._send(client, M.NodeUnusable(cluster_id, node, ip_addr, reason))
            case A.Reject(client, code, message, ref):
                log.info("refused request from %s: %s (%s)", peer_text(self._who(client)), peer_text(message, 500), code)
                self._send(client, M.Error(code, message, ref))
            case A.DropNode(node, reason):
                name = self._who(node)
                conn = self.peers.pop(node, None)
                if conn is not None:
                    log.warning("dropping node %s (%s): %s", peer_text(name), conn.address, peer_text(reason, 500))
                    conn.close()
            case _:
                raise TypeError(f"unhandled action {action!r}")

    def read_packed(self, cluster_id: str, job_ids: list[int]) -> list[tuple[int, bytes]]:
        """Held results read back from the store as it packed them, by job id, for a connection that sends them now."""
        if self.store is None:
            return []  # without a store the core hands every result over in its action
        try:
            return self.store.read_packed(cluster_id, job_ids)
        except sqlite3.Error as exc:  # they stay in the store: the client gets them when it re-attaches
            log.error("cannot read %d held results of cluster %s from the journal: %s", len(job_ids), cluster_id, exc)
            return []

    def _send(self, session: str, msg: M.Message) -> None:
        conn = self.peers.get(session)
        if conn is not None:
            conn.send(msg)

    def _who(self, session: str) -> str:
        conn = self.peers.get(session)
        return conn.peer.name if conn is not None and conn.peer is not None else session
