"""UDP discovery: the datagram format, the scheduler's responder, and real processes on a private segment.

Broadcasts never touch a real interface: the integration tests build their
own segment, a bridge in one network namespace with veth links to two more,
and run the scheduler, the nodes and the client inside them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack
import pytest
from procs import Cluster, Proc
from waiting import wait_until

from dispy_node.main import build_parser, load_config
from dispy_sched import tls_init
from dispy_sched.config import config_from_args
from dispy_wire.settings import ConfigError
from dispy_sched.discovery import Responder
from dispy_wire import discovery as d
from dispy_wire.errors import ErrorCode, RemoteWireError
from dispy_wire.messages import PROTOCOL_VERSION
from dispy_wire.verifier import Verifier

NONCE = bytes(range(d.NONCE_SIZE))


def _v(secret: str) -> Verifier:
    return Verifier.from_secret(secret, 4096)

# -- the datagram format ------------------------------------------------------


def test_discover_and_announce_round_trip() -> None:
    data = d.encode(d.Discover(NONCE))
    assert len(data) == d.DISCOVER_SIZE and data.startswith(d.MAGIC)
    assert d.decode(data, d.Discover).nonce == NONCE
    announce = d.answer(d.Discover(NONCE), _v("node secret"), "sched", "10.0.0.1", 9702)
    assert d.decode(d.encode(announce), d.Announce) == announce
    assert d.verify(announce, "node secret", NONCE)


def test_an_announce_is_never_larger_than_the_discover_it_answers() -> None:
    announce = d.answer(d.Discover(NONCE), _v("s"), "\U0001f600" * 500, "ffff:" * 7 + "ffff", 65535)
    assert len(announce.name) == d.NAME_LIMIT
    assert len(d.encode(announce)) <= d.DISCOVER_SIZE
    assert d.verify(announce, "s", NONCE)


def _datagram(*obj: Any) -> bytes:
    return d.MAGIC + msgpack.packb(list(obj), use_bin_type=True)


_ANNOUNCE = d.encode(d.answer(d.Discover(NONCE), _v("n"), "sched", "10.0.0.1", 9702))


@pytest.mark.parametrize(
    ("data", "expect", "code"),
    [
        (b"", d.Discover, ErrorCode.NOT_DISPY),
        (b"GET / HTTP/1.1\r\n\r\n", d.Discover, ErrorCode.NOT_DISPY),
        (d.MAGIC + b"\xc1garbage", d.Discover, ErrorCode.BAD_MESSAGE),
        (d.MAGIC + bytes(2000), d.Discover, ErrorCode.TOO_LARGE),
        (_datagram("kind", 1), d.Discover, ErrorCode.BAD_MESSAGE),
        (_datagram(1, PROTOCOL_VERSION + 1, NONCE, bytes(600)), d.Discover, ErrorCode.BAD_VERSION),
        (_datagram(9, PROTOCOL_VERSION, NONCE), d.Discover, ErrorCode.BAD_MESSAGE),
        (_datagram(1, PROTOCOL_VERSION, NONCE, b""), d.Discover, ErrorCode.BAD_MESSAGE),  # unpadded: amplifies
        (_datagram(1, PROTOCOL_VERSION, b"short", bytes(600)), d.Discover, ErrorCode.BAD_MESSAGE),
        (_ANNOUNCE, d.Discover, ErrorCode.BAD_MESSAGE),
        (d.encode(d.Discover(NONCE)), d.Announce, ErrorCode.BAD_MESSAGE),
        (_datagram(2, PROTOCOL_VERSION, "s", "10.0.0.1", "9702", b"s", 4096, b"p"), d.Announce, ErrorCode.BAD_MESSAGE),
        (_datagram(2, PROTOCOL_VERSION, "s", "10.0.0.1", 0, b"s", 4096, b"p"), d.Announce, ErrorCode.BAD_MESSAGE),
        (_datagram(2, PROTOCOL_VERSION, "s", "10.0.0.1"), d.Announce, ErrorCode.BAD_MESSAGE),
    ],
    # named, not shown: the announce's salt is random, and parallel workers must collect the same ids
    ids=["empty", "http", "not-msgpack", "oversized", "kind-not-int", "newer-version", "unknown-kind", "unpadded",
         "short-nonce", "announce-as-discover", "discover-as-announce", "port-as-str", "port-0", "truncated"],
)
def test_garbage_is_refused_with_a_typed_error(data: bytes, expect: type[Any], code: ErrorCode) -> None:
    with pytest.raises(RemoteWireError) as info:
        d.decode(data, expect)
    assert info.value.code is code


def test_a_wrong_secret_nonce_or_redirect_fails_the_proof() -> None:
    announce = d.answer(d.Discover(NONCE), _v("right"), "sched", "10.0.0.1", 9702)
    assert not d.verify(announce, "wrong", NONCE)
    assert not d.verify(announce, "right", bytes(d.NONCE_SIZE))
    assert not d.verify(announce._replace(host="10.6.6.6"), "right", NONCE)
    assert not d.verify(announce._replace(port=6666), "right", NONCE)
    # a forged Announce cannot make the node hash for long
    assert not d.verify(announce._replace(iterations=d.MAX_ITERATIONS + 1), "right", NONCE)


def test_the_throttle_lets_one_complaint_through_per_interval_and_counts_the_rest() -> None:
    throttle = d.Throttle(interval=10)
    assert throttle.admit(0.0) == ""
    assert [throttle.admit(t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert throttle.admit(10.0) == " (3 more since the last report)"


def test_the_scheduler_answers_discovery_only_off_loopback(tmp_path: Any) -> None:
    state = ["--state-dir", str(tmp_path)]
    assert config_from_args(state).discovery_port == 0
    secrets = ["--secret", "s", "--node-secret", "n", "--insecure-plaintext", *state]
    assert config_from_args(["--host", "0.0.0.0", *secrets]).discovery_port == d.DISCOVERY_PORT
    assert config_from_args(["--host", "0.0.0.0", "--discovery-port", "0", *secrets]).discovery_port == 0
    assert config_from_args(["--discovery-port", "4000", *state]).discovery_port == 4000


def test_dispynode_takes_discover_instead_of_a_scheduler_address(tmp_path: Any) -> None:
    def fail(message: str) -> NoReturn:
        raise AssertionError(message)

    args = build_parser().parse_args(["--discover", "--discovery-port", "4000", "--work-dir", str(tmp_path)])
    assert load_config(args, fail)[2] == 4000
    assert load_config(build_parser().parse_args(["--work-dir", str(tmp_path)]), fail)[2] is None
    with pytest.raises(ConfigError, match="not allowed with argument --discover"):
        build_parser().parse_args(["--discover", "--scheduler", "sched:9702"])


# -- the scheduler's responder, without sockets ---------------------------------


class _Transport(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append((bytes(data), addr))


def test_the_responder_answers_a_discover_and_complains_once_about_a_flood(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> _Transport:
        transport = _Transport()
        responder = Responder("sched", _v("n"), "10.231.0.1", 4242)
        responder.connection_made(transport)
        for _ in range(50):
            responder.datagram_received(os.urandom(64), ("10.231.0.9", 5000))
        responder.datagram_received(d.encode(d.answer(d.Discover(NONCE), _v("n"), "x", "h", 1)), ("10.231.0.9", 5000))
        responder.datagram_received(d.encode(d.Discover(NONCE)), ("10.231.0.2", 5001))
        return transport

    with caplog.at_level(logging.WARNING, logger="dispy_sched.discovery"):
        transport = asyncio.run(scenario())
    assert len(caplog.records) == 1 and "10.231.0.9" in caplog.text
    [(data, addr)] = transport.sent
    announce = d.decode(data, d.Announce)
    assert addr == ("10.231.0.2", 5001)
    assert (announce.host, announce.port) == ("10.231.0.1", 4242)
    assert d.verify(announce, "n", NONCE)


# -- real processes on a private segment -------------------------------------------


@dataclass
class Segment:
    """Four network namespaces: a bridge (`lan`) and three hosts on it, `sched`, `nodes` and `standby`."""

    cluster: Cluster
    lan: str
    sched: str
    nodes: str
    standby: str
    sched_ip: str = "10.231.0.1"
    node_ip: str = "10.231.0.2"
    standby_ip: str = "10.231.0.3"

    def start(self, netns: str, argv: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        """Starts `argv` inside `netns`; `ip netns exec` execs it, so the PID is the program's own."""
        return self.cluster.start(["ip", "netns", "exec", netns, *argv], name, env)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def segment(cluster: Cluster) -> Iterator[Segment]:
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (iproute2) for network namespaces")
    prefix = f"dispy-disc-{os.getpid()}"
    seg = Segment(cluster, f"{prefix}-lan", f"{prefix}-sched", f"{prefix}-nodes", f"{prefix}-standby")
    created: list[str] = []
    try:
        for ns in (seg.lan, seg.sched, seg.nodes, seg.standby):
            try:
                _ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                if not created:
                    pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
                raise
            created.append(ns)
        _ip("-n", seg.lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", seg.lan, "link", "set", "br0", "up")
        hosts = (("vs", seg.sched, seg.sched_ip), ("vn", seg.nodes, seg.node_ip), ("vt", seg.standby, seg.standby_ip))
        for port, ns, addr in hosts:
            # both ends are created inside namespaces: the host's interfaces are never touched
            _ip("-n", seg.lan, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", seg.lan, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "brd", "+", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield seg
    finally:
        cluster.stop_all()  # every process by PID, before its namespace goes
        for ns in created:
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True, timeout=10)


def _tls_files(seg: Segment) -> list[str]:
    """A CA and a scheduler certificate naming the schedulers' segment addresses: their flags; the CA is ca.pem."""
    ca = tls_init.make_ca()
    cert, key = tls_init.issue(ca, "sched", [seg.sched_ip, seg.standby_ip, "127.0.0.1"], server=True)
    d = seg.cluster.workdir
    (d / "ca.pem").write_bytes(tls_init.cert_pem(ca.cert))
    (d / "sched.pem").write_bytes(tls_init.cert_pem(cert))
    (d / "sched.key").write_bytes(tls_init.key_pem(key))
    return ["--tls-cert", str(d / "sched.pem"), "--tls-key", str(d / "sched.key")]


def _node(seg: Segment, name: str, node_secret: str) -> Proc:
    argv = [sys.executable, "-m", "dispy_node.main", "--discover", "--node-secret", node_secret, "--cpus", "2"]
    argv += ["--tls-ca", str(seg.cluster.workdir / "ca.pem")]  # off loopback: the scheduler proves itself
    argv += ["--name", name, "--work-dir", str(seg.cluster.workdir / f"{name}-work"), "--heartbeat", "2"]
    if os.geteuid() == 0:  # this machine's Python lives under /root: `nobody` cannot run it
        argv.append("--jobs-as-self")
    return seg.start(seg.nodes, argv, name)


def test_a_node_discovers_the_scheduler_and_runs_a_job_while_a_wrong_secret_finds_nothing(segment: Segment) -> None:
    """Over TLS, off loopback: the node checks the discovered address against the scheduler's certificate."""
    seg = segment
    tls_flags = _tls_files(seg)
    scheduler = seg.start(
        seg.sched,
        [sys.executable, "-m", "dispy_sched.main", "--host", "0.0.0.0", "--port", "0", "--secret", "S",
         "--node-secret", "N", "--state-dir", str(seg.cluster.workdir / "state"), *tls_flags],
        "scheduler",
    )  # fmt: skip
    port = scheduler.wait_for_line(r"listening on \S+:(\d+)").group(1)
    node = _node(seg, "good", "N")
    stranger = _node(seg, "stranger", "not N")
    node.wait_for_line(rf"connected to {seg.sched_ip}:{port}\b")
    stranger.wait_for_line(r"scheduler '.*' does not prove our node secret", stream="stderr")
    assert "connected to" not in stranger.stdout
    script = seg.cluster.workdir / "client.py"
    script.write_text(
        "from dispy_client import SharedJobCluster\n"
        "with SharedJobCluster(lambda: 'done') as cluster:\n"
        "    job = cluster.submit()\n"
        "    print(job(), 'on', job.ip_addr)\n"
    )
    client = seg.start(
        seg.sched,
        [sys.executable, str(script)],
        "client",
        {"DISPY_SCHEDULER": f"127.0.0.1:{port}", "DISPY_SECRET": "S", "DISPY_TLS_CA": str(seg.cluster.workdir / "ca.pem")},
    )
    assert client.wait(60) == 0, seg.cluster.describe()
    assert client.stdout.strip() == f"done on {seg.node_ip}"
    assert "connected to" not in stranger.stdout
    # the scheduler moves (a new port here): the node finds it again
    scheduler.stop()
    moved = seg.start(
        seg.sched,
        [sys.executable, "-m", "dispy_sched.main", "--host", "0.0.0.0", "--port", "0", "--secret", "S",
         "--node-secret", "N", "--state-dir", str(seg.cluster.workdir / "state2"), *tls_flags],
        "scheduler2",
    )  # fmt: skip
    new_port = moved.wait_for_line(r"listening on \S+:(\d+)").group(1)
    node.wait_for_line(rf"connected to {seg.sched_ip}:{new_port}\b")


def test_a_discovered_node_whose_leader_falls_silent_asks_by_broadcast_at_once_and_follows_the_standby(
    segment: Segment, pg_dsn: str
) -> None:
    """Two schedulers on PostgreSQL, on two hosts; the leader stops (SIGSTOP: no TCP close, as a host gone).

    The node knows no other scheduler: it broadcasts as soon as the leader misses a sign of life, and
    follows the standby that took over, instead of waiting out the silence (8 s) before it broadcasts."""
    seg = segment
    tls_flags = _tls_files(seg)

    def scheduler(netns: str, ip: str, name: str) -> tuple[Proc, str]:
        proc = seg.start(
            netns,
            [sys.executable, "-m", "dispy_sched.main", "--host", ip, "--port", "0", "--secret", "S",
             "--node-secret", "N", "--state-dir", str(seg.cluster.workdir / f"{name}-state"),
             "--state", pg_dsn, "--lease", "2", *tls_flags],
            name,
        )  # fmt: skip
        return proc, proc.wait_for_line(r"listening on \S+:(\d+)").group(1)

    first, a_port = scheduler(seg.sched, seg.sched_ip, "first")
    first.wait_for_line("leading on")
    second, b_port = scheduler(seg.standby, seg.standby_ip, "second")
    wait_until(lambda: "standing by" in second.stderr, what="the second scheduler standing by")
    node = _node(seg, "node", "N")
    node.wait_for_line(rf"connected to {seg.sched_ip}:{a_port}\b")
    first.popen.send_signal(signal.SIGSTOP)
    try:
        second.wait_for_line("leading on", timeout=60)
        node.wait_for_line(rf"connected to {seg.standby_ip}:{b_port}\b", timeout=60)
    finally:
        first.popen.send_signal(signal.SIGCONT)
    # it asked, found the new leader by its broadcast and left the silent one for it
    assert re.search(rf"scheduler {seg.sched_ip}:{a_port} silent for [\d.]+ s: asking by broadcast who leads", node.stderr)
    assert f"and {seg.standby_ip}:{b_port} leads now: closing the connection" in node.stderr, node.stderr
    # not by giving the silent one up after the full silence, nor by broadcasting anew after that
    assert "promised a sign of life" not in node.stderr, node.stderr
    assert node.stderr.count("looking for a scheduler by UDP broadcast") == 1, node.stderr
