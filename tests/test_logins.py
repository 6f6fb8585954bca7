"""Logins and the limits before them, against a real scheduler: what an attacker on the network can and cannot do."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from procs import ROOT, Cluster, write_users_file
from rawpeer import login, read_message
from waiting import wait_until

from dispy_sched.server import quiet_accept_errors
from dispy_wire.settings import EX_CONFIG
from dispy_wire import messages as M
from dispy_wire.discovery import Throttle
from dispy_wire.framing import HEADER, PREAMBLE, FrameDecoder

USERS = '[users.alice]\nsecret = "right"\n'

JOBS = """
    import sys
    from dispy_client import SharedJobCluster

    def compute(i):
        return i * i

    with SharedJobCluster(compute, user="alice", secret="right") as c:
        jobs = [c.submit(i) for i in range({n})]
        assert [j() for j in jobs] == [i * i for i in range({n})]
    print("ok")
"""


def _scheduler_argv(cluster: Cluster, *args: str) -> list[str]:
    state = str(cluster.workdir / "state")
    return [sys.executable, "-m", "dispy_sched.main", "--host", "127.0.0.1", "--port", "0", "--state-dir", state, *args]


def _guarded(cluster: Cluster) -> None:
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    cluster.scheduler("--users-file", str(users), "--node-secret", "node-s")
    cluster.node(cpus=2)


def _connect(cluster: Cluster, source: str | None = None) -> socket.socket:
    host, port = cluster.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=20, source_address=(source, 0) if source else None)


def _login(sock: socket.socket, user: str, secret: str) -> tuple[M.Message | None, FrameDecoder]:
    """Runs a client's login over a raw socket; returns the Welcome, or the Refused that ended it."""
    decoder = FrameDecoder()
    return login(sock, decoder, user, secret), decoder


def _scheduler_log(cluster: Cluster) -> str:
    return cluster.procs[0].stderr


# -- the users file ------------------------------------------------------------


def test_a_users_file_with_a_plaintext_secret_is_refused_with_how_to_convert(cluster: Cluster) -> None:
    users = cluster.workdir / "users.toml"
    users.write_text(USERS)
    users.chmod(0o600)
    proc = cluster.start(_scheduler_argv(cluster, "--users-file", str(users)), "scheduler")
    assert proc.wait(30) == EX_CONFIG
    assert "[users.alice] holds a plaintext secret" in proc.stderr
    assert f"dispyadmin user add alice --users-file {users} --replace" in proc.stderr
    assert "dispyadmin verifier" in proc.stderr


def test_a_users_file_others_may_read_is_refused_naming_the_mode_and_the_fix(cluster: Cluster) -> None:
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    users.chmod(0o644)
    proc = cluster.start(_scheduler_argv(cluster, "--users-file", str(users)), "scheduler")
    assert proc.wait(30) == EX_CONFIG
    assert "has mode -rw-r--r-- (644)" in proc.stderr and f"chmod 600 {users}" in proc.stderr


def test_dispyadmin_user_add_prints_a_secret_with_which_the_user_logs_in(cluster: Cluster) -> None:
    users = cluster.workdir / "users.toml"
    admin = [sys.executable, "-m", "dispy_sched.admin", "user", "add", "carol", "--share", "2", "--users-file", str(users)]
    out = subprocess.run(admin, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    secret = out.strip().splitlines()[-1]
    assert len(secret) >= 40
    text = users.read_text()
    assert secret not in text and 'verifier = "SCRAM-SHA-256$' in text and "share = 2" in text
    assert users.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(admin, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "already in" in again.stderr  # never overwritten by accident
    cluster.scheduler("--users-file", str(users))
    cluster.node(cpus=1)
    client = cluster.run_client(JOBS.replace('user="alice", secret="right"', f'user="carol", secret="{secret}"').format(n=3))
    assert client.stdout.strip() == "ok"


# -- what a listener or a guesser gets ----------------------------------------


class _Recorder:
    """A TCP relay between one client and the scheduler that keeps what the client sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = upstream
        self.from_client = bytearray()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        down, _ = self.listener.accept()
        up = socket.create_connection(self.upstream)

        def pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(up, down, None), daemon=True)
        back.start()
        try:
            pump(down, up, self.from_client)
        except OSError:
            pass
        back.join(30)


def test_an_exchange_captured_from_a_real_client_cannot_be_replayed(cluster: Cluster) -> None:
    _guarded(cluster)
    host, port = cluster.address.rsplit(":", 1)
    recorder = _Recorder((host, int(port)))
    client = cluster.run_client(JOBS.format(n=2), env={"DISPY_SCHEDULER": f"127.0.0.1:{recorder.port}"})
    assert client.stdout.strip() == "ok"
    decoder = FrameDecoder()
    decoder.feed(bytes(recorder.from_client))
    hello, proof = decoder.next_frame(), decoder.next_frame()
    assert isinstance(hello, bytes) and isinstance(proof, bytes)
    assert isinstance(M.decode(hello), M.Hello) and isinstance(M.decode(proof), M.ClientProof)
    with _connect(cluster) as sock:
        replay = FrameDecoder()
        assert isinstance(read_message(sock, replay), M.Challenge)
        sock.sendall(PREAMBLE + HEADER.pack(len(hello)) + hello)
        assert isinstance(read_message(sock, replay), M.ServerFirst)  # with a nonce the recording does not cover
        sock.sendall(HEADER.pack(len(proof)) + proof)
        refused = read_message(sock, replay)
    assert isinstance(refused, M.Refused) and refused.code == "bad-message" and "nonce" in refused.message


def test_rapid_wrong_guesses_are_throttled_and_each_failure_is_one_log_line(cluster: Cluster) -> None:
    _guarded(cluster)
    answers = []
    for i in range(14):
        with _connect(cluster) as sock:
            answer, _ = _login(sock, "alice", f"guess-{i}")
        assert isinstance(answer, M.Refused)
        answers.append(answer)
    codes = [a.code for a in answers]
    assert codes[:10] == ["login-failed"] * 10, codes
    assert set(codes[10:]) == {"throttled"}, codes
    assert re.fullmatch(r"too many failed logins, retry in \d+ s", answers[-1].message)
    with _connect(cluster) as sock:  # the right secret waits its turn too: guessing cannot get around it
        answer, _ = _login(sock, "alice", "right")
    assert isinstance(answer, M.Refused) and answer.code == "throttled"
    wait_until(lambda: _scheduler_log(cluster).count("throttled from") == 5, 30, "a log line per throttled try")
    assert _scheduler_log(cluster).count("login-failed from") == 10


def test_a_cluster_name_with_a_newline_cannot_forge_a_scheduler_log_line(cluster: Cluster) -> None:
    _guarded(cluster)
    forged = "2026-01-01 00:00:00,000 INFO dispy_sched.server: user root connected from 10.0.0.1"
    with _connect(cluster) as sock:
        welcome, decoder = _login(sock, "alice", "right")
        assert isinstance(welcome, M.Welcome)
        sock.sendall(M.encode(M.OpenCluster("c-1", "x\n" + forged, b"", False, {"nodes": 5})))
        error = read_message(sock, decoder)
    assert isinstance(error, M.Error) and error.code == "bad-request"
    wait_until(lambda: "x\\n2026-01-01" in _scheduler_log(cluster), 30, "the refusal logged, escaped")
    assert not any(line.startswith("2026-01-01") for line in _scheduler_log(cluster).splitlines())


# -- floods before login ---------------------------------------------------------


def _rss(cluster: Cluster) -> int:
    return int(psutil.Process(cluster.procs[0].pid).memory_info().rss)


def test_a_16_mb_frame_before_login_costs_the_scheduler_nothing(cluster: Cluster) -> None:
    _guarded(cluster)
    before = _rss(cluster)
    body = b"\xdd" + (16 << 20).to_bytes(4, "big") + b"\x80" * (16 << 20)  # an array of 16 M empty maps
    with _connect(cluster) as sock:
        assert isinstance(read_message(sock, FrameDecoder()), M.Challenge)
        try:
            sock.sendall(PREAMBLE + HEADER.pack(len(body)) + body)
        except OSError:
            pass  # refused from the header: the scheduler closed before the rest arrived
    client = cluster.run_client(JOBS.format(n=20))
    assert client.stdout.strip() == "ok"
    assert _rss(cluster) - before < 10 << 20, (before, _rss(cluster))
    assert "too-large from unauthenticated peer" in _scheduler_log(cluster)


def test_idle_unauthenticated_connections_cannot_lock_a_user_out(cluster: Cluster) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096) if hard == resource.RLIM_INFINITY else hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2048:
        pytest.skip("this process may not open 1,100 sockets (RLIMIT_NOFILE hard limit)")
    _guarded(cluster)
    sockets = []
    try:
        for i in range(1100):  # 600 from one address (its cap), then 500 from 25 others (the total cap)
            source = "127.0.0.2" if i < 600 else f"127.0.0.{3 + i % 25}"
            try:
                sockets.append(_connect(cluster, source=source))
            except OSError:
                break
        assert len(sockets) == 1100
        client = cluster.run_client(JOBS.format(n=100), timeout=120)
        assert client.stdout.strip() == "ok"
        fds = psutil.Process(cluster.procs[0].pid).num_fds()
        assert fds < 256 + 100, fds  # the pre-login cap, plus the logged-in and the scheduler's own
    finally:
        for sock in sockets:
            sock.close()
    log = _scheduler_log(cluster)
    assert "too many connections from 127.0.0.2 waiting to log in (at most 32)" in log
    assert "too many connections waiting to log in (at most 256): the longest waiting is closed" in log
    assert log.count("refused 127.0.0.") < 60  # one line a second, not one per refused connection
    assert "Traceback" not in log


def test_the_scheduler_logs_its_descriptor_capacity(cluster: Cluster) -> None:
    _guarded(cluster)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cluster.procs[0].wait_for_line(r"file descriptors: \d+", stream="stderr", timeout=10)
    assert psutil.Process(cluster.procs[0].pid).rlimit(psutil.RLIMIT_NOFILE)[0] == hard



def test_running_out_of_descriptors_is_one_log_line_a_second_not_a_traceback_per_accept(cluster: Cluster) -> None:
    users = write_users_file(cluster.workdir / "users.toml", USERS)
    argv = " ".join(_scheduler_argv(cluster, "--users-file", str(users)))
    proc = cluster.start(["sh", "-c", f"ulimit -n 48 && exec {argv}"], "scheduler")
    match = proc.wait_for_line(r"listening on (\S+):(\d+)")
    cluster.address = f"{match.group(1)}:{match.group(2)}"
    held = []
    try:
        for _ in range(60):  # logged-in connections are not capped: they use up the 48 descriptors
            sock = _connect(cluster)
            held.append(sock)
            try:
                answer, _ = _login(sock, "alice", "right")
            except ConnectionError:  # accept() failed for it: the loop dropped it (uvloop)
                break
            if not isinstance(answer, M.Welcome):
                break
        for _ in range(50):  # accept() fails for these: the loop drops them (uvloop) or reports it (asyncio)
            held.append(_connect(cluster))
        with _connect(cluster) as probe:  # reaches the listener's backlog, never the scheduler
            probe.settimeout(3)
            with pytest.raises((TimeoutError, ConnectionError)):
                if not probe.recv(1):
                    raise ConnectionResetError("closed")
    finally:
        for sock in held:
            sock.close()

    def logs_in() -> bool:
        """Once the scheduler has seen the held connections close, its descriptors are back."""
        with _connect(cluster) as sock:
            try:
                answer, _ = _login(sock, "alice", "right")
            except ConnectionError:  # accepted while still out of descriptors: dropped
                return False
        return isinstance(answer, M.Welcome)

    wait_until(logs_in, 60, "a login once the held connections are closed")
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "cannot accept connections" in ln]
    assert len(lines) <= len({ln[:19] for ln in lines}), lines  # at most one a second


def test_accept_errors_from_the_loop_are_one_line_a_second_and_other_errors_pass_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: seen.append(context))
        quiet_accept_errors(loop, Throttle(1.0))
        for _ in range(1000):  # what asyncio's accept loop reports, once per failed accept()
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": OSError(errno.EMFILE, "Too many open files")}
            )
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})

    with caplog.at_level(logging.ERROR, logger="dispy_sched.server"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records] == ["cannot accept connections: Too many open files"]
    assert caplog.records[0].exc_info is None
    assert [c["message"] for c in seen] == ["something else"]  # the handler that was there gets the rest


def test_dispyadmin_replace_gives_a_new_secret_and_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    from dispy_sched.admin import add_user
    from dispy_sched.config import load_users
    from dispy_wire.verifier import Verifier

    users = tmp_path / "users.toml"
    first = add_user(str(users), "alice", 2, replace=False, iterations=4096)
    add_user(str(users), "bob", None, replace=False, iterations=4096)
    users.write_text(users.read_text().replace("share = 2", "share = 2\nmax_cpus = 4  # a limit the operator set"))
    second = add_user(str(users), "alice", None, replace=True, iterations=4096)
    loaded = load_users(str(users))
    assert first != second and set(loaded) == {"alice", "bob"}
    assert loaded["alice"].share == 2 and loaded["alice"].limits["max_cpus"] == 4
    salt, iterations = loaded["alice"].verifier.salt, loaded["alice"].verifier.iterations
    assert Verifier.from_secret(second, iterations, salt) == loaded["alice"].verifier
    assert "# a limit the operator set" in users.read_text()
