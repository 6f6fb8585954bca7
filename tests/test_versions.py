"""Versions across processes: a node's and a client's version logged at login, a protocol mismatch refused both ways."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from dispy_wire import messages as M
from dispy_wire.errors import ErrorCode
from dispy_wire.framing import PREAMBLE, FrameDecoder
from dispy_wire.version import VERSION
from procs import Cluster
from rawpeer import read_message
from waiting import wait_until


def test_the_scheduler_logs_each_node_version_and_the_node_the_scheduler_version(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    node = cluster.node(name="n1")
    wait_until(lambda: "node n1 connected from 127.0.0.1:" in scheduler.stderr, what="the node's login logged")
    assert f", dispy-shared {VERSION}" in next(line for line in scheduler.stderr.splitlines() if "node n1 connected" in line)
    wait_until(lambda: "registered with scheduler" in node.stderr, what="the node's log of its login")
    assert f"(scheduler: dispy-shared {VERSION}; this node: {VERSION})" in node.stderr
    assert f"dispyscheduler (dispy-shared) {VERSION}, protocol {M.PROTOCOL_VERSION} starting" in scheduler.stderr


def test_a_peer_of_another_protocol_is_refused_saying_which_versions(cluster: Cluster) -> None:
    scheduler = cluster.scheduler()
    host, port = cluster.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        decoder = FrameDecoder()
        sock.sendall(PREAMBLE)
        challenge = read_message(sock, decoder)
        assert isinstance(challenge, M.Challenge)
        hello = M.Hello(M.PROTOCOL_VERSION + 1, "node", "future", "", {"version": "99.0"}, challenge.mechanism)
        sock.sendall(M.encode(hello))
        refused = read_message(sock, decoder)
    assert isinstance(refused, M.Refused) and refused.code == ErrorCode.BAD_VERSION.value
    assert f"protocol version {M.PROTOCOL_VERSION + 1} not supported" in refused.message
    assert f"(dispy-shared {VERSION}) speaks protocol {M.PROTOCOL_VERSION}" in refused.message
    wait_until(lambda: f"protocol version {M.PROTOCOL_VERSION + 1} not supported" in scheduler.stderr,
               what="the refusal in the scheduler's log")  # fmt: skip


@pytest.fixture
def future_scheduler() -> Iterator[str]:
    """A listener that answers every connection with the Challenge of a newer protocol."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        kept = []
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.sendall(PREAMBLE + M.encode(M.Challenge(M.PROTOCOL_VERSION + 1, "future", "SCRAM-SHA-256")))
            kept.append(conn)
        for conn in kept:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(10)
    listener.close()


def test_a_node_refuses_a_scheduler_of_another_protocol_and_says_so(cluster: Cluster, future_scheduler: str) -> None:
    cluster.address = future_scheduler
    node = cluster.node(name="n1", wait=False)
    assert node.wait(60) == 2, node.describe()
    assert (
        f"scheduler speaks protocol version {M.PROTOCOL_VERSION + 1}, this dispy-shared ({VERSION}) speaks "
        f"protocol {M.PROTOCOL_VERSION}: install the scheduler's dispy-shared version here" in node.stderr
    ), node.stderr
