"""Every bad input gets a clear, typed error, a log line, and harms nobody else."""

from __future__ import annotations

import os
import socket
import time

import pytest
from procs import Cluster, Proc, write_users_file
from rawpeer import login, read_message

from dispy_wire import messages as M
from dispy_wire.framing import HEADER, PREAMBLE, PRELOGIN_MAX_SIZE, FrameDecoder

BYSTANDER = """
    from dispy_client import SharedJobCluster

    def compute(i):
        import time
        time.sleep(0.05)
        return i

    with SharedJobCluster(compute, user="bystander", secret="s3cret") as c:
        jobs = [c.submit(i) for i in range(60)]
        assert [j() for j in jobs] == list(range(60))
    print("ok")
"""


def _connect(address: str) -> tuple[socket.socket, FrameDecoder]:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock, FrameDecoder()


def _challenge(sock: socket.socket, decoder: FrameDecoder) -> M.Challenge:
    msg = read_message(sock, decoder)
    assert isinstance(msg, M.Challenge), msg
    return msg


def _login(sock: socket.socket, decoder: FrameDecoder, user: str, secret: str) -> M.Welcome:
    """Logs in over a raw socket, as a client would."""
    welcome = login(sock, decoder, user, secret)
    assert isinstance(welcome, M.Welcome), f"login ended with {welcome}"
    return welcome


def _refusal(sock: socket.socket, decoder: FrameDecoder) -> M.Refused:
    """Reads up to the Refused frame and checks that the connection then closes."""
    msg = read_message(sock, decoder)
    assert isinstance(msg, M.Refused), msg
    assert read_message(sock, decoder) is None, "connection stayed open after Refused"
    return msg


@pytest.fixture
def guarded(cluster: Cluster) -> Cluster:
    """A scheduler with a users file and a node secret, one node, and a bystander at work."""
    users = cluster.workdir / "users.toml"
    write_users_file(users, '[users.alice]\nsecret = "right"\n[users.bystander]\nsecret = "s3cret"\n')
    cluster.scheduler("--users-file", str(users), "--node-secret", "node-s", "--handshake-timeout", "1", "--max-message-size", "100000")
    cluster.node(cpus=2)
    cluster.bystander = cluster.client(BYSTANDER, "bystander")  # type: ignore[attr-defined]
    return cluster


def _bystander_unharmed(cluster: Cluster) -> None:
    bystander: Proc = cluster.bystander  # type: ignore[attr-defined]
    assert bystander.wait(60) == 0, cluster.describe()
    assert bystander.stdout.strip() == "ok"


def _scheduler_logged(cluster: Cluster, pattern: str) -> None:
    cluster.procs[0].wait_for_line(pattern, stream="stderr")


def test_wrong_secret_is_a_clear_authentication_error(guarded: Cluster) -> None:
    client = guarded.run_client(
        """
        from dispy_client import SharedJobCluster, AuthenticationError
        try:
            SharedJobCluster(lambda: 1, user="alice", secret="wrong")
        except AuthenticationError as exc:
            print(exc)
        """
    )
    host, port = guarded.address.rsplit(":", 1)
    assert client.stdout.strip() == f"scheduler {host}:{port} rejected user 'alice': unknown user or wrong secret"
    _scheduler_logged(guarded, r"login-failed from unauthenticated peer claiming 'alice' \(a known name\)")
    _bystander_unharmed(guarded)


def test_unknown_user_is_refused(guarded: Cluster) -> None:
    client = guarded.run_client(
        """
        from dispy_client import SharedJobCluster, AuthenticationError
        try:
            SharedJobCluster(lambda: 1, user="mallory", secret="x")
        except AuthenticationError as exc:
            print(exc)
        """
    )
    # the same answer as a wrong secret: a guesser cannot learn which names exist
    assert client.stdout.strip().endswith("rejected user 'mallory': unknown user or wrong secret")
    _scheduler_logged(guarded, r"login-failed from unauthenticated peer claiming 'mallory' \(no such name\)")
    _bystander_unharmed(guarded)


def test_node_with_wrong_node_secret_is_refused(guarded: Cluster) -> None:
    node = guarded.node("--node-secret", "nope", name="intruder", wait=False)
    assert node.wait(30) != 0
    assert "login failed" in node.stderr
    _scheduler_logged(guarded, r"login-failed .*intruder")
    _bystander_unharmed(guarded)


def test_wrong_protocol_version_is_refused(guarded: Cluster) -> None:
    sock, decoder = _connect(guarded.address)
    with sock:
        _challenge(sock, decoder)
        sock.sendall(PREAMBLE + M.encode(M.Hello(99, "client", "alice", "n,,n=alice,r=abcdefgh", {}, "SCRAM-SHA-256")))
        refused = _refusal(sock, decoder)
    assert refused.code == "bad-version"
    assert "protocol version 99" in refused.message
    _scheduler_logged(guarded, r"bad-version")
    _bystander_unharmed(guarded)


def test_garbage_bytes_are_refused(guarded: Cluster) -> None:
    sock, decoder = _connect(guarded.address)
    with sock:
        _challenge(sock, decoder)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = _refusal(sock, decoder)
    assert refused.code == "not-dispy"
    _scheduler_logged(guarded, r"not-dispy from unauthenticated peer")
    sock, decoder = _connect(guarded.address)
    with sock:
        _challenge(sock, decoder)
        sock.sendall(PREAMBLE + HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1")
        assert _refusal(sock, decoder).code == "bad-message"
    _bystander_unharmed(guarded)


def test_oversized_message_is_refused_without_reading_it(guarded: Cluster) -> None:
    sock, decoder = _connect(guarded.address)
    with sock:
        _challenge(sock, decoder)
        sock.sendall(PREAMBLE + HEADER.pack(10_000_000))  # the body never needs to come
        refused = _refusal(sock, decoder)
    assert refused.code == "too-large"
    # before login the limit is a few KiB, whatever --max-message-size allows after it
    assert f"10000000 bytes exceeds the limit of {PRELOGIN_MAX_SIZE}" in refused.message
    _scheduler_logged(guarded, r"too-large")
    _bystander_unharmed(guarded)


def test_oversized_submit_is_refused_at_the_client(guarded: Cluster) -> None:
    client = guarded.run_client(
        """
        from dispy_client import SharedJobCluster, DispyError
        with SharedJobCluster(lambda b: len(b), user="alice", secret="right") as c:
            try:
                c.submit(b"x" * 200_000)
            except DispyError as exc:
                print(exc)
            assert c.submit(b"x" * 1000)() == 1000
        """
    )
    assert "exceed the scheduler's limit of 100000 bytes" in client.stdout, client.stdout
    _bystander_unharmed(guarded)


def test_silent_connection_times_out_in_the_handshake(guarded: Cluster) -> None:
    sock, decoder = _connect(guarded.address)
    with sock:
        _challenge(sock, decoder)
        started = time.monotonic()
        refused = _refusal(sock, decoder)
        assert time.monotonic() - started < 5
    assert refused.code == "handshake-timeout"
    _scheduler_logged(guarded, r"handshake-timeout")
    _bystander_unharmed(guarded)


def test_ill_typed_message_after_the_handshake_gets_an_error_and_the_connection_lives(guarded: Cluster) -> None:
    sock, decoder = _connect(guarded.address)
    with sock:
        _login(sock, decoder, "alice", "right")
        import msgpack

        body = msgpack.packb([11, "cluster", [[1, "not-a-priority", b""]]], use_bin_type=True)
        sock.sendall(HEADER.pack(len(body)) + body)
        error = read_message(sock, decoder)
        assert isinstance(error, M.Error) and error.code == "bad-message", error
        sock.sendall(M.encode(M.SubmitJobs("no-such-cluster", [])))
        error = read_message(sock, decoder)
        assert isinstance(error, M.Error) and error.code == "unknown-cluster", error
        sock.sendall(M.encode(M.Heartbeat({})))  # a node's message from a client
        error = read_message(sock, decoder)
        assert isinstance(error, M.Error) and "not a message clients may send" in error.message
        sock.sendall(M.encode(M.GetStatus("still-alive")))
        status = read_message(sock, decoder)
        assert isinstance(status, M.Status) and status.ref == "still-alive"
    _bystander_unharmed(guarded)


def test_unreachable_scheduler_fails_fast(cluster: Cluster) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster.address = f"127.0.0.1:{port}"
    client = cluster.run_client(
        """
        import time
        from dispy_client import SharedJobCluster, SchedulerUnreachable
        t = time.monotonic()
        try:
            SharedJobCluster(lambda: 1, timeout=20)
        except SchedulerUnreachable as exc:
            print(type(exc).__name__, time.monotonic() - t, exc)
        """,
        timeout=60,
    )
    name, elapsed, text = client.stdout.split(" ", 2)
    assert name == "SchedulerUnreachable" and text.startswith("cannot reach scheduler 127.0.0.1:"), client.stdout
    assert float(elapsed) < 10, f"a refused connection took {elapsed} s: retried until the timeout?"


def test_scheduler_that_never_answers_fails_within_the_timeout(cluster: Cluster) -> None:
    with socket.socket() as listener:  # accepts, then says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        cluster.address = "127.0.0.1:%d" % listener.getsockname()[1]
        client = cluster.run_client(
            """
            import time
            from dispy_client import SharedJobCluster, SchedulerUnreachable
            t = time.monotonic()
            try:
                SharedJobCluster(lambda: 1, timeout=2)
            except SchedulerUnreachable as exc:
                print(time.monotonic() - t, exc)
            """,
            timeout=60,
        )
    elapsed, text = client.stdout.split(" ", 1)
    assert text.startswith("scheduler 127.0.0.1:") and "did not answer within 2 s" in text, client.stdout
    assert 2 <= float(elapsed) < 12, f"gave up after {elapsed} s, not its timeout of 2 s"  # a busy machine adds some


def test_schedulers_that_never_answer_are_each_named_and_no_plaintext_hint_misleads(cluster: Cluster) -> None:
    """Among several addresses a silent one is most likely a stopped scheduler: the error names each address tried."""
    with socket.socket() as first, socket.socket() as second, socket.socket() as refusing:
        for listener in (first, second):  # accept, then say nothing (as a SIGSTOPped scheduler does)
            listener.bind(("127.0.0.1", 0))
            listener.listen()
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: refuses
        silent = ["127.0.0.1:%d" % s.getsockname()[1] for s in (first, second)]
        closed = "127.0.0.1:%d" % refusing.getsockname()[1]
        program = """
            from dispy_client import SharedJobCluster, SchedulerUnreachable
            try:
                SharedJobCluster(lambda: 1, timeout=3)
            except SchedulerUnreachable as exc:
                print("ERROR", exc)
            """
        cluster.address = ",".join(silent)
        both = cluster.run_client(program, "both", timeout=60)
        cluster.address = ",".join([*silent, closed])
        mixed = cluster.run_client(program, "mixed", timeout=60)
    text = both.stdout.split("ERROR ", 1)[1].strip()
    assert text == (f"none of the scheduler addresses tried answered within 3 s: {silent[0]}, {silent[1]} "
                    "(each accepted the connection and then said nothing: stopped or hung?)"), both.stdout  # fmt: skip
    text = mixed.stdout.split("ERROR ", 1)[1].strip()
    assert text.startswith("no scheduler that leads answered within 3 s; tried "), mixed.stdout
    for address in (*silent, closed):
        assert address in text.split(": ", 1)[0], mixed.stdout  # each named in the list of those tried
    assert f"scheduler {silent[0]} did not answer within" in text and f"cannot reach scheduler {closed}: " in text, text
    assert "plaintext" not in text, text


def test_random_bytes_never_break_the_scheduler(guarded: Cluster) -> None:
    rng = os.urandom
    for size in (1, 3, 4, 7, 100, 5000):
        sock, decoder = _connect(guarded.address)
        with sock:
            _challenge(sock, decoder)
            try:
                sock.sendall(rng(size))
                msg = read_message(sock, decoder)
            except ConnectionResetError:
                continue
            assert msg is None or isinstance(msg, M.Refused), msg
    _bystander_unharmed(guarded)


def test_node_secret_from_the_environment_guards_the_scheduler(cluster: Cluster) -> None:
    """$DISPY_NODE_SECRET serves both daemons, keeping the secret out of the process list."""
    cluster.scheduler(env={"DISPY_NODE_SECRET": "from-env"})
    refused = cluster.node(name="stranger", wait=False, env={"DISPY_NODE_SECRET": "wrong"})
    assert refused.wait(30) == 2
    node = cluster.node(name="friend", env={"DISPY_NODE_SECRET": "from-env"})
    assert "from-env" not in " ".join(node.argv)
    client = cluster.run_client(
        """
        from dispy_client import SharedJobCluster

        def peek():
            import os
            return [k for k in os.environ if "SECRET" in k]

        with SharedJobCluster(peek) as c:
            print(c.submit()())
        """
    )
    assert client.stdout.strip() == "[]"  # the jobs never see it
