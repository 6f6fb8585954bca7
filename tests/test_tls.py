"""TLS: the scheduler proves itself before anyone sends it a byte; plaintext only on loopback.

Pure tests of dispy_wire.tls (contexts, pins, the loopback rule, channel
binding over two in-memory TLS ends), then real processes: jobs over mutual
TLS, and a fake TLS scheduler (a socket of the test's own, with certificates
the test makes) that must receive nothing from a client or node that does not
trust it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from dispy_sched import tls_init
from dispy_sched.config import ConfigError, config_from_args
from dispy_wire.settings import EX_CONFIG
from dispy_wire import tls
from dispy_wire.dialing import another_leads, who_leads
from procs import Cluster, Proc
from waiting import wait_until

# -- certificates the tests make ----------------------------------------------


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Any) -> tuple[str, str]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(tls_init.cert_pem(cert))
    key_path.write_bytes(tls_init.key_pem(key))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two CAs and the certificates the tests present: good, expired, other name, other CA, clients."""
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = tls_init.make_ca("test CA"), tls_init.make_ca("someone else's CA")
    (d / "ca.pem").write_bytes(tls_init.cert_pem(ca.cert))
    (d / "other-ca.pem").write_bytes(tls_init.cert_pem(other_ca.cert))
    local = ["127.0.0.1", "::1", "localhost"]
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    return {
        "dir": d,
        "ca": str(d / "ca.pem"),
        "other_ca": str(d / "other-ca.pem"),
        "good": _write(d, "good", *tls_init.issue(ca, "sched", local, server=True)),
        "expired": _write(d, "expired", *tls_init.issue(ca, "sched", local, server=True, days=1, not_before=long_ago)),
        "wrong_name": _write(d, "wrong-name", *tls_init.issue(ca, "sched", ["sched.example"], server=True)),
        "other_ca_cert": _write(d, "other", *tls_init.issue(other_ca, "sched", local, server=True)),
        "node": _write(d, "node", *tls_init.issue(ca, "n1")),
        "user": _write(d, "user", *tls_init.issue(ca, "alice")),
        "stranger": _write(d, "stranger", *tls_init.issue(other_ca, "mallory")),
    }


# -- pure ------------------------------------------------------------------------


def test_loopback_is_the_whole_of_127_8_and_ipv6_one_and_localhost() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "[::1]", "localhost"):
        assert tls.is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.1", "::", "sched.lan", "localhost.evil.example", ""):
        assert not tls.is_loopback(host), host


def test_plaintext_is_refused_off_loopback_unless_tls_or_the_operator_takes_the_risk() -> None:
    assert tls.plaintext_refusal("127.0.0.2", tls_on=False, insecure_plaintext=False) is None
    assert tls.plaintext_refusal("10.1.2.3", tls_on=True, insecure_plaintext=False) is None
    assert tls.plaintext_refusal("10.1.2.3", tls_on=False, insecure_plaintext=True) is None
    why = tls.plaintext_refusal("sched.lan", tls_on=False, insecure_plaintext=False)
    assert why is not None and "sched.lan is not a loopback address" in why


def test_a_fingerprint_is_read_in_openssl_form_plain_hex_or_with_a_prefix() -> None:
    digest = hashlib.sha256(b"cert").digest()
    colons = ":".join(f"{b:02X}" for b in digest)
    for text in (colons, digest.hex(), f"sha256:{digest.hex()}", f"SHA256:{colons.lower()}"):
        assert tls.parse_fingerprint(text) == digest
    for bad in ("", "AB:CD", digest.hex() + "00", "zz" * 32):
        with pytest.raises(tls.TLSConfigError, match="not a SHA-256 fingerprint"):
            tls.parse_fingerprint(bad)


def test_settings_that_cannot_work_are_refused_when_the_context_is_made(pki: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(tls.TLSConfigError, match="tls_ca"):
        tls.ClientTLS(cert=pki["user"][0], key=pki["user"][1]).context()  # nothing to verify the scheduler with
    with pytest.raises(tls.TLSConfigError, match="needs the CA"):
        tls.ServerTLS(*pki["good"], require_client_cert=True).context()
    with pytest.raises(tls.TLSConfigError, match="cannot load TLS CA file"):
        tls.ClientTLS(ca=str(tmp_path / "missing.pem")).context()
    with pytest.raises(tls.TLSConfigError, match="cannot load TLS certificate"):
        tls.ServerTLS(pki["good"][0], pki["node"][1]).context()  # a key that is not the certificate's
    assert tls.ClientTLS(ca=tls.SYSTEM_CA).context().verify_mode is ssl.CERT_REQUIRED


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str = "127.0.0.1") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of a TLS handshake over memory BIOs: no socket."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    s = server.wrap_bio(bios[0], bios[1], server_side=True)
    c = client.wrap_bio(bios[2], bios[3], server_hostname=name)
    done = {id(s): False, id(c): False}
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
                done[id(end)] = True
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())  # client -> server
        bios[2].write(bios[1].read())  # server -> client
        if all(done.values()):
            return s, c
    raise AssertionError("handshake did not finish")


def test_channel_binding_is_the_same_on_both_ends_and_hashes_the_scheduler_certificate(pki: dict[str, Any]) -> None:
    server = tls.ServerTLS(*pki["good"]).context()
    s, c = _handshake(server, tls.ClientTLS(ca=pki["ca"]).context())
    der = c.getpeercert(binary_form=True)
    assert der is not None
    expected = ("tls-server-end-point", hashlib.sha256(der).digest())  # an ECDSA-with-SHA256 certificate
    assert tls.channel_binding(c) == expected
    assert tls.channel_binding(s) == expected
    assert tls.channel_binding(None) is None


def test_channel_binding_uses_the_signature_hash_and_sha256_when_it_names_none(tmp_path: Path) -> None:
    ca = tls_init.make_ca()
    cert, key = tls_init.issue(ca, "sched", ["127.0.0.1"], server=True)
    builder = (  # the same certificate, signed with SHA-384
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer).public_key(key.public_key())
        .serial_number(cert.serial_number).not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )  # fmt: skip
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    sha384 = builder.sign(ca.key, hashes.SHA384())
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(tls_init.cert_pem(ca.cert))
    s, c = _handshake(tls.ServerTLS(*_write(tmp_path, "s384", sha384, key)).context(), tls.ClientTLS(ca=str(ca_path)).context())
    der = c.getpeercert(binary_form=True) or b""
    assert tls.channel_binding(c) == tls.channel_binding(s) == ("tls-server-end-point", hashlib.sha384(der).digest())
    # an Ed25519 signature names no hash: SHA-256, as for MD5 and SHA-1
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_ca = tls_init.Issuer(tls_init.make_ca().cert, ed_key)  # only its key signs here
    ed_cert = (
        x509.CertificateBuilder().subject_name(cert.subject).issuer_name(ed_ca.cert.subject)
        .public_key(key.public_key()).serial_number(1).not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc).sign(ed_key, None)
    )  # fmt: skip
    pinned = tls.ClientTLS(fingerprint=tls.fingerprint(ed_cert.public_bytes(Encoding.DER)))
    s, c = _handshake(tls.ServerTLS(*_write(tmp_path, "ed", ed_cert, key)).context(), pinned.context())
    pinned.check(c)
    der = c.getpeercert(binary_form=True) or b""
    assert tls.channel_binding(c) == tls.channel_binding(s) == ("tls-server-end-point", hashlib.sha256(der).digest())


def test_a_pin_accepts_its_certificate_only(pki: dict[str, Any]) -> None:
    server = tls.ServerTLS(*pki["good"]).context()
    good = tls.ClientTLS(fingerprint=tls.cert_fingerprint(pki["good"][0]))
    _, c = _handshake(server, good.context())
    good.check(c)
    other = tls.ClientTLS(fingerprint=tls.cert_fingerprint(pki["other_ca_cert"][0]))
    _, c = _handshake(server, other.context())
    with pytest.raises(tls.UntrustedScheduler, match="fingerprint is .* not the pinned"):
        other.check(c)
    with pytest.raises(tls.UntrustedScheduler, match="not TLS"):
        good.check(None)


def test_the_scheduler_refuses_plaintext_off_loopback_unless_told_insecure(pki: dict[str, Any], tmp_path: Path) -> None:
    base = ["--secret", "s", "--node-secret", "n", "--state-dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="refusing to listen without TLS: 10.9.9.9 is not a loopback address"):
        config_from_args(["--host", "10.9.9.9", *base])
    assert config_from_args(["--host", "10.9.9.9", "--insecure-plaintext", *base]).server_tls() is None
    cert, key = pki["good"]
    cfg = config_from_args(["--host", "10.9.9.9", "--tls-cert", cert, "--tls-key", key, *base])
    assert cfg.server_tls() == tls.ServerTLS(cert, key)
    # dispy's names for the same certificate
    assert config_from_args(["--cluster_certfile", cert, "--cluster_keyfile", key, *base]).server_tls() == tls.ServerTLS(cert, key)
    assert config_from_args(["--host", "127.0.0.2", *base]).server_tls() is None  # loopback: plaintext is fine
    with pytest.raises(ConfigError, match="needs the CA"):
        config_from_args(["--tls-cert", cert, "--tls-key", key, "--tls-require-client-cert", *base])
    with pytest.raises(ConfigError, match="need tls_cert"):
        config_from_args(["--tls-key", key, *base])


def test_the_node_refuses_plaintext_to_a_scheduler_off_loopback_unless_told_insecure(pki: dict[str, Any]) -> None:
    from dispy_node.main import build_parser, load_config

    def fail(message: str) -> NoReturn:
        raise ValueError(message)

    def load(*argv: str) -> Any:
        return load_config(build_parser().parse_args(list(argv)), fail)[0]

    with pytest.raises(ValueError, match="refusing to connect to the scheduler: sched.lan is not a loopback"):
        load("--scheduler", "sched.lan:9702")
    assert load("--scheduler", "sched.lan:9702", "--insecure-plaintext").tls is None
    node = load("--scheduler", "sched.lan:9702", "--tls-ca", pki["ca"], "--certfile", pki["node"][0], "--keyfile", pki["node"][1])
    assert node.tls == tls.ClientTLS(pki["ca"], None, *pki["node"])
    assert load("--scheduler", "127.0.0.2:9702").tls is None


# -- tls init --------------------------------------------------------------------


def test_tls_init_writes_private_keys_and_certificates_that_load_and_keeps_them_when_run_again(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    argv = [sys.executable, "-m", "dispy_sched.main", "tls", "init", str(d), "--host", "sched.lan", "--host", "127.0.0.1"]
    done = subprocess.run([*argv, "--node", "n1", "--user", "alice"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"--tls-cert {d}/scheduler.pem --tls-key {d}/scheduler.key --tls-ca {d}/ca.pem --tls-require-client-cert" in done.stdout
    assert f"tls_fingerprint = {tls.cert_fingerprint(str(d / 'scheduler.pem'))}" in done.stdout
    for key in ("ca", "scheduler", "node-n1", "user-alice"):
        assert stat.S_IMODE((d / f"{key}.key").stat().st_mode) == 0o600, key
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate((d / "scheduler.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["sched.lan"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server = tls.ServerTLS(str(d / "scheduler.pem"), str(d / "scheduler.key"), str(d / "ca.pem"), True).context()
    client = tls.ClientTLS(str(d / "ca.pem"), None, str(d / "user-alice.pem"), str(d / "user-alice.key"))
    s, c = _handshake(server, client.context())
    assert s.getpeercert()["subject"] == ((("commonName", "alice"),), (("organizationalUnitName", "dispy-user"),))  # type: ignore[index]
    before = (d / "ca.pem").read_bytes(), (d / "scheduler.key").read_bytes()
    again = subprocess.run([*argv, "--node", "n2"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and f"kept the CA in {d}/ca.pem" in again.stdout, again.stderr
    assert ((d / "ca.pem").read_bytes(), (d / "scheduler.key").read_bytes()) == before
    node2 = x509.load_pem_x509_certificate((d / "node-n2.pem").read_bytes())
    assert node2.issuer == x509.load_pem_x509_certificate(before[0]).subject


# -- real processes ------------------------------------------------------------------

CLIENT = """
    import json, sys
    import dispy_client as dispy
    try:
        with dispy.SharedJobCluster(lambda x: x * x, timeout=5, **json.loads(sys.argv[1])) as cluster:
            print("RESULTS", [cluster.submit(i)() for i in range(4)])
    except dispy.DispyError as exc:
        print(type(exc).__name__ + ":", exc)
"""


def _client(cluster: Cluster, name: str, **kwargs: Any) -> Proc:
    import json

    proc = cluster.client(CLIENT, name, args=[json.dumps(kwargs)])
    assert proc.wait(60) == 0, cluster.describe()
    return proc


def _tls_scheduler(cluster: Cluster, pki: dict[str, Any], *more: str) -> Proc:
    cert, key = pki["good"]
    return cluster.scheduler("--node-secret", "N", "--tls-cert", cert, "--tls-key", key, *more)


def test_a_client_and_a_node_run_jobs_over_mutual_tls_with_what_tls_init_made(cluster: Cluster) -> None:
    d = cluster.workdir / "tls"
    made = subprocess.run(
        [sys.executable, "-m", "dispy_sched.main", "tls", "init", str(d), "--node", "n1", "--user", "alice"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ca = str(d / "ca.pem")
    # the flags it printed, as printed (less --host 0.0.0.0: the test stays on loopback)
    [flags] = [line.split("--host 0.0.0.0 ")[1].split() for line in made.stdout.splitlines() if "dispyscheduler --host" in line]
    sched = cluster.scheduler("--node-secret", "N", *flags)
    [node_flags] = [line.split("9702 ")[1].split() for line in made.stdout.splitlines() if "dispynode --scheduler" in line]
    cluster.node(*node_flags)
    user_cert, user_key = str(d / "user-alice.pem"), str(d / "user-alice.key")
    proc = _client(cluster, "client", tls_ca=ca, certfile=user_cert, keyfile=user_key)
    assert "RESULTS [0, 1, 4, 9]" in proc.stdout, cluster.describe()
    assert "TLS with certificate" in sched.stderr and "client certificates required" in sched.stderr
    assert "node node connected from" in sched.stderr and "(certificate CN=n1)" in sched.stderr
    assert "(certificate CN=alice)" in sched.stderr
    # the pin alone works too
    proc = _client(cluster, "pinned", tls_fingerprint=tls.cert_fingerprint(str(d / "scheduler.pem")), certfile=user_cert, keyfile=user_key)
    assert "RESULTS [0, 1, 4, 9]" in proc.stdout, cluster.describe()


def test_a_scheduler_requiring_client_certificates_refuses_peers_without_one_its_ca_signed(
    cluster: Cluster, pki: dict[str, Any]
) -> None:
    sched = _tls_scheduler(cluster, pki, "--tls-ca", pki["ca"], "--tls-require-client-cert")
    bare = _client(cluster, "bare", tls_ca=pki["ca"])
    assert "AuthenticationError:" in bare.stdout and "client certificate" in bare.stdout, bare.stdout
    stranger_cert, stranger_key = pki["stranger"]
    _client(cluster, "stranger", tls_ca=pki["ca"], certfile=stranger_cert, keyfile=stranger_key)
    node = cluster.node("--tls-ca", pki["ca"], wait=False)
    node.wait_for_line(r"closed the TLS connection before its challenge: it may require a client certificate", stream="stderr")
    wait_until(lambda: sched.count("peer did not return a certificate", "stderr") >= 2, what="the missing certificates logged")
    wait_until(lambda: "failed: certificate verify failed: unable to get local issuer certificate" in sched.stderr,
               what="the stranger's certificate logged")  # fmt: skip
    assert "connected from" not in sched.stderr and "connected to" not in node.stdout


def test_a_jobcluster_serves_tls_with_dispys_certfile_and_its_own_node_pins_it(cluster: Cluster, pki: dict[str, Any]) -> None:
    cert, key = pki["good"]
    proc = cluster.run_client(f"""
        import socket
        import dispy_client as dispy
        from dispy_wire.tls import ClientTLS
        with dispy.JobCluster(lambda x: x + 1, certfile={cert!r}, keyfile={key!r}) as cluster:
            print("RESULTS", [cluster.submit(i)() for i in range(3)])
            host, port = cluster.scheduler_address
            with ClientTLS(ca={pki["ca"]!r}).context().wrap_socket(
                socket.create_connection((host, port)), server_hostname=host
            ) as tls:
                print("SERVES", tls.version(), "as", tls.getpeercert()["subject"])
    """)
    assert "RESULTS [1, 2, 3]" in proc.stdout, cluster.describe()
    assert "SERVES TLSv1.3 as ((('commonName', 'sched'),),)" in proc.stdout


class FakeTLSScheduler:
    """A TLS listener of the test's own: it completes handshakes and records every byte a peer sends after one."""

    def __init__(self, cert: str, key: str) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.received: list[bytes] = []
        self.attempts = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.attempts += 1
            conn.settimeout(3)
            try:
                with self._ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    data = tls_conn.recv(1024)
            except (ssl.SSLError, OSError):
                continue
            if data:
                self.received.append(data)

    def close(self) -> None:
        self._sock.close()
        self._thread.join(10)


@pytest.fixture
def fake(request: pytest.FixtureRequest, pki: dict[str, Any]) -> Iterator[FakeTLSScheduler]:
    server = FakeTLSScheduler(*pki[request.param])
    yield server
    server.close()


@pytest.mark.parametrize(
    ("fake", "trust", "reason"),
    [
        ("other_ca_cert", {"tls_ca": "ca"}, "certificate verify failed: unable to get local issuer certificate"),
        ("expired", {"tls_ca": "ca"}, "certificate verify failed: certificate has expired"),
        ("wrong_name", {"tls_ca": "ca"}, "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'"),
        ("good", {"tls_ca": "other_ca"}, "certificate verify failed: unable to get local issuer certificate"),
        ("other_ca_cert", {"tls_fingerprint": "good"}, "its certificate's SHA-256 fingerprint is"),
    ],
    indirect=["fake"],
    ids=["cert-of-another-ca", "expired-cert", "wrong-hostname", "wrong-ca-file", "wrong-pin"],
)
def test_a_client_and_a_node_send_nothing_to_a_scheduler_that_fails_to_prove_itself(
    cluster: Cluster, pki: dict[str, Any], fake: FakeTLSScheduler, trust: dict[str, str], reason: str
) -> None:
    cluster.address = fake.address
    if "tls_ca" in trust:
        client_kw, node_args = {"tls_ca": pki[trust["tls_ca"]]}, ["--tls-ca", pki[trust["tls_ca"]]]
    else:
        pin = tls.cert_fingerprint(pki[trust["tls_fingerprint"]][0])
        client_kw, node_args = {"tls_fingerprint": pin}, ["--tls-fingerprint", pin]
    client = _client(cluster, "client", **client_kw)
    assert f"SchedulerNotTrusted: scheduler {fake.address} is not trusted: {reason}" in client.stdout, client.stdout
    assert "nothing was sent to it" in client.stdout
    node = cluster.node(*node_args, wait=False)
    node.wait_for_line(rf"scheduler {fake.address} is not trusted: {reason}.*; nothing was sent to it", stream="stderr")
    assert fake.attempts >= 2 and fake.received == [], fake.received


@pytest.mark.parametrize("fake", ["good"], indirect=True)
def test_the_fake_scheduler_does_see_what_a_trusting_client_sends(cluster: Cluster, pki: dict[str, Any], fake: FakeTLSScheduler) -> None:
    """The control for the test above: the fake would have seen bytes, had it been trusted."""
    cluster.address = fake.address
    client = _client(cluster, "client", tls_ca=pki["ca"])
    assert "SchedulerNotTrusted" not in client.stdout, client.stdout  # it fails later: the fake sends no Challenge
    wait_until(lambda: fake.received, what="the preamble at the fake")
    assert fake.received[0].startswith(b"DSH")


def test_a_tls_client_and_node_refuse_a_plaintext_scheduler(cluster: Cluster, pki: dict[str, Any]) -> None:
    sched = cluster.scheduler("--node-secret", "N")  # plaintext, as a fake would be
    client = _client(cluster, "client", tls_ca=pki["ca"])
    assert f"SchedulerNotTrusted: TLS with scheduler {cluster.address} failed: " in client.stdout, client.stdout
    node = cluster.node("--tls-ca", pki["ca"], wait=False)
    node.wait_for_line(rf"TLS with scheduler {cluster.address} failed: ", stream="stderr")
    assert "connected from" not in sched.stderr and "connected to" not in node.stdout


def test_a_plaintext_client_is_refused_before_dialing_a_scheduler_off_loopback(cluster: Cluster) -> None:
    cluster.address = "192.0.2.1:9702"  # TEST-NET-1: never dialed, the refusal comes first
    client = _client(cluster, "client")
    assert "SchedulerNotTrusted: not connecting to scheduler 192.0.2.1:9702: 192.0.2.1 is not a loopback" in client.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")
def test_a_scheduler_off_loopback_without_tls_refuses_to_start_unless_insecure_and_then_warns(cluster: Cluster) -> None:
    # in a network namespace of its own (unshare -n), 0.0.0.0 reaches no network but is still "off loopback"
    argv = ["unshare", "-n", sys.executable, "-m", "dispy_sched.main", "--host", "0.0.0.0", "--port", "0",
            "--secret", "S", "--node-secret", "N", "--state-dir", str(cluster.workdir / "state")]  # fmt: skip
    refused = cluster.start(argv, "refused")
    assert refused.wait(60) == EX_CONFIG
    assert "refusing to listen without TLS: 0.0.0.0 is not a loopback address" in refused.stderr
    insecure = cluster.start([*argv, "--insecure-plaintext"], "insecure")
    insecure.wait_for_line(r"listening on 0\.0\.0\.0:\d+")
    insecure.wait_for_line(r"WARNING .*--insecure-plaintext: listening on 0\.0\.0\.0 WITHOUT TLS", stream="stderr")


class TamperingRelay:
    """A man in the middle at the TCP level: passes the TLS handshake through, then flips a byte in
    every TLS record that one direction carries from its `after`-th application-data record on."""

    def __init__(self, target: tuple[str, int], direction: str, after: int) -> None:
        self.target, self.direction, self.after = target, direction, after
        self.flipped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            tamper = {"up": (downstream, upstream), "down": (upstream, downstream)}[self.direction]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst, (src, dst) == tamper), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, tamper: bool) -> None:
        buf, seen = b"", 0
        try:
            while data := src.recv(65536):
                if not tamper:
                    dst.sendall(data)
                    continue
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                    size = 5 + int.from_bytes(buf[3:5], "big")
                    record, buf = bytearray(buf[:size]), buf[size:]
                    if record[0] == 0x17:  # application data: after the handshake, what dispy-shared says
                        seen += 1
                        if seen >= self.after:
                            record[-1] ^= 0x01
                            self.flipped += 1
                    dst.sendall(bytes(record))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_relay_that_flips_bits_after_the_login_drops_the_connection_and_nothing_runs(
    cluster: Cluster, pki: dict[str, Any], direction: str
) -> None:
    """TLS carries the integrity the frames need: a record changed on the path ends the connection."""
    sched = _tls_scheduler(cluster, pki)
    node = cluster.node("--node-secret", "N", "--tls-ca", pki["ca"])
    host, port = cluster.address.rsplit(":", 1)
    # TLS 1.3 sends the client's Finished, Hello and proof as application data first: from the
    # fourth record on, what is changed is the client's cluster and jobs (up) or the replies (down)
    relay = TamperingRelay((host, int(port)), direction, after=4)
    try:
        victim = _client(cluster, "victim", tls_ca=pki["ca"], scheduler_host=relay.address)
    finally:
        relay.close()
    assert relay.flipped >= 1
    # the client's typed error: the connection broke (down) or the scheduler never answered (up)
    # (SchedulerSilent is the SchedulerUnreachable of a scheduler that took the connection and then said nothing)
    typed = ("SchedulerNotTrusted: ", "SchedulerUnreachable: ", "SchedulerSilent: ", "ProtocolError: ")
    assert victim.stdout.startswith(typed), victim.stdout
    assert "loading cluster" not in node.stderr  # the cluster never reached a node: nothing ran
    bystander = _client(cluster, "bystander", tls_ca=pki["ca"])
    assert "RESULTS [0, 1, 4, 9]" in bystander.stdout, cluster.describe()
    assert "Traceback" not in sched.stderr


def test_a_pinned_peer_asking_who_leads_trusts_only_the_pinned_certificate(cluster: Cluster, pki: dict[str, Any]) -> None:
    """The question a peer asks the others when its leader falls silent checks the pin as the login does:
    a scheduler with another certificate (another CA's, or the same CA's) cannot steer it elsewhere."""
    _tls_scheduler(cluster, pki)
    host, port = cluster.address.rsplit(":", 1)
    ours = (host, int(port) + 1)  # the silent leader the peer is connected to: never asked
    pinned = tls.ClientTLS(fingerprint=tls.cert_fingerprint(pki["good"][0]))
    assert asyncio.run(who_leads(host, host, int(port), pinned, 10)) == cluster.address
    assert asyncio.run(another_leads(ours, host, [ours, (host, int(port))], pinned, 10)) == cluster.address
    for stem in ("other_ca_cert", "wrong_name"):
        elsewhere = tls.ClientTLS(fingerprint=tls.cert_fingerprint(pki[stem][0]))
        assert asyncio.run(who_leads(host, host, int(port), elsewhere, 10)) is None, stem
        assert asyncio.run(another_leads(ours, host, [ours, (host, int(port))], elsewhere, 10)) is None, stem
        # the CA alone vouches for it, yet the pin (the peer's setting) still decides
        both = tls.ClientTLS(ca=pki["ca"], fingerprint=elsewhere.fingerprint)
        assert asyncio.run(who_leads(host, host, int(port), both, 10)) is None, stem
    assert asyncio.run(who_leads(host, host, int(port), tls.ClientTLS(ca=pki["ca"]), 10)) == cluster.address


def test_asking_several_schedulers_who_leads_builds_one_tls_context(cluster: Cluster, pki: dict[str, Any]) -> None:
    """A peer whose leader fell silent asks every other address; the CA and key files are read once for all."""
    _tls_scheduler(cluster, pki)
    host, port = cluster.address.rsplit(":", 1)
    closed = []
    for _ in range(3):  # ports nobody listens on (the OS's, freed again): those schedulers are down
        with socket.socket() as s:
            s.bind((host, 0))
            closed.append((host, s.getsockname()[1]))
    built: list[ssl.SSLContext] = []

    class Counting(tls.ClientTLS):
        __slots__ = ()

        def context(self) -> ssl.SSLContext:
            built.append(super().context())
            return built[-1]

    ours = closed[0]
    asked = [*closed, (host, int(port))]
    assert asyncio.run(another_leads(ours, host, asked, Counting(ca=pki["ca"]), 10)) == cluster.address
    assert len(built) == 1


@pytest.mark.parametrize("fake", ["other_ca_cert"], indirect=True)
def test_a_pinned_peer_asking_who_leads_sends_nothing_to_a_scheduler_with_another_certificate(
    pki: dict[str, Any], fake: FakeTLSScheduler
) -> None:
    host, port = fake.address.rsplit(":", 1)
    pinned = tls.ClientTLS(fingerprint=tls.cert_fingerprint(pki["good"][0]))
    assert asyncio.run(who_leads(host, host, int(port), pinned, 10)) is None
    assert fake.attempts == 1 and fake.received == [], fake.received
