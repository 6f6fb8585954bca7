"""Results nobody else can forge: real scheduler, node and clients, and someone in the middle.

A client unpickles a result or provisional result, and saves a file, only if
a job process of its own cluster MAC'd it under the cluster's key
(`dispy_wire.result_mac`). Here a frame-level proxy between scheduler and
client swaps payloads, and another cluster's job writes on a job's channel
pipe; each forgery must end its job `Terminated` with "result failed
authentication", run none of the forged pickle's code, and leave the other
jobs alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dispy_client as dispy
from dispy_wire import messages as M
from dispy_wire.framing import PREAMBLE, FrameDecoder
from dispy_wire.status import JobStatus
from procs import Cluster
from waiting import wait_until

FORGED = "result failed authentication"


class _Evil:
    """Unpickling this creates the file at `path`: what a forger would run in the client."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def evil_pickle(path: Path) -> bytes:
    return pickle.dumps(_Evil(path))


def test_the_forged_pickle_would_run_its_code_if_unpickled(tmp_path: Path) -> None:
    """Keeps the tests below honest: their pickle does create its file when loaded."""
    target = tmp_path / "ran"
    pickle.loads(evil_pickle(target)).close()
    assert target.exists()


class FrameProxy:
    """A TCP relay between client and scheduler that rewrites the scheduler's messages with `rewrite`.

    Args:
        upstream: the scheduler's "host:port".
        rewrite: each message from the scheduler goes through it on its way to the client.
    """

    def __init__(self, upstream: str, rewrite: Callable[[M.Message], M.Message]) -> None:
        self._host, _, port = upstream.rpartition(":")
        self._port = int(port)
        self._rewrite = rewrite
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="frame-proxy", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self._loop
        ).result(10)
        self.address = "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        sched_r, sched_w = await asyncio.open_connection(self._host, self._port)
        try:
            await asyncio.gather(self._copy(client_r, sched_w), self._rewrite_stream(sched_r, client_w))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            client_w.close()
            sched_w.close()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _rewrite_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(len(PREAMBLE)))
        decoder = FrameDecoder(expect_preamble=False)
        while data := await reader.read(1 << 16):
            decoder.feed(data)
            for frame in decoder.frames():
                writer.write(M.encode(self._rewrite(M.decode(frame))))
            await writer.drain()
        writer.close()


@pytest.fixture
def proxies() -> Iterator[list[FrameProxy]]:
    made: list[FrameProxy] = []
    yield made
    for proxy in made:
        proxy.close()


def test_a_proxy_that_swaps_a_result_provisional_result_or_file_ends_those_jobs_and_runs_nothing(
    cluster: Cluster, proxies: list[FrameProxy]
) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    ran = cluster.workdir / "forged-code-ran"
    dest = cluster.workdir / "received"
    forged: list[str] = []

    def rewrite(msg: M.Message) -> M.Message:
        """Job 2's result, job 3's provisional result and job 4's file are swapped (their MACs kept)."""
        if isinstance(msg, M.JobResults):
            results = []
            for r in msg.results:
                if (r.job_id, r.status) in ((2, JobStatus.FINISHED), (3, JobStatus.PROVISIONAL_RESULT)):
                    r = r._replace(result=evil_pickle(ran))
                    forged.append(f"{r.job_id}")
                results.append(r)
            return M.JobResults(msg.cluster_id, results)
        if isinstance(msg, M.JobFiles):
            files = []
            for f in msg.files:
                if f.job_id == 4:
                    f = f._replace(data=b"#!/bin/sh\necho forged\n", mode=0o755)
                    forged.append("4")
                files.append(f)
            return M.JobFiles(files)
        return msg

    proxy = FrameProxy(cluster.address, rewrite)
    proxies.append(proxy)
    client = cluster.client(
        f"""
        import json
        from dispy_client import SharedJobCluster, DispyJob

        def compute(n):
            dispy_provisional_result(n)
            with open("report-%d.txt" % n, "w") as f:
                f.write("report %d" % n)
            assert dispy_send_file("report-%d.txt" % n) == 0
            return n * n

        provisional = {{}}

        def status(job):
            if job.status == DispyJob.ProvisionalResult:
                provisional.setdefault(job.args[0], []).append(job.result)

        with SharedJobCluster(compute, job_status=status, dest_path={str(dest)!r}) as cluster:
            jobs = [cluster.submit(n) for n in range(1, 6)]   # job ids 1 to 5, in order
            cluster.wait()
        outcome = {{j.args[0]: [j.status, j.result, j.exception] for j in jobs}}
        print(json.dumps({{"outcome": outcome, "provisional": provisional}}))
        """,
        env={"DISPY_SCHEDULER": proxy.address},
    )
    assert client.wait(60) == 0, cluster.describe()
    report = json.loads(client.stdout.strip().splitlines()[-1])
    outcome = {int(n): tuple(v) for n, v in report["outcome"].items()}
    assert sorted(forged) == ["2", "3", "4"], forged
    for n in (2, 3, 4):
        assert outcome[n] == (dispy.DispyJob.Terminated, None, FORGED), outcome[n]
    for n in (1, 5):
        assert outcome[n] == (dispy.DispyJob.Finished, n * n, None), outcome[n]
        assert report["provisional"][str(n)] == [n]
        assert (dest / f"report-{n}.txt").read_text() == f"report {n}"
    assert "3" not in report["provisional"], "the forged provisional result was used"
    assert not (dest / "report-4.txt").exists(), "the forged file was saved"
    assert not ran.exists(), "the client ran the forged pickle"
    assert client.stderr.count("failed authentication") == 3, client.stderr


def test_a_job_writing_on_another_clusters_job_channel_cannot_make_its_client_unpickle(cluster: Cluster) -> None:
    """Both clusters' jobs run as one account (a shared run-as uid): the forger can open the victim's pipe."""
    cluster.scheduler()
    cluster.node(cpus=2)
    ran = cluster.workdir / "forged-code-ran"
    meeting = cluster.workdir / "meeting"
    meeting.mkdir()
    victim = cluster.client(
        f"""
        from dispy_client import SharedJobCluster, DispyJob

        def victim(meeting):
            import os, time
            with open(os.path.join(meeting, "victim.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.rename(os.path.join(meeting, "victim.tmp"), os.path.join(meeting, "victim.pid"))
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(meeting, "forged")) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "real"

        with SharedJobCluster(victim) as cluster:
            job = cluster.submit({str(meeting)!r})
            job()
            print(job.status, job.exception)
        """,
        name="victim",
    )
    wait_until(lambda: (meeting / "victim.pid").exists(), what="the victim's job to start")
    attacker = cluster.run_client(
        f"""
        from dispy_client import SharedJobCluster

        def attack(meeting, evil):
            # as a job can: its own cluster's key and id, and the victim's pipes by /proc
            import os, msgpack
            from dispy_node import channel
            from dispy_wire import result_mac
            from dispy_wire.framing import encode_frame
            pid = int(open(os.path.join(meeting, "victim.pid")).read())
            status = 12  # ProvisionalResult
            mac = result_mac.sign(channel._key, result_mac.Kind.PROVISIONAL, channel._cluster_id, 1, status, evil)
            written = 0
            for fd in os.listdir("/proc/%d/fd" % pid):
                path = "/proc/%d/fd/%s" % (pid, fd)
                if int(fd) > 2 and os.readlink(path).startswith("pipe:"):
                    with open(path, "wb") as pipe:
                        for record in ({{"kind": "provisional", "result": evil, "mac": mac}},
                                       {{"kind": "provisional", "result": evil}}):
                            pipe.write(encode_frame(msgpack.packb(record, use_bin_type=True)))
                    written += 1
            open(os.path.join(meeting, "forged"), "w").close()
            return written

        with SharedJobCluster(attack) as cluster:
            job = cluster.submit({str(meeting)!r}, {evil_pickle(ran)!r})
            assert job() == 1, (job.status, job.exception)   # the victim's channel, its only pipe but stdio
        print("forged")
        """,
        name="attacker",
    )
    assert attacker.stdout.strip() == "forged"
    assert victim.wait(60) == 0, cluster.describe()
    assert victim.stdout.strip() == f"{dispy.DispyJob.Terminated} {FORGED}"
    assert not ran.exists(), "the victim's client ran the forged pickle"
    assert "failed authentication" in victim.stderr


def test_recover_jobs_checks_results_against_the_key_kept_in_its_private_file(cluster: Cluster) -> None:
    cluster.scheduler()
    cluster.node(cpus=2)
    recover_file = cluster.workdir / "recover.jsonl"
    client = cluster.client(
        f"""
        import time
        import dispy_client as dispy

        def compute(n):
            return n * 10

        cluster = dispy.SharedJobCluster(compute, recover_file={str(recover_file)!r})
        jobs = [cluster.submit_job_id(i, i) for i in range(2)]
        print("submitted", flush=True)
        time.sleep(60)
        """
    )
    client.wait_for_line("submitted")
    assert stat.S_IMODE(os.stat(recover_file).st_mode) == 0o600
    client.kill9()
    # a copy whose key is not the cluster's: what it recovers cannot be authenticated
    lines = recover_file.read_text().splitlines()
    header = json.loads(lines[0])
    header["result_key"] = bytes(32).hex()
    wrong = cluster.workdir / "wrong-key.jsonl"
    wrong.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    rejected = dispy.recover_jobs(str(wrong), timeout=30)
    assert sorted((j.id, j.status, j.result, j.exception) for j in rejected) == [
        (i, dispy.DispyJob.Terminated, None, FORGED) for i in range(2)
    ]
