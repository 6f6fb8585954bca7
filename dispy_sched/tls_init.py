"""`dispyscheduler tls init DIR`: a private CA and the certificates a cluster needs.

Makes (or reuses, if DIR has one) a CA, the scheduler's certificate naming
the hosts and addresses clients and nodes dial, and optionally a client
certificate per node and per user for mutual TLS; then prints the options
that use them. A node's certificate names it CN=NAME, OU=dispy-node, a user's
CN=NAME, OU=dispy-user: enough for either to log in by its certificate alone
(dispy_wire/handshake.py, EXTERNAL). Keys are ECDSA P-256, written mode 0600; a file that exists is
kept, never overwritten, so the command can be run again to add a node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dispy_wire.tls import NODE_UNIT, USER_UNIT, cert_fingerprint

DEFAULT_DAYS = 825  # what browsers accept for a leaf; the CA gets ten years


@dataclass(frozen=True, slots=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(name: str = "dispy-shared CA", days: int = 3650) -> Issuer:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),  # fmt: skip
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(cert, key)


def issue(
    issuer: Issuer,
    common_name: str,
    hosts: Sequence[str] = (),
    server: bool = False,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    unit: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate: a server's (naming `hosts`: DNS names and IP addresses) or a client's.

    `not_before` (default: now) lets tests make certificates that have expired.
    `unit`: the OU, which says what a client certificate may log in as (`USER_UNIT`, `NODE_UNIT`).
    """
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit is not None:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    key = new_key()
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Writes a key readable by its owner only, from the first byte (not chmod after the fact)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def default_hosts() -> list[str]:
    return [socket.gethostname(), "localhost", "127.0.0.1", "::1"]


def init(directory: Path, hosts: list[str], nodes: list[str], users: list[str], days: int) -> list[str]:
    """Makes what is missing in `directory`; returns the lines to show the operator."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    notes: list[str] = []
    if ca_cert.exists() and ca_key.exists():
        issuer = Issuer(
            x509.load_pem_x509_certificate(ca_cert.read_bytes()),
            _load_ec_key(ca_key),
        )
        notes.append(f"kept the CA in {ca_cert}")
    else:
        issuer = make_ca()
        write_private(ca_key, key_pem(issuer.key))
        ca_cert.write_bytes(cert_pem(issuer.cert))
        notes.append(f"made a CA: {ca_cert} (its key {ca_key} signs new certificates: keep it offline)")
    leaves: list[tuple[str, str, list[str], str | None]] = [
        ("scheduler", hosts[0] if hosts else "dispyscheduler", hosts, None)
    ]
    leaves += [(f"node-{n}", n, [], NODE_UNIT) for n in nodes]
    leaves += [(f"user-{u}", u, [], USER_UNIT) for u in users]
    for stem, common_name, names, unit in leaves:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        if cert_path.exists() or key_path.exists():
            notes.append(f"kept {cert_path}")
            continue
        cert, key = issue(issuer, common_name, names, server=unit is None, days=days, unit=unit)
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        notes.append(f"made {cert_path}" + (f" for {', '.join(names)}" if names else f" (CN={common_name}, OU={unit})"))
    return notes + _usage(directory, nodes, users)


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC key made by tls init")
    return key


def _usage(d: Path, nodes: list[str], users: list[str]) -> list[str]:
    d = d.absolute()
    pin = cert_fingerprint(str(d / "scheduler.pem"))
    mutual = " --tls-require-client-cert" if nodes or users else ""
    node = nodes[0] if nodes else "NAME"
    lines: list[str | None] = [
        "",
        "scheduler (copy scheduler.pem, scheduler.key and ca.pem to its host):",
        f"  dispyscheduler --host 0.0.0.0 --tls-cert {d}/scheduler.pem --tls-key {d}/scheduler.key"
        + (f" --tls-ca {d}/ca.pem{mutual}" if mutual else ""),
        "  or in its TOML config:",
        f'    tls_cert = "{d}/scheduler.pem"',
        f'    tls_key = "{d}/scheduler.key"',
    ]
    if mutual:
        lines += [f'    tls_ca = "{d}/ca.pem"', "    tls_require_client_cert = true"]
    lines += [
        "nodes (copy ca.pem" + (f", node-{node}.pem and node-{node}.key" if nodes else "") + "):",
        f"  dispynode --scheduler SCHEDHOST:9702 --tls-ca {d}/ca.pem"
        + (f" --tls-cert {d}/node-{node}.pem --tls-key {d}/node-{node}.key" if nodes else ""),
        "  (with no node secret, the node logs in by its certificate)" if nodes else None,
        "clients (copy ca.pem" + (", user-NAME.pem and user-NAME.key" if users else "") + "):",
        f"  SharedJobCluster(..., tls_ca='{d}/ca.pem'"
        + (f", certfile='{d}/user-{users[0]}.pem', keyfile='{d}/user-{users[0]}.key'" if users else "")
        + ")",
        f"  or export DISPY_TLS_CA={d}/ca.pem",
        "  (with no secret, the user logs in by its certificate: its [users.NAME] table needs certificate = true)"
        if users
        else None,
        f"instead of the CA, peers may pin the scheduler's certificate: tls_fingerprint = {pin}",
        "SCHEDHOST must be one of the names in scheduler.pem (--host when it was made).",
    ]
    return [line for line in lines if line is not None]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispyscheduler tls init",
        description="Make a private CA, the scheduler's certificate and, optionally, node and user certificates "
        "for mutual TLS, in DIR (files that exist are kept: run again to add a node).",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="where to write them (made mode 0700)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a DNS name or IP address clients and nodes dial the scheduler by; repeatable "
                        "(default: this host's name, localhost, 127.0.0.1 and ::1)")  # fmt: skip
    p.add_argument("--node", action="append", default=[], metavar="NAME", help="a node certificate; repeatable")
    p.add_argument("--user", action="append", default=[], metavar="NAME", help="a user certificate; repeatable")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity of new certificates ({DEFAULT_DAYS})")
    return p


def main(argv: list[str]) -> int:
    """`dispyscheduler tls init DIR ...`; `argv` is what follows `tls`."""
    if not argv or argv[0] != "init":
        print("usage: dispyscheduler tls init DIR [--host NAME]... [--node NAME]... [--user NAME]...", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    if args.days <= 0:
        print("dispyscheduler tls init: --days must be positive", file=sys.stderr)
        return 2
    try:
        lines = init(args.dir, args.host or default_hosts(), args.node, args.user, args.days)
    except (OSError, ValueError) as exc:
        print(f"dispyscheduler tls init: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
