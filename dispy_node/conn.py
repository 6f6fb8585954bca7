"""The node's connection to the scheduler: handshake, heartbeats, dispatch, results, reconnect.

Theory of operation. `run_node` dials the scheduler, again and again: each
connection is one `_Session`, using the node's one `Runner`. A session authenticates
(`PeerHandshake`), prints `connected to H:P`, sends a Heartbeat at once and
every `heartbeat` seconds, turns scheduler messages into runner calls, and
sends the runner's results in batches: one `NodeResults` frame per event-loop
turn (split only to stay far below the wire's frame limit).

When the connection ends, for whatever reason, the jobs go on: the runner
belongs to a `JobKeeper` (keeper.py), which keeps their results until the
next session, reports what it still holds in that session's Hello (the
scheduler adopts or kills each job), and kills everything only if no
session comes within `scheduler_grace` seconds. Then `run_node` redials
with exponential backoff and jitter. A scheduler that misses a sign of life
is not waited out: the session asks the other schedulers the node knows, and
with `--discover` broadcasts, who leads (again after a back-off while it stays
silent), and leaves it at once for a successor that took over. A refusal that retrying cannot
cure (bad secret, unknown node, other protocol version) ends the daemon with
status 2 instead. With TLS (`config.tls`) the scheduler proves itself (CA and
name, or pinned fingerprint) before the node writes a byte; one that fails is
logged as untrusted and redialed like one that is down, so a fixed certificate
is picked up without a restart. A scheduler off loopback without TLS (one
found by discovery) ends the daemon with status 2 unless `--insecure-plaintext`.

What outlives a session is `NodeControl`: the CPU offer (`availability`:
service window, yielding to the machine's owner, drain), the count of
clusters served (`--serve N`) and the decision to exit. Each heartbeat
samples the outside load, asks for the offer and reports it; a change (a
drain) sends one at once. The daemon exits with status 0 when it drains and
no job is left, or when it has served its N clusters and none is loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import platform
import random
import ssl
import time
from collections.abc import Callable
import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispy_wire.cluster_options import Runtime
from dispy_wire.batching import by_size
from dispy_wire.errors import ErrorCode, RemoteWireError
from dispy_wire.framing import NEED_DATA, PREAMBLE, FrameDecoder
from dispy_wire.handshake import HandshakeState, PeerHandshake, Role
from dispy_wire.liveness import Liveness, Verdict, announced_interval, set_keepalive
from dispy_wire.dialing import addresses_of, another_leads, leader_host
from dispy_wire.schedulers import FIRST_DEADLINE, Schedulers, deadline, format_address, parse_address
from dispy_wire.version import VERSION
from dispy_wire.tls import ClientTLS, UntrustedScheduler, channel_binding, describe_failure, plaintext_refusal
from dispy_wire.messages import (
    HELLO_MAX_ADDRESSES,
    ClusterFailed,
    Error,
    FilePutDone,
    Heartbeat,
    JobFile,
    JobRef,
    JobResult,
    KillJobs,
    LoadCluster,
    Message,
    NodeFiles,
    NodeHolds,
    NodeReturned,
    NodeStarts,
    NodeResults,
    Ping,
    PutFile,
    RecallJobs,
    Refused,
    Restarting,
    ResultsRecorded,
    RunJobs,
    UnloadCluster,
    Welcome,
    encode,
    next_message,
)

from . import NodeError, report
from .account import Account, AccountPool
from .availability import Availability, Rules
from .cgroups import JobGroups
from .keeper import ClusterFailure, JobKeeper, Output, Returned
from .limits import Limits
from .runner import RunnerConfig
from .worker import WorkerPolicy

logger = logging.getLogger(__name__)

#: finds the scheduler's (host, port), e.g. by UDP discovery
Locate = Callable[[], Awaitable[tuple[str, int]]]
#: asks once, e.g. by UDP discovery, whether a scheduler other than the one we are connected to ((host, port),
#: at ip) leads now: its address, or None (nobody answered, or the answer names ours)
Probe = Callable[[tuple[str, int], str], Awaitable[str | None]]
#: refusals after which redialing cannot help: the operator must act
#: refusals that retrying cannot cure (a throttled or unverified scheduler may be cured by time: those retry)
FATAL_CODES = frozenset({ErrorCode.LOGIN_FAILED, ErrorCode.CERTIFICATE, ErrorCode.BAD_VERSION})
#: seconds between dials while standbys name no leader (a takeover under way)
STANDBY_RETRY = 0.5
#: seconds before a silent scheduler's peer asks again who leads, doubling up to the second (a partitioned node
#: asks a handful of times before it gives the scheduler up, not once per check)
ASK_AGAIN = (0.5, 8.0)
#: seconds to connect and log in (with several schedulers, the most a round gives one: schedulers.deadline)
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything the daemon is told by its flags and config file."""

    host: str
    port: int
    cpus: int
    name: str
    node_secret: str
    heartbeat: float
    work_dir: Path
    kill_grace: float
    account: Account | None = None
    caps: Limits = Limits()
    max_output: int = 4 << 20
    setup_timeout: float = 60.0
    rules: Rules | None = None  # None: all `cpus`, always
    serve: int | None = None  # exit after serving this many clusters
    cgroups: JobGroups | None = None  # where jobs make their control groups, if the host allows
    spawn: bool = not hasattr(os, "fork")  # each job a new interpreter (see loading.py)
    accounts: AccountPool | None = None  # --job-uids: a uid per cluster (shared by the sessions' runners)
    tls: ClientTLS | None = None  # how the scheduler proves itself; None: plaintext (loopback only)
    insecure_plaintext: bool = False  # plaintext to a scheduler off loopback too
    scheduler_grace: float = 60.0  # jobs outlive a lost scheduler connection this long
    workers: WorkerPolicy = WorkerPolicy()  # --isolation, --worker-jobs, --worker-memory-growth
    #: more schedulers sharing one state (`--scheduler a:9702,b:9702`): one leads, the others stand by
    standbys: tuple[tuple[str, int], ...] = ()

    def runner_config(self, ip_addr: str) -> RunnerConfig:
        """The runner's settings for one session; `ip_addr` is ours on its connection."""
        return RunnerConfig(
            self.work_dir, kill_grace=self.kill_grace, account=self.account, accounts=self.accounts, caps=self.caps,
            max_output=self.max_output, setup_timeout=self.setup_timeout, node_name=self.name, node_ip_addr=ip_addr,
            cgroups=self.cgroups, spawn=self.spawn, workers=self.workers,
        )  # fmt: skip

    @property
    def by_certificate(self) -> bool:
        """No node secret but a client certificate: the node logs in by the certificate (EXTERNAL)."""
        return not self.node_secret and self.tls is not None and self.tls.cert is not None

    @property
    def scheduler(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class SchedulerRefused(NodeError):
    """The scheduler refused us (`Refused` frame), or spoke another protocol version."""

    def __init__(self, code: str, message: str, leader: str = "") -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.leader = leader  # a standby's answer (code not-leader): where the leader is

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES


class Backoff:
    """Delays between dials: `first` doubling to `maximum`, each drawn in [d/2, d]."""

    def __init__(self, first: float = 0.2, maximum: float = 10.0) -> None:
        self.first = first
        self.maximum = maximum
        self._delay = first

    def reset(self) -> None:
        self._delay = self.first

    def next(self) -> float:
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.maximum)
        return delay


def _local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


@dataclass
class NodeControl:
    """The daemon's state across sessions: what it offers and when it is done."""

    config: NodeConfig
    clock: Callable[[], dt.datetime] = _local_now
    availability: Availability = field(init=False)
    served: set[str] = field(default_factory=set)  # clusters loaded so far (`--serve`), each counted once
    done: asyncio.Event = field(default_factory=asyncio.Event)  # exit with status 0
    poke: asyncio.Event = field(default_factory=asyncio.Event)  # heartbeat now
    keeper: JobKeeper = field(init=False)  # the jobs, across sessions
    #: where the node's one-line status goes (systemd's STATUS=, by main); called when it changes
    on_status: Callable[[str], None] | None = None
    _status: str = field(default="", init=False)
    #: stopping for good (SIGTERM): the next Heartbeat tells the scheduler not to wait for our jobs
    leaving: bool = False
    said_goodbye: asyncio.Event = field(default_factory=asyncio.Event)  # that Heartbeat is written
    #: the address another scheduler was last found leading at, when the one served fell silent (dialed first)
    leads_at: str = ""
    #: that leader's whole address when a probe (`--discover`'s broadcast) found it: dialed instead of locating
    found_leader: str = ""

    def __post_init__(self) -> None:
        self.availability = Availability(self.config.rules or Rules(self.config.cpus), self.clock())
        self.keeper = JobKeeper(self.config.scheduler_grace)

    def show(self, status: str) -> None:
        """Passes a new status line on (`systemctl status dispynode`), once per change."""
        if status != self._status and self.on_status is not None and not self.availability.draining:
            self._status = status
            self.on_status(status)

    def drain(self) -> None:
        """Takes no new jobs (offers 0 CPUs); the node exits once its running ones are done."""
        logger.info("draining: running jobs finish, no new ones are taken, then the node exits")
        self.availability.draining = True
        self.poke.set()

    def leave(self) -> None:
        """We stop and our jobs die with us: a Heartbeat now says so (`scheduler_grace` 0), so the scheduler
        reruns or abandons them at once instead of waiting our grace for a node that is not coming back."""
        self.leaving = True
        self.poke.set()

    def may_load(self, cluster_id: str) -> bool:
        """Counts a new cluster against `--serve` (a reload of one served is free); False once that many were."""
        if cluster_id in self.served:
            return True
        if self.config.serve is not None and len(self.served) >= self.config.serve:
            return False
        self.served.add(cluster_id)
        return True

    def check_done(self, busy: int, clusters: int) -> None:
        drained = self.availability.draining and busy == 0
        served = self.config.serve is not None and len(self.served) >= self.config.serve and clusters == 0
        if drained or served:
            self.done.set()


async def run_node(
    config: NodeConfig, control: NodeControl | None = None, locate: Locate | None = None, probe: Probe | None = None
) -> int:
    """Serves the scheduler until cancelled or `control.done`; returns 2 if it refuses us for good.

    Args:
        locate: finds the scheduler's (host, port) again before each redial
            (`--discover`: it may have moved); None redials the same address.
        probe: asks who leads when the scheduler served falls silent, besides the
            other schedulers the node is given (`--discover`: by broadcast).
    """
    control = control or NodeControl(config)
    report.prime()
    backoff = Backoff()
    schedulers = Schedulers(",".join(format_address(h, p) for h, p in ((config.host, config.port), *config.standbys)), config.port)
    finished = asyncio.create_task(control.done.wait())
    failures = 0  # dials in a row that reached no leader
    try:
        while True:
            attempt = asyncio.create_task(_connect_once(config, backoff, control, failures // len(schedulers), schedulers, probe))
            await asyncio.wait({attempt, finished}, return_when=asyncio.FIRST_COMPLETED)
            if finished.done():
                attempt.cancel()  # the session's cleanup kills what is left
                await asyncio.gather(attempt, return_exceptions=True)
                logger.info("node done: exiting")
                return 0
            failures = 0 if not attempt.cancelled() and attempt.exception() is None else failures + 1
            try:
                attempt.result()
                if len(schedulers) > 1 and locate is None:  # lost: the leader may have died or stopped
                    host, port = schedulers.rotate()  # a standby (taking over, or naming the leader) first
                    config = dataclasses.replace(config, host=host, port=port)
            except PlaintextRefused as exc:
                logger.error("%s; giving up", exc)
                return 2
            except (UntrustedScheduler, ssl.SSLCertVerificationError) as exc:
                why = describe_failure(exc) if isinstance(exc, ssl.SSLError) else str(exc)
                logger.error("scheduler %s is not trusted: %s; nothing was sent to it", config.scheduler, why)
            except ssl.SSLError as exc:
                logger.error("TLS with scheduler %s failed: %s", config.scheduler, describe_failure(exc))
            except SchedulerRefused as exc:
                if exc.code == ErrorCode.NOT_LEADER and locate is None:
                    config = _follow(config, schedulers, exc)
                    await asyncio.sleep(STANDBY_RETRY * random.uniform(0.5, 1.0))  # a takeover takes a lease
                    continue
                if exc.fatal:
                    logger.error("scheduler %s refused node %r: %s; giving up", config.scheduler, config.name, exc)
                    return 2
                logger.warning("scheduler %s refused node %r: %s", config.scheduler, config.name, exc)
            except (OSError, TimeoutError, RemoteWireError) as exc:
                logger.warning("scheduler %s: %s", config.scheduler, exc or type(exc).__name__)
                if len(schedulers) > 1 and locate is None:
                    host, port = schedulers.rotate()
                    config = dataclasses.replace(config, host=host, port=port)
            delay = backoff.next()
            logger.info("reconnecting in %.1f s", delay)
            control.show(f"not connected: reconnecting to {config.scheduler}")
            await asyncio.sleep(delay)
            if locate is not None:
                host, port = _follow_found(control, config.port) or await locate()
                config = dataclasses.replace(config, host=host, port=port)
    finally:
        finished.cancel()
        await control.keeper.close()


def _follow_found(control: NodeControl, port: int) -> tuple[str, int] | None:
    """The leader a probe found while the scheduler served was silent (once), else None: locate it anew."""
    found, control.found_leader = control.found_leader, ""
    try:
        return parse_address(found, port) if found else None
    except ValueError:
        return None


def _follow(config: NodeConfig, schedulers: Schedulers, refused: SchedulerRefused) -> NodeConfig:
    """A standby answered: the config to dial the leader it named (else the next scheduler) with."""
    leader = schedulers.redirect(refused.leader)
    if leader is None or leader == (config.host, config.port):
        leader = schedulers.rotate()
    logger.info("scheduler %s stands by; dialing %s", config.scheduler, format_address(*leader))
    return dataclasses.replace(config, host=leader[0], port=leader[1])


class PlaintextRefused(NodeError):
    """A scheduler off loopback without TLS, and no `--insecure-plaintext`."""


async def _connect_once(
    config: NodeConfig, backoff: Backoff, control: NodeControl, rounds: int = 0, schedulers: Schedulers | None = None,
    probe: Probe | None = None,
) -> None:
    """One session with the scheduler at `config`'s address: each address its name resolves to in turn.

    `rounds`: rounds of dialing that found no leader so far; among several
    schedulers each address gets a short deadline that doubles with them
    (dispy_wire/schedulers.py), as a stopped one accepts TCP and says nothing.
    `schedulers`: all the node knows, asked who leads when the one it serves falls silent; `probe` is asked too.
    """
    refusal = plaintext_refusal(config.host, config.tls is not None, config.insecure_plaintext)
    if refusal is not None:  # a discovered scheduler: --scheduler was checked at start
        raise PlaintextRefused(f"not connecting to scheduler {config.scheduler}: {refusal} (--tls-ca)")
    # where another scheduler was last found leading first: one name may stand for the stopped one too
    addresses = sorted(await addresses_of(config.host, config.port), key=lambda a: a != control.leads_at)
    limit = deadline(HANDSHAKE_TIMEOUT, len(config.standbys) + len(addresses), rounds)
    session: _Session | None = None
    for i, address in enumerate(addresses):
        try:
            session = await _log_in(config, control, address, limit)
            break
        except SchedulerRefused as exc:
            if exc.code != ErrorCode.NOT_LEADER or exc.leader or i == len(addresses) - 1:
                raise  # refused, or it named the leader: the caller decides
            failed: BaseException = exc
        except (OSError, TimeoutError) as exc:
            if i == len(addresses) - 1:
                raise
            failed = exc
        logger.info("scheduler %s at %s: %s; trying its next address", config.scheduler, address, str(failed) or type(failed).__name__)
    assert session is not None
    if schedulers is not None and len(schedulers) + len(addresses) > 2:  # a silent leader may have been replaced
        session.others = schedulers.addresses
    session.probe = probe
    try:
        theirs = session.welcome.info.get("version") if session.welcome is not None else None
        logger.info(
            "registered with scheduler %s as %r (scheduler: dispy-shared %s; this node: %s)",
            config.scheduler, config.name, str(theirs)[:40] if theirs else "unknown", VERSION,
        )  # fmt: skip
        control.keeper.attach(session.take)
        print(f"connected to {config.scheduler}", flush=True)
        registered = time.monotonic()
        await session.serve()
        # a scheduler that welcomes and drops us at once must not be redialed at full speed,
        # but one that said it is restarting is back soon and wants its jobs reported
        if session.restarting or time.monotonic() - registered >= backoff.maximum:
            backoff.reset()
    finally:
        await session.close()


async def _log_in(config: NodeConfig, control: NodeControl, address: str, limit: float) -> _Session:
    """Connects to `address` (the scheduler's, or one its name resolves to) and logs in within `limit` seconds each.

    Raises:
        SchedulerRefused, OSError, TimeoutError, RemoteWireError, UntrustedScheduler.
    """
    context = config.tls.context() if config.tls is not None else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            address, config.port, ssl=context, server_hostname=config.host if context else None,
            ssl_handshake_timeout=limit if context else None,
        ),
        limit,
    )  # fmt: skip
    if config.tls is not None:
        try:
            config.tls.check(writer.get_extra_info("ssl_object"))  # the pin, before our first byte
        except UntrustedScheduler:
            writer.transport.abort()
            raise
    session = _Session(config, control, reader, writer)
    try:
        async with asyncio.timeout(limit):
            await session.handshake()
    except BaseException:
        await session.close()
        raise
    return session


class _Session:
    """One connection: from the handshake until the socket closes."""

    def __init__(
        self, config: NodeConfig, control: NodeControl, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.config = config
        self.control = control
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(expect_preamble=True)
        #: the TLS session (None: plaintext), for channel binding (`dispy_wire.tls.channel_binding`)
        self.ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
        sockname = writer.get_extra_info("sockname")
        ip_addr = str(sockname[0]) if sockname else ""
        self.runner = control.keeper.runner(config.runner_config(ip_addr))
        self._meter = report.LoadMeter()
        self._offered = config.cpus
        self.runner.set_slots(self._offered)  # the scheduler may send more: they wait for a CPU here
        self._results: list[JobResult | JobFile] = []  # in order: a job's files go before its result
        self._starts: list[JobRef] = []  # jobs started from the queue since the last flush
        self._flush_pending = False
        self._heartbeats: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.welcome: Welcome | None = None
        #: silence both ways, from login on; the reason a silent scheduler was given up
        self.liveness: Liveness | None = None
        #: the schedulers to ask who leads when this one falls silent (none: it is the only one)
        self.others: list[tuple[str, int]] = []
        #: asks who leads besides `others` (`--discover`: a broadcast)
        self.probe: Probe | None = None
        self._asking: asyncio.Task[None] | None = None
        #: no new question before this monotonic time (ASK_AGAIN's back-off)
        self._ask_after = 0.0
        self._ask_backoff = Backoff(*ASK_AGAIN)
        self._gave_up = ""
        #: why the scheduler said it is restarting (`Restarting`): its close that follows is no failure
        self.restarting = ""

    async def handshake(self) -> None:
        """Raises SchedulerRefused if the scheduler will not have us."""
        info = {
            "cpus": self.config.cpus,
            "platform": platform.platform(),
            "pid": os.getpid(),
            "heartbeat": self.config.heartbeat,
            "version": VERSION,
            # how long our jobs outlive a lost connection: so long the scheduler waits for us to report them
            "scheduler_grace": self.config.scheduler_grace,
            # the scheduler places on us only clusters pickled by the same Python and cloudpickle
            "runtime": node_runtime().to_wire(),
            # so clusters' `nodes` patterns can match this host
            "addresses": report.addresses()[:HELLO_MAX_ADDRESSES],
            # we queue jobs beyond our CPUs, start them as CPUs free and say so (NodeStarts): send ahead
            "queues": True,
            # our runner's run: while it is the same, a job sent to it that we do not list (NodeHolds) never came
            "node_run": self.control.keeper.node_run,
        }
        jobs, clusters = self.control.keeper.held()
        if jobs or clusters:  # from an earlier session: reported right after Welcome (NodeHolds)
            info["holds"] = True
        binding = channel_binding(self.ssl_object)
        secret = None if self.config.by_certificate else self.config.node_secret
        hs = PeerHandshake(Role.NODE, self.config.name, secret, info, binding)
        self._writer.write(PREAMBLE)
        while hs.state is not HandshakeState.DONE:
            try:
                msg = await self._recv()
            except ConnectionError:
                if self.ssl_object is None or hs.state is not HandshakeState.AWAIT_CHALLENGE:
                    raise
                # a scheduler that refuses our certificate (or its absence) closes without a word
                raise ConnectionError(
                    "the scheduler closed the TLS connection before its challenge: it may require a client "
                    "certificate signed by its CA (--tls-cert, --tls-key)"
                ) from None
            try:
                reply = hs.receive(msg)
            except RemoteWireError as exc:
                raise SchedulerRefused(str(exc.code), exc.message, getattr(exc, "leader", "")) from None
            if not isinstance(reply, Welcome):
                self._writer.write(encode(reply))
            else:
                self.welcome = reply
        if jobs or clusters:  # the scheduler adopts or kills each
            self._writer.write(encode(NodeHolds(jobs, clusters)))

    async def serve(self) -> None:
        """Runs until the connection ends (returns) or the scheduler refuses us (raises)."""
        self._heartbeats = asyncio.create_task(self._heartbeat())
        assert self.welcome is not None
        # our Heartbeats are our sign of life; the scheduler Pings us when it has nothing else to say
        self.liveness = Liveness.start(self.config.heartbeat, announced_interval(self.welcome.info), time.monotonic())
        set_keepalive(self._writer.get_extra_info("socket"))
        self._watch = asyncio.create_task(self._watch_scheduler(self.liveness))
        while True:
            try:
                msg = await self._recv()
            except ConnectionError as exc:
                if self.restarting:
                    logger.info("scheduler %s is restarting: %s", self.config.scheduler, self.restarting)
                else:
                    logger.warning("lost the scheduler %s: %s", self.config.scheduler, self._gave_up or exc)
                return
            self._dispatch(msg)

    async def close(self) -> None:
        # first, before any await: from now on the keeper keeps what the jobs produce,
        # with what this session had not written yet
        unsent, self._results = self._results, []
        self.control.keeper.detach(unsent)
        tasks = [t for t in (self._heartbeats, self._watch, self._asking) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    # -- receiving -----------------------------------------------------------

    async def _recv(self) -> Message:
        """The next well-formed message; a malformed one gets an Error back and is skipped.

        Raises:
            ConnectionError: the scheduler closed the connection.
            RemoteWireError: the byte stream itself is broken (not dispy, frame too large).
        """
        while True:
            try:
                msg = next_message(self._decoder)
            except RemoteWireError as exc:
                if exc.code is not ErrorCode.BAD_MESSAGE:
                    raise
                logger.warning("scheduler %s sent a bad message: %s", self.config.scheduler, exc.message)
                self._write(encode(Error(str(exc.code), exc.message, "")))
                continue
            if msg is NEED_DATA:
                data = await self._reader.read(1 << 20)
                if not data:
                    raise ConnectionError("connection closed by the scheduler")
                if self.liveness is not None:
                    self.liveness.heard = True
                self._decoder.feed(data)
                continue
            assert isinstance(msg, Message)
            return msg

    def _dispatch(self, msg: Message) -> None:
        match msg:
            case RunJobs(jobs):
                self.runner.run(jobs)
            case KillJobs(jobs):
                self.runner.kill(jobs)
            case RecallJobs(jobs):  # those not started come back; the others end here as they would
                self._give_back(jobs)
            case ResultsRecorded(jobs):
                self.control.keeper.recorded(jobs)
            case LoadCluster(cluster_id, user, computation, options):
                if not self.control.may_load(cluster_id):
                    self._cluster_failed(cluster_id, f"node serves {self.config.serve} cluster(s) only (--serve)")
                    return
                logger.info("loading cluster %s of user %s (%d bytes)", cluster_id, user, len(computation))
                self.runner.load(cluster_id, computation, options)
            case PutFile(cluster_id, ref, _node, name, data, mode):
                reply = lambda ok, why, ref=ref: self._write(encode(FilePutDone(ref, ok, why)))  # noqa: E731
                self.runner.put_file(cluster_id, name, data, mode, reply)
            case UnloadCluster(cluster_id):
                logger.info("unloading cluster %s", cluster_id)
                self.runner.unload(cluster_id).add_done_callback(lambda _: self._check_done())
            case Ping():
                pass  # its bytes were the sign of life
            case Restarting(reason, _):
                self.restarting = reason or "no reason given"
            case Error(code, message, ref):
                logger.warning("scheduler %s: error %s about %r: %s", self.config.scheduler, code, ref, message)
            case Refused(code, message):
                raise SchedulerRefused(code, message)
            case _:
                why = f"a node does not accept {type(msg).__name__}"
                logger.warning("scheduler %s: %s", self.config.scheduler, why)
                self._write(encode(Error(str(ErrorCode.BAD_MESSAGE), why, "")))

    # -- sending -------------------------------------------------------------

    async def _heartbeat(self) -> None:
        control = self.control
        while True:
            control.poke.clear()
            now = control.clock()
            outside = self._meter.outside()
            ended = control.availability.update(now, outside)
            cpus = 0 if control.leaving else control.availability.offer(now)  # 0 after the service end too
            if cpus != self._offered:
                logger.info("offering %d of %d cpus (outside load %.2f cpus)", cpus, self.config.cpus, outside)
                self._offered = cpus
                self.runner.set_slots(cpus)
            avail = report.avail(cpus, self.runner.busy, self.config.work_dir)
            if control.leaving:
                avail["scheduler_grace"] = 0
            # first the offer of nothing, so that what we give back is not sent to us again
            self._write(encode(Heartbeat(avail)))
            if ended or control.leaving:  # jobs sent ahead and not started: they may run elsewhere, whatever
                self._give_back(self.runner.held()[0])  # their reentrancy, instead of ending Abandoned here
            if ended:
                reason = f"node's service ended at {now:%H:%M} (--service-end)"
                logger.info("%s: killing %d running job(s)", reason, self.runner.busy)
                self.runner.give_up_all(reason)
            control.show(
                f"{self.runner.busy} of {cpus} offered cpus busy, {self.runner.clusters} clusters loaded; "
                f"connected to {self.config.scheduler}"
            )
            self._check_done()
            try:
                await self._writer.drain()  # the one place we yield to a slow scheduler
            except ConnectionError:
                return  # the reader sees the end of the connection too
            if control.leaving:
                control.said_goodbye.set()
            try:
                await asyncio.wait_for(control.poke.wait(), self.config.heartbeat)
            except TimeoutError:
                pass

    async def _watch_scheduler(self, live: Liveness) -> None:
        """Drops the connection when the scheduler has sent nothing for too long (stopped, partitioned):
        the jobs go on (the keeper's grace period) while `run_node` redials with backoff."""
        while True:
            await asyncio.sleep(live.period)
            now = time.monotonic()
            verdict = live.check(now)
            if verdict is Verdict.SILENT:
                self._gave_up = (
                    f"silent for {live.silence(now):.1f} s (it promised a sign of life every {live.expect_every:g} s)"
                )
                logger.warning("scheduler %s %s: closing the connection", self.config.scheduler, self._gave_up)
                self._writer.transport.abort()  # the reader sees the end; nothing to flush to a silent scheduler
                return
            if verdict is Verdict.PING:  # our Heartbeats were held up (a slow drain): any message will do
                self._write(encode(Ping()))
            idle = self._asking is None or self._asking.done()
            if (self.others or self.probe) and live.doubtful(now) and idle and now >= self._ask_after:
                self._asking = asyncio.create_task(self._ask_others(live.silence(now)))

    async def _ask_others(self, silence: float) -> None:
        """The scheduler missed a sign of life: if another leads now (it was stopped and replaced), leave it.

        Asked at once (not after the full silence), then again after a back-off while the silence lasts."""
        asked = " and ".join(what for what, yes in (("the other schedulers", self.others), ("by broadcast", self.probe)) if yes)
        logger.info("scheduler %s silent for %.1f s: asking %s who leads", self.config.scheduler, silence, asked)
        peer = self._writer.get_extra_info("peername")
        connected, ip = (self.config.host, self.config.port), str(peer[0]) if peer else ""
        leader = await another_leads(connected, ip, self.others, self.config.tls, FIRST_DEADLINE) if self.others else None
        if not leader and self.probe is not None:
            leader = await self.probe(connected, ip)
            if leader:
                self.control.found_leader = leader
        if not leader:
            self._ask_after = time.monotonic() + self._ask_backoff.next()
        elif not self._writer.transport.is_closing():
            self.control.leads_at = leader_host(leader)
            self._gave_up = f"silent for {silence:.1f} s, and {leader} leads now"
            logger.warning("scheduler %s %s: closing the connection", self.config.scheduler, self._gave_up)
            self._writer.transport.abort()

    def _check_done(self) -> None:
        self.control.check_done(self.runner.busy, self.runner.clusters)

    def _give_back(self, jobs: list[JobRef]) -> None:
        """Drops those of `jobs` not started yet (they never will be here) and tells the scheduler (`NodeReturned`)."""
        returned = self.runner.recall(jobs)
        if returned:
            logger.info("giving back %d job(s) not started yet", len(returned))
            self._write(encode(NodeReturned(returned)))

    def take(self, output: Output) -> None:
        """What the runner produced, from the keeper, while this session is attached."""
        if isinstance(output, ClusterFailure):
            self._cluster_failed(output.cluster_id, output.message)
        elif isinstance(output, JobRef):
            self._starts.append(output)
            self._flush_soon()
        elif isinstance(output, Returned):
            self._write(encode(NodeReturned(output.jobs)))
        else:
            self._add_result(output)

    def _add_result(self, result: JobResult | JobFile) -> None:
        self._results.append(result)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_results)

    def _flush_results(self) -> None:
        """Sends what the jobs produced this turn, in order: the starts, then runs of results, runs of files."""
        self._flush_pending = False
        frames = []
        if self._starts:  # first: a job that started and ended this turn is Running before it is done
            frames.append(encode(NodeStarts(self._starts)))
            self._starts = []
        for _, run in itertools.groupby(self._results, key=type):
            frames += (_batch_frame(batch) for batch in by_size(run))
        self._results = []
        if frames:
            self._write(*frames)  # one write (one send, without joining them) for the turn
        self._check_done()

    def _cluster_failed(self, cluster_id: str, message: str) -> None:
        self._flush_results()  # results of its jobs go first: the scheduler requeues the rest
        self._write(encode(ClusterFailed(cluster_id, message)))

    def _write(self, *frames: bytes) -> None:
        if self.liveness is not None:
            self.liveness.sent = True
        if not self._writer.is_closing():
            self._writer.writelines(frames)


#: TEST ONLY: a runtime "PYTHON/CLOUDPICKLE" (e.g. "3.10/2.2.1") this node claims instead of its own, so the
#: tests can show the scheduler skipping a node of another Python without installing one; never set it in use
TEST_RUNTIME_VAR = "DISPY_TEST_NODE_RUNTIME"


def node_runtime() -> Runtime:
    """The Python and cloudpickle this node's zygotes run (its own interpreter's), or the test override."""
    claimed = os.environ.get(TEST_RUNTIME_VAR)
    if claimed:
        python, _, cp = claimed.partition("/")
        logger.warning("%s is set: claiming Python %s and cloudpickle %s (for tests only)", TEST_RUNTIME_VAR, python, cp)
        return Runtime(python, cp)
    return Runtime.here()


def _batch_frame(batch: list[Any]) -> bytes:
    return encode(NodeFiles(batch) if isinstance(batch[0], JobFile) else NodeResults(batch))
