"""The journal's commit runs off the scheduler's loop, and no acknowledgement leaves before its commit.

The test holds the journal's write lock from outside (a second SQLite
connection, as a slow disk would hold the commit), so the scheduler's
commit of a submit waits in its writer thread: meanwhile the scheduler
still serves a new login, and the submitter gets no JobsAccepted; once the
lock is released the acknowledgement comes, and the job is on disk by then.
"""

from __future__ import annotations

import socket
import sqlite3

from dispy_wire import messages as M
from dispy_wire.framing import FrameDecoder
from dispy_wire.messages import JobSpec
from procs import Cluster
from rawpeer import login, read_message


def _connect(cluster: Cluster) -> socket.socket:
    host, port = cluster.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=60)


def _next(sock: socket.socket, decoder: FrameDecoder) -> M.Message | None:
    while True:
        msg = read_message(sock, decoder)
        if not isinstance(msg, M.Ping):
            return msg


def test_a_submit_is_acknowledged_only_once_its_commit_is_done_and_the_loop_serves_others_meanwhile(
    cluster: Cluster,
) -> None:
    scheduler = cluster.scheduler()
    journal = cluster.workdir / "scheduler-state" / "journal.sqlite3"
    with _connect(cluster) as sock:
        decoder = FrameDecoder()
        assert isinstance(login(sock, decoder, "alice", ""), M.Welcome)
        sock.sendall(M.encode(M.OpenCluster("c-1", "compute", b"\x00" * 16, True, {})))
        assert isinstance(_next(sock, decoder), M.ClusterOpened)
        lock = sqlite3.connect(journal, isolation_level=None)
        try:
            # the scheduler's commit waits for this lock for up to 5 s (SQLite's busy timeout), then exits 3
            lock.execute("BEGIN IMMEDIATE")
            sock.sendall(M.encode(M.SubmitJobs("c-1", [JobSpec(1, 0, b"args", {})])))
            with _connect(cluster) as other:  # the loop is not stuck in the commit: a login goes through
                assert isinstance(login(other, FrameDecoder(), "bob", ""), M.Welcome)
            sock.setblocking(False)
            try:
                early = sock.recv(65536)
            except BlockingIOError:
                early = b""
            sock.setblocking(True)
            decoder.feed(early)
            while isinstance(frame := decoder.next_frame(), bytes):
                assert not isinstance(M.decode(frame), M.JobsAccepted), "acknowledged before its commit"
            assert scheduler.popen.poll() is None
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        accepted = _next(sock, decoder)
    assert isinstance(accepted, M.JobsAccepted) and accepted.job_ids == [1], accepted
    on_disk = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        assert on_disk.execute("SELECT count(*) FROM jobs WHERE cluster_id = 'c-1' AND job_id = 1").fetchone()[0] == 1
    finally:
        on_disk.close()
    assert "cannot write the journal" not in scheduler.stderr
