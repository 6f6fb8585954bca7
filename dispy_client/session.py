"""The loop-thread side of one cluster: talks to the scheduler, never to the user.

Theory of operation
-------------------
`ClusterSession` lives on the client's loop thread. It keeps the spec of
every job the scheduler has not yet accepted, so that after a reconnect it
can re-open the cluster (same id) and resubmit them: the scheduler is
idempotent on job ids, so a job it already knows is not run twice. A
scheduler with a journal (its Welcome says so) keeps what it accepted across
restarts, so a spec is dropped once accepted; without one, specs are kept
until the result, and after a restart that forgot the cluster only reentrant
jobs are resubmitted: a job that is not reentrant may have run already, so it
ends Abandoned instead (it runs at most once).

A terminal result is acknowledged only once the tracker says it is settled
(`settled`: the user's callbacks ran and, with a recover file, its record
is on disk), so a client killed in between gets it again from `recover_jobs`.
The first terminal result of a job wins and later copies are dropped, so the
user sees exactly one: `_end` is the one place that decides, for a batch of
results (the scheduler's, or those we make for jobs it cannot run), and a
copy of a result already settled is acknowledged again, not handed on.

The link carries a sign of life both ways (`dispy_wire.liveness`): a
scheduler silent for four of its announced intervals is given up like a
closed connection, and the reconnect loop below takes over; the program sees
only the delay.

User threads reach it only through `enqueue` (lock-free hand-off of submits,
one wake-up per batch) and `LoopThread.call`/`run`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Any

from dispy_wire.version import VERSION
from dispy_wire import messages as M
from dispy_wire.errors import ErrorCode
from dispy_wire.liveness import DEFAULT_INTERVAL
from dispy_wire.dialing import addresses_of, another_leads, leader_host
from dispy_wire.schedulers import FIRST_DEADLINE, Schedulers, deadline, format_address
from dispy_wire.status import JobStatus
from dispy_wire.tls import ClientTLS

from .connection import LoopThread, SchedulerLink
from .errors import ClusterError, DispyError, LimitError, SchedulerSilent, SchedulerUnreachable, StandingBy
from .updates import Files, News, Nodes, Provisional, Results, Started, Unusable

log = logging.getLogger("dispy_client")

#: submits are sent in messages of at most this many payload bytes
SUBMIT_CHUNK_BYTES = 4 * 1024 * 1024
#: room for a message's own fields around its payloads
ENVELOPE_BYTES = 1024
#: seconds between our Pings when idle (announced in Hello)
HEARTBEAT = DEFAULT_INTERVAL
#: seconds between rounds of dialing several schedulers when none led (a takeover under way)
STANDBY_PAUSE = 0.5
#: a provisional result's status, as a plain int (looked up once: an enum member's lookup is slow per result)
PROVISIONAL = int(JobStatus.PROVISIONAL_RESULT)


class ClusterSession:
    """Args:
    deliver: called on the loop thread with a message's worth of news for the
        dispatcher thread (`updates.News`, never empty; `JobTracker.deliver`).
    """

    def __init__(
        self,
        loop_thread: LoopThread,
        host: str,
        port: int,
        user: str,
        secret: str,
        timeout: float,
        open_msg: M.OpenCluster,
        deliver: Callable[[News], None],
        tls: ClientTLS | None = None,
        insecure_plaintext: bool = False,
        schedulers: Schedulers | None = None,
        pipe: Callable[[asyncio.Protocol], None] | None = None,
    ) -> None:
        self._lt = loop_thread
        #: joins a link to a scheduler in this process (a JobCluster's: pipe.py) instead of dialing host:port
        self._pipe = pipe
        #: where to look for the leader, best first (one address: that scheduler alone)
        self.schedulers = schedulers or Schedulers(format_address(host, port), port)
        self._tls, self._insecure_plaintext = tls, insecure_plaintext
        self.host, self.port, self.user, self._secret = host, port, user, secret
        self.timeout = timeout
        self.open_msg = open_msg
        self.cluster_id = open_msg.cluster_id
        self._deliver = deliver
        self._link: SchedulerLink | None = None
        self._specs: dict[int, M.JobSpec] = {}  # for resubmission: jobs not accepted (or, without a journal, unfinished)
        self._unfinished: set[int] = set()  # jobs without a terminal result handed to the tracker
        self._accepted: set[int] = set()  # unfinished jobs the scheduler accepted
        self._delivering: set[int] = set()  # results handed to the tracker, not yet settled and acknowledged
        self._journal = False  # the scheduler keeps accepted jobs across restarts
        #: why the scheduler released the cluster while we were away (ErrorCode.RELEASED); '' if it did not
        self._released = ""
        self._incoming: collections.deque[M.JobSpec] = collections.deque()
        self._wake_pending = False
        self._opened: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._status: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._puts: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._node_cpus: dict[str, int] = {}  # node -> the latest setting, resent after a reconnect
        self._resetups: dict[str, bytes] = {}  # node -> computation of the latest resetup_node
        self._closing = False
        self.max_message_size = 0  # the scheduler's limit, from its Welcome
        self._reconnect: asyncio.Task[None] | None = None
        self._resolved = 1  # addresses the last scheduler dialed resolved to
        self._asking: asyncio.Task[None] | None = None  # the other schedulers asked who leads
        self._leads_at = ""  # the address another scheduler was last found leading at (dialed first)
        self.errors: list[str] = []

    # ------------------------------------------------------ from user threads

    def enqueue(self, spec: M.JobSpec) -> None:
        """Thread-safe: queue a submit; the loop sends all queued in one message."""
        self._incoming.append(spec)
        if not self._wake_pending:
            self._wake_pending = True
            self._lt.call(self._take_incoming)

    def adopt(self, job_ids: list[int]) -> None:
        """Expects results for jobs an earlier process submitted; they are never resubmitted.

        Call before `open`: the scheduler resends held results as soon as the cluster re-opens.
        """
        self._unfinished.update(job_ids)
        self._accepted.update(job_ids)

    def settled(self, job_ids: list[int]) -> None:
        """The tracker is done with these results (recorded where recovery needs them): acknowledge them."""
        self._delivering.difference_update(job_ids)
        if self._link is not None:
            self._link.send(M.AckResults(self.cluster_id, job_ids))

    def check_size(self, payload_bytes: int, what: str) -> None:
        """Refuses, here and now, what the scheduler would refuse by closing on us."""
        if self.max_message_size and payload_bytes + ENVELOPE_BYTES > self.max_message_size:
            raise DispyError(
                f"{what} ({payload_bytes} bytes pickled) would exceed the scheduler's limit "
                f"of {self.max_message_size} bytes per message"
            )

    # ------------------------------------------------------- on the loop

    async def open(self) -> bool:
        """Connects and opens (or re-opens) the cluster; returns `resumed`."""
        loop = asyncio.get_running_loop()
        # heartbeat: we send at least this often; the scheduler writes us off after liveness.MISSES of silence
        info = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": HEARTBEAT, "version": VERSION}
        self._link = await self._dial(info)
        assert self._link.welcome is not None
        self._link.watch(HEARTBEAT)
        self._link.on_writable = self._take_incoming
        limit = self._link.welcome.info.get("max_message_size")
        self.max_message_size = limit if isinstance(limit, int) else 0
        self._journal = self._link.welcome.info.get("journal") is True
        try:
            self.check_size(len(self.open_msg.computation), f"computation {self.open_msg.name!r} with its depends")
        except DispyError:
            self._link.close()
            raise
        self._opened = loop.create_future()
        self._link.send(self.open_msg)
        try:
            async with asyncio.timeout(self.timeout):
                resumed = await self._opened
        except TimeoutError:
            self._link.close()  # a reconnect (or the user) starts afresh
            raise ClusterError(f"scheduler {self._link.where} did not open the cluster within {self.timeout:g} s") from None
        # what the scheduler may have missed or forgotten, before the jobs it shapes
        for node, cpus in self._node_cpus.items():
            self._link.send(M.SetNodeCpus(self.cluster_id, node, cpus))
        if not resumed:
            if self._released:
                log.warning("scheduler %s:%d: %s", self.host, self.port, self._released)
            for node, computation in self._resetups.items():
                self._link.send(M.ResetupNode(self.cluster_id, node, computation))
            self._write_off_forgotten()
        if self._specs:
            self._send_submits(list(self._specs.values()))
        if self._incoming:  # held back while the previous link was congested
            self._take_incoming()
        return resumed

    async def close(self, terminate: bool, timeout: float) -> None:
        self._closing = True
        for task in (self._reconnect, self._asking):
            if task is not None:
                task.cancel()
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return
        self._closed = asyncio.get_running_loop().create_future()
        link.send(M.CloseCluster(self.cluster_id, terminate))
        try:
            async with asyncio.timeout(timeout):
                await self._closed
        except TimeoutError:
            log.warning("scheduler did not confirm closing cluster %s within %g s", self.open_msg.name, timeout)
        finally:
            link.close()

    def detach(self) -> None:
        """Disconnects without closing the cluster: its jobs go on and their results wait."""
        self._closing = True
        for task in (self._reconnect, self._asking):
            if task is not None:
                task.cancel()
        if self._link is not None:
            self._link.close()

    async def status(self) -> dict[str, Any]:
        if self._link is None:
            raise DispyError("not connected to the scheduler")
        ref = os.urandom(6).hex()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._status[ref] = future
        self._link.send(M.GetStatus(ref))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        finally:
            self._status.pop(ref, None)

    async def put_file(self, node: str, name: str, data: bytes, mode: int) -> tuple[bool, str]:
        """Sends a file to the cluster's directory on `node`; returns (ok, why not)."""
        if self._link is None:
            raise DispyError("not connected to the scheduler")
        ref = os.urandom(6).hex()
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._puts[ref] = future
        self._link.send(M.PutFile(self.cluster_id, ref, node, name, data, mode))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        finally:
            self._puts.pop(ref, None)

    def resetup(self, node: str, computation: bytes) -> None:
        """Loads the cluster anew, with `computation`, on the node(s) called `node`."""
        self._resetups[node] = computation  # kept: a scheduler that restarts must hear it again
        if self._link is not None:
            self._link.send(M.ResetupNode(self.cluster_id, node, computation))

    def set_node_cpus(self, node: str, cpus: int) -> None:
        """Caps the cluster's use of the node(s) called `node` (negative: lifts the cap)."""
        self._node_cpus[node] = cpus  # kept: resent after every reconnect
        if self._link is not None:
            self._link.send(M.SetNodeCpus(self.cluster_id, node, cpus))

    def cancel(self, job_ids: list[int]) -> None:
        self._take_incoming(force=True)  # a job submitted just before must reach the scheduler first
        if self._link is not None:
            self._link.send(M.CancelJobs(self.cluster_id, job_ids))

    def _write_off_forgotten(self) -> None:
        """A scheduler that no longer knows the cluster: what it had accepted, it will not run again.

        Jobs whose spec is kept (never accepted; or reentrant, without a
        journal) are resubmitted by the caller; the others end Abandoned, together.
        """
        where = f"scheduler {self.host}:{self.port}"
        written_off: list[M.JobResult] = []
        for job_id in sorted(self._accepted):
            spec = self._specs.get(job_id)
            if spec is not None and self.open_msg.reentrant:
                continue
            if self._released:
                why = f"{where}: {self._released}"
            elif spec is not None:
                why = (
                    f"{where} no longer knows cluster {self.cluster_id} (restarted without its journal); the job "
                    "may have run, and is not reentrant, so it is not run again"
                )
            else:
                why = f"{where} lost cluster {self.cluster_id} (its journal) with this job"
            written_off.append(self._made_result(job_id, JobStatus.ABANDONED, why))
        self._end(written_off)
        self._accepted.clear()
        self._released = ""

    def _end_unknown(self, known: set[int]) -> None:
        """Ends, together, the jobs we count as accepted that the resumed cluster does not know: no result can come.

        Such a job was recorded (recover file) but its program stopped before
        the scheduler accepted it, so it never ran; a job whose spec we still
        hold is resubmitted instead.
        """
        why = (
            f"scheduler {self.host}:{self.port} does not know this job of cluster {self.cluster_id}: it never "
            "accepted it (the program that submitted it stopped first), so it did not run"
        )
        self._end([
            self._made_result(job_id, JobStatus.CANCELLED, why)
            for job_id in sorted(self._accepted - known) if job_id not in self._specs
        ])  # fmt: skip

    def _made_result(self, job_id: int, status: JobStatus, why: str) -> M.JobResult:
        """The terminal result of a job the scheduler cannot give one for (nothing to unpickle, so no MAC)."""
        return M.JobResult(self.cluster_id, job_id, int(status), None, b"", b"", why, "", 0.0, 0.0)

    def _end(self, results: list[M.JobResult]) -> list[int]:
        """Hands the tracker the first terminal result of each job in `results` (one hand-over for all).

        The one place copies are dropped: a result of a job that already has
        one (earlier, or before it in `results`) is not handed on. Returns the
        ids of copies of results already settled: the scheduler may let them go.
        """
        ended: list[M.JobResult] = []
        stale: list[int] = []
        unfinished, delivering = self._unfinished, self._delivering
        for result in results:
            job_id = result.job_id
            if job_id in unfinished:
                unfinished.discard(job_id)
                self._accepted.discard(job_id)
                self._specs.pop(job_id, None)
                delivering.add(job_id)  # acknowledged once settled
                ended.append(result)
            elif job_id not in delivering:
                stale.append(job_id)
        if ended:
            self._deliver(Results(ended))
        return stale

    def _take_incoming(self, force: bool = False) -> None:
        """Sends queued submits, a message's worth at a time while the link takes them.

        While it is congested (the scheduler reads slower than we submit) the
        rest wait in `_incoming`, so the jobs' arguments are not kept twice
        (spec and encoded frame) without bound; `on_writable` brings us back.
        """
        self._wake_pending = False  # first: a submit queued from now on wakes us again
        link = self._link
        sending = link is not None and self._opened is not None and self._opened.done()
        while self._incoming:
            if sending and not force and link is not None and link.congested():
                self._wake_pending = True  # enqueue need not wake us: the link will
                if not link.paused:  # congested by what this turn queued: look again once it is written
                    asyncio.get_running_loop().call_soon(self._take_incoming)
                return
            batch: list[M.JobSpec] = []
            size = 0
            while self._incoming and (not batch or size < SUBMIT_CHUNK_BYTES):
                spec = self._incoming.popleft()
                self._specs[spec.job_id] = spec
                self._unfinished.add(spec.job_id)
                batch.append(spec)
                size += len(spec.payload) + 32
            if sending:
                self._send_submits(batch)

    def _send_submits(self, specs: list[M.JobSpec]) -> None:
        assert self._link is not None
        chunk: list[M.JobSpec] = []
        size = 0
        budget = min(SUBMIT_CHUNK_BYTES, self.max_message_size or SUBMIT_CHUNK_BYTES) - ENVELOPE_BYTES
        for spec in specs:
            if chunk and size + len(spec.payload) + 32 > budget:
                self._link.send(M.SubmitJobs(self.cluster_id, chunk))
                chunk, size = [], 0
            chunk.append(spec)
            size += len(spec.payload) + 32
        if chunk:
            self._link.send(M.SubmitJobs(self.cluster_id, chunk))

    def _on_message(self, msg: M.Message) -> None:
        match msg:
            case M.JobResults(_, results):
                provisional = [r for r in results if r.status == PROVISIONAL]
                if provisional:  # the job goes on: nothing to ack; handed on before the ends, which come after them
                    unfinished = self._unfinished
                    provisional = [r for r in provisional if r.job_id in unfinished]
                    if provisional:
                        self._deliver(Provisional(provisional))
                    results = [r for r in results if r.status != PROVISIONAL]
                stale = self._end(results)
                if self._link is not None and stale:
                    self._link.send(M.AckResults(self.cluster_id, stale))
            case M.FilePutDone(ref, ok, message):
                put = self._puts.get(ref)
                if put is not None and not put.done():
                    put.set_result((ok, message))
            case M.NodeUpdates(_, nodes):
                if nodes:
                    self._deliver(Nodes(nodes))
            case M.NodeUnusable():
                self._deliver(Unusable([msg]))
            case M.JobFiles(files):
                ours = [f for f in files if f.cluster_id == self.cluster_id]
                if ours:
                    self._deliver(Files(ours))
            case M.JobsStarted(_, starts):
                unfinished = self._unfinished
                running = [start for start in starts if start.job_id in unfinished]
                if running:
                    self._deliver(Started(running))
            case M.JobsKnown(_, job_ids):
                self._end_unknown(set(job_ids))
            case M.JobsAccepted(_, job_ids):
                for job_id in job_ids:
                    if job_id in self._unfinished:
                        self._accepted.add(job_id)
                        if self._journal:  # the scheduler keeps it now: no resubmission needed
                            self._specs.pop(job_id, None)
            case M.ClusterOpened(_, resumed):
                if self._opened is not None and not self._opened.done():
                    self._opened.set_result(resumed)
            case M.ClusterClosed():
                if self._closed is not None and not self._closed.done():
                    self._closed.set_result(None)
            case M.Status(ref, status):
                future = self._status.get(ref)
                if future is not None and not future.done():
                    future.set_result(status)
            case M.Error(code, message, ref):
                self._on_error(code, message, ref)
            case _:
                log.warning("unexpected %s from scheduler", type(msg).__name__)

    def _on_error(self, code: str, message: str, ref: str) -> None:
        if code == ErrorCode.RELEASED and ref == self.cluster_id:
            # away too long: the scheduler dropped what it held; the cluster opens anew, and the
            # jobs it had accepted end Abandoned with this reason (`_write_off_forgotten`)
            self._released = message
            return
        if self._opened is not None and not self._opened.done() and ref == self.cluster_id:
            error = LimitError if code == ErrorCode.LIMIT else ClusterError
            self._opened.set_exception(error(f"scheduler refused cluster {self.open_msg.name}: {message}"))
            return
        level = logging.WARNING if code in (ErrorCode.SETUP_FAILED, ErrorCode.LIMIT) else logging.ERROR
        log.log(level, "scheduler: %s (%s)", message, code)
        self.errors.append(message)

    async def _dial(self, info: dict[str, Any]) -> SchedulerLink:
        """Logs in to the scheduler that leads within `timeout`: each known one in turn, following a standby's redirect.

        Among several schedulers (or several addresses of one name) each
        gets a short deadline in the first round, doubled in each next one
        (dispy_wire/schedulers.py): a stopped one accepts TCP and says nothing.

        Raises:
            SchedulerUnreachable or StandingBy (the last one's; among several
            addresses of which one was silent, one naming every address tried),
            or what a scheduler that answered refused.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout
        rounds = 0
        tried: dict[str, SchedulerUnreachable] = {}  # each address dialed: how it failed last
        while True:
            try:
                return await self._dial_round(info, rounds, end, tried)
            except (StandingBy, SchedulerUnreachable) as exc:
                if loop.time() + STANDBY_PAUSE >= end or (len(self.schedulers) == 1 and self._resolved == 1):
                    if not isinstance(exc, StandingBy) and len(tried) > 1 and any(isinstance(e, SchedulerSilent) for e in tried.values()):
                        raise SchedulerUnreachable(self._none_answered(tried)) from None
                    raise  # out of time, or the one scheduler there is failed: the reconnect loop (or the user) decides
            rounds += 1
            await asyncio.sleep(STANDBY_PAUSE * (0.5 + random.random() / 2))  # a takeover under way takes a lease

    def _none_answered(self, tried: dict[str, SchedulerUnreachable]) -> str:
        """Why no scheduler among several took us in: each address tried, and how it failed last."""
        if all(isinstance(exc, SchedulerSilent) for exc in tried.values()):
            return (f"none of the scheduler addresses tried answered within {self.timeout:g} s: {', '.join(tried)} "
                    "(each accepted the connection and then said nothing: stopped or hung?)")  # fmt: skip
        failures = "; ".join(str(exc) for exc in tried.values())
        return f"no scheduler that leads answered within {self.timeout:g} s; tried {', '.join(tried)}: {failures}"

    async def _dial_round(
        self, info: dict[str, Any], rounds: int, end: float, tried: dict[str, SchedulerUnreachable]
    ) -> SchedulerLink:
        count = len(self.schedulers)
        host, port = self.schedulers.first
        for attempt in range(count + 1):  # each address, and one redirect
            try:
                link = await self._dial_each(host, port, info, rounds, end, tried)
            except StandingBy as exc:
                if attempt == count:
                    raise
                leader = self.schedulers.redirect(exc.leader)
                log.info("%s; trying %s", exc, format_address(*leader) if leader else "the next scheduler")
                host, port = leader if leader is not None and leader != (host, port) else self.schedulers.rotate()
                continue
            except SchedulerUnreachable as exc:
                if attempt == count or count == 1:
                    raise
                log.info("%s; trying the next scheduler", exc)
                host, port = self.schedulers.rotate()
                continue
            self.schedulers.prefer((host, port))
            self.host, self.port = host, port
            if len(self.schedulers) > 1 or self._resolved > 1:  # a silent leader may have been replaced
                link.on_doubt = lambda silence: self._doubt(link, silence)
            return link
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _dial_each(
        self, host: str, port: int, info: dict[str, Any], rounds: int, end: float, tried: dict[str, SchedulerUnreachable]
    ) -> SchedulerLink:
        """Logs in at `host`:`port`, at each address its name resolves to until one leads or names the leader.

        Records in `tried` how each address failed.
        """
        addresses = sorted(await addresses_of(host, port), key=lambda a: a != self._leads_at)  # where one was seen leading first
        self._resolved = len(addresses)
        several = len(self.schedulers) + len(addresses) - 1
        failed: StandingBy | SchedulerUnreachable | None = None
        for address in addresses:
            timeout = max(0.1, min(deadline(self.timeout, several, rounds), end - asyncio.get_running_loop().time()))
            try:
                return await SchedulerLink.connect(
                    host, port, timeout, self.user, self._secret, info, self._on_message, self._on_lost,
                    self._tls, self._insecure_plaintext, dial=address, several=several > 1, pipe=self._pipe,
                )  # fmt: skip
            except StandingBy as exc:
                tried[format_address(address, port)] = exc
                if exc.leader:
                    raise  # it named the leader: dial that
                failed = exc
            except SchedulerUnreachable as exc:
                tried[format_address(address, port)] = exc
                failed = exc
            if len(addresses) > 1:
                log.info("%s; trying the next address of %s", failed, host)
        assert failed is not None
        raise failed

    def _doubt(self, link: SchedulerLink, silence: float) -> None:
        """The leader missed a sign of life: asks the other schedulers (one question at a time) if another leads."""
        if self._asking is None or self._asking.done():
            self._asking = asyncio.get_running_loop().create_task(self._ask_others(link, silence))

    async def _ask_others(self, link: SchedulerLink, silence: float) -> None:
        peer = link.transport.get_extra_info("peername") if link.transport is not None else None
        leader = await another_leads((self.host, self.port), str(peer[0]) if peer else "", self.schedulers.addresses, self._tls,
                                     FIRST_DEADLINE)  # fmt: skip
        if leader and link is self._link:
            self._leads_at = leader_host(leader)
            link.give_up(f"silent for {silence:.1f} s, and {leader} leads now")

    def _on_lost(self, reason: str) -> None:
        if self._closing:
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            return
        opened = self._opened
        if opened is None or not opened.done() or opened.cancelled() or opened.exception() is not None:
            return  # lost before the cluster opened on it: `open` (the user's, or the reconnect loop's) fails instead
        restarting = self._link.restarting if self._link is not None else None
        if restarting is not None:  # a planned restart: the user needs to hear nothing of it
            log.info("scheduler %s:%d restarting (%s); reconnecting", self.host, self.port, restarting.reason)
        else:
            log.warning("lost the scheduler %s:%d (%s); reconnecting", self.host, self.port, reason)
        if len(self.schedulers) > 1:  # it may have died or stopped: a standby (taking over) is tried first
            self.schedulers.rotate()
        self._opened = None
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(restarting is not None))

    async def _reconnect_loop(self, planned: bool = False) -> None:
        delay = 0.2
        while not self._closing:
            await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                resumed = await self.open()
            except (DispyError, OSError) as exc:
                log.info("reconnect to %s:%d failed: %s", self.host, self.port, exc)
                delay = min(delay * 2, 2.0 if planned else 5.0)  # a planned restart is usually back in seconds
                continue
            log.log(
                logging.INFO if planned else logging.WARNING,
                "reconnected to the scheduler; cluster %s, %d unfinished jobs, %d resubmitted",
                "resumed" if resumed else "re-created",
                len(self._unfinished),
                len(self._specs),
            )
            return
