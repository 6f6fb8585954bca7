"""SCRAM-SHA-256 verifiers: what the scheduler stores instead of a secret.

A verifier is the salt, the iteration count and two keys derived from the
secret (RFC 5802): `StoredKey` lets the scheduler check a login proof,
`ServerKey` lets it prove to the peer that it knows the verifier. Neither
gives back the secret except by guessing it through the iterated hash, and
neither is enough to log in. Written as PostgreSQL writes them:

    SCRAM-SHA-256$<iterations>:<salt, base64>$<StoredKey, base64>:<ServerKey, base64>

Unknown names get a fake verifier derived from a server-side random key, so
their exchange looks and costs the same as a known name's with a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from scramp import ScramException, ScramMechanism

MECHANISM: Final = "SCRAM-SHA-256"
#: PBKDF2 rounds for new verifiers: about 30-60 ms per login on one core,
#: the price of each offline guess at a recorded exchange
DEFAULT_ITERATIONS: Final = 65536
#: the most PBKDF2 rounds a client or node computes for a scheduler (login or discovery): a fake
#: scheduler asking for more would hold it on a hash for seconds
MAX_ITERATIONS: Final = 16 * DEFAULT_ITERATIONS
#: RFC 7677's floor; scramp refuses fewer
MIN_ITERATIONS: Final = 4096
PREFIX: Final = MECHANISM + "$"


@dataclass(frozen=True, slots=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_secret(cls, secret: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> Verifier:
        """Derives a verifier (with a fresh random salt unless given).

        Raises:
            ValueError: fewer than MIN_ITERATIONS, or a secret SASLprep refuses.
        """
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"iterations must be at least {MIN_ITERATIONS}")
        try:
            salt_, stored, server, count = ScramMechanism(MECHANISM).make_auth_info(
                secret, iteration_count=iterations, salt=salt if salt is not None else secrets.token_bytes(16)
            )
        except ScramException as exc:
            raise ValueError(f"unusable secret: {exc}") from None
        return cls(int(count), bytes(salt_), bytes(stored), bytes(server))

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Reads the PostgreSQL-style string.

        Raises:
            ValueError: not a SCRAM-SHA-256 verifier (the message says what is wrong).
        """
        if not text.startswith(PREFIX):
            raise ValueError(f"not a verifier: it must start with {PREFIX!r}")
        try:
            params, keys = text[len(PREFIX) :].split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            verifier = cls(int(iterations), _b64(salt), _b64(stored), _b64(server))
        except ValueError:
            raise ValueError(f"malformed verifier: expected {PREFIX}<iterations>:<salt>$<StoredKey>:<ServerKey>") from None
        if verifier.iterations < MIN_ITERATIONS:
            raise ValueError(f"verifier has {verifier.iterations} iterations; at least {MIN_ITERATIONS} are needed")
        if len(verifier.stored_key) != 32 or len(verifier.server_key) != 32 or not verifier.salt:
            raise ValueError("malformed verifier: keys must be 32 bytes and the salt non-empty")
        return verifier

    @classmethod
    def fake(cls, key: bytes, label: str, iterations: int = DEFAULT_ITERATIONS) -> Verifier:
        """A verifier nobody's secret matches, the same for `label` every time under `key`.

        The same name always gets the same salt, so asking twice cannot tell
        an unknown name from a known one.
        """

        def derive(purpose: bytes) -> bytes:
            return hmac.new(key, purpose + b"\0" + label.encode(), hashlib.sha256).digest()

        return cls(iterations, derive(b"salt")[:16], derive(b"stored-key"), derive(b"server-key"))

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """What scramp's server asks of its `auth_fn`."""
        return self.salt, self.stored_key, self.server_key, self.iterations

    def __str__(self) -> str:
        return (
            f"{PREFIX}{self.iterations}:{_b64s(self.salt)}${_b64s(self.stored_key)}:{_b64s(self.server_key)}"
        )


def looks_like_verifier(text: str) -> bool:
    return text.startswith(PREFIX)


def new_secret() -> str:
    """A fresh secret with 256 bits of entropy, safe to paste anywhere (URL-safe base64)."""
    return secrets.token_urlsafe(32)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("bad base64") from None


def _b64s(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
