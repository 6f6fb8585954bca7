"""The daemon's side of the zygotes: one per loaded cluster, driven over pipes.

Theory of operation. `Runner` owns every cluster of one scheduler session.
`load` starts a zygote (`python -m dispy_node.zygote`, its own session) and
sends it the computation; jobs that arrive before it answers `Ready` wait in a
queue. Each job the runner accepts is owed exactly one `JobResult`, handed to
`on_result`, except when the cluster fails to load (`on_failed`: the scheduler
requeues its jobs itself) and after `close()` (the session is gone; nothing is
reported any more).

Zygote death: a zygote that exits without being asked to is a failure of its
cluster on this node. Its started jobs are killed (by process group, from the
pids it reported) and reported TERMINATED, since they may have run; jobs still
queued are dropped; then `on_failed`. It is not restarted: a zygote that died
once (OOM killer, a crashing extension module) would likely die again, and the
scheduler can still run the cluster on other nodes.

The runner never limits concurrency: the scheduler sends no more than the
CPUs the node offers. `busy` counts the jobs owed a result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

from dispy_wire.framing import FrameDecoder
from dispy_wire.messages import JobRef, JobResult, RunJob
from dispy_wire.status import JobStatus

from . import zygote_protocol as zp

logger = logging.getLogger(__name__)

ResultSink = Callable[[JobResult], None]
FailureSink = Callable[[str, str], None]

#: a cluster id becomes a directory name: nothing that could climb out of work_dir
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: how long a zygote gets to exit after its stdin is closed, before SIGKILL
STOP_TIMEOUT = 2.0
#: beyond kill_grace, how long an Unload may take (cleanup included)
UNLOAD_SLACK = 10.0


class _State(Enum):
    STARTING = "starting"  # zygote loading; jobs are queued
    READY = "ready"
    UNLOADING = "unloading"
    DEAD = "dead"  # failed, unloaded or closed: reports nothing more


class Runner:
    """Every cluster of one scheduler session.

    Args:
        work_dir: clusters' directories are made under it (`<work_dir>/<cluster_id>`).
        kill_grace: seconds between SIGTERM and SIGKILL when a job is killed.
        on_result: receives each job's one result.
        on_failed: receives (cluster_id, message) when a cluster cannot run here.
    """

    def __init__(self, work_dir: Path, kill_grace: float, on_result: ResultSink, on_failed: FailureSink) -> None:
        self.work_dir = work_dir
        self.kill_grace = kill_grace
        self._on_result = on_result
        self._on_failed = on_failed
        self._clusters: dict[str, _Cluster] = {}
        self._failed: set[str] = set()  # their late jobs are dropped, not reported
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()  # failed zygotes being stopped, dirs being removed
        self._unloads: dict[str, tuple[_Cluster, asyncio.Task[None]]] = {}

    @property
    def busy(self) -> int:
        """Jobs received and not yet reported."""
        return sum(c.owed for c in self._clusters.values())

    def load(self, cluster_id: str, computation: bytes) -> None:
        """Starts the cluster's zygote; a repeated load of a live cluster is ignored."""
        if cluster_id in self._clusters:
            logger.info("cluster %s is already loaded", cluster_id)
            return
        self._failed.discard(cluster_id)
        if not _safe_id(cluster_id):
            self.cluster_failed(cluster_id, f"cluster id {cluster_id!r} is not a safe directory name")
            return
        previous = self._unloads.get(cluster_id)
        self._clusters[cluster_id] = _Cluster(self, cluster_id, computation, previous[1] if previous else None)

    def run(self, jobs: Iterable[RunJob]) -> None:
        """Starts jobs, in one write per cluster."""
        by_cluster: dict[str, list[RunJob]] = {}
        for job in jobs:
            by_cluster.setdefault(job.cluster_id, []).append(job)
        for cluster_id, batch in by_cluster.items():
            cluster = self._clusters.get(cluster_id)
            if cluster is not None:
                cluster.run(batch)
            elif cluster_id not in self._failed:
                for job in batch:
                    self.report(_verdict(cluster_id, job.job_id, JobStatus.TERMINATED, "unknown cluster"))

    def kill(self, refs: Iterable[JobRef]) -> None:
        """Kills jobs; each is reported CANCELLED (unless its result is already out)."""
        for ref in refs:
            cluster = self._clusters.get(ref.cluster_id)
            if cluster is not None:
                cluster.kill(ref.job_id)

    def unload(self, cluster_id: str) -> asyncio.Task[None]:
        """Cancels the cluster's jobs, runs its cleanup, stops its zygote, removes its directory.

        Returns:
            The task doing it, which may take `kill_grace` seconds and more; a
            new load of the same cluster meanwhile waits for it.
        """
        self._failed.discard(cluster_id)
        cluster = self._clusters.pop(cluster_id, None)
        if cluster is None:
            task = self._in_background(self._remove_dir(cluster_id))
        else:
            task = asyncio.create_task(self._unload(cluster))
            self._unloads[cluster_id] = (cluster, task)
        return task

    async def _unload(self, cluster: _Cluster) -> None:
        try:
            await cluster.unload()
            await self._remove_dir(cluster.cluster_id)
        finally:
            if self._unloads.get(cluster.cluster_id, (None,))[0] is cluster:
                del self._unloads[cluster.cluster_id]

    async def _remove_dir(self, cluster_id: str) -> None:
        if _safe_id(cluster_id):
            await asyncio.to_thread(shutil.rmtree, self.work_dir / cluster_id, True)

    async def _discard(self, cluster: _Cluster) -> None:
        await cluster.stop()
        await self._remove_dir(cluster.cluster_id)

    async def close(self) -> None:
        """Kills every job and zygote at once, removes their directories; reports nothing more."""
        self._closed = True
        clusters = list(self._clusters.values()) + [c for c, _ in self._unloads.values()]
        unloads = [t for _, t in self._unloads.values()]
        self._clusters.clear()
        await asyncio.gather(*(c.stop() for c in clusters), *self._background, *unloads, return_exceptions=True)
        for c in clusters:
            await asyncio.to_thread(shutil.rmtree, c.dir, True)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- from the clusters ---------------------------------------------------

    def report(self, result: JobResult) -> None:
        if not self._closed:
            self._on_result(result)

    def cluster_failed(self, cluster_id: str, message: str) -> None:
        """The cluster cannot run here: its zygote goes, its late jobs are dropped."""
        self._failed.add(cluster_id)
        cluster = self._clusters.pop(cluster_id, None)
        if cluster is not None:
            cluster.state = _State.DEAD  # before stop() runs: nothing more is reported
            self._in_background(self._discard(cluster))
        logger.warning("cluster %s cannot run here: %s", cluster_id, message)
        if not self._closed:
            self._on_failed(cluster_id, message)


class _Cluster:
    """One zygote process and the jobs it owes results for."""

    def __init__(self, runner: Runner, cluster_id: str, computation: bytes, after: asyncio.Task[None] | None) -> None:
        self.runner = runner
        self.cluster_id = cluster_id
        self.dir = runner.work_dir / cluster_id
        self.state = _State.STARTING
        self._queued: dict[int, bytes] = {}  # job_id -> payload, until Ready
        self._running: dict[int, int | None] = {}  # job_id -> pid (once Started), sent to the zygote
        self._proc: asyncio.subprocess.Process | None = None
        self._computation = computation
        self._unloaded = asyncio.Event()  # Unloaded received, or no point waiting for it
        self._after = after  # the unload of this cluster's previous incarnation
        self._task = asyncio.create_task(self._main())

    @property
    def owed(self) -> int:
        return len(self._queued) + len(self._running)

    def run(self, jobs: list[RunJob]) -> None:
        if self.state in (_State.UNLOADING, _State.DEAD):
            for job in jobs:
                self.runner.report(_verdict(self.cluster_id, job.job_id, JobStatus.TERMINATED, "cluster is unloading"))
            return
        fresh = [j for j in jobs if j.job_id not in self._queued and j.job_id not in self._running]
        if len(fresh) < len(jobs):
            logger.info("cluster %s: %d repeated job(s) ignored", self.cluster_id, len(jobs) - len(fresh))
        if self.state is _State.STARTING:
            self._queued.update((j.job_id, j.payload) for j in fresh)
            return
        for job in fresh:
            self._running[job.job_id] = None
        self._write(b"".join(zp.encode(zp.Run(j.job_id, j.payload)) for j in fresh))

    def kill(self, job_id: int) -> None:
        if self._queued.pop(job_id, None) is not None:
            self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.CANCELLED, "cancelled"))
        elif job_id in self._running and self.state is not _State.DEAD:
            self._write(zp.encode(zp.Kill(job_id)))

    async def unload(self) -> None:
        """Unload as asked by the scheduler: jobs are CANCELLED, cleanup runs."""
        for job_id in list(self._queued):
            self.kill(job_id)
        if self.state is _State.READY:
            self.state = _State.UNLOADING
            self._write(zp.encode(zp.Unload()))
            try:
                await asyncio.wait_for(self._unloaded.wait(), self.runner.kill_grace + UNLOAD_SLACK)
            except TimeoutError:
                logger.warning("cluster %s: zygote did not unload in time; killed", self.cluster_id)
        await self.stop()
        for job_id in list(self._running):  # only if the zygote died or hung: it reports its own
            self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.CANCELLED, "cancelled"))
        self._running.clear()

    async def stop(self) -> None:
        """Stops the zygote now; its jobs are killed and not reported."""
        self.state = _State.DEAD
        self._unloaded.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the zygote's cue to SIGKILL its jobs and exit
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                logger.warning("cluster %s: zygote %d did not stop; SIGKILL", self.cluster_id, proc.pid)
                proc.kill()
                self._kill_jobs()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if proc is not None and proc.returncode is None:
            await proc.wait()

    # -- the zygote ----------------------------------------------------------

    async def _main(self) -> None:
        if self._after is not None:
            await asyncio.wait([self._after])  # unlike gather, does not cancel it if we are
            self._after = None
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispy_node.zygote",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the daemon's terminal is the daemon's to handle
            )  # fmt: skip
        except OSError as exc:
            self.runner.cluster_failed(self.cluster_id, f"cannot start a zygote: {exc}")
            return
        load = zp.Load(
            self.cluster_id, str(self.dir), self._computation, self.runner.kill_grace, logger.getEffectiveLevel()
        )
        self._computation = b""
        self._write(zp.encode(load))
        assert self._proc.stdout is not None
        decoder = FrameDecoder(max_size=zp.MAX_FRAME, expect_preamble=False)
        while data := await self._proc.stdout.read(1 << 20):
            decoder.feed(data)
            for frame in decoder.frames():
                self._handle(zp.decode(frame))
        code = await self._proc.wait()
        self._unloaded.set()  # whether it said so or not
        if self.state in (_State.STARTING, _State.READY):
            self._died(code)

    def _handle(self, msg: Any) -> None:
        if self.state is _State.DEAD:
            return
        if isinstance(msg, zp.Done):
            if msg.job_id in self._running:
                del self._running[msg.job_id]
                self.runner.report(JobResult(self.cluster_id, *msg))
        elif isinstance(msg, zp.Started):
            if msg.job_id in self._running:
                self._running[msg.job_id] = msg.pid
        elif isinstance(msg, zp.Ready):
            self.state = _State.READY
            queued, self._queued = self._queued, {}
            self.run([RunJob(self.cluster_id, job_id, payload, {}) for job_id, payload in queued.items()])
        elif isinstance(msg, zp.SetupFailed):
            self.runner.cluster_failed(self.cluster_id, msg.message)
        elif isinstance(msg, zp.Unloaded):
            self._unloaded.set()

    def _died(self, code: int) -> None:
        why = f"zygote process died ({_exit_text(code)})"
        self._kill_jobs()
        for job_id in list(self._running):
            self.runner.report(_verdict(self.cluster_id, job_id, JobStatus.TERMINATED, why, "ZygoteDied"))
        self._running.clear()
        self._queued.clear()
        self.runner.cluster_failed(self.cluster_id, why)

    def _kill_jobs(self) -> None:
        """Orphaned jobs of a dead zygote: their pids were theirs until now."""
        for pid in self._running.values():
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _write(self, data: bytes) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return  # still starting: Load goes first and the queue follows Ready
        self._proc.stdin.write(data)


def _safe_id(cluster_id: str) -> bool:
    return _SAFE_ID.fullmatch(cluster_id) is not None and cluster_id not in (".", "..")


def _verdict(cluster_id: str, job_id: int, status: JobStatus, why: str, kind: str = "") -> JobResult:
    """A result decided by the daemon, for a job that produced none itself."""
    now = time.time()
    return JobResult(cluster_id, job_id, int(status), None, b"", b"", why, kind, now, now)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} ({-code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
