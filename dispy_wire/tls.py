"""TLS under every connection: contexts, the scheduler's proof, channel binding.

Theory of operation. The scheduler listens with a certificate (`ServerTLS`);
clients and nodes dial it with a `ClientTLS` that says how they know it is
the real one: a CA file (its certificate must chain to that CA and name the
host dialed, IP addresses included), the system's trust store (`ca="system"`),
or a pinned SHA-256 fingerprint of its certificate. The TLS handshake ends
before the first frame is written, so a scheduler that cannot prove itself
receives nothing. A CA is checked by OpenSSL during the handshake; a pin is
checked by `ClientTLS.check` right after it, before the dialer writes a byte.

TLS 1.2 is the floor, 1.3 what both ends pick when they can. The scheduler
may ask for client certificates signed by a CA of its own (mutual TLS) and
may require them. A verified client certificate names its holder
(`peer_identity`: CN, and an OU of `USER_UNIT` or `NODE_UNIT`), which lets a
peer log in by its certificate instead of a secret (EXTERNAL, handshake.py).

Plaintext stays possible on loopback (127.0.0.0/8 and ::1, and "localhost"):
nobody else is on that path. Anywhere else both the scheduler and its peers
refuse it unless the operator says `insecure_plaintext` (`plaintext_refusal`).

This module builds `ssl.SSLContext`s and reads certificates; it does no I/O
on sockets: the shells pass the contexts to asyncio, and the `SSLObject`s asyncio
makes back to `ClientTLS.check` and `channel_binding`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import WireError

if TYPE_CHECKING:  # cryptography's x509 costs every process 50 ms of CPU to import: it is imported where
    from cryptography import x509  # a certificate is read, which a plaintext deployment never does

MIN_VERSION = ssl.TLSVersion.TLSv1_2
#: `ClientTLS.ca` value that trusts the system's CA store instead of a file
SYSTEM_CA = "system"
CHANNEL_BINDING = "tls-server-end-point"


class TLSConfigError(WireError, ValueError):
    """A TLS setting that cannot work (a missing or unreadable file, a bad fingerprint)."""


class UntrustedScheduler(WireError):
    """The scheduler did not prove its identity: nothing was sent to it."""


class _ServerContext(ssl.SSLContext):
    """A server context that remembers its own certificate, which `ssl` does not expose (channel binding)."""

    cert_der: bytes = b""


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback: "localhost", 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_refusal(host: str, tls_on: bool, insecure_plaintext: bool) -> str | None:
    """Why talking plaintext with (or listening on) `host` is refused, or None if it is allowed.

    Plaintext is allowed with TLS off only on loopback, or when the operator
    took the risk (`insecure_plaintext`).
    """
    if tls_on or insecure_plaintext or is_loopback(host):
        return None
    return (
        f"{host} is not a loopback address and TLS is not configured: computations, arguments and "
        "results would cross the network readable by anyone on the path, to a scheduler nobody verified"
    )


# -------------------------------------------------------------- fingerprints


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as `AB:CD:...` (openssl's form)."""
    return _colons(hashlib.sha256(der).digest())


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def parse_fingerprint(text: str) -> bytes:
    """The 32 bytes of a SHA-256 fingerprint written in hex, with or without colons or a `sha256:` prefix.

    Raises:
        TLSConfigError: not 64 hex digits.
    """
    digits = re.sub(r"[\s:]", "", text.strip().removeprefix("sha256:").removeprefix("SHA256:"))
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", digits):
        raise TLSConfigError(f"TLS fingerprint {text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return bytes.fromhex(digits)


def cert_fingerprint(path: str) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file.

    Raises:
        TLSConfigError: the file cannot be read or holds no certificate.
    """
    return fingerprint(_first_cert_der(path))


# ------------------------------------------------------------------ contexts


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """The scheduler's TLS settings.

    Attributes:
        cert: PEM file with the scheduler's certificate (and chain).
        key: PEM file with its private key (None: it is in `cert`).
        client_ca: CA file that signs client and node certificates; with it,
            peers may present one.
        require_client_cert: peers without a certificate signed by `client_ca`
            are refused during the TLS handshake.
    """

    cert: str
    key: str | None = None
    client_ca: str | None = None
    require_client_cert: bool = False

    def context(self, on_failure: Callable[[str], None] | None = None) -> ssl.SSLContext:
        """The listener's context.

        Args:
            on_failure: called with the reason of each failed handshake (an
                untrusted or missing client certificate, a peer not speaking TLS).

        Raises:
            TLSConfigError: an unreadable file, a key that does not match, a missing CA.
        """
        if self.require_client_cert and not self.client_ca:
            raise TLSConfigError("requiring client certificates needs the CA that signs them (tls_ca)")
        ctx = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = MIN_VERSION
        _load_chain(ctx, self.cert, self.key)
        ctx.cert_der = _first_cert_der(self.cert)
        if self.client_ca:
            _load_ca(ctx, self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        if on_failure is not None:
            ctx.sslobject_class = _reporting_sslobject(on_failure)
        return ctx


def _reporting_sslobject(on_failure: Callable[[str], None]) -> type[ssl.SSLObject]:
    """An `SSLObject` that reports why its handshake failed (asyncio's TLS layer drives it and stays silent)."""

    class ReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                on_failure(describe_failure(exc))
                raise

    return ReportingSSLObject


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client or node knows the scheduler, and what it shows of itself.

    Attributes:
        ca: CA file the scheduler's certificate must chain to, or `SYSTEM_CA`
            for the system's trust store; the certificate must also name the
            host dialed. None with a `fingerprint`: the pin alone decides.
        fingerprint: the SHA-256 fingerprint of the scheduler's certificate
            (hex, colons optional); a certificate with another is refused.
        cert, key: our own certificate and key (mutual TLS; dispy's
            `certfile`, `keyfile`).
    """

    ca: str | None = None
    fingerprint: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """Raises TLSConfigError: nothing to verify the scheduler with, or an unreadable file."""
        if self.ca is None and self.fingerprint is None:
            raise TLSConfigError("TLS needs a CA file (tls_ca) or the scheduler's fingerprint (tls_fingerprint)")
        pin = self._pin()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = MIN_VERSION
        if self.ca is None:
            assert pin is not None
            # the pin names one certificate: no chain or name to check (`check` compares it)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca == SYSTEM_CA:
            ctx.load_default_certs()
        else:
            _load_ca(ctx, self.ca)
        if self.cert:
            _load_chain(ctx, self.cert, self.key)
        return ctx

    def _pin(self) -> bytes | None:
        return None if self.fingerprint is None else parse_fingerprint(self.fingerprint)

    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """Checks the pinned fingerprint once the handshake is done; call before sending anything.

        Raises:
            UntrustedScheduler: no TLS, or a certificate with another fingerprint.
        """
        if ssl_object is None:
            raise UntrustedScheduler("the connection is not TLS")
        pin = self._pin()
        if pin is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            raise UntrustedScheduler("it presented no certificate")
        if not hmac.compare_digest(hashlib.sha256(der).digest(), pin):
            raise UntrustedScheduler(
                f"its certificate's SHA-256 fingerprint is {fingerprint(der)}, not the pinned {_colons(pin)}"
            )


#: the organizational unit (OU) of a client certificate that may log in as a user, or as a node, by itself
USER_UNIT = "dispy-user"
NODE_UNIT = "dispy-node"


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """Who a client certificate names: its CN, and its OUs (`USER_UNIT`, `NODE_UNIT`: what it may log in as)."""

    name: str
    units: tuple[str, ...]


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> CertIdentity | None:
    """The identity in the certificate the peer presented and we verified, or None (none asked, none given).

    `getpeercert()` is empty unless OpenSSL verified the certificate against
    our CA: an unverified certificate names nobody.
    """
    if ssl_object is None:
        return None
    cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    if not cert:
        return None
    attributes = [pair for rdn in cert.get("subject", ()) for pair in rdn]
    names = [str(value) for key, value in attributes if key == "commonName"]
    units = tuple(str(value) for key, value in attributes if key == "organizationalUnitName")
    return CertIdentity(names[0] if names else "", units)


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The CN of the certificate the peer presented and we verified, or None (none asked, none given)."""
    identity = peer_identity(ssl_object)
    return identity.name if identity is not None and identity.name else None


def file_identity(path: str) -> CertIdentity:
    """The identity the first certificate in a PEM file names (for defaults and early errors; unverified).

    Raises:
        TLSConfigError: the file cannot be read or holds no certificate.
    """
    from cryptography.x509.oid import NameOID

    subject = _first_cert(path).subject
    names = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    units = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    return CertIdentity(names[0] if names else "", units)


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake, as OpenSSL words it ("certificate has expired", ...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {str(exc.verify_message).rstrip('.')}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")  # TLSV13_ALERT_CERTIFICATE_REQUIRED: the peer's alert
    return str(exc) or type(exc).__name__


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        what = f"certificate {cert}" + (f" with key {key}" if key else "")
        raise TLSConfigError(f"cannot load TLS {what}: {describe_failure(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load TLS CA file {ca}: {describe_failure(exc)}") from None


def _first_cert(path: str) -> x509.Certificate:
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"cannot read certificate {path}: {exc}") from None


def _first_cert_der(path: str) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return _first_cert(path).public_bytes(Encoding.DER)


# ---------------------------------------------------------- channel binding

def channel_binding(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, bytes] | None:
    """The `tls-server-end-point` channel binding of a connection (RFC 5929), or None for plaintext.

    It is a hash of the scheduler's certificate, the same on both ends: a
    login (SCRAM) that mixes it in cannot be relayed by a man in the middle
    who holds another certificate. The hash is the certificate's signature
    hash, SHA-256 where that is MD5 or SHA-1 (RFC 5929, 4.1) or where the
    signature names none (Ed25519, Ed448).

    Works on either end: the client hashes the certificate it was shown; the
    scheduler its own, kept by `ServerTLS.context`.
    """
    if ssl_object is None:
        return None
    if ssl_object.server_side:
        der = getattr(ssl_object.context, "cert_der", b"")
    else:
        der = ssl_object.getpeercert(binary_form=True) or b""
    if not der:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return CHANNEL_BINDING, digest.finalize()
