"""dispy 4.x's constructor parameters, shared by `SharedJobCluster` and `JobCluster`.

Every parameter dispy accepts is accepted here, so a dispy program runs
unchanged. Those that cannot mean anything on this system (the ports and
addresses of dispy's own discovery protocol, ...) each get a one-line warning naming them, never an error; a name
dispy does not know is a `TypeError`, as Python would raise.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispy_wire import isolation
from dispy_wire import limits as job_limits
from dispy_wire.tls import USER_UNIT, ClientTLS, file_identity

from .node import NodeAllocate, parse_nodes

log = logging.getLogger("dispy_client")

#: every keyword either class takes besides its explicit parameters, with its default
_KEYWORDS: dict[str, Any] = {
    "setup": None,
    "cleanup": True,
    "reentrant": False,
    "secret": "",
    "loglevel": None,
    "dest_path": None,
    "recover_file": None,
    "exclusive": False,
    "pulse_interval": None,
    "ping_interval": None,
    "poll_interval": None,
    "keyfile": None,
    "certfile": None,
    "ip_addr": None,
    "port": None,
    "host": None,  # dispy 4.15's names for ip_addr and the port base; each class says what they mean to it
    "dispy_port": None,
    "ext_host": None,
    "client_port": None,
    "ext_ip_addr": None,
    "node_port": None,
    "ipv4_udp_multicast": False,
    "user": None,
    "timeout": 10.0,
    "callback": None,
    "limits": None,
    "tls_ca": None,
    "tls_fingerprint": None,
    "insecure_plaintext": False,
    "isolation": None,  # dispy_wire.isolation; None: the node's default (JobCluster: worker)
}

#: why each parameter is ignored, when it is
_NO_MEANING = {
    "ext_ip_addr": "nodes dial the scheduler, so no address is announced to them",
    "ext_host": "nodes dial the scheduler, so no address is announced to them",
    "client_port": "the client dials the scheduler; it listens on no port",
    "node_port": "nodes dial the scheduler; there is no node port",
    "ipv4_udp_multicast": "there is no UDP discovery",
    "ping_interval": "there is no UDP discovery",
    "poll_interval": "the scheduler pushes results; nothing is polled",
    "exclusive": "the scheduler does not reserve nodes for one cluster yet",
}


@dataclass(slots=True)
class ClusterOptions:
    """The parameters a cluster uses, checked (the rest were warned about)."""

    depends: Sequence[Any] = ()
    job_status: Callable[..., Any] | None = None
    cluster_status: Callable[..., Any] | None = None
    nodes: list[NodeAllocate] = field(default_factory=list)
    setup: Callable[..., Any] | None = None
    cleanup: Callable[..., Any] | bool = True
    reentrant: bool = False
    secret: str = ""  # "" with a client certificate (certfile): log in by that certificate
    user: str | None = None
    timeout: float = 10.0
    dest_path: str | None = None
    recover_file: str | None = None
    pulse_interval: float | None = None
    limits: dict[str, int | float] = field(default_factory=dict)  # checked (dispy_wire.limits)
    tls: ClientTLS | None = None  # None: plaintext, allowed to a loopback scheduler only
    insecure_plaintext: bool = False  # plaintext to a scheduler off loopback too
    isolation: str | None = None  # checked (dispy_wire.isolation); None: the node's default


def cluster_options(
    owner: str,
    kwargs: Mapping[str, Any],
    meaningless: Mapping[str, str] = {},
    *,
    nodes: Any = None,
    depends: Sequence[Any] | None = None,
    job_status: Callable[..., Any] | None = None,
    cluster_status: Callable[..., Any] | None = None,
) -> ClusterOptions:
    """Checks a cluster's keyword arguments.

    Args:
        owner: the class name, for messages.
        kwargs: the keywords besides the explicit parameters.
        meaningless: further parameter names (and why) that `owner` ignores.
        nodes, depends, job_status, cluster_status: the explicit parameters.

    Returns:
        the options; warnings are issued for ignored parameters that were set.

    Raises:
        TypeError: a keyword dispy does not have.
        ValueError: TLS settings that cannot work (`dispy_wire.tls.TLSConfigError`).
    """
    unknown = set(kwargs) - set(_KEYWORDS)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    values = {**_KEYWORDS, **kwargs}
    ignored = {**_NO_MEANING, **meaningless}
    for name, why in ignored.items():
        if name in kwargs and kwargs[name] not in (None, False, _KEYWORDS[name]):
            warnings.warn(f"{owner}: {name} is ignored: {why}", stacklevel=3)
    if values["callback"] is not None:
        warnings.warn(f"{owner}: callback is deprecated; use job_status", DeprecationWarning, stacklevel=3)
        job_status = job_status or values["callback"]
    if values["loglevel"] is not None:
        log.setLevel(values["loglevel"])
    recover_file = values["recover_file"]
    secret = values["secret"] or os.environ.get("DISPY_SECRET", "")
    return ClusterOptions(
        limits=job_limits.check(values["limits"] or {}),
        depends=list(depends or ()),
        job_status=job_status,
        cluster_status=cluster_status,
        nodes=parse_nodes(nodes),
        setup=values["setup"],
        cleanup=values["cleanup"],
        reentrant=bool(values["reentrant"]),
        secret=secret,
        user=values["user"] or _certificate_user(values["certfile"], secret),
        timeout=float(values["timeout"]),
        dest_path=values["dest_path"],
        recover_file=os.fspath(recover_file) if recover_file else None,
        pulse_interval=values["pulse_interval"],
        tls=client_tls(values["tls_ca"], values["tls_fingerprint"], values["certfile"], values["keyfile"]),
        insecure_plaintext=bool(values["insecure_plaintext"]),
        isolation=None if values["isolation"] is None else isolation.check(values["isolation"]),
    )


def _certificate_user(certfile: str | None, secret: str) -> str | None:
    """The user a login by certificate defaults to: the certificate's CN (the only name it can log in as)."""
    if not certfile or secret:
        return None  # a secret given: the login is SCRAM, and the user the usual default
    identity = file_identity(os.fspath(certfile))
    # not a user certificate (JobCluster's certfile is its scheduler's): the usual default
    return identity.name or None if USER_UNIT in identity.units else None


def client_tls(
    ca: str | None, fingerprint: str | None, certfile: str | None = None, keyfile: str | None = None
) -> ClientTLS | None:
    """How the client verifies the scheduler: the arguments, else `$DISPY_TLS_CA` / `$DISPY_TLS_FINGERPRINT`.

    Returns None (plaintext) when none of them is set.

    Raises:
        TLSConfigError: unreadable files, a malformed fingerprint, or a
            certificate of ours but nothing to verify the scheduler with.
    """
    if ca is None and fingerprint is None:
        ca = os.environ.get("DISPY_TLS_CA") or None
        fingerprint = os.environ.get("DISPY_TLS_FINGERPRINT") or None
    if ca is None and fingerprint is None and certfile is None:
        return None
    tls = ClientTLS(
        os.fspath(ca) if ca else None, fingerprint,
        os.fspath(certfile) if certfile else None, os.fspath(keyfile) if keyfile else None,
    )  # fmt: skip
    tls.context()  # a bad file is an error here, in the constructor, not at each (re)connect
    return tls
