"""`recover_file` and `recover_jobs`: finding a cluster's results after the client died.

The file is JSON lines, appended to and never rewritten:

    {"v": 2, "scheduler": "H:P", "user": U, "cluster_id": C, "name": N, "created": T,
     "result_key": K}                        # hex: the cluster's key for `result_mac`
    {"uid": 7, "t": T}                       # a job was submitted
    {"uid": 7, "id": "<base64 pickle>"}      # the user set its id (latest wins)
    {"uid": 7, "done": true}                 # its result was delivered (to the client or recover_jobs)

Each line is written and flushed before `submit` returns, so it survives the
client process being killed; a thread fsyncs after each burst of lines, so it
survives the machine crashing a moment later. A result is acknowledged to
the scheduler (which then forgets it) only after the fsync that follows its
"done" line (`after_sync`): until then the scheduler holds it, so
`recover_jobs` gets every result whose "done" line was not yet safe. The
user's secret is never written; the cluster's result key is (results are
checked against it, by `recover_jobs` as by the cluster), so the file is made
readable by its owner only (0600).

`recover_jobs` re-opens the cluster by its id: the scheduler re-attaches and
resends every result it holds (principle 4 of DESIGN.md), and jobs still
running report when they end.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

from dispy_wire import messages as M
from dispy_wire.schedulers import Schedulers
from dispy_wire.payload import dumps, loads

from .connection import LoopThread
from .errors import DispyError
from .job import DispyJob
from .private_files import open_private
from .options import client_tls
from .session import ClusterSession
from .tracker import JobTracker

FORMAT_VERSION = 2  # 2: the header holds the result key


class Recorder:
    """Appends a cluster's recovery records to its `recover_file`.

    Args:
        path: the file (created, or appended to when `header` is None).
        header: the cluster's record, for a new file.
    """

    def __init__(self, path: str, header: dict[str, Any] | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] = open_private(path, append=header is None)  # it holds the result key
        self._dirty = threading.Event()
        self._closing = False
        self._after: list[Callable[[], Any]] = []  # run after the next fsync (which covers what is written)
        if header is not None:
            self._write({"v": FORMAT_VERSION, **header})
            os.fsync(self._file.fileno())
        self._sync_fd = os.dup(self._file.fileno())  # fsync'd without holding up writers
        self._syncer = threading.Thread(target=self._sync_loop, name="dispy-recover-fsync", daemon=True)
        self._syncer.start()

    def submitted(self, job: DispyJob) -> None:
        """Records a job as it is submitted (and its id, if it has one)."""
        record: dict[str, Any] = {"uid": job._uid, "t": job.submit_time}
        if job.id is not None:
            record["id"] = _pack(job.id)
        self._write(record)

    def id_set(self, job: DispyJob) -> None:
        self._write({"uid": job._uid, "id": _pack(job.id)})

    def done(self, job: DispyJob) -> None:
        """Records that a job's result was delivered: the scheduler no longer holds it."""
        self._write({"uid": job._uid, "done": True})

    def job_status(self, job: DispyJob) -> None:
        """A watcher: records the job once it has ended."""
        if job.done:
            self.done(job)

    def after_sync(self, fn: Callable[[], Any]) -> None:
        """Calls `fn` (on the fsync thread) once every line written so far is on disk."""
        with self._lock:
            closed = self._closing
            if not closed:
                self._after.append(fn)
        if closed:  # the file is closed, and synced
            fn()
        else:
            self._dirty.set()

    def close(self, remove: bool = False) -> None:
        """Stops recording; with `remove`, deletes the file (nothing is left to recover)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._file.close()
        self._dirty.set()
        self._syncer.join(timeout=10)
        if remove:
            Path(self.path).unlink(missing_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            if self._closing:
                return
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        self._dirty.set()

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                after, self._after = self._after, []
            os.fsync(self._sync_fd)
            for fn in after:
                fn()
            if self._closing:
                with self._lock:
                    after, self._after = self._after, []
                for fn in after:
                    fn()
                os.close(self._sync_fd)
                return


def _pack(value: Any) -> str:
    return base64.b64encode(dumps(value)).decode("ascii")


def read_records(path: str) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The header and, by uid, what is known of each job not yet recovered.

    Raises:
        DispyError: the file is missing, empty, or not a recover file.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DispyError(f"cannot read recover file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DispyError(f"{path} is not a dispy_client recover file: not UTF-8 text") from None
    try:
        header = json.loads(lines[0]) if lines else {}
        jobs: dict[int, dict[str, Any]] = {}
        for line in lines[1:]:
            if not line.endswith("}"):
                continue  # the last line, cut short by a crash
            record = json.loads(line)
            jobs.setdefault(record["uid"], {}).update(record)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise DispyError(f"{path} is not a dispy_client recover file: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION or "cluster_id" not in header:
        version = header.get("v") if isinstance(header, dict) else None
        raise DispyError(f"{path} is not a dispy_client recover file of version {FORMAT_VERSION} "
                         f"(version {version!r})")  # fmt: skip
    bad = [k for k in ("scheduler", "user", "cluster_id", "name") if not isinstance(header.get(k), str)]
    if bad:
        raise DispyError(f"{path} is not a dispy_client recover file: its header lacks {', '.join(bad)}")
    try:
        header["result_key"] = bytes.fromhex(header["result_key"])
    except (KeyError, TypeError, ValueError):
        raise DispyError(f"{path} has no valid result key: its results could not be authenticated") from None
    return header, {uid: r for uid, r in jobs.items() if not r.get("done")}


def recover_jobs(
    recover_file: str,
    timeout: float | None = None,
    terminate_pending: bool = False,
    secret: str | None = None,
    tls_ca: str | None = None,
    tls_fingerprint: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    insecure_plaintext: bool = False,
) -> list[DispyJob]:
    """Returns the jobs of a cluster whose client process died, with their outcomes.

    Re-opens the cluster named in `recover_file` and waits (up to `timeout`)
    for every job it recorded. If all have ended, or `terminate_pending`
    cancels the rest, the cluster is closed and the file removed; otherwise
    the cluster is left running, and a later call returns the rest.

    Args:
        recover_file: the `recover_file` the cluster was created with.
        timeout: seconds to wait for unfinished jobs (None: until they end).
        terminate_pending: cancel jobs still unfinished after `timeout`.
        secret: the user's secret (dispy has no such parameter; default `$DISPY_SECRET`).
        tls_ca, tls_fingerprint, certfile, keyfile, insecure_plaintext: TLS, as
            for the cluster (default `$DISPY_TLS_CA`, `$DISPY_TLS_FINGERPRINT`).

    Returns:
        one `DispyJob` per recorded job (`id` restored, `args` not recorded:
        empty), ended ones with status, result, stdout, stderr and exception.

    Raises:
        DispyError: the file is not a recover file; `SchedulerUnreachable`,
            `AuthenticationError` and `ClusterError` as for a new cluster.
    """
    header, records = read_records(recover_file)
    tls = client_tls(tls_ca, tls_fingerprint, certfile, keyfile)
    schedulers = Schedulers(header["scheduler"], 9702)  # one address, or a leader's and its standbys'
    host, port = schedulers.first
    jobs = [_job(uid, record) for uid, record in sorted(records.items())]
    recorder = Recorder(recover_file, None)
    tracker = JobTracker(header["name"], header["cluster_id"], header["result_key"], job_status=recorder.job_status)
    tracker.on_settled = lambda ids: recorder.after_sync(lambda: loop_thread.call_if_running(session.settled, ids))
    for job in jobs:
        tracker.add(job)
    loop_thread = LoopThread(f"dispy-{header['name']}-recover")
    open_msg = M.OpenCluster(header["cluster_id"], header["name"], b"", False, {})
    secret = os.environ.get("DISPY_SECRET", "") if secret is None else secret
    session = ClusterSession(
        loop_thread, host, port, header["user"], secret, 10.0, open_msg, tracker.deliver,
        tls, insecure_plaintext, schedulers,
    )  # fmt: skip
    session.adopt([job._uid for job in jobs])
    try:
        resumed = loop_thread.run(session.open(), timeout=20)  # not resumed: the session writes every job off
        if not resumed or tracker.wait(timeout) or terminate_pending:
            loop_thread.run(session.close(terminate=True, timeout=10.0), timeout=15)
            tracker.wait(10.0)  # the results of the jobs just cancelled or written off
            recorder.close(remove=True)
        else:
            loop_thread.call(session.detach)
    finally:
        recorder.close()
        loop_thread.stop()
        tracker.close()
    return jobs


def _job(uid: int, record: dict[str, Any]) -> DispyJob:
    job = DispyJob((), {}, uid, record.get("t", 0.0))
    if "id" in record:
        job.id = loads(base64.b64decode(record["id"]))
    return job

