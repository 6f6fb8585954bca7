"""Does one scheduler keep up with 1,000 nodes? Simulated nodes over real sockets, a million queued jobs.

    .venv/bin/python benchmarks/scale.py [--nodes 1000] [--cpus 8] [--jobs 1000000] [--journal on|off|both]

Starts a real `dispyscheduler` (127.0.0.1, port 0, a temporary state dir),
then two processes of this script:
- a client, one connection speaking the client protocol: it opens a
  cluster and submits `--jobs` jobs (8 opaque bytes of arguments each) in
  batches of `--batch`, acknowledging results as they come;
- the nodes, `--nodes` connections from one process, each logging in with
  the node secret and `--cpus` CPUs, answering every RunJobs at once with a
  finished result per job (nothing runs).
The nodes log in first offering no CPU; the client then submits every job,
so the whole queue is held at once; then every node offers its CPUs (a
Heartbeat, as a node whose service hours begin) and the queue drains
through all of them. Printed:
- the time 1,000 node logins take;
- time to accept all jobs, and the scheduler's CPU per accepted job;
- the scheduler's RSS per queued job (RSS with all jobs queued, less its
  RSS before the first submit, over the jobs) and its peak RSS;
- the drain: from the nodes offering their CPUs to the last result;
- per-decision cost: the scheduler's CPU seconds during the drain over the
  jobs dispatched (each job's dispatch, result, delivery and ack: the
  scheduler's whole work per job, logins of the nodes included).
`--profile FILE` runs the scheduler under cProfile (`python -m pstats FILE`).
Everything is bounded by `--timeout`; every process started is ended by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dispy_wire import messages as M  # noqa: E402  (run as a script from a checkout)
from dispy_wire.framing import NEED_DATA, PREAMBLE, FrameDecoder  # noqa: E402
from dispy_wire.handshake import HandshakeState, PeerHandshake, Role  # noqa: E402
from dispy_wire.status import JobStatus  # noqa: E402
from dispy_wire.verifier import MIN_ITERATIONS, Verifier  # noqa: E402

USER, SECRET, NODE_SECRET = "bench", "bench-secret", "bench-node-secret"
#: seconds between a simulated node's Heartbeats (announced in its Hello)
NODE_HEARTBEAT = 10.0
#: batches of jobs submitted and not yet accepted: enough to keep the scheduler busy, few enough not to
#: buffer everything
SUBMIT_WINDOW = 8
#: logins under way at once (the scheduler takes 32 unauthenticated connections per address)
LOGINS_AT_ONCE = 16


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Peer(asyncio.Protocol):
    """One connection: logs in, then hands each message to `on_message`; writes are batched per read."""

    def __init__(self, role: Role, name: str, secret: str, info: dict[str, Any]) -> None:
        self.handshake = PeerHandshake(role, name, secret, info)
        self.decoder = FrameDecoder(expect_preamble=True)
        self.transport: asyncio.Transport | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.write(PREAMBLE)

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        while True:
            frame = self.decoder.next_frame()
            if frame is NEED_DATA:
                break
            assert isinstance(frame, bytes)
            msg = M.decode(frame)
            if self.handshake.state is not HandshakeState.DONE:
                self._login(msg)
            else:
                self.on_message(msg)
        self.flush()

    def _login(self, msg: M.Message) -> None:
        assert self.transport is not None
        if isinstance(msg, M.Refused):
            self.welcomed.set_exception(RuntimeError(f"refused: {msg.code} {msg.message}"))
            return
        reply = self.handshake.receive(msg)
        if self.handshake.state is HandshakeState.DONE:
            self.welcomed.set_result(None)
        else:
            self.transport.write(M.encode(reply))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"closed before login: {exc}"))

    def on_message(self, msg: M.Message) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Called after each read: send what the messages of that read produced."""


# -- the simulated nodes -------------------------------------------------------


class _Node(_Peer):
    def __init__(self, name: str, cpus: int, stats: dict[str, int]) -> None:
        # no CPUs offered until every node is in (`heartbeat`): the drain starts on all of them at once
        info = {"cpus": 0, "platform": "simulated", "pid": os.getpid(), "heartbeat": NODE_HEARTBEAT}
        super().__init__(Role.NODE, name, NODE_SECRET, info)
        self.cpus = cpus
        self.offered = 0
        self.stats = stats
        self.results: list[M.JobResult] = []

    def on_message(self, msg: M.Message) -> None:
        match msg:
            case M.RunJobs(jobs):
                now = time.time()
                self.results += [
                    M.JobResult(j.cluster_id, j.job_id, int(JobStatus.FINISHED), b"\x01", b"", b"", "", "", now, now)
                    for j in jobs
                ]
                self.stats["jobs"] += len(jobs)
            case M.Error(code, message, _ref):
                print(f"node error {code}: {message}", file=sys.stderr, flush=True)
            case _:
                pass  # LoadCluster, ResultsRecorded, Ping: nothing to do for a node that runs nothing

    def flush(self) -> None:
        if self.results and self.transport is not None:
            self.transport.write(M.encode(M.NodeResults(self.results)))
            self.results = []

    def heartbeat(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(M.encode(M.Heartbeat({"cpus": self.offered})))


async def _run_nodes(host: str, port: int, count: int, cpus: int) -> None:
    loop = asyncio.get_running_loop()
    stats = {"jobs": 0}
    nodes: list[_Node] = []
    gate = asyncio.Semaphore(LOGINS_AT_ONCE)

    async def connect(i: int) -> None:
        async with gate:
            _, node = await loop.create_connection(lambda: _Node(f"sim{i:05d}", cpus, stats), host, port)
            await node.welcomed
            nodes.append(node)

    async def heartbeats() -> None:
        while True:
            for node in nodes:
                node.heartbeat()
            await asyncio.sleep(NODE_HEARTBEAT / 2)

    beating = asyncio.create_task(heartbeats())  # from the first login: a silent node is dropped
    await asyncio.gather(*(connect(i) for i in range(count)))
    print(f"nodes {time.time():.6f}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # all jobs are queued: offer the CPUs
    for node in nodes:
        node.offered = node.cpus
        node.heartbeat()
    print(f"go {time.time():.6f}", flush=True)
    await beating  # until this process is ended by its PID


# -- the client ------------------------------------------------------------------


class _Client(_Peer):
    def __init__(self, jobs: int, batch: int) -> None:
        super().__init__(Role.CLIENT, USER, SECRET, {"host": "bench", "pid": os.getpid()})
        self.cluster_id = uuid.uuid4().hex
        self.jobs, self.batch = jobs, batch
        self.next_id = 1
        self.accepted = self.results = 0
        self.acks: list[int] = []
        self.all_accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def open(self) -> None:
        assert self.transport is not None
        self.transport.write(M.encode(M.OpenCluster(self.cluster_id, "scale", b"\x00" * 64, True, {})))

    def ping(self) -> None:
        """A sign of life: a client silent for four of the scheduler's heartbeats is written off."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(M.encode(M.Ping()))

    def _submit_more(self) -> None:
        assert self.transport is not None
        payload = b"\x00" * 8
        # counted in jobs: the scheduler answers several SubmitJobs of one turn with one JobsAccepted
        while self.next_id - 1 - self.accepted < SUBMIT_WINDOW * self.batch and self.next_id <= self.jobs:
            last = min(self.next_id + self.batch, self.jobs + 1)
            specs = [M.JobSpec(i, 0, payload, {}) for i in range(self.next_id, last)]
            self.transport.write(M.encode(M.SubmitJobs(self.cluster_id, specs)))
            self.next_id = last

    def on_message(self, msg: M.Message) -> None:
        match msg:
            case M.ClusterOpened():
                self._submit_more()
            case M.JobsAccepted(_cid, job_ids):
                self.accepted += len(job_ids)
                self._submit_more()
                if self.accepted >= self.jobs and not self.all_accepted.done():
                    self.all_accepted.set_result(None)
            case M.JobResults(_cid, results):
                self.results += len(results)
                self.acks += [r.job_id for r in results]
                if self.results >= self.jobs and not self.all_done.done():
                    self.all_done.set_result(None)
            case M.Error(code, message, _ref):
                for fut in (self.all_accepted, self.all_done):
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"scheduler error {code}: {message}"))
            case _:
                pass  # JobsStarted, Ping

    def flush(self) -> None:
        if self.acks and self.transport is not None:
            self.transport.write(M.encode(M.AckResults(self.cluster_id, self.acks)))
            self.acks = []


async def _run_client(host: str, port: int, jobs: int, batch: int) -> None:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: _Client(jobs, batch), host, port)
    await client.welcomed
    print(f"start {time.time():.6f}", flush=True)
    client.open()
    while not client.all_accepted.done():
        client.ping()
        await asyncio.wait([client.all_accepted], timeout=0.5)
    client.all_accepted.result()
    print(f"accepted {time.time():.6f}", flush=True)
    while not client.all_done.done():
        client.ping()
        await asyncio.wait([client.all_done], timeout=0.5)
    client.all_done.result()
    print(f"done {time.time():.6f}", flush=True)


# -- the run ---------------------------------------------------------------------


class _Line:
    """Reads a child's stdout lines without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen[str], deadline: float) -> None:
        self.proc, self.deadline = proc, deadline

    def expect(self, word: str, sample: Any = None) -> list[str]:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < self.deadline:
            line = self.proc.stdout.readline()
            if line:
                parts = line.split()
                if parts[0] == word:
                    return parts[1:]
                if sample is not None:
                    sample(parts)
                continue
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args!r} exited {self.proc.returncode} before {word!r}")
            if sample is not None:
                sample(None)
            time.sleep(0.05)
        raise TimeoutError(f"no {word!r} within the timeout")


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def run(args: argparse.Namespace, journal: bool) -> list[str]:
    deadline = time.monotonic() + args.timeout
    tmp = Path(tempfile.mkdtemp(prefix="dispy-bench-scale-"))
    users = tmp / "users.toml"
    users.write_text(
        f'[users.{USER}]\nverifier = "{Verifier.from_secret(SECRET, MIN_ITERATIONS)}"\n'
        'max_queued_bytes = "unlimited"\nmax_held_bytes = "unlimited"\n'
    )
    users.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = [sys.executable, *(["-m", "cProfile", "-o", args.profile] if args.profile else [])]
    argv = [*python, "-m", "dispy_sched.main", "--host", "127.0.0.1", "--port", "0", "--state-dir", str(tmp / "state"),
            "--users-file", str(users), "--node-verifier", str(Verifier.from_secret(NODE_SECRET, MIN_ITERATIONS)),
            "--loglevel", "WARNING", *([] if journal else ["--no-journal"])]  # fmt: skip
    procs: list[subprocess.Popen[str]] = []

    def start(cmd: list[str], name: str, stdin: bool = False) -> subprocess.Popen[str]:
        err = open(tmp / f"{name}.err", "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                text=True, env=env)  # fmt: skip
        procs.append(proc)
        return proc

    try:
        sched_proc = start(argv, "scheduler")
        host, port = _Line(sched_proc, deadline).expect("listening")[-1].rsplit(":", 1)
        sched = psutil.Process(sched_proc.pid)
        me = [sys.executable, str(Path(__file__).resolve())]
        nodes_proc = start([*me, "_nodes", host, port, str(args.nodes), str(args.cpus)], "nodes", stdin=True)
        nodes = _Line(nodes_proc, deadline)
        t_nodes0 = time.time()
        t_nodes = float(nodes.expect("nodes")[0])
        rss0, cpu0 = sched.memory_info().rss, _cpu(sched)
        client = _Line(start([*me, "_client", host, port, str(args.jobs), str(args.batch)], "client"), deadline)
        t_start = float(client.expect("start")[0])
        t_accepted = float(client.expect("accepted")[0])
        cpu_accept = _cpu(sched) - cpu0
        rss_queued = sched.memory_info().rss
        peers = [psutil.Process(nodes_proc.pid), psutil.Process(client.proc.pid)]
        cpu1, peers1 = _cpu(sched), [_cpu(p) for p in peers]
        assert nodes_proc.stdin is not None
        nodes_proc.stdin.write("go\n")
        nodes_proc.stdin.flush()
        t_go = float(nodes.expect("go")[0])
        peak = [rss_queued]

        def sample(parts: list[str] | None) -> None:
            try:
                peak[0] = max(peak[0], sched.memory_info().rss)
            except psutil.Error:
                pass

        t_done = float(client.expect("done", sample)[0])
        cpu_drain = _cpu(sched) - cpu1
        nodes_cpu, client_cpu = (_cpu(p) - c for p, c in zip(peers, peers1))
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()  # the scheduler writes its profile on SIGTERM
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    jobs = args.jobs
    return [
        f"{args.nodes} nodes logged in (offering no CPU) in {t_nodes - t_nodes0:.1f} s",
        f"accept {jobs:,} jobs: {t_accepted - t_start:.1f} s ({jobs / (t_accepted - t_start):,.0f} jobs/s), "
        f"scheduler CPU {cpu_accept / jobs * 1e6:.1f} us/job",
        f"scheduler RSS: {rss0 / 2**20:.0f} MiB idle, {rss_queued / 2**20:.0f} MiB with all queued: "
        f"{(rss_queued - rss0) / jobs:.0f} bytes per queued job; peak {peak[0] / 2**20:.0f} MiB",
        f"drain over {args.nodes} nodes x {args.cpus} CPUs: {t_done - t_go:.1f} s, {jobs / (t_done - t_go):,.0f} jobs/s",
        f"per decision: {cpu_drain / jobs * 1e6:.1f} us of scheduler CPU per job dispatched "
        f"(dispatch, result, delivery, ack; {cpu_drain:.1f} s in all)",
        f"  the other processes' CPU per job meanwhile (the 2 cores are shared): simulated nodes "
        f"{nodes_cpu / jobs * 1e6:.1f} us, client {client_cpu / jobs * 1e6:.1f} us",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_client", "_nodes"):
        role, host, port, a, b = sys.argv[1:6]
        worker = _run_client if role == "_client" else _run_nodes
        loop = _loop()
        try:
            loop.run_until_complete(worker(host, int(port), int(a), int(b)))
        finally:
            loop.close()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--cpus", type=int, default=8, help="CPUs of each node")
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000, help="jobs per SubmitJobs message")
    ap.add_argument("--journal", choices=("on", "off", "both"), default="on", help="the scheduler's journal")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds each run may take in all")
    ap.add_argument("--profile", metavar="FILE", help="run the scheduler under cProfile, writing FILE")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so `run` ends what it started
    for journal in {"on": [True], "off": [False], "both": [True, False]}[args.journal]:
        print(f"-- journal {'on' if journal else 'off'}: {args.jobs:,} jobs, {args.nodes} nodes x {args.cpus} CPUs",
              flush=True)  # fmt: skip
        for line in run(args, journal):
            print(line, flush=True)


if __name__ == "__main__":
    main()
