"""Jobs sent to a node that never got them, and jobs a stopping node gives back, with real processes.

A relay between a node and the scheduler swallows the scheduler's RunJobs
frames: the scheduler has journaled the jobs as sent, the node never got
them, and the scheduler is then killed -9, exactly the instant a lone
scheduler (or a standby's old leader) can die in. The node comes back as the
same run of its runner without them: they never ran, so they are queued
again and run once, though not reentrant. Every job appends its id to a file
as it starts, so the tests count how often each one ran.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import socket
import threading
from collections import Counter

import msgpack
import pytest

from dispy_wire import messages as M
from dispy_wire.framing import HEADER, PREAMBLE
from job_programs import COUNTING_JOB
from procs import Cluster
from waiting import wait_until

JOB = COUNTING_JOB


class SwallowingRelay:
    """Passes a node's connection to the scheduler through, dropping the scheduler's RunJobs frames while
    `swallow` is set (whole frames: the node sees a well-formed stream that lacks them)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.swallow = threading.Event()
        self.swallowed: list[int] = []  # the job ids of the frames dropped
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the scheduler is down: the node redials
                downstream.close()
                continue
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_scheduler: bool) -> None:
        buf = b""
        try:
            while data := src.recv(65536):
                if not from_scheduler:
                    dst.sendall(data)
                    continue
                buf += data
                if buf.startswith(PREAMBLE):
                    dst.sendall(PREAMBLE)
                    buf = buf[len(PREAMBLE) :]
                while len(buf) >= HEADER.size and len(buf) >= HEADER.size + HEADER.unpack(buf[: HEADER.size])[0]:
                    size = HEADER.size + HEADER.unpack(buf[: HEADER.size])[0]
                    frame, buf = buf[:size], buf[size:]
                    body = msgpack.unpackb(frame[HEADER.size :], raw=False, strict_map_key=False)
                    if self.swallow.is_set() and body[0] == M.RunJobs.TAG:
                        self.swallowed += [job[1] for job in body[1]]
                        continue
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._listener.close()


def runs(cluster: Cluster) -> Counter[int]:
    return Counter(int(line) for line in (cluster.workdir / "runs.txt").read_text().split())


def code(cluster: Cluster, text: str) -> str:
    (cluster.workdir / "runs.txt").write_text("")
    return text.replace("RUNS", repr(str(cluster.workdir / "runs.txt")))


def test_jobs_journaled_as_sent_but_never_received_run_once_after_a_kill_9_though_not_reentrant(cluster: Cluster) -> None:
    state = str(cluster.workdir / "scheduler-state")
    scheduler = cluster.scheduler("--state-dir", state, "--prefetch", "1")
    host, port = cluster.address.rsplit(":", 1)
    relay = SwallowingRelay((host, int(port)))
    try:
        relay.swallow.set()
        cluster.node("--scheduler", relay.address, cpus=1)
        client = cluster.client(code(cluster, JOB + """
cluster = SharedJobCluster(compute, reentrant=False)
jobs = [cluster.submit_job_id(i, i, RUNS, 1) for i in range(3)]
for job in jobs:
    job()
    print("job", job.id, name(job), flush=True)
cluster.close()
"""))  # fmt: skip
        # journaled as sent (the frame leaves after the commit), never received: one on the CPU, one ahead
        wait_until(lambda: len(relay.swallowed) >= 2, what="two jobs sent to the node and swallowed")
        scheduler.kill9()
        relay.swallow.clear()
        scheduler = cluster.scheduler("--port", port, "--state-dir", state, "--prefetch", "1", name="scheduler-2")
        assert client.wait(120) == 0, cluster.describe()
    finally:
        relay.close()
    ended = dict(re.findall(r"^job (\d) (\w+)", client.stdout, re.M))
    assert ended == {"0": "FINISHED", "1": "FINISHED", "2": "FINISHED"}, cluster.describe()
    assert runs(cluster) == Counter({0: 1, 1: 1, 2: 1})  # the two lost on the wire ran once, after the restart
    assert len(relay.swallowed) == 2  # (the wire numbers jobs its own way)


SIGTERM = JOB + """
import os
again = SharedJobCluster(compute, reentrant=True)
once = SharedJobCluster(compute, reentrant=False)
running = again.submit_job_id(0, 0, RUNS, 60)  # runs long the first time only
while "0" not in open(RUNS).read().split():
    time.sleep(0.05)
ahead = [once.submit_job_id(i, i, RUNS, 0) for i in (1, 2)]  # sent ahead to the node, for its one CPU
deadline = time.monotonic() + 60
while sum(n.get("waiting", 0) for n in once.scheduler_status()["nodes"].values()) < 2:
    assert time.monotonic() < deadline, "the jobs were not sent ahead to the node"
    time.sleep(0.05)
print("sent ahead", flush=True)
for job in [running, *ahead]:
    job()
    print("job", job.id, name(job), flush=True)
again.close()
once.close()
"""


def test_a_node_stopped_by_sigterm_gives_back_the_jobs_sent_ahead_and_another_node_runs_each_once(
    cluster: Cluster,
) -> None:
    """systemctl stop: the job running there is killed (reentrant: it runs again elsewhere), and the jobs waiting
    there for its CPU are given back, not Abandoned, though they are not reentrant."""
    cluster.scheduler("--prefetch", "2")
    first = cluster.node(cpus=1, name="first")
    client = cluster.client(code(cluster, SIGTERM))
    client.wait_for_line("sent ahead")
    first.stop(signal.SIGTERM)
    assert first.popen.returncode == 0, first.describe()
    assert "giving back 2 job(s) not started yet" in first.stderr
    cluster.node(cpus=1, name="second")
    assert client.wait(120) == 0, cluster.describe()
    ended = dict(re.findall(r"^job (\d) (\w+)", client.stdout, re.M))
    assert ended == {"0": "FINISHED", "1": "FINISHED", "2": "FINISHED"}, client.stdout
    assert runs(cluster) == Counter({0: 2, 1: 1, 2: 1})  # 0 was killed and ran again; 1 and 2 once, on the second


@pytest.mark.soak  # waits for the next whole minute: up to 80 s
def test_at_its_service_end_a_node_gives_back_the_jobs_sent_ahead_and_another_node_runs_each_once(
    cluster: Cluster,
) -> None:
    """--service-end: the running job is killed (given up: reentrant, it runs again elsewhere), and the jobs
    waiting there for its CPU are given back, not Abandoned, though they are not reentrant."""
    now = dt.datetime.now().astimezone()
    end = (now + dt.timedelta(minutes=1 if now.second < 40 else 2)).strftime("%H:%M")  # 20 s at least to set up
    cluster.scheduler("--prefetch", "2")
    first = cluster.node("--service-end", end, cpus=1, name="first")
    client = cluster.client(code(cluster, SIGTERM))
    client.wait_for_line("sent ahead")
    first.wait_for_line(r"giving back 2 job\(s\) not started yet", timeout=150, stream="stderr")
    cluster.node(cpus=1, name="second")
    assert client.wait(120) == 0, cluster.describe()
    ended = dict(re.findall(r"^job (\d) (\w+)", client.stdout, re.M))
    assert ended == {"0": "FINISHED", "1": "FINISHED", "2": "FINISHED"}, client.stdout
    assert runs(cluster) == Counter({0: 2, 1: 1, 2: 1})
